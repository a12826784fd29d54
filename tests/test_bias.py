"""Bias correction: the shift it applies is the mean output error the quantized weight adds."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import FLOAT, SAMPLES, make_model, rand, tensor
from onnx import helper

from prunequant_cli import CompressConfig, EvalConfig, compress
from prunequant_cli.bias import bias_shift, correctable


def _layer(node_proto, inits, inputs, outputs):
    model = ir.serde.deserialize_model(make_model([node_proto], inputs, outputs, inits))
    return model, correctable(model, model.graph.initializers["W"])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_shift_is_the_mean_output_error(trans_b):
    w = rand((3, 5) if trans_b else (5, 3), 1)
    _, layer = _layer(
        helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=trans_b, alpha=0.5, beta=2.0),
        [tensor("W", w), tensor("b", rand((3,), 2))],
        [("x", FLOAT, ["N", 5])],
        [("y", FLOAT, ["N", 3])],
    )
    assert layer is not None
    x = rand((40, 5), 3).astype(np.float64) + 1.0
    delta = rand(w.shape, 4).astype(np.float64) * 0.1
    wt = (lambda a: a.T) if trans_b else (lambda a: a)
    dy = 0.5 * x @ wt(delta)
    shift = bias_shift(layer, delta, x.mean(axis=0))
    np.testing.assert_allclose(shift * 2.0, dy.mean(axis=0), rtol=1e-9, atol=1e-12)


def test_grouped_pointwise_conv_shift_is_exact():
    w = rand((4, 3, 1, 1), 1)
    _, layer = _layer(
        helper.make_node("Conv", ["x", "W", "b"], ["y"], group=2),
        [tensor("W", w), tensor("b", rand((4,), 2))],
        [("x", FLOAT, ["N", 6, 5, 5])],
        [("y", FLOAT, ["N", 4, 5, 5])],
    )
    x = rand((8, 6, 5, 5), 3).astype(np.float64)
    delta = rand(w.shape, 4).astype(np.float64)
    groups = [slice(0, 3), slice(3, 6)]
    dy = np.stack(
        [np.einsum("nihw,i->nhw", x[:, groups[o // 2]], delta[o, :, 0, 0]) for o in range(4)], 1
    )
    shift = bias_shift(layer, delta, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(shift, dy.mean(axis=(0, 2, 3)), rtol=1e-9)


def test_shared_or_missing_biases_are_left_alone():
    model = ir.serde.deserialize_model(
        make_model(
            [
                helper.make_node("Gemm", ["x", "W", "b"], ["h"]),
                helper.make_node("Gemm", ["h", "V", "b"], ["y"]),  # b read by two layers
            ],
            [("x", FLOAT, ["N", 3])],
            [("y", FLOAT, ["N", 3])],
            [
                tensor("W", rand((3, 3), 1)),
                tensor("V", rand((3, 3), 2)),
                tensor("b", rand((3,), 3)),
            ],
        )
    )
    assert correctable(model, model.graph.initializers["W"]) is None
    _, none = _layer(
        helper.make_node("MatMul", ["x", "W"], ["y"]),
        [tensor("W", rand((5, 3), 1))],
        [("x", FLOAT, ["N", 5])],
        [("y", FLOAT, ["N", 3])],
    )
    assert none is None


def test_bias_correction_lowers_the_error_on_the_samples(tmp_path):
    ev = EvalConfig(data=SAMPLES / "digits_cnn.npz", latency_runs=2)
    src = SAMPLES / "digits_cnn.onnx"
    plain = compress(src, tmp_path / "a.onnx", CompressConfig(bits=3), ev)
    fixed = compress(src, tmp_path / "b.onnx", CompressConfig(bits=3, bias_correction=True), ev)
    assert fixed.compressed.file_bytes == plain.compressed.file_bytes
    assert fixed.evaluation.outputs[0].relative_error < plain.evaluation.outputs[0].relative_error
    assert any("corrected" in (t.note or "") for t in fixed.tensors)
    assert any("bias correction" in n for n in fixed.notes)
