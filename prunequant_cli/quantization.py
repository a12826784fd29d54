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
"""

from __future__ import annotations

import numpy as np


def qmax(bits: int) -> int:
    """Largest code of a symmetric ``bits``-bit integer."""
    return (1 << (bits - 1)) - 1


def per_channel_scale(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """One scale per slice along ``axis``, shaped to broadcast against ``w``.

    The scale has ``w``'s dtype, since the decoder multiplies in that dtype.
    """
    axis = axis % w.ndim
    other = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.abs(w).max(axis=other, keepdims=True).astype(np.float64)
    scale = amax / qmax(bits)
    # A scale must be a normal number of the weight's dtype, or the division
    # overflows; channels of tiny (subnormal) weights then quantize to zero.
    scale = np.maximum(scale, np.finfo(w.dtype).tiny)
    scale[amax == 0] = 1.0
    return scale.astype(w.dtype)


def quantize(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes of ``w`` (int8, within [-qmax, qmax])."""
    m = qmax(bits)
    q = np.divide(w, scale, dtype=np.float32)
    np.rint(q, out=q)
    np.clip(q, -m, m, out=q)
    return q.astype(np.int8)


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float weights that the codes stand for, as the decoder computes them."""
    return codes.astype(scale.dtype) * scale
