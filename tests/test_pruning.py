"""Properties of the pruning maths (numpy only)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from prunequant_cli.pruning import (
    apply_zero_mask,
    magnitude_cut,
    row_importance,
    row_mask_broadcast,
    rows_below_threshold,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
weights = st.integers(1, 3).flatmap(
    lambda ndim: arrays(np.float32, st.tuples(*[st.integers(1, 8)] * (ndim + 1)), elements=finite)
)


@settings(max_examples=200, deadline=None)
@given(w=weights, data=st.data())
def test_row_shares_sum_to_one(w, data):
    axis = data.draw(st.integers(0, w.ndim - 1))
    r = row_importance(w, axis)
    assert r.shape == (w.shape[axis],)
    assert (r >= 0).all()
    assert abs(r.sum() - 1.0) < 1e-9


def test_row_share_is_the_seed_formula():
    w = np.array([[1, -1, 0], [2, 2, 2], [0, 0, 4]], np.float32)
    # R_i = sum_j |w_ij| / sum_i sum_j |w_ij| = [2, 6, 4] / 12
    np.testing.assert_allclose(row_importance(w, 0), [2 / 12, 6 / 12, 4 / 12])
    np.testing.assert_allclose(row_importance(w, 1), [3 / 12, 3 / 12, 6 / 12])
    assert rows_below_threshold(w, 0, 0.25).tolist() == [True, False, False]


@settings(max_examples=200, deadline=None)
@given(w=weights, threshold=st.floats(0, 1), data=st.data())
def test_threshold_zeroes_exactly_the_weak_rows(w, threshold, data):
    axis = data.draw(st.integers(0, w.ndim - 1))
    rows = rows_below_threshold(w, axis, threshold)
    pruned = apply_zero_mask(w, row_mask_broadcast(rows, w.ndim, axis))
    moved = np.moveaxis(pruned, axis, 0).reshape(w.shape[axis], -1)
    kept = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    assert (moved[rows] == 0).all()
    np.testing.assert_array_equal(moved[~rows], kept[~rows])


@settings(max_examples=300, deadline=None)
@given(w=weights, sparsity=st.floats(0, 0.999), data=st.data())
def test_magnitude_pruning_hits_the_target_exactly(w, sparsity, data):
    zero = data.draw(arrays(bool, w.shape))
    w = np.where(zero, np.float32(0), w)
    cut = magnitude_cut(w, sparsity)
    pruned = apply_zero_mask(w, cut.mask(w))
    k = int(np.floor(sparsity * w.size))
    assert cut.count == k
    zeros_before = int(w.size - np.count_nonzero(w))
    assert int(pruned.size - np.count_nonzero(pruned)) == max(k, zeros_before)
    # the survivors are never smaller than anything zeroed
    survivors = np.abs(pruned[pruned != 0])
    removed = np.abs(w[(pruned == 0) & (w != 0)])
    if survivors.size and removed.size:
        assert survivors.min() >= removed.max()


def test_magnitude_cut_breaks_ties_deterministically():
    w = np.array([1, 1, 1, 1, 2], np.float32)
    cut = magnitude_cut(w, 0.4)
    assert cut.mask(w).tolist() == [True, True, False, False, False]
