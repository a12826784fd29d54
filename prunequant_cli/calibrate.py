"""Layer-input statistics for data-aware rounding, recorded from the original model.

For each weight that GPTQ can round (the weight input of a MatMul, a Gemm with
transA = 0, or a 1-D/2-D Conv in the main graph, used once), the layer's input is exposed
as an extra output of the original model and run on the calibration batches, in pieces
small enough that the exposed activations stay near ``evaluate.EXPOSED_BYTES``. Each piece
adds XᵀX to a float64 matrix H of the layer's K inputs (for a Conv, its im2col patches
of C/group × kernel values, one H per group), so memory is one K×K matrix per weight and
one piece of activations, never all activations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from prunequant_cli.selection import WeightSite

# Largest layer input width whose K×K statistics are kept (8192² float64 is 512 MiB).
MAX_INPUTS = 8192


@dataclass(frozen=True)
class Layer:
    """A weight's layer and what GPTQ needs to know of it."""

    weight: str
    node: ir.Node
    activation: str  # the layer's input
    inputs: int  # K: how many inputs each output row reads
    groups: int = 1


def layer_of(site: WeightSite, main: ir.Graph) -> Layer | str:
    """The layer whose input statistics round ``site`` (or why there is none)."""
    value = site.value
    uses = list(value.uses())
    if len(uses) != 1:
        return "used by several nodes"
    node, idx = uses[0].node, uses[0].idx
    if site.graph is not main or node.graph is not main:
        return "inside a subgraph"
    op = node.op_type
    x = node.inputs[0]
    if x is None or not x.name or x.const_value is not None:
        return "its layer's input is a constant"
    shape = _dims(value)
    k = int(np.prod(shape)) // shape[site.axis] if shape else 0
    if op == "MatMul" and idx == 1 and len(shape) == 2:
        return Layer(site.name, node, x.name, k)
    if op == "Gemm" and idx == 1 and not node.attributes.get_int("transA", 0):
        return Layer(site.name, node, x.name, k)
    if op == "Conv" and idx == 1 and len(shape) in (3, 4):
        return Layer(site.name, node, x.name, k, node.attributes.get_int("group", 1))
    return f"{op} input {idx} is not rounded with data"


def _dims(value: ir.Value) -> tuple[int, ...]:
    tensor = value.const_value
    return () if tensor is None else tuple(int(d) for d in tensor.shape.numpy())


def accumulate(
    layer: Layer, x: np.ndarray, h: list[np.ndarray], weight_shape: tuple[int, ...]
) -> int:
    """Add this piece's XᵀX to ``h`` (one matrix per group); returns the rows added."""
    x = np.asarray(x)
    if layer.node.op_type != "Conv":
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        h[0] += flat.T @ flat
        return flat.shape[0]
    rows = 0
    for cols in _patches(layer.node, x, weight_shape, layer.groups):
        for g, part in enumerate(cols):
            h[g] += part.T @ part
        rows += cols[0].shape[0]
    return rows


def _patches(
    node: ir.Node, x: np.ndarray, weight_shape: tuple[int, ...], groups: int
) -> Iterator[list[np.ndarray]]:
    """Per sample, the im2col rows of each group: [positions, C/group × kernel]."""
    one_d = len(weight_shape) == 3
    kernel = (1, weight_shape[2]) if one_d else (weight_shape[2], weight_shape[3])
    if one_d:
        x = x[:, :, None, :]
    strides = _pair(node, "strides", 1, one_d)
    dilations = _pair(node, "dilations", 1, one_d)
    pads = _pads(node, x.shape[2:], kernel, strides, dilations, one_d)
    per_group = weight_shape[1]
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dilations, kernel, strict=True))
    for sample in x:
        padded = np.pad(sample, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        win = sliding_window_view(padded, extent, axis=(1, 2))
        win = win[:, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
        # [C, Ho, Wo, kh, kw] -> per group [Ho·Wo, C/group·kh·kw]
        out = []
        for g in range(groups):
            part = win[g * per_group : (g + 1) * per_group]
            part = np.ascontiguousarray(part.transpose(1, 2, 0, 3, 4), dtype=np.float64)
            out.append(part.reshape(-1, per_group * kernel[0] * kernel[1]))
        yield out


def _pair(node: ir.Node, name: str, default: int, one_d: bool) -> tuple[int, int]:
    attr = node.attributes.get(name)
    values = [default, default] if attr is None else [int(v) for v in attr.value]
    return (1, values[0]) if one_d else (values[0], values[1])


def _pads(
    node: ir.Node,
    size: tuple[int, ...],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    one_d: bool,
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding, from ``pads`` or ``auto_pad``."""
    auto = node.attributes.get("auto_pad")
    mode = "NOTSET" if auto is None else str(auto.value)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for n, k, s, d in zip(size, kernel, strides, dilations, strict=True):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            small, big = total // 2, total - total // 2
            out.append((big, small) if mode == "SAME_LOWER" else (small, big))
        return out[0][0], out[1][0], out[0][1], out[1][1]
    attr = node.attributes.get("pads")
    if mode == "VALID" or attr is None:
        return 0, 0, 0, 0
    p = [int(v) for v in attr.value]
    return (0, p[0], 0, p[1]) if one_d else (p[0], p[1], p[2], p[3])


def layer_statistics(
    model: ir.Model,
    sites: Sequence[WeightSite],
    batches: list[dict[str, np.ndarray]],
    threads: int,
    axes: Mapping[str, int | None],
) -> tuple[dict[str, list[np.ndarray]], dict[str, str]]:
    """H = Σ XᵀX per group for every weight GPTQ can round, and why the others cannot."""
    from prunequant_cli.evaluate import exposed_activations

    layers: dict[str, Layer] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    skipped: dict[str, str] = {}
    for site in sites:
        found = layer_of(site, model.graph)
        if isinstance(found, str):
            skipped[site.name] = found
            continue
        if found.inputs > MAX_INPUTS:
            skipped[site.name] = f"{found.inputs} inputs per row: statistics too large"
            continue
        layers[site.name], shapes[site.name] = found, _dims(site.value)
    stats = {
        n: [np.zeros((layer.inputs, layer.inputs)) for _ in range(layer.groups)]
        for n, layer in layers.items()
    }
    names = sorted({layer.activation for layer in layers.values()})
    if not names:
        return {}, skipped
    for piece in exposed_activations(model, names, batches, threads, axes):
        for n, layer in layers.items():
            accumulate(layer, piece[layer.activation], stats[n], shapes[n])
    return stats, skipped
