"""Whole-weight arithmetic a block of rows at a time.

A weight-sized temporary costs a page fault per 4 KiB of fresh memory every time it is made,
and a reduction over a weight's first axis walks it with a stride; both make a 16 MB weight's
statistics several times slower than one pass over its bytes. These helpers work on blocks of
a few hundred KiB along the first axis (one reused buffer) and give the same values as the
whole-array numpy expressions they stand for, except that a float64 sum over the first axis
may differ in its last bit (the additions are grouped by block), so a row whose share of a
weight's magnitude is exactly at a pruning threshold may fall on the other side of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Entries a block holds: 256 KiB of float32, a buffer the cache keeps.
BLOCK_ENTRIES = 1 << 16


def row_blocks(a: np.ndarray, entries: int = BLOCK_ENTRIES) -> Iterator[slice]:
    """Slices of ``a``'s first axis of about ``entries`` entries each, covering it in order."""
    per_row = a.size // max(1, a.shape[0]) if a.ndim else 1
    step = max(1, entries // max(1, per_row))
    for start in range(0, a.shape[0] if a.ndim else 1, step):
        yield slice(start, start + step)


def zero_count(a: np.ndarray) -> int:
    """How many entries are zero (``-0.0`` included; NaN is not zero), as
    ``a.size - np.count_nonzero(a)``; comparing first is several times faster on floats."""
    if a.dtype.kind != "f" or a.size <= BLOCK_ENTRIES:
        return int(a.size - np.count_nonzero(a))
    return int(a.size - np.count_nonzero(a != 0))


def channel_abs(a: np.ndarray, axis: int, reduce: str) -> np.ndarray:
    """Per slice along ``axis`` (1-D, one entry per slice): the largest ``|a|``
    (``reduce="max"``, in ``a``'s dtype) or the sum of ``|a|`` (``"sum"``, float64)."""
    axis = axis % a.ndim
    other = tuple(d for d in range(a.ndim) if d != axis)
    dtype = np.float64 if reduce == "sum" else a.dtype
    op = np.add if reduce == "sum" else np.maximum
    if a.size <= BLOCK_ENTRIES or a.ndim < 2:
        return op.reduce(np.abs(a), axis=other, dtype=dtype)
    buffer = np.empty((next(row_blocks(a)).stop, *a.shape[1:]), dtype=a.dtype)
    out = np.zeros(a.shape[axis], dtype=dtype)
    for rows in row_blocks(a):
        part = a[rows]
        mag = np.abs(part, out=buffer[: part.shape[0]])
        got = op.reduce(mag, axis=other, dtype=dtype)
        if axis == 0:
            out[rows] = got
        else:
            op(out, got, out=out)
    return out
