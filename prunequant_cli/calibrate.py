"""Layer-input statistics for data-aware rounding, recorded from the original model.

For each weight that GPTQ can round (the weight input of a MatMul, a Gemm with
transA = 0, a 1-D/2-D Conv or ConvTranspose, or the W and R matrices of an LSTM/GRU/RNN, in
the main graph, used once), the layer's input is exposed
as an extra output of the original model and run on the calibration batches, in pieces
small enough that the exposed activations stay near ``evaluate.EXPOSED_BYTES``. Each piece
adds XᵀX to a float64 matrix H of the layer's K inputs (for a Conv, its im2col patches
of C/group × kernel values, one H per group), so memory is one K×K matrix per weight and
one piece of activations, never all activations; all kept statistics together stay under
MAX_STATS_BYTES (weights past it keep nearest rounding).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from prunequant_cli.selection import WeightSite

# Largest layer input width whose K×K statistics are kept (8192² float64 is 512 MiB), and
# the most bytes all kept statistics may take together.
MAX_INPUTS = 8192
MAX_STATS_BYTES = 1 << 30


@dataclass(frozen=True)
class Layer:
    """A weight's layer and what GPTQ needs to know of it."""

    weight: str
    node: ir.Node
    activation: str  # the layer's input
    inputs: int  # K: how many inputs each output row reads
    groups: int = 1  # Conv groups, or recurrent directions: one H each
    recurrent: str = ""  # "W" or "R" of an LSTM/GRU/RNN
    initial: str = ""  # a recurrent R's initial hidden state input (may be absent)

    @property
    def activations(self) -> tuple[str, ...]:
        return (self.activation, self.initial) if self.initial else (self.activation,)


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
    if op == "ConvTranspose" and idx == 1 and len(shape) in (3, 4):
        # W [C_in, C_out/group, kernel...]: each input channel's value at a position is
        # spread over C_out/group × kernel outputs, so a group's K is its input channels
        groups = node.attributes.get_int("group", 1)
        return Layer(site.name, node, x.name, shape[0] // groups, groups)
    if op in ("LSTM", "GRU", "RNN") and idx in (1, 2) and len(shape) == 3:
        return _recurrent(site, node, idx, shape)
    return f"{op} input {idx} is not rounded with data"


def _recurrent(site: WeightSite, node: ir.Node, idx: int, shape: tuple[int, ...]) -> Layer | str:
    """W reads the sequence X; R reads the previous hidden states, which are the node's
    output Y shifted by one step (the initial state first), per direction."""
    dirs, k = shape[0], shape[2]
    x = node.inputs[0]
    assert x is not None and x.name
    if idx == 1:
        return Layer(site.name, node, x.name, k, dirs, "W")
    y = node.outputs[0] if node.outputs else None
    if y is None or not y.name:
        return "its hidden states (output Y) are not computed"
    h0 = node.inputs[5] if len(node.inputs) > 5 else None
    initial = h0.name if h0 is not None and h0.name and h0.const_value is None else ""
    if h0 is not None and h0.name and h0.const_value is not None:
        return "its initial hidden state is a constant"
    return Layer(site.name, node, y.name, k, dirs, "R", initial)


def _dims(value: ir.Value) -> tuple[int, ...]:
    tensor = value.const_value
    return () if tensor is None else tuple(int(d) for d in tensor.shape.numpy())


def accumulate(
    layer: Layer,
    piece: Mapping[str, np.ndarray],
    h: list[np.ndarray],
    weight_shape: tuple[int, ...],
) -> int:
    """Add this piece's XᵀX to ``h`` (one matrix per group); returns the rows added."""
    x = np.asarray(piece[layer.activation])
    if layer.recurrent:
        return _accumulate_recurrent(layer, x, piece.get(layer.initial), h)
    if layer.node.op_type == "ConvTranspose":  # [N, C, spatial...] -> per group [N·S, C/g]
        flat = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        per_group = x.shape[1] // layer.groups
        for g in range(layer.groups):
            part = flat[:, g * per_group : (g + 1) * per_group].astype(np.float64)
            h[g] += part.T @ part
        return flat.shape[0]
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


def _accumulate_recurrent(
    layer: Layer, x: np.ndarray, initial: np.ndarray | None, h: list[np.ndarray]
) -> int:
    """W: every step's input, for each direction. R: each direction's previous hidden
    states: Y [seq, dirs, batch, hidden] shifted by one step toward the direction's start,
    the initial state (zeros when not given) in the first step."""
    batch_first = bool(layer.node.attributes.get_int("layout", 0))
    if layer.recurrent == "W":
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        xtx = flat.T @ flat
        for g in range(len(h)):
            h[g] += xtx
        return flat.shape[0]
    y = np.moveaxis(x, 0, 1) if batch_first else x  # -> [seq, batch, dirs, hidden]
    if not batch_first:
        y = np.moveaxis(y, 1, 2)  # [seq, dirs, batch, hidden] -> [seq, batch, dirs, hidden]
    steps, batch, dirs, hidden = y.shape
    if initial is None:
        h0 = np.zeros((batch, dirs, hidden))
    else:
        h0 = np.asarray(initial)  # [dirs, batch, hidden], or [batch, dirs, hidden]
        h0 = h0 if batch_first else np.moveaxis(h0, 0, 1)
    direction = layer.node.attributes.get_string("direction", "forward")
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        states = y[:, :, d].astype(np.float64)
        first = h0[None, :, d].astype(np.float64)
        prev = (
            np.concatenate([states[1:], first]) if reverse else np.concatenate([first, states[:-1]])
        )
        flat = prev.reshape(-1, hidden)
        h[d] += flat.T @ flat
    return steps * batch


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


class LayerStatistics:
    """Recorder of H = Σ XᵀX per group for every weight GPTQ can round (see
    evaluate.record), and why the others cannot.

    The statistics of all weights together stay within ``budget`` bytes; when they would
    not, the weights with the most weight bytes per statistics byte are kept (GPTQ pays
    off by the bytes it lets go to fewer bits, and costs K² of memory).
    """

    def __init__(
        self, model: ir.Model, sites: Sequence[WeightSite], budget: int = MAX_STATS_BYTES
    ) -> None:
        found_layers: list[tuple[WeightSite, Layer]] = []
        self.skipped: dict[str, str] = {}
        for site in sites:
            found = layer_of(site, model.graph)
            if isinstance(found, str):
                self.skipped[site.name] = found
            elif found.inputs > MAX_INPUTS:
                self.skipped[site.name] = f"{found.inputs} inputs per row: statistics too large"
            else:
                found_layers.append((site, found))

        def cost(layer: Layer) -> int:
            return 8 * layer.inputs**2 * layer.groups

        def worth(item: tuple[WeightSite, Layer]) -> tuple[float, str]:
            site, layer = item
            return (-int(np.prod(_dims(site.value))) / cost(layer), site.name)

        self._layers: dict[str, Layer] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        total = 0
        for site, layer in sorted(found_layers, key=worth):
            if total + cost(layer) > budget:
                self.skipped[site.name] = "the statistics of other weights fill the memory budget"
                continue
            total += cost(layer)
            self._layers[site.name], self._shapes[site.name] = layer, _dims(site.value)
        self.stats = {
            n: [np.zeros((layer.inputs, layer.inputs)) for _ in range(layer.groups)]
            for n, layer in self._layers.items()
        }
        self.names = sorted({a for layer in self._layers.values() for a in layer.activations})

    def add(self, piece: Mapping[str, np.ndarray]) -> None:
        for n, layer in self._layers.items():
            accumulate(layer, piece, self.stats[n], self._shapes[n])
