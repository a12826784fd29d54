"""Nearest against GPTQ rounding: held-out output SQNR and compress time, same file size.

Each sample model's 450 held-out digits are cut in two halves (even and odd rows); GPTQ
records its layer inputs on the even half, and both roundings are scored on the odd half.

Run: ``python bench/bench_rounding.py`` (part of ``make bench``); prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prunequant_cli import CompressConfig, EvalConfig, compress  # noqa: E402


def main() -> None:
    print(
        "| model | bits | nearest SQNR | gptq SQNR | gain | size nearest | size gptq "
        "| seconds nearest | seconds gptq |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("digits_cnn", "digits_mlp"):
            data = np.load(ROOT / "sample_models" / f"{name}.npz")
            cal, held = work / "cal.npz", work / "held.npz"
            np.savez(cal, input=data["input"][0::2], labels=data["labels"][0::2])
            np.savez(held, input=data["input"][1::2], labels=data["labels"][1::2])
            src = ROOT / "sample_models" / f"{name}.onnx"
            for bits in (4, 3):
                cells = []
                for rounding, ev in (
                    ("nearest", EvalConfig(data=held, latency_runs=1)),
                    ("gptq", EvalConfig(data=held, calibration_data=cal, latency_runs=1)),
                ):
                    started = time.perf_counter()
                    report = compress(
                        src, work / "out.onnx", CompressConfig(bits=bits, rounding=rounding), ev
                    )
                    seconds = time.perf_counter() - started
                    sqnr = report.evaluation.outputs[0].sqnr_db
                    cells.append((sqnr, report.ratio, seconds))
                (s_n, r_n, t_n), (s_g, r_g, t_g) = cells
                print(
                    f"| {name} | {bits} | {s_n:.1f} dB | {s_g:.1f} dB | {s_g - s_n:+.1f} dB "
                    f"| ×{r_n:.3f} | ×{r_g:.3f} | {t_n:.2f} | {t_g:.2f} |"
                )
    print(
        "\nSQNR of the output on the 225 odd rows; GPTQ calibrated on the 225 even rows. The "
        "seconds include loading and evaluating."
    )


if __name__ == "__main__":
    main()
