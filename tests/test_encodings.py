"""Every encoding: what onnxruntime computes is bit-exactly the numpy decode, and it folds."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import FLOAT, make_model, tensor
from onnx import helper

from prunequant_cli import encodings
from prunequant_cli.config import CompressConfig
from prunequant_cli.passes import make_payload
from prunequant_cli.selection import WeightSite

DECODER_OPS = {
    "Cast",
    "Mul",
    "Sub",
    "Div",
    "Mod",
    "Concat",
    "Slice",
    "Reshape",
    "Gather",
    "CumSum",
    "ScatterND",
    "ConstantOfShape",
    "Where",
}


def _weight(shape, sparsity, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0
    return w


def _matmul_model(w, opset):
    """x @ W with the weight ``w``, whose decoded value is also a graph output ``w_out``."""
    shape = w.shape
    proto = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            helper.make_node("Identity", ["W"], ["w_out"]),
        ],
        [("x", FLOAT, [2, shape[0]])],
        [("y", FLOAT, [2, shape[1]]), ("w_out", FLOAT, list(shape))],
        [tensor("W", w)],
        opset=opset,
        ir_version=10 if opset <= 21 else 11,
    )
    model = ir.serde.deserialize_model(proto)
    value = model.graph.initializers["W"]
    return model, value, WeightSite(value, model.graph, 1, ("MatMul",))


def _encoded_model(encoding, shape, bits, quant, opset, sparsity):
    """x @ W with W written by ``encoding``; the decoded W is also a graph output."""
    w = _weight(shape, sparsity)
    model, value, site = _matmul_model(w, opset)
    if encoding.kind == "float":
        payload = encodings.Payload("W", shape, ir.DataType.FLOAT, 1, 32, values=w)
    else:
        config = CompressConfig(bits=bits, quant=quant)
        payload = make_payload(w, site, config, pruned=sparsity > 0)
    assert encoding.applies(payload, opset)
    shared = encodings.SharedConstants(encodings.NameAuthority(model), opset)
    encoding.encode(model.graph, value, payload, shared)
    return ir.serde.serialize_model(model), payload


CASES = [
    # (encoding, bits, quant, sparsity)
    ("int8", 8, "uniform", 0.0),
    ("int8", 3, "uniform", 0.0),
    ("int4", 4, "uniform", 0.0),
    ("int2", 2, "uniform", 0.0),
    ("packed4", 4, "uniform", 0.0),
    ("packed4", 3, "uniform", 0.0),
    ("packed2", 2, "uniform", 0.0),
    ("packed6", 6, "uniform", 0.0),
    ("packed6", 5, "uniform", 0.0),
    ("packed6", 6, "asymmetric", 0.3),
    ("int8", 8, "asymmetric", 0.3),
    ("int8", 3, "asymmetric", 0.0),
    ("int4", 4, "asymmetric", 0.3),
    ("int2", 2, "asymmetric", 0.0),
    ("packed4", 4, "asymmetric", 0.3),
    ("packed2", 2, "asymmetric", 0.3),
    ("sparse", 8, "asymmetric", 0.6),
    ("sparse4", 4, "asymmetric", 0.6),
    ("sparse2", 2, "asymmetric", 0.6),
    ("sparse", 8, "uniform", 0.6),
    ("sparse4", 4, "uniform", 0.6),
    ("sparse2", 2, "uniform", 0.6),
    ("codebook", 8, "codebook", 0.3),
    ("codebook4", 4, "codebook", 0.3),
    ("codebook2", 2, "codebook", 0.0),
    ("codebook-packed4", 4, "codebook", 0.3),
    ("codebook-packed2", 2, "codebook", 0.0),
    ("sparse-codebook8", 8, "codebook", 0.6),
    ("sparse-codebook4", 4, "codebook", 0.6),
    ("sparse-codebook2", 2, "codebook", 0.6),
    ("float16", 16, "uniform", 0.0),
    ("sparse-float", 32, "uniform", 0.7),
    ("coordinates", 8, "uniform", 0.95),
    ("coordinates-float", 32, "uniform", 0.95),
]
OPSETS = [11, 13, 17, 21, 25]
SHAPES = [(16, 6), (15, 7)]  # even rows (planes along axis 0) and odd sizes (flat, sliced)


def _params():
    for name, bits, quant, sparsity in CASES:
        enc = encodings.BY_NAME[name]
        for opset in OPSETS:
            if opset < enc.min_opset:
                continue
            for shape in SHAPES:
                yield pytest.param(
                    enc,
                    bits,
                    quant,
                    sparsity,
                    opset,
                    shape,
                    id=f"{name}-{quant}-b{bits}-o{opset}-{shape[0]}x{shape[1]}",
                )


@pytest.mark.parametrize(
    ("encoding", "bits", "quant", "sparsity", "opset", "shape"), list(_params())
)
def test_onnxruntime_decodes_bit_exactly_and_folds(
    tmp_path, encoding, bits, quant, sparsity, opset, shape
):
    proto, payload = _encoded_model(encoding, shape, bits, quant, opset, sparsity)
    onnx.checker.check_model(proto, full_check=True)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, shape[0])).astype(np.float32)
    y, w_out = sess.run(None, {"x": x})
    expected = payload.decode()
    assert w_out.dtype == expected.dtype
    np.testing.assert_array_equal(w_out, expected)  # bit-exact
    np.testing.assert_allclose(y, x @ expected, rtol=1e-5, atol=1e-5)
    optimized = onnx.load(tmp_path / "optimized.onnx")
    left = [n.op_type for n in optimized.graph.node if n.op_type in DECODER_OPS]
    assert left == [], f"decoder not folded at load: {left}"
    assert any(
        init.data_type == onnx.TensorProto.FLOAT and list(init.dims) == list(shape)
        for init in optimized.graph.initializer
    )


@pytest.mark.parametrize(("name", "opset"), [("dq-int8", 13), ("dq-int8", 17), ("dq-int4", 21)])
def test_keep_quantized_stays_quantized_and_decodes_exactly(tmp_path, name, opset):
    enc = encodings.BY_NAME[name]
    bits = 8 if name == "dq-int8" else 4
    proto, payload = _encoded_model(enc, (16, 6), bits, "uniform", opset, 0.0)
    onnx.checker.check_model(proto, full_check=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.ones((2, 16), np.float32)
    _, w_out = sess.run(None, {"x": x})
    np.testing.assert_array_equal(w_out, payload.decode())
    kept = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert "DequantizeLinear" in kept


def test_auto_picks_the_smallest_measured_encoding():
    proto, _ = _encoded_model(encodings.BY_NAME["int8"], (64, 32), 8, "uniform", 17, 0.0)
    w = _weight((256, 128), 0.7)
    model = ir.serde.deserialize_model(proto)
    shared = encodings.SharedConstants(encodings.NameAuthority(model), 17)
    site = WeightSite(model.graph.initializers["W.q"], model.graph, 1, ("MatMul",))
    dense = make_payload(_weight((256, 128), 0.0), site, CompressConfig(bits=4), pruned=False)
    sparse = make_payload(w, site, CompressConfig(bits=4), pruned=True)
    auto = encodings.FORMATS["auto"]
    assert encodings.choose(dense, 17, auto, model.graph, shared).name == "packed4"
    assert encodings.choose(dense, 21, auto, model.graph, shared).name == "int4"
    assert encodings.choose(sparse, 17, auto, model.graph, shared).name == "sparse4"
    assert encodings.choose(dense, 7, auto, model.graph, shared).name == "int8"


def test_blocked_int4_for_matmul_becomes_matmulnbits(tmp_path):
    shape = (64, 16)
    w = _weight(shape, 0.0)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", FLOAT, [1, shape[0]])],
        [("y", FLOAT, [1, shape[1]])],
        [tensor("W", w)],
        opset=21,
        ir_version=10,
    )
    model = ir.serde.deserialize_model(proto)
    value = model.graph.initializers["W"]
    site = WeightSite(value, model.graph, 1, ("MatMul",))
    payload = make_payload(w, site, CompressConfig(bits=4, keep_quantized=True), False, 21)
    assert payload.block_size == 32 and payload.scale.shape == (2, 16)
    assert np.abs(payload.decode() - w).max() <= payload.scale.max() / 2 + 1e-6
    shared = encodings.SharedConstants(encodings.NameAuthority(model), 21)
    enc = encodings.choose(payload, 21, encodings.KEEP_QUANTIZED, model.graph, shared)
    assert enc.name == "dq-int4-blocked"
    enc.encode(model.graph, value, payload, shared)
    written = ir.serde.serialize_model(model)
    onnx.checker.check_model(written, full_check=True)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(
        written.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(2).standard_normal((1, shape[0])).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    # MatMulNBits quantizes the activations too: close, not exact
    ref = (x @ payload.decode()).ravel().astype(np.float64)
    assert np.dot(y.ravel(), ref) / (np.linalg.norm(y) * np.linalg.norm(ref)) > 0.999
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert "MatMulNBits" in ops


@pytest.mark.parametrize("name", ["int8", "packed4", "packed2", "sparse4", "coordinates", "int4"])
@pytest.mark.parametrize("shape", [(64, 8), (8, 64)])
def test_per_block_scales_decode_bit_exactly(tmp_path, name, shape):
    """Scales per block of 32 input weights (MatMul weights: blocks along axis 0)."""
    enc = encodings.BY_NAME[name]
    opset = 21 if name == "int4" else 17
    bits = {"int8": 8, "packed4": 4, "packed2": 2, "sparse4": 4, "coordinates": 8, "int4": 4}[name]
    sparsity = {"sparse4": 0.6, "coordinates": 0.95}.get(name, 0.0)
    w = _weight(shape, sparsity)
    model, value, site = _matmul_model(w, opset)
    payload = make_payload(w, site, CompressConfig(bits=bits, block_size=32), sparsity > 0, opset)
    if shape[0] == 64:
        assert payload.block_size == 32 and payload.scale.shape == (2, shape[1])
    else:
        assert payload.block_size is None  # 8 input weights: no block of 32
    assert enc.applies(payload, opset) and enc.worth_trying(payload)
    enc.encode(
        model.graph,
        value,
        payload,
        encodings.SharedConstants(encodings.NameAuthority(model), opset),
    )
    written = ir.serde.serialize_model(model)
    onnx.checker.check_model(written, full_check=True)
    sess = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    _, w_out = sess.run(None, {"x": np.ones((2, shape[0]), np.float32)})
    np.testing.assert_array_equal(w_out, payload.decode())


def test_asymmetric_codes_take_the_bitmask_but_not_coordinates():
    # a zero weight has code z, not 0: the bitmask marks codes != z, coordinates cannot
    w = _weight((32, 16), 0.8)
    model = ir.serde.deserialize_model(
        make_model([], [("W", FLOAT, [32, 16])], [("W", FLOAT, [32, 16])], [tensor("W", w)])
    )
    site = WeightSite(model.graph.initializers["W"], model.graph, 1, ("MatMul",))
    payload = make_payload(w, site, CompressConfig(bits=4, quant="asymmetric"), pruned=True)
    assert payload.zero_point is not None
    assert payload.zeros() == int((payload.decode() == 0).sum()) >= int((w == 0).sum())
    usable = {e.name for e in encodings.ALL if e.applies(payload, 21)}
    assert usable == {"int8", "int4", "packed4", "sparse", "sparse4"}


def _large_matmuls_model(path, rng):
    """x [n,1024] @ w1 (1024x512) -> h (also an output) -> Relu -> @ w1b (512x1024) -> y,
    Relu(h) @ w2 (512x16, small) -> z, and x @ wg by a Gemm (1024x512) -> g."""
    weights = {
        "w1": rng.standard_normal((1024, 512)).astype(np.float32),
        "w1b": rng.standard_normal((512, 1024)).astype(np.float32),
        "w2": rng.standard_normal((512, 16)).astype(np.float32),
        "wg": rng.standard_normal((1024, 512)).astype(np.float32),
    }
    proto = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w1b"], ["y"]),
            helper.make_node("MatMul", ["r", "w2"], ["z"]),
            helper.make_node("Gemm", ["x", "wg"], ["g"]),
        ],
        [("x", FLOAT, ["n", 1024])],
        [
            ("y", FLOAT, ["n", 1024]),
            ("z", FLOAT, ["n", 16]),
            ("h", FLOAT, ["n", 512]),
            ("g", FLOAT, ["n", 512]),
        ],
        [tensor(k, v) for k, v in weights.items()],
    )
    onnx.save(proto, path)
    return weights


def test_large_matmul_weights_take_their_scales_after_the_matmul(tmp_path):
    """A large MatMul weight with symmetric per-column codes is Cast(codes) alone, and the
    MatMul's output is multiplied by the scales: onnxruntime folds one float copy of it at
    load. Output names stay, results match x @ decoded, inspect still sees the weight (and
    counts the scales in its bytes); asymmetric codes, small weights and a Gemm's weight
    keep Mul(Cast(codes), scale)."""
    from prunequant_cli.config import EvalConfig
    from prunequant_cli.pipeline import compress, inspect_model

    rng = np.random.default_rng(0)
    src = tmp_path / "m.onnx"
    weights = _large_matmuls_model(src, rng)
    out = tmp_path / "o.onnx"
    report = compress(src, out, CompressConfig(bits=8), EvalConfig(enabled=False))
    model = onnx.load(out)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    for name in ("w1", "w1b"):
        cast = producer[name]
        assert cast.op_type == "Cast" and inits[cast.input[0]].data_type == onnx.TensorProto.INT8
    assert producer["w2"].op_type == "Mul" and producer["wg"].op_type == "Mul"
    # the outputs of the MatMuls reading w1 and w1b are scaled, under their own names
    assert producer["h"].op_type == "Mul" and producer["y"].op_type == "Mul"
    assert producer[producer["h"].input[0]].op_type == "MatMul"
    assert [o.name for o in model.graph.output] == ["y", "z", "h", "g"]

    x = rng.standard_normal((3, 1024)).astype(np.float32)
    outputs = ort.InferenceSession(str(out)).run(None, {"x": x})
    got = dict(zip(["y", "z", "h", "g"], outputs, strict=True))
    q = onnx.numpy_helper.to_array(inits["w1.q"]).astype(np.float32)
    s = onnx.numpy_helper.to_array(inits["w1.s"]).astype(np.float32)
    np.testing.assert_allclose(got["h"], x @ (q * s.reshape(1, -1)), rtol=1e-4, atol=1e-3)
    ref = x @ weights["w1"]
    cos = float((got["h"] * ref).sum() / np.linalg.norm(got["h"]) / np.linalg.norm(ref))
    assert cos > 0.9999

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")
    assert any(
        t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == [1024, 512]
        for t in optimized.graph.initializer
    )
    assert not any(n.op_type == "Cast" for n in optimized.graph.node)  # folded at load

    info = {t.name: t for t in inspect_model(out).tensors}
    for name in ("w1", "w1b", "w2", "wg"):
        assert info[name].is_weight and info[name].encoding == "int8", name
    records = {t.name: t for t in report.tensors}
    assert info["w1"].stored_bytes == records["w1"].stored_bytes == 1024 * 512 + 512 * 2

    asym = tmp_path / "a.onnx"
    compress(src, asym, CompressConfig(bits=8, quant="asymmetric"), EvalConfig(enabled=False))
    producer = {o: n for n in onnx.load(asym).graph.node for o in n.output}
    assert producer["w1"].op_type == "Mul" and producer["h"].op_type == "MatMul"


def test_weights_with_scales_after_the_matmul_are_judged_as_weights(tmp_path):
    """compare's weight errors and --per-layer read a scale-after weight as codes x scales
    (not the bare codes), and a float16 weight keeps its scales inside (x @ codes could
    overflow float16)."""
    from prunequant_cli.config import EvalConfig
    from prunequant_cli.pipeline import compare, compress

    rng = np.random.default_rng(0)
    src = tmp_path / "m.onnx"
    _large_matmuls_model(src, rng)
    out = tmp_path / "o.onnx"
    compress(src, out, CompressConfig(bits=8), EvalConfig(enabled=False))
    report = compare(src, out, EvalConfig(per_layer=True))
    errors = {t.name: t.max_abs_error for t in report.tensors}
    assert 0 < errors["w1"] < 0.05 and 0 < errors["w1b"] < 0.05, errors
    layers = {e.weight: e for e in report.evaluation.layers}
    assert layers["w1"].sqnr_db > 30, layers["w1"]

    half = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", onnx.TensorProto.FLOAT16, ["n", 1024])],
        [("y", onnx.TensorProto.FLOAT16, ["n", 512])],
        [tensor("W", (rng.standard_normal((1024, 512)) * 0.02).astype(np.float16))],
    )
    onnx.save(half, tmp_path / "h.onnx")
    compress(
        tmp_path / "h.onnx", tmp_path / "h8.onnx", CompressConfig(bits=8), EvalConfig(enabled=False)
    )
    producer = {o: n for n in onnx.load(tmp_path / "h8.onnx").graph.node for o in n.output}
    assert producer["W"].op_type == "Mul" and producer["y"].op_type == "MatMul"
