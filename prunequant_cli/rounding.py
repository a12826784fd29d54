"""Data-aware rounding (numpy only): GPTQ, and the layer-input statistics it needs.

Rounding each weight to its nearest code minimises the weight error ‖W − Ŵ‖, but what a
layer computes is WX: at 4 bits and below, errors that cancel on the inputs the layer
really sees matter more than errors that are small. GPTQ (Frantar et al., 2022) rounds
the K input columns of a layer's weight matrix W [rows, K] one at a time and spreads each
column's rounding error onto the columns not yet rounded, in proportion to how the inputs
correlate, which minimises the layer's output error ‖WX − ŴX‖² for the calibration inputs
X [K, n]. With H = XXᵀ (float64, damped by 1% of its mean diagonal), and U the upper
Cholesky factor of H⁻¹:

    for each column j:   q_j = Q(w_j)                    (the code's value, fixed scales)
                         e_j = (w_j − q_j) / U_jj
                         w_k -= e_j · U_jk   for k > j   (columns not yet rounded)

Q rounds to the nearest code of the weight's own scales (per output row, or per block
of inputs, with or without a zero point), so the codes are decoded exactly as nearest
rounding's are. Pruned weights keep code 0 (or the zero point): the mask is fixed before
rounding, and a pruned weight is rounded to 0 with its error spread on like any other.
Inputs a layer never sees (a zero diagonal of H) are rounded to nearest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DAMP = 0.01  # share of the mean diagonal of H added to it
BLOCK = 128  # columns updated together (the lazy batch update of the GPTQ paper)


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    quantize: Callable[[np.ndarray, int], np.ndarray],
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Codes of ``w`` [rows, K] chosen with GPTQ for the input statistics ``h`` [K, K].

    ``quantize(column, j)`` returns the integer codes of a column of weights (input j of
    every row) with that column's scales; ``keep`` (bool, like ``w``) marks the weights
    that may be non-zero (pruned ones keep their zero code). Returns int codes, like ``w``.
    """
    rows, k = w.shape
    # Columns in order of decreasing input energy (the "act-order" of GPTQ's reference
    # code): the columns whose errors cost most are rounded first, while the most columns
    # are left to absorb them. The scales are fixed, so any order decodes the same way.
    order = np.argsort(-np.diag(h), kind="stable")
    # Column j of W is row j here: every step reads and updates contiguous memory.
    work = np.ascontiguousarray(w.T[order], dtype=np.float64)
    h = h[np.ix_(order, order)].astype(np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h += np.eye(k) * DAMP * float(np.mean(np.diag(h)))
    u = _inverse_cholesky_upper(h)
    codes = np.zeros((k, rows), dtype=np.int64)
    keep_t = None if keep is None else np.ascontiguousarray(keep.T[order])
    zeros = np.zeros(rows)
    for start in range(0, k, BLOCK):
        stop = min(start + BLOCK, k)
        errors = np.zeros((stop - start, rows))
        for j in range(start, stop):
            col, src = work[j], int(order[j])
            q = quantize(col, src).astype(np.int64)
            if keep_t is not None:
                q = np.where(keep_t[j], q, quantize(zeros, src).astype(np.int64))
            codes[src] = q
            if dead[j]:
                continue
            # A pruned weight is rounded to 0 like any code: its error (all it holds, including
            # what earlier columns spread onto it) moves on to the columns not yet rounded.
            err = (col - _decoded(quantize, q, src)) / u[j, j]
            work[j + 1 : stop] -= np.outer(u[j, j + 1 : stop], err)
            errors[j - start] = err
        if stop < k:
            work[stop:] -= u[start:stop, stop:].T @ errors
    return np.ascontiguousarray(codes.T)


def _decoded(
    quantize: Callable[[np.ndarray, int], np.ndarray], q: np.ndarray, j: int
) -> np.ndarray:
    """The value codes ``q`` of column j decode to: the quantizer's own inverse."""
    decode = getattr(quantize, "decode", None)
    assert decode is not None, "a GPTQ quantizer decodes its own codes"
    return np.asarray(decode(q, j), dtype=np.float64)


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """The upper triangular U with UᵀU = H⁻¹ (damped more if H is not positive definite).

    With J the order reversal, chol(JHJ) = L gives H = (JLJ)(JLJ)ᵀ with JLJ upper
    triangular, so U = (JLJ)⁻¹ = J L⁻¹ J: one factorisation and one inverse.
    """
    damp = DAMP * float(np.mean(np.diag(h)))
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(h[::-1, ::-1])
            return np.ascontiguousarray(np.linalg.inv(lower)[::-1, ::-1])
        except np.linalg.LinAlgError:
            h = h + np.eye(len(h)) * damp
            damp *= 10
    raise np.linalg.LinAlgError("the layer's input statistics are not positive definite")


class ColumnQuantizer:
    """Nearest rounding of one input column of a weight matrix with fixed scales.

    ``scale`` and ``zero`` are [rows, K] (per row, or per block of columns, repeated), so
    column j rounds with ``scale[:, j]``: q = clip(round(w / s) + z, lo, hi), w' = (q − z)·s.
    """

    def __init__(self, scale: np.ndarray, zero: np.ndarray | None, lo: int, hi: int) -> None:
        self.scale = scale.astype(np.float64)
        self.zero = None if zero is None else zero.astype(np.float64)
        self.lo, self.hi = lo, hi
        # per column, contiguous
        self._scale = np.ascontiguousarray(self.scale.T)
        self._zero = None if self.zero is None else np.ascontiguousarray(self.zero.T)

    def __call__(self, col: np.ndarray, j: int) -> np.ndarray:
        q = np.rint(col / self._scale[j])
        if self._zero is not None:
            q += self._zero[j]
        return np.clip(q, self.lo, self.hi)

    def decode(self, q: np.ndarray, j: int) -> np.ndarray:
        z = 0.0 if self._zero is None else self._zero[j]
        return (q - z) * self._scale[j]


def output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """‖(W − Ŵ)X‖² from H = XXᵀ: trace((W − Ŵ) H (W − Ŵ)ᵀ)."""
    d = (w - w_hat).astype(np.float64)
    return float(np.einsum("ij,jk,ik->", d, h.astype(np.float64), d))
