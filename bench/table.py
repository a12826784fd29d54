"""Plain-text tables for the benchmark scripts (first row: the header)."""

from __future__ import annotations

from collections.abc import Sequence


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
