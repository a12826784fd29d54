"""Whether the search's estimate of a metric drop's sampling noise matches the noise itself.

A search holds a metric drop measured on its calibration samples plus 1.645 times its noise
(``Quality.metric_drop_noise``) to the budget: the standard deviation of (the drop another set
of the held-out size would measure) minus (the drop on these samples), which the search's judge
estimates from bootstrap resamples of the calibration batches. Here that estimate meets the
truth on the realmodels kit: all of a model's samples (both halves of ``real_splits``) are run
through the original and through a ``--bits N --no-eval`` copy once; then, many times, two
disjoint random sets A (the calibration size) and B (the held-out size) are drawn, the judge's
estimate is taken on A alone, and the spread of drop(B) - drop(A) over the draws is the truth.
Printed per model and bits: the truth, the mean estimate, and their ratio (above 1: the
estimate is conservative).

Usage: ``python bench/bench_noise.py [--models a,b] [--bits 8,4] [--draws 40]``, after
``bench_real.py`` has built the kit (``PRUNEQUANT_REALMODELS``, ``PRUNEQUANT_SHARED`` as there).
Models whose metric is undefined on subsets (``real_metrics.NOT_ON_SUBSETS``) are skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import real_metrics  # noqa: E402
from bench_real import prunequant_bin  # noqa: E402

from prunequant_cli.evaluate import open_session  # noqa: E402
from prunequant_cli.judge import Judge, Metric  # noqa: E402

# Models with a metric on per-sample labels (the search's fold is half of the calibration
# samples when there are 16 or more, as in a search).
DEFAULT_MODELS = ("ppocrv4_rec", "resemblyzer_lstm", "nudenet_320n", "ddddocr_det", "ppocr_cls")


def outputs_per_sample(model: str, parts: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The model's outputs for every sample of the halves, one run per sample (batch 1)."""
    session = open_session(model, 1, "model")
    names = [i.name for i in session.get_inputs()]
    runs = []
    for d in parts:
        for i in range(len(d[names[0]])):
            runs.append(
                [np.asarray(y) for y in session.run(None, {k: d[k][i : i + 1] for k in names})]
            )
    return runs


def drop(
    metric: Metric,
    names: list[str],
    reference: list[list[np.ndarray]],
    got: list[list[np.ndarray]],
    labels: np.ndarray,
    rows: np.ndarray,
) -> float:
    """The metric drop from ``reference`` to ``got`` on the samples ``rows``."""
    r, c = [reference[i] for i in rows], [got[i] for i in rows]
    return metric(names, r, r, labels[rows]) - metric(names, r, c, labels[rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--bits", default="8,4")
    ap.add_argument("--draws", type=int, default=40)
    args = ap.parse_args()
    cache = Path(os.environ.get("PRUNEQUANT_REALMODELS", "~/.cache/prunequant/realmodels"))
    cache = cache.expanduser()
    rng = np.random.default_rng(0)
    print("| model | --bits | calibration fold / held-out | true sd | estimate (mean) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name in real_metrics.NOT_ON_SUBSETS:
                continue
            split = cache / "splits" / name
            parts = [dict(np.load(split / f"{p}.npz")) for p in ("calibration", "holdout")]
            n_cal, n_held = (len(p["labels"]) for p in parts)
            n_fold = n_cal // 2 if n_cal >= 16 else n_cal
            labels = np.concatenate([p["labels"] for p in parts])
            original = str(cache / "models" / f"{name}.onnx")
            names = [o.name for o in open_session(original, 1, "model").get_outputs()]
            reference = outputs_per_sample(original, parts)
            metric = Metric(name, getattr(real_metrics, name))
            for bits in args.bits.split(","):
                candidate = str(Path(tmp) / f"{name}.{bits}.onnx")
                subprocess.run(
                    [prunequant_bin(), "compress", original, candidate, "--bits", bits,
                     "--no-eval", "--quiet"],
                    check=True, stdout=subprocess.DEVNULL,
                )  # fmt: skip
                got = outputs_per_sample(candidate, parts)

                diffs, estimates = [], []
                for _ in range(args.draws):
                    perm = rng.permutation(len(reference))
                    a, b = np.sort(perm[:n_fold]), np.sort(perm[n_fold : n_fold + n_held])
                    diffs.append(
                        drop(metric, names, reference, got, labels, b)
                        - drop(metric, names, reference, got, labels, a)
                    )
                    judge = Judge(names, {}, labels[a], metric, units=[1] * n_fold, unseen=n_held)
                    q = judge.measure([reference[i] for i in a], [got[i] for i in a])
                    if q.metric_drop_spread is not None:
                        estimates.append(q.metric_drop_spread)
                truth = float(np.std(diffs))
                est = float(np.mean(estimates)) if estimates else float("nan")
                ratio = est / truth if truth else float("nan")
                print(
                    f"| {name} | {bits} | {n_fold} / {n_held} | {truth:.4f} | {est:.4f} | "
                    f"{ratio:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
