"""Properties of the quantization maths (numpy only)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from prunequant_cli.encodings import Payload
from prunequant_cli.quantization import (
    asymmetric_scale,
    half_scale,
    per_channel_scale,
    qmax,
    quantize,
    zero_point,
)


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What the product decodes: the shipped payload's decode (the numpy reference the
    onnxruntime decoders are checked against, bit for bit, in test_encodings)."""
    dtype = {np.dtype(np.float32): ir.DataType.FLOAT, np.dtype(np.float16): ir.DataType.FLOAT16}
    payload = Payload("w", codes.shape, dtype[scale.dtype], 0, 8, codes=codes, scale=scale)
    return payload.decode()


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
weights = st.integers(1, 3).flatmap(
    lambda ndim: arrays(np.float32, st.tuples(*[st.integers(1, 6)] * (ndim + 1)), elements=finite)
)


@settings(max_examples=200, deadline=None)
@given(w=weights, bits=st.integers(2, 8), data=st.data())
def test_round_trip_error_within_half_a_step(w, bits, data):
    axis = data.draw(st.integers(0, w.ndim - 1))
    scale = per_channel_scale(w, axis, bits)
    codes = quantize(w, scale, bits)
    err = np.abs(dequantize(codes, scale).astype(np.float64) - w)
    # half a step, plus float32 rounding of the product
    bound = scale.astype(np.float64) / 2 * (1 + 1e-5) + np.abs(w) * 1e-6
    assert (err <= bound).all()


@settings(max_examples=200, deadline=None)
@given(w=weights, bits=st.integers(2, 8))
def test_codes_within_symmetric_range(w, bits):
    scale = per_channel_scale(w, 0, bits)
    codes = quantize(w, scale, bits)
    assert codes.dtype == np.int8
    assert np.abs(codes.astype(np.int32)).max() <= qmax(bits)


@settings(max_examples=200, deadline=None)
@given(w=weights, bits=st.integers(2, 8), data=st.data())
def test_zeros_stay_exactly_zero(w, bits, data):
    zero = data.draw(arrays(bool, w.shape))
    w = np.where(zero, np.float32(0), w)
    scale = per_channel_scale(w, 0, bits)
    back = dequantize(quantize(w, scale, bits), scale)
    assert (back[zero] == 0).all()


def test_scale_is_per_output_channel_and_broadcasts():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 12
    scale = per_channel_scale(w, 1, 8)
    assert scale.shape == (1, 3, 1)
    assert scale.dtype == np.float32
    expected = np.abs(w).max(axis=(0, 2)) / 127
    np.testing.assert_allclose(scale.ravel(), expected, rtol=1e-6)


def test_all_zero_channel_gets_unit_scale_and_zero_codes():
    w = np.zeros((2, 3), np.float32)
    w[1] = [1, -2, 3]
    scale = per_channel_scale(w, 0, 4)
    assert scale[0, 0] == 1.0
    codes = quantize(w, scale, 4)
    assert (codes[0] == 0).all()
    assert codes[1].tolist() == [2, -5, 7]


def test_qmax():
    assert [qmax(b) for b in (2, 4, 8)] == [1, 7, 127]


@settings(max_examples=200, deadline=None)
@given(w=weights, bits=st.integers(2, 8))
def test_float16_scales_round_up_and_keep_the_bound(w, bits):
    from prunequant_cli.quantization import half_scale

    scale = half_scale(per_channel_scale(w, 0, bits))
    if scale.dtype == np.float16:
        assert (scale.astype(np.float32) >= per_channel_scale(w, 0, bits)).all()
    stored = scale.astype(np.float32)
    codes = quantize(w, stored, bits)
    assert np.abs(codes.astype(np.int32)).max() <= qmax(bits)
    err = np.abs(dequantize(codes, stored).astype(np.float64) - w)
    assert (err <= stored.astype(np.float64) / 2 * (1 + 1e-5) + np.abs(w) * 1e-6).all()


@settings(max_examples=150, deadline=None)
@given(w=weights, bits=st.integers(2, 4), data=st.data())
def test_mse_scales_never_do_worse_and_keep_zeros(w, bits, data):
    from prunequant_cli.quantization import mse_scale

    zero = data.draw(arrays(bool, w.shape))
    w = np.where(zero, np.float32(0), w)
    base, searched = per_channel_scale(w, 0, bits), mse_scale(w, 0, bits)
    other = tuple(range(1, w.ndim))

    def err(scale):
        back = dequantize(quantize(w, scale, bits), scale).astype(np.float64)
        return ((back - w) ** 2).sum(axis=other)

    assert (err(searched) <= err(base) * (1 + 1e-5) + 1e-12).all()
    assert (dequantize(quantize(w, searched, bits), searched)[zero] == 0).all()


@settings(max_examples=150, deadline=None)
@given(
    bits=st.sampled_from([1, 2, 4]),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 7)),
    data=st.data(),
)
def test_planar_packing_round_trips(bits, shape, data):
    from prunequant_cli.quantization import pack_planar, unpack_planar

    values = data.draw(arrays(np.uint8, shape, elements=st.integers(0, (1 << bits) - 1)))
    packed = pack_planar(values, bits)
    assert packed.size == -(-values.size // (8 // bits))  # the bytes the bits need, no more
    np.testing.assert_array_equal(unpack_planar(packed, bits, values.shape), values)


def _asymmetric(w, axis, bits, half=False):
    scale = asymmetric_scale(w, axis, bits)
    if half:
        scale = half_scale(scale).astype(w.dtype)
    zero = zero_point(w, axis, scale, bits)
    codes = quantize(w, scale, bits, zero)
    back = (codes.astype(np.float32) - zero.astype(np.float32)) * scale
    return scale, zero, codes, back


@settings(max_examples=200, deadline=None)
@given(w=weights, bits=st.integers(2, 8), half=st.booleans(), data=st.data())
def test_asymmetric_error_within_half_a_step_and_codes_in_range(w, bits, half, data):
    axis = data.draw(st.integers(0, w.ndim - 1))
    scale, zero, codes, back = _asymmetric(w, axis, bits, half)
    assert codes.dtype == np.int8 and zero.dtype == np.int8
    assert codes.min() >= -qmax(bits) - 1 and codes.max() <= qmax(bits)
    assert zero.min() >= -qmax(bits) - 1 and zero.max() <= qmax(bits)
    bound = scale.astype(np.float64) / 2 * (1 + 1e-5) + np.abs(w).max() * 1e-6
    assert (np.abs(back.astype(np.float64) - w) <= bound).all()


@settings(max_examples=200, deadline=None)
@given(w=weights, bits=st.integers(2, 8), data=st.data())
def test_asymmetric_zeros_stay_exactly_zero(w, bits, data):
    zero_mask = data.draw(arrays(bool, w.shape))
    w = np.where(zero_mask, np.float32(0), w)
    _, zero, codes, back = _asymmetric(w, 0, bits)
    assert (back[zero_mask] == 0).all()
    assert (codes == np.broadcast_to(zero, w.shape))[zero_mask].all()


def test_asymmetric_step_follows_a_one_sided_range():
    # all-positive channels: symmetric codes waste the negative half of their range
    w = np.random.default_rng(0).uniform(0, 1, (4, 64)).astype(np.float32)
    for bits in (2, 4, 8):
        sym = per_channel_scale(w, 0, bits)
        asym = asymmetric_scale(w, 0, bits)
        assert (asym < sym).all()
        sym_err = np.abs(dequantize(quantize(w, sym, bits), sym) - w).mean()
        asym_err = np.abs(_asymmetric(w, 0, bits)[3] - w).mean()
        assert asym_err < sym_err * 0.6


def test_first_and_last_layers_keep_8_bits_at_4_bits_unless_all_layers(tmp_path):
    """At 4 bits and below, the layers that read the model's input or write its output
    (through weightless ops) keep 8 bits, said in a note and the settings; --all-layers
    quantizes them too. The middle layers get the bits asked for; both models run."""
    import json

    import numpy as np
    from click.testing import CliRunner
    from helpers import SAMPLES, run_both

    from prunequant_cli.cli import main

    src = SAMPLES / "digits_mlp.onnx"

    def run(*extra):
        out = tmp_path / f"m{len(extra)}.onnx"
        r = CliRunner().invoke(
            main, ["compress", str(src), str(out), "--bits", "4", "--json", *extra]
        )
        assert r.exit_code == 0, r.stderr
        run_both(src, out, {"input": np.load(SAMPLES / "digits_mlp.npz")["input"][:8]})
        return json.loads(r.stdout), out

    doc, out = run()
    bits = {t["name"]: t["bits"] for t in doc["tensors"]}
    kept = {n for n, b in bits.items() if b == 8}
    assert kept and len(kept) < len(bits) and set(bits.values()) == {4, 8}
    assert doc["settings"]["all_layers"] is False
    assert set(doc["settings"]["per_tensor"]) == kept
    assert any("first and last layers kept 8 bits" in n for n in doc["notes"])
    every, out_all = run("--all-layers")
    assert {t["bits"] for t in every["tensors"]} == {4} and every["settings"]["all_layers"]
    assert out_all.stat().st_size < out.stat().st_size


def test_boundary_weights_are_found_through_weightless_ops():
    """x -> Transpose -> MatMul(A) -> Relu -> MatMul(B) -> {MatMul(C) -> Softmax -> y,
    Concat with itself -> z}: A reads the input and B writes z, both through ops without
    weights; C writes y. A weightless MatMul of two activations does not stop the walk."""
    import onnx_ir as ir
    from helpers import FLOAT, make_model, rand, tensor
    from onnx import helper

    from prunequant_cli.selection import boundary_weights, select_weights

    model = make_model(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
            helper.make_node("MatMul", ["xt", "A"], ["a"]),
            helper.make_node("Relu", ["a"], ["ar"]),
            helper.make_node("MatMul", ["ar", "B"], ["b"]),
            helper.make_node("MatMul", ["b", "C"], ["c"]),
            helper.make_node("Softmax", ["c"], ["y"]),
            helper.make_node("Concat", ["b", "b"], ["z"], axis=1),
        ],
        [("x", FLOAT, [8, 4])],
        [("y", FLOAT, [4, 8]), ("z", FLOAT, [4, 16])],
        [tensor("A", rand((8, 8))), tensor("B", rand((8, 8), 1)), tensor("C", rand((8, 8), 2))],
    )
    m = ir.serde.deserialize_model(model)
    sites, _ = select_weights(m, ())
    assert boundary_weights(m, sites) == {"A", "B", "C"}
    inner = make_model(
        [
            helper.make_node("MatMul", ["x", "A"], ["a"]),
            helper.make_node("MatMul", ["a", "B"], ["b"]),
            helper.make_node("MatMul", ["b", "C"], ["y"]),
        ],
        [("x", FLOAT, [4, 8])],
        [("y", FLOAT, [4, 8])],
        [tensor("A", rand((8, 8))), tensor("B", rand((8, 8), 1)), tensor("C", rand((8, 8), 2))],
    )
    m = ir.serde.deserialize_model(inner)
    assert boundary_weights(m, select_weights(m, ())[0]) == {"A", "C"}


# Shapes past arrays.BLOCK_ENTRIES, so the block-by-block paths run (several blocks, a short
# last one), beside small ones that take the whole-array path.
BLOCKED_SHAPES = [(300, 257), (257, 300), (80, 33, 3, 3), (5, 40000), (200000,), (3, 4)]


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(BLOCKED_SHAPES), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_block_by_block_statistics_equal_the_whole_array_expressions(shape, axis, seed):
    """arrays.channel_abs / zero_count, and the scales and codes built on them, give what
    the whole-array numpy expressions give (sums to float64 rounding), NaN and -0.0 included."""
    from prunequant_cli import arrays

    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < 0.2] = 0.0
    w[rng.random(shape) < 0.05] = -0.0
    axis = axis % w.ndim
    other = tuple(d for d in range(w.ndim) if d != axis)
    np.testing.assert_array_equal(arrays.channel_abs(w, axis, "max"), np.abs(w).max(axis=other))
    np.testing.assert_allclose(
        arrays.channel_abs(w, axis, "sum"),
        np.abs(w).sum(axis=other, dtype=np.float64),
        rtol=1e-12,
    )
    assert arrays.zero_count(w) == w.size - np.count_nonzero(w)
    scale = per_channel_scale(w, axis, 8)
    amax = np.maximum(w.max(axis=other, keepdims=True), -w.min(axis=other, keepdims=True))
    expected = np.where(amax == 0, 1.0, np.maximum(amax / 127.0, np.finfo(np.float32).tiny))
    np.testing.assert_array_equal(scale, expected.astype(np.float32))
    whole = np.clip(np.rint(np.divide(w, scale, dtype=np.float32)), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(quantize(w, scale, 8), whole)
    zp = zero_point(w, axis, asymmetric_scale(w, axis, 4), 4)
    a_scale = asymmetric_scale(w, axis, 4)
    q = np.rint(np.divide(w, a_scale, dtype=np.float32)) + zp
    np.testing.assert_array_equal(quantize(w, a_scale, 4, zp), np.clip(q, -8, 7).astype(np.int8))
    # a scale that broadcasts the weight to a larger shape, and a plain number
    assert quantize(w[0], scale, 8).shape == np.broadcast(w[0], scale).shape
    assert quantize(np.float32(0.7), np.full(3, 0.1, np.float32), 8).tolist() == [7, 7, 7]
    np.testing.assert_array_equal(quantize(w, 0.01, 8), quantize(w, np.float32(0.01), 8))
    w.reshape(-1)[7] = np.nan
    assert np.isnan(arrays.channel_abs(w, axis, "max")).any()
    assert arrays.zero_count(w) == w.size - np.count_nonzero(w)
