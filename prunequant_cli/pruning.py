"""Importance scores and pruning masks (numpy only).

Row importance, after the seed's section 3.1.3, read per weight tensor: row ``i`` is
an output neuron (Gemm/MatMul) or output channel (Conv), ``j`` runs over that row's
weights, and

    R_i = sum_j |w_ij| / sum_i sum_j |w_ij|

is the row's share of the tensor's L1 magnitude. The shares of one tensor sum to 1,
so their mean is ``1 / rows``: a threshold below that zeroes only rows that are
weaker than average. Rows with ``R_i < threshold`` are zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunequant_cli.arrays import channel_abs


def row_l1(w: np.ndarray, axis: int) -> np.ndarray:
    """L1 magnitude of each slice of ``w`` along ``axis`` (float64, one per row)."""
    return channel_abs(w, axis, "sum")


def row_importance(w: np.ndarray, axis: int) -> np.ndarray:
    """Each output row's share R_i of the tensor's total L1 magnitude.

    The shares are non-negative and sum to 1. A tensor of zeros has no
    magnitude to share; its rows get equal shares ``1 / rows``.
    """
    l1 = row_l1(w, axis)
    total = l1.sum()
    if total == 0.0 or not np.isfinite(total):
        return np.full(l1.shape, 1.0 / l1.size)
    return l1 / total


def rows_below_threshold(w: np.ndarray, axis: int, threshold: float) -> np.ndarray:
    """Boolean mask over rows: True where R_i < threshold (the rows to zero)."""
    return row_importance(w, axis) < threshold


@dataclass(frozen=True)
class MagnitudeCut:
    """The exact rule that zeroes the ``k`` smallest-magnitude weights.

    Weights with ``|w| < cutoff`` are zeroed, and so are the first ``ties`` weights
    (in flat order) whose magnitude equals ``cutoff``. Storing the rule instead of
    the mask lets a caller recompute the mask from the weights when needed.
    """

    cutoff: float
    ties: int
    count: int

    def mask(self, w: np.ndarray) -> np.ndarray:
        """Boolean mask of the weights to zero, shaped like ``w``."""
        mag = np.abs(w)
        zero = mag < self.cutoff
        if self.ties:
            flat_ties = np.flatnonzero(mag == self.cutoff)[: self.ties]
            zero.reshape(-1)[flat_ties] = True
        return zero


def magnitude_cut(w: np.ndarray, sparsity: float) -> MagnitudeCut:
    """The rule that zeroes ``floor(sparsity * size)`` smallest-magnitude weights."""
    k = int(np.floor(sparsity * w.size))
    if k == 0:
        return MagnitudeCut(cutoff=0.0, ties=0, count=0)
    mag = np.abs(w).reshape(-1)
    cutoff = np.partition(mag, k - 1)[k - 1]
    below = int(np.count_nonzero(mag < cutoff))
    return MagnitudeCut(cutoff=float(cutoff), ties=k - below, count=k)


def apply_zero_mask(w: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """A copy of ``w`` with the masked weights set to exactly zero.

    ``zero`` is either shaped like ``w`` or a row mask broadcast along the rows.
    """
    return np.where(zero, np.zeros((), dtype=w.dtype), w)


def row_mask_broadcast(rows: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a per-row mask so it broadcasts against a tensor of rank ``ndim``."""
    shape = [1] * ndim
    shape[axis % ndim] = rows.size
    return rows.reshape(shape)


def n_m_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Boolean mask of the weights to zero so that every group of ``m`` consecutive weights
    along ``axis`` (the input dimension) keeps only its ``n`` largest magnitudes.

    A trailing group shorter than ``m`` is left whole.
    """
    moved = np.moveaxis(np.abs(w), axis, -1)
    length = moved.shape[-1] - moved.shape[-1] % m
    zero = np.zeros(moved.shape, dtype=bool)
    if length:
        groups = moved[..., :length].reshape(*moved.shape[:-1], length // m, m)
        order = np.argsort(-groups, axis=-1, kind="stable")  # largest first, ties by position
        drop = np.zeros(groups.shape, dtype=bool)
        np.put_along_axis(drop, order[..., n:], True, axis=-1)
        zero[..., :length] = drop.reshape(*moved.shape[:-1], length)
    return np.moveaxis(zero, -1, axis)


def input_axis(ndim: int, output_axis: int, convolution: bool) -> int:
    """The axis a weight's inputs run along: Conv [O, I, kh, kw] axis 1 (0 for the transposed
    layout), else the last axis that is not the output axis."""
    if convolution:
        return 1 if output_axis == 0 else 0
    return ndim - 1 if output_axis != ndim - 1 else ndim - 2
