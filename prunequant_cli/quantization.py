"""Uniform quantization of weights (numpy only).

The contract, the standard form of the seed's section 3.2.3:

    q = clamp(round(w / scale), -qmax, qmax),   qmax = 2**(bits - 1) - 1
    w' = q * scale

Symmetric (zero point 0), one scale per output channel:
``scale_c = max_j |w_cj| / qmax``, so no weight is clipped and the error of every
weight is at most ``scale_c / 2``. A zero weight (a pruned one) has code 0 and
decodes to exactly 0. The range is restricted to [-qmax, qmax], which keeps it
symmetric. A channel of zeros gets scale 1 (its codes are all 0); scales never go
below the dtype's smallest normal number.

Asymmetric (``--quant asymmetric``), the seed's form with a zero point:

    q = clamp(round(w / scale) + z, -qmax - 1, qmax),   w' = (q - z) * scale

with, per output channel, ``scale = (hi - lo) / (2**bits - 1)`` over the range
``[lo, hi] = [min(w, 0), max(w, 0)]`` and the integer zero point
``z = round(-qmax - 1 - lo / scale)``. All ``2**bits`` codes are used and the step
follows the channel's real range, which pays off where a channel's weights lean to
one side. Zero is inside every range and ``z`` is an integer code, so a zero
weight (a pruned one) has code ``z`` and decodes to exactly 0.
"""

from __future__ import annotations

import numpy as np

from prunequant_cli.arrays import channel_abs, row_blocks


def qmax(bits: int) -> int:
    """Largest code of a symmetric ``bits``-bit integer."""
    return (1 << (bits - 1)) - 1


def per_channel_scale(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """One scale per slice along ``axis``, shaped to broadcast against ``w``.

    The scale has ``w``'s dtype, since the decoder multiplies in that dtype.
    """
    axis = axis % w.ndim
    shape = [1] * w.ndim
    shape[axis] = w.shape[axis]
    amax = channel_abs(w, axis, "max").reshape(shape).astype(np.float64)
    scale = amax / qmax(bits)
    # A scale must be a normal number of the weight's dtype, or the division
    # overflows; channels of tiny (subnormal) weights then quantize to zero.
    scale = np.maximum(scale, np.finfo(w.dtype).tiny)
    scale[amax == 0] = 1.0
    return scale.astype(w.dtype)


def per_block_scale(w: np.ndarray, block: int, bits: int, axis: int = 0) -> np.ndarray:
    """One scale per block of ``block`` consecutive entries along ``axis`` (and per position
    on the other axes): shaped like ``w`` with that axis divided by ``block``."""
    axis = axis % w.ndim
    shape = (*w.shape[:axis], w.shape[axis] // block, block, *w.shape[axis + 1 :])
    amax = np.abs(w.reshape(shape)).max(axis=axis + 1).astype(np.float64)
    scale = np.maximum(amax / qmax(bits), np.finfo(w.dtype).tiny)
    scale[amax == 0] = 1.0
    return scale.astype(w.dtype)


def half_scale(scale: np.ndarray) -> np.ndarray:
    """``scale`` as float16, rounded up, if every value fits in float16; else unchanged.

    Rounding up keeps ``max |w| / scale <= qmax``, so quantizing with the float16
    scale clips nothing and the error bound (half a step of the stored scale)
    still holds exactly. Tiny scales become float16 subnormals: a slightly
    coarser step for channels whose weights are all close to zero.
    """
    if not np.all(scale <= np.finfo(np.float16).max):
        return scale
    half = scale.astype(np.float16)
    low = half.astype(scale.dtype) < scale
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half


def quantize(
    w: np.ndarray, scale: np.ndarray, bits: int, zero_point: np.ndarray | None = None
) -> np.ndarray:
    """Integer codes of ``w`` (int8): within [-qmax, qmax], or with a ``zero_point``
    added, within [-qmax - 1, qmax]."""
    m = qmax(bits)
    low = -m if zero_point is None else -m - 1
    w, scale = np.asarray(w), np.asarray(scale)
    codes = np.empty(np.broadcast_shapes(w.shape, scale.shape), dtype=np.int8)
    if codes.shape != w.shape or codes.ndim == 0:  # a scale that broadcasts w: whole
        blocks: list[slice | tuple[()]] = [()]
    else:
        blocks = list(row_blocks(w))
    buffer = None
    for rows in blocks:
        part = w[rows]
        if buffer is None:
            buffer = np.empty(codes.shape if rows == () else part.shape, dtype=np.float32)
        q = buffer[: part.shape[0]] if rows != () else buffer
        np.divide(part, _rows(scale, rows, w), out=q, dtype=np.float32)
        np.rint(q, out=q)
        if zero_point is not None:
            q += _rows(zero_point, rows, w)
        np.clip(q, low, m, out=q)
        codes[rows] = q
    return codes


def _rows(a: np.ndarray, rows: slice | tuple[()], w: np.ndarray) -> np.ndarray:
    """The part of ``a`` (broadcast against ``w``) that goes with ``w[rows]``."""
    if rows == () or a.ndim < w.ndim or a.shape[0] == 1:
        return a
    return a[rows]


def asymmetric_scale(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Per-channel scale (``w``'s dtype) spreading all ``2**bits`` codes over [lo, hi]."""
    other = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    lo = np.minimum(w.min(axis=other, keepdims=True), 0).astype(np.float64)
    hi = np.maximum(w.max(axis=other, keepdims=True), 0).astype(np.float64)
    scale = np.maximum((hi - lo) / ((1 << bits) - 1), np.finfo(w.dtype).tiny)
    scale[hi == lo] = 1.0
    return scale.astype(w.dtype)


def zero_point(w: np.ndarray, axis: int, scale: np.ndarray, bits: int) -> np.ndarray:
    """Per-channel integer code of 0 (int8) for ``scale``: ``round(-qmax - 1 - lo / scale)``."""
    other = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    lo = np.minimum(w.min(axis=other, keepdims=True), 0).astype(np.float64)
    low = -qmax(bits) - 1
    zero = np.clip(np.rint(low - lo / scale.astype(np.float64)), low, qmax(bits))
    return zero.astype(np.int8)


def pack_planar(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit values (bits in 1, 2, 4) into bytes, planar.

    The values are cut along axis 0 into ``k = 8 // bits`` equal planes; byte ``j``
    of the result holds element ``j`` of plane ``i`` in bits ``i*bits ..``:

        packed[j] = sum_i plane_i[j] << (i * bits)

    so ``Mod(Div(packed, 2**(i*bits)), 2**bits)`` recovers plane ``i`` whole, and
    concatenating the planes along axis 0 restores the tensor: a decoder needs only
    elementwise integer ops and one Concat. When axis 0 does not divide into ``k``
    planes, the values are flattened (and the last plane padded with zeros), and
    the decoder slices and reshapes.
    """
    k = 8 // bits
    values = np.ascontiguousarray(values, dtype=np.uint8)
    if values.ndim and values.shape[0] % k == 0:
        planes = values.reshape(k, values.shape[0] // k, *values.shape[1:])
    else:
        flat = values.reshape(-1)
        m = -(-flat.size // k)  # ceil
        padded = np.zeros(k * m, dtype=np.uint8)
        padded[: flat.size] = flat
        planes = padded.reshape(k, m)
    packed = np.zeros(planes.shape[1:], dtype=np.uint8)
    for i in range(k):
        packed |= planes[i] << np.uint8(i * bits)
    return packed


def unpack_planar(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_planar` for values of ``shape``."""
    k = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    planes = np.concatenate([(packed >> np.uint8(i * bits)) & mask for i in range(k)])
    return planes.reshape(-1)[: int(np.prod(shape))].reshape(shape)


KMEANS_FIT_MAX = 1 << 18


def kmeans_codebook(w: np.ndarray, levels: int, keep_zero: bool, iterations: int = 25):
    """A deterministic 1-D k-means codebook for ``w`` and each weight's index.

    Centroids start at evenly spaced quantiles and move by Lloyd iterations; in one
    dimension the nearest centroid is found by binary search over the midpoints.
    With ``keep_zero`` (a pruned tensor) entry 0 is exactly 0.0 and holds every
    zero weight, and the other ``levels - 1`` entries are fitted to the non-zeros.

    Returns:
        (codebook as w's dtype, indices as uint8 shaped like w)
    """
    flat = w.reshape(-1).astype(np.float64)
    fit = flat[flat != 0] if keep_zero else flat
    if fit.size > KMEANS_FIT_MAX:
        # Centroids of a large tensor are fitted on an evenly strided sample: the same
        # distribution at a fraction of the cost (deterministic, no random seed).
        fit = np.sort(fit)[:: fit.size // KMEANS_FIT_MAX + 1]
    k = levels - 1 if keep_zero else levels
    centroids = np.zeros(0)
    if fit.size:
        centroids = np.unique(np.quantile(fit, (np.arange(k) + 0.5) / k))
        for _ in range(iterations):
            edges = (centroids[1:] + centroids[:-1]) / 2
            assign = np.searchsorted(edges, fit)
            sums = np.bincount(assign, weights=fit, minlength=centroids.size)
            counts = np.bincount(assign, minlength=centroids.size)
            moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
            moved = np.unique(moved)
            if moved.size == centroids.size and np.array_equal(moved, centroids):
                break
            centroids = moved
    book = np.concatenate([[0.0], centroids]) if keep_zero else centroids
    if book.size == 0:
        book = np.zeros(1)
    book = book.astype(w.dtype)
    # assign every weight (zeros too) to its nearest entry of the final codebook
    order = np.argsort(book, kind="stable")
    sorted_book = book[order].astype(np.float64)
    edges = (sorted_book[1:] + sorted_book[:-1]) / 2
    idx = order[np.searchsorted(edges, flat)].astype(np.uint8)
    if keep_zero:
        idx[flat == 0] = 0
    return book, idx.reshape(w.shape)


def mse_scale(w: np.ndarray, axis: int, bits: int, steps: int = 10) -> np.ndarray:
    """Per-channel scales that minimise the squared error of quantize+dequantize.

    The min/max scale never clips but wastes levels on rare large weights; shrinking
    it (down to half) clips those few and resolves the many small ones better. Each
    channel keeps the factor in [0.5, 1] with the least error; the min/max scale is
    among the candidates, so the error never grows.
    """
    base = per_channel_scale(w, axis, bits).astype(np.float32)
    axis = axis % w.ndim
    other = tuple(a for a in range(w.ndim) if a != axis)
    w64 = w.astype(np.float32)
    m = qmax(bits)
    best, best_err = base.copy(), None
    for factor in np.linspace(1.0, 0.5, steps + 1):
        scale = base * factor
        q = np.clip(np.rint(w64 / scale), -m, m) * scale
        err = np.square(q - w64).sum(axis=other, keepdims=True, dtype=np.float64)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best = np.where(better, scale, best)
        best_err = np.where(better, err, best_err)
    return best.astype(w.dtype)
