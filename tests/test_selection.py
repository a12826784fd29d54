"""Which initializers are weights, and their output-row axis."""

from __future__ import annotations

import graphs
import onnx_ir as ir
import pytest

from prunequant_cli.selection import select_weights


def _select(model, exclude=()):
    sites, skipped = select_weights(ir.serde.deserialize_model(model), exclude)
    return {s.name: s.axis for s in sites}, dict((s.name, s.reason) for s in skipped)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (graphs.gemm(1), {"W": 0}),
        (graphs.gemm(0), {"W": 1}),
        (graphs.matmul(), {"W": 1}),
        (graphs.matmul(batched=True), {"W": 2}),
        (graphs.conv(), {"W": 0, "WT": 1}),
        (graphs.embedding(), {"E": 0}),
        (graphs.shared_weight(), {"W": 1}),
        (graphs.if_branches(), {"W": 1, "V": 1}),
        (graphs.conv_bn(), {"W": 0, "fc": 0}),
        (graphs.lstm(), {"E": 0, "W": 1, "R": 1}),
        (graphs.identity_shared(), {"W": 1}),
    ],
    ids=[
        "gemm-transB",
        "gemm",
        "matmul",
        "matmul-batched",
        "conv",
        "gather",
        "shared",
        "if",
        "conv-bn",
        "lstm",
        "identity",
    ],
)
def test_weight_axes(model, expected):
    sites, _ = _select(model)
    assert sites == expected


def test_non_weights_are_left_alone_with_a_reason():
    sites, skipped = _select(graphs.reshape_and_others())
    assert sites == {"W": 1}
    assert "Add" in skipped["A"]
    assert "graph input" in skipped["G"]
    assert "shape" not in skipped  # integer tensors are never candidates


def test_bias_is_not_a_weight():
    _, skipped = _select(graphs.gemm(1))
    assert skipped == {"b": "used as input 2 of Gemm, not as a weight"}


def test_exclude_glob():
    sites, skipped = _select(graphs.conv(), exclude=("W*",))
    assert sites == {}
    assert skipped["W"] == skipped["WT"] == "excluded by --exclude"
