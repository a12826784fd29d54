"""Shared test helpers: small graph builders and the differential oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8):
    """A checked ONNX model from helper-made parts; inputs/outputs as (name, dtype, shape)."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def save(model, path: Path) -> Path:
    onnx.save(model, path)
    return path


def session(model: str | Path | bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def seeded_feeds(sess, seed=0, batch=4):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        if i.type == "tensor(float)":
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif i.type == "tensor(bool)":
            feeds[i.name] = rng.integers(0, 2, shape).astype(bool)
        elif i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(0, 2, shape).astype(np.int64)
        else:
            raise AssertionError(f"no feed for {i.type}")
    return feeds


def run_both(original, compressed, feeds=None, seed=0):
    """The differential oracle: both models in onnxruntime on the same inputs.

    Returns (original outputs, compressed outputs, feeds). The compressed model
    must load, run, produce the same output names and shapes, and finite values.
    """
    sa, sb = session(original), session(compressed)
    assert [o.name for o in sa.get_outputs()] == [o.name for o in sb.get_outputs()]
    feeds = feeds if feeds is not None else seeded_feeds(sa, seed)
    ya, yb = sa.run(None, feeds), sb.run(None, feeds)
    for a, b in zip(ya, yb, strict=True):
        assert a.shape == b.shape
        assert np.isfinite(b).all()
    return ya, yb, feeds


def assert_close_outputs(original, compressed, feeds=None, min_cosine=0.99):
    ya, yb, _ = run_both(original, compressed, feeds)
    for a, b in zip(ya, yb, strict=True):
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        cos = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30)
        assert cos >= min_cosine, f"cosine {cos:.5f} < {min_cosine}"
    return ya, yb


FLOAT = TensorProto.FLOAT


def embedding_model(path: Path, features: int = 4, dims: int = 3) -> Path:
    """x [N, features] -> MatMul -> embedding [N, dims]: a model with no class-score output."""
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["embedding"])],
        [("x", TensorProto.FLOAT, ["N", features])],
        [("embedding", TensorProto.FLOAT, ["N", dims])],
        [tensor("W", rand((features, dims)))],
    )
    onnx.save(model, path)
    return path
