"""Per-layer view: the error each compressed weight introduces in its own layer's output.

For each weight, its consuming node (a Conv, Gemm, MatMul...) is run alone in
onnxruntime on the original model's activations, once with the original weight and
once with the compressed one, so the error of that weight is not mixed with the
errors of the layers before it. The list is sorted worst first (lowest SQNR), which
names the layer that broke a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from prunequant_cli.evaluate import closeness, exposing_session, open_session
from prunequant_cli.inspection import _decode_in_onnxruntime, _find_encoded
from prunequant_cli.model_io import load_model
from prunequant_cli.report import LayerError
from prunequant_cli.selection import _uses_through_identity


def _weights_of(model: ir.Model) -> dict[str, np.ndarray]:
    """Every main-graph weight by name, decoded where it is stored encoded."""
    found: dict[str, np.ndarray] = {}
    for f in _find_encoded(model):
        if f.graph is model.graph and f.decoded.name:
            found[f.decoded.name] = _decode_in_onnxruntime(model, f)
    return found


def _initializer(model: ir.Model, name: str) -> np.ndarray | None:
    value = model.graph.initializers.get(name)
    return None if value is None or value.const_value is None else value.const_value.numpy()


def layer_errors(
    original: Path, compressed: Path, weights: list[str], feed: dict[str, np.ndarray], threads: int
) -> tuple[list[LayerError], list[str]]:
    """Per-layer errors for the named weights, worst first, and notes on those skipped."""
    a = load_model(original).model
    b = load_model(compressed).model
    decoded_b = _weights_of(b)
    notes: list[str] = []
    plans: list[tuple[str, ir.Node, int]] = []
    for name in weights:
        value = a.graph.initializers.get(name)
        uses = _uses_through_identity(value) if value is not None else "not a main-graph weight"
        if isinstance(uses, str) or not uses:
            notes.append(f"per-layer: {name} skipped ({uses or 'unused'})")
            continue
        use = uses[0]
        if use.node.graph is not a.graph:
            notes.append(f"per-layer: {name} skipped (its layer is inside a subgraph)")
            continue
        plans.append((name, use.node, use.idx))

    # One run of the original exposes every activation the layers read.
    activations = sorted(
        {
            i.name
            for _, node, idx in plans
            for k, i in enumerate(node.inputs)
            if i is not None and i.name and k != idx and i.name not in a.graph.initializers
        }
    )
    session, names = exposing_session(a, activations, threads)
    values = dict(zip(names, session.run(None, feed), strict=True))

    result = []
    for name, node, idx in plans:
        new = decoded_b.get(name)
        if new is None:
            new = _initializer(b, name)
        old = _initializer(a, name)
        if new is None or old is None or new.shape != old.shape:
            notes.append(f"per-layer: {name} skipped (not found with the same shape in both)")
            continue
        out_a = _run_node(a, node, idx, old, values, threads)
        out_b = _run_node(a, node, idx, new, values, threads)
        cosine, relative, sqnr = closeness(out_a, out_b)
        result.append(
            LayerError(
                name,
                node.name or "",
                node.op_type,
                node.outputs[0].name or "",
                cosine,
                relative,
                sqnr,
            )
        )
    result.sort(key=lambda e: (e.sqnr_db is None, e.sqnr_db if e.sqnr_db is not None else 0.0))
    return result, notes


def _run_node(
    model: ir.Model,
    node: ir.Node,
    idx: int,
    weight: np.ndarray,
    values: dict[str, Any],
    threads: int,
) -> np.ndarray:
    """Run ``node`` alone, with ``weight`` at input ``idx`` and the recorded activations."""
    proto = ir.serde.serialize_node(node)
    inits, inputs, feed = [], [], {}
    for k, value in enumerate(node.inputs):
        if value is None or not value.name:
            continue
        if k == idx:
            inits.append(onnx.numpy_helper.from_array(weight, proto.input[k]))
        elif (const := _initializer(model, value.name)) is not None:
            inits.append(onnx.numpy_helper.from_array(const, value.name))
        else:
            array = np.asarray(values[value.name])
            feed[value.name] = array
            inputs.append(
                helper.make_tensor_value_info(
                    value.name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)
                )
            )
    proto.ClearField("name")
    del proto.output[1:]  # only the layer's main output is compared
    graph = helper.make_graph(
        [proto], "layer", inputs, [helper.make_empty_tensor_value_info(proto.output[0])], inits
    )
    mini = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        ir_version=model.ir_version,
    )
    session = open_session(mini.SerializeToString(), threads, "per-layer")
    return np.asarray(session.run(None, feed)[0])
