"""What the benchmark scripts share: onnxruntime sessions as they are timed, and tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort


def session(path: Path) -> ort.InferenceSession:
    """A one-thread CPU session, the way every latency in the benchmarks is measured."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def print_table(rows: Sequence[Sequence[str]], text_columns: int, note: str) -> None:
    """Print ``rows`` aligned: the first ``text_columns`` to the left, numbers to the right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        cells = zip(row, widths, strict=True)
        print(
            "  ".join(
                c.ljust(w) if j < text_columns else c.rjust(w) for j, (c, w) in enumerate(cells)
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(note)
