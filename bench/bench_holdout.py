"""How often a search's budget holds on samples it never saw, with and without the
confirming fold.

Each sample model's 450 held-out digits are halved at random four times (seeds 0-3); the
search calibrates on one half and is judged on the other. "single fold" searches on all
its calibration samples (as with fewer than 16); "confirmed" searches on one half of them
and confirms on the other (the default).

Run: ``python bench/bench_holdout.py`` (part of ``make bench``); prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prunequant_cli import (  # noqa: E402
    EvalConfig,
    GateConfig,
    evaluate,
)
from prunequant_cli.pipeline import search  # noqa: E402

SEEDS = range(4)
BUDGETS = (1.0, 0.0)
MODES = {"single fold": 10**9, "confirmed": evaluate.MIN_FOLD}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("digits_cnn", "digits_mlp"):
            data = np.load(ROOT / "sample_models" / f"{name}.npz")
            n = len(data["labels"])
            for mode, min_fold in MODES.items():
                evaluate.MIN_FOLD = min_fold
                for budget in BUDGETS:
                    held, ratios, drops = 0, [], []
                    for seed in SEEDS:
                        order = np.random.default_rng(seed).permutation(n)
                        parts = []
                        for tag, rows_ in (("a", order[: n // 2]), ("b", order[n // 2 :])):
                            path = work / f"{name}.{seed}.{tag}.npz"
                            rows_ = np.sort(rows_)
                            np.savez(path, input=data["input"][rows_], labels=data["labels"][rows_])
                            parts.append(path)
                        ev = EvalConfig(data=parts[1], calibration_data=parts[0], latency_runs=1)
                        report = search(
                            ROOT / "sample_models" / f"{name}.onnx",
                            work / "out.onnx",
                            GateConfig(max_accuracy_drop=budget),
                            ev,
                        )
                        held += report.passed
                        ratios.append(report.ratio)
                        drops.append(report.evaluation.accuracy_drop_points)
                    rows.append(
                        (
                            name,
                            mode,
                            f"{budget:g}",
                            f"{held}/{len(SEEDS)}",
                            f"×{np.mean(ratios):.3f}",
                            ", ".join(f"{d:.2f}" for d in drops),
                        )
                    )
    print(
        "| model | search | `--max-accuracy-drop` | held on the unseen half | mean size "
        "| drops (points) |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
