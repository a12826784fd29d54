"""The prune and quantize passes: thin onnx_ir passes over the selected weights.

Both passes work on one weight at a time. The prune pass does not keep a pruned
copy of each weight: it replaces the weight by a lazy tensor that applies the
pruning rule to the original when read, so the quantize pass (or the writer)
materialises one pruned weight at a time and memory follows the largest tensor.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from prunequant_cli import encodings, pruning, quantization, rounding
from prunequant_cli.arrays import row_blocks, zero_count
from prunequant_cli.bias import Correctable, bias_shift
from prunequant_cli.config import CompressConfig
from prunequant_cli.encodings import Payload
from prunequant_cli.progress import NO_PROGRESS, Progress
from prunequant_cli.report import TensorRecord
from prunequant_cli.selection import FLOAT_TYPES, WeightSite, classify, dims


class ReleaseInitializerInputsPass(ir.passes.InPlacePass):
    """Unlist initializers from the graph inputs of an IR < 4 model, and raise its IR to 4.

    IR versions below 4 require every initializer to be listed as a graph input,
    which would make every weight look overridable at run time. Nobody feeds
    them: the listing was a format rule, not an intent. IR 4 dropped the rule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.released = 0
        self.old_ir_version = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.old_ir_version = model.ir_version
        if model.ir_version >= 4:
            return ir.passes.PassResult(model, modified=False)
        graph = model.graph
        keep = [v for v in graph.inputs if v.name not in graph.initializers]
        self.released = len(graph.inputs) - len(keep)
        graph.inputs[:] = keep
        model.ir_version = 4
        return ir.passes.PassResult(model, modified=True)


def _standard_nodes(model: ir.Model, op_type: str) -> list[tuple[ir.Graph, ir.Node]]:
    """(graph, node) for every standard-domain ``op_type`` node of every graph, listed
    before any is changed (the passes below remove and insert nodes)."""
    return [
        (graph, node)
        for graph in list(model.graphs())
        for node in list(graph)
        if node.op_type == op_type and node.domain in ("", "ai.onnx")
    ]


class LiftWeightConstantsPass(ir.passes.InPlacePass):
    """Constant nodes that hold weights become initializers, so they can be compressed.

    Some exporters write weights as Constant nodes (also inside If branches); a
    Constant is lifted only when its every use is a weight slot.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lifted: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for graph, node in _standard_nodes(model, "Constant"):
            attr = node.attributes.get("value")
            if attr is None or len(node.attributes) != 1 or not node.outputs[0].name:
                continue
            tensor = attr.as_tensor()
            out = node.outputs[0]
            if isinstance(classify(out, tensor), str):
                continue
            lifted = ir.Value(
                name=out.name,
                shape=ir.Shape(dims(tensor)),
                type=ir.TensorType(tensor.dtype),
                const_value=tensor,
            )
            out.replace_all_uses_with(lifted)
            graph.remove(node, safe=True)
            graph.register_initializer(lifted)
            self.lifted.append(out.name or "")
        return ir.passes.PassResult(model, modified=bool(self.lifted))


class UncarryLoopConstantsPass(ir.passes.InPlacePass):
    """Constants a Loop carries unchanged through its iterations are read from outside.

    Some exporters pass a recurrent decoder's weights into a Loop as loop-carried state that
    the body returns as it came (the table model of the real-model kit: 8 such slots, 2.2 MB
    of its weights). As state they are values of each iteration, not constants, so they
    cannot be compressed. When a slot's initial value is a constant, the body returns the
    slot's input unchanged (directly or through Identity) and nothing reads the Loop's final
    value of it, the body reads the constant from the outer scope instead and the slot is
    dropped: the same computation, with the weight where compression can reach it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.uncarried: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for graph, node in _standard_nodes(model, "Loop"):
            self._uncarry(graph, node)
        return ir.passes.PassResult(model, modified=bool(self.uncarried))

    def _uncarry(self, graph: ir.Graph, node: ir.Node) -> None:
        attr = node.attributes.get("body")
        if attr is None or len(node.inputs) < 3:
            return
        body = attr.as_graph()
        carried = len(node.inputs) - 2
        if len(body.inputs) != carried + 2 or len(body.outputs) < carried + 1:
            return
        drop = [k for k in range(carried) if self._constant_slot(node, body, k)]
        if not drop:
            return
        passes = []  # the Identity nodes that returned a slot unchanged
        for k in reversed(drop):
            slot_in, slot_out = body.inputs.pop(2 + k), body.outputs.pop(1 + k)
            if slot_out is not slot_in:
                passes.append(slot_out.producer())
            slot_in.replace_all_uses_with(node.inputs[2 + k])  # type: ignore[arg-type]
        for through in passes:
            body.remove(through, safe=True)  # type: ignore[arg-type]
        kept = [k for k in range(len(node.outputs)) if k not in drop]
        inputs = [node.inputs[0], node.inputs[1]]
        inputs += [node.inputs[2 + k] for k in range(carried) if k not in drop]
        replacement = ir.Node(
            node.domain, "Loop", inputs, [attr], num_outputs=len(kept), name=node.name
        )
        for new, k in zip(replacement.outputs, kept, strict=True):
            old = node.outputs[k]
            new.type, new.shape = old.type, old.shape
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            name, old.name = old.name, None
            new.name = name
        for k in drop:
            self.uncarried.append(node.inputs[2 + k].name or "")  # type: ignore[union-attr]
        graph.insert_before(node, replacement)
        graph.remove(node, safe=True)

    @staticmethod
    def _constant_slot(node: ir.Node, body: ir.Graph, k: int) -> bool:
        """Whether loop-carried slot ``k`` holds a float constant the body never changes."""
        init, final = node.inputs[2 + k], node.outputs[k]
        if init is None or final.uses() or final.is_graph_output():
            return False
        producer = init.producer()
        constant = init.const_value is not None or (
            producer is not None
            and producer.op_type == "Constant"
            and producer.domain in ("", "ai.onnx")
            and "value" in producer.attributes
        )
        tensor = (
            init.const_value
            if init.const_value is not None
            else producer.attributes["value"].as_tensor()  # type: ignore[union-attr]
            if constant
            else None
        )
        if tensor is None or tensor.dtype not in FLOAT_TYPES or init.is_graph_input():
            return False
        slot_in, slot_out = body.inputs[2 + k], body.outputs[1 + k]
        if slot_out is slot_in:
            return slot_in not in body.outputs[: 1 + k] and body.outputs.count(slot_in) == 1
        through = slot_out.producer()
        return (
            through is not None
            and through.op_type == "Identity"
            and through.inputs[0] is slot_in
            and not slot_out.uses()
            and body.outputs.count(slot_out) == 1
        )


class FoldWeightTransposesPass(ir.passes.InPlacePass):
    """A Transpose whose input is a float constant that nothing else reads becomes the
    transposed constant (what onnxruntime folds at load anyway), so that a weight stored
    transposed (a recurrent decoder's, read through a Transpose in a Loop body) is a weight
    compression can reach. The constant lives where the original did; the Transpose's
    readers, in whatever graph, read it."""

    def __init__(self) -> None:
        super().__init__()
        self.folded: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for graph, node in _standard_nodes(model, "Transpose"):
            self._fold(graph, node)
        return ir.passes.PassResult(model, modified=bool(self.folded))

    def _fold(self, graph: ir.Graph, node: ir.Node) -> None:
        source = node.inputs[0] if node.inputs else None
        out = node.outputs[0]
        if source is None or not out.name or out.is_graph_output() or len(source.uses()) != 1:
            return
        found = _constant(source)
        if found is None:
            return
        tensor, producer = found
        home = source.graph if producer is None else producer.graph
        if not isinstance(home, ir.Graph):
            return
        array = tensor.numpy()
        perm_attr = node.attributes.get("perm")
        perm = list(perm_attr.as_ints()) if perm_attr is not None else None
        folded = ir.Value(
            name=out.name,
            shape=ir.Shape(np.transpose(array, perm).shape),
            type=ir.TensorType(tensor.dtype),
            const_value=ir.Tensor(np.ascontiguousarray(np.transpose(array, perm)), name=out.name),
        )
        out.replace_all_uses_with(folded)
        graph.remove(node, safe=True)
        _drop_if_unused(source, producer)
        home.register_initializer(folded)
        self.folded.append(out.name)


def _constant(value: ir.Value | None) -> tuple[ir.TensorProtocol, ir.Node | None] | None:
    """(tensor, the Constant node that makes it or None for an initializer) of a float
    constant ``value`` that no one can override at run time; else None."""
    if value is None or value.is_graph_input() or value.is_graph_output():
        return None
    producer = value.producer()
    if producer is None:
        tensor = value.const_value
        node = None
    elif (
        producer.op_type == "Constant"
        and producer.domain in ("", "ai.onnx")
        and set(producer.attributes) == {"value"}
    ):
        tensor, node = producer.attributes["value"].as_tensor(), producer
    else:
        return None
    if tensor is None or tensor.dtype not in FLOAT_TYPES:
        return None
    return tensor, node


def _drop_if_unused(value: ir.Value, node: ir.Node | None) -> None:
    """Remove a constant nothing reads any more (its Constant node, or its initializer)."""
    if value.uses() or value.is_graph_output():
        return
    if node is not None:
        if node.graph is not None:  # not removed already (a value read twice)
            node.graph.remove(node, safe=True)
    elif value.graph is not None and value.name in value.graph.initializers:
        value.graph.initializers.pop(value.name)  # type: ignore[arg-type]


class FoldBatchNormPass(ir.passes.InPlacePass):
    """A BatchNormalization right after a Conv becomes part of the Conv's weight and bias.

    At inference a BatchNormalization is a per-channel scale s = γ/√(var+ε) and shift, so
    Conv(x, W, b) followed by it is Conv(x, W·s, (b − mean)·s + β): the same computation
    (onnxruntime fuses it so at load), with four vectors per channel fewer to store. In
    MobileNet-style models (the OCR models of the real-model kit) those vectors weigh as
    much as the 4-bit weights they follow. Per-channel codes are unchanged by the fold (a
    scale per output channel is absorbed by that channel's code scale); the importance
    of a channel is then measured on the weight that really acts.

    Folded only when the Conv's output feeds nothing else, its weight (and bias) is a
    constant read by this Conv alone and not excluded (``exclude``: name globs), the
    statistics are constants of one value per output channel, the BatchNormalization runs
    in inference mode (before opset 14, one with more than one output runs in training
    mode), and the folded values are finite.
    """

    def __init__(self, exclude: Sequence[str] = ()) -> None:
        super().__init__()
        self.exclude = tuple(exclude)
        self.folded: list[str] = []  # the Conv weights that took a BatchNormalization in
        self.saved_bytes = 0  # the float bytes of statistics no longer stored
        self.removed_parameters = 0  # float entries gone (statistics) less those added (biases)
        self.removed_nonzeros = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = encodings.NameAuthority(model)
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        for graph, node in _standard_nodes(model, "BatchNormalization"):
            self._fold(graph, node, names, node.version or opset)
        return ir.passes.PassResult(model, modified=bool(self.folded))

    def _fold(
        self, graph: ir.Graph, bn: ir.Node, names: encodings.NameAuthority, opset: int
    ) -> None:
        if len(bn.inputs) != 5 or any(v is None for v in bn.inputs):
            return
        if bn.attributes.get_int("training_mode", 0) or not bn.attributes.get_int("spatial", 1):
            return
        if opset < 7 and not bn.attributes.get_int("is_test", 0):
            return
        if opset < 14 and any(o.name for o in bn.outputs[1:]):
            return  # the statistics outputs make it a training-mode BatchNormalization
        if any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
            return
        x, out = bn.inputs[0], bn.outputs[0]
        conv = x.producer()  # type: ignore[union-attr]
        if (
            conv is None
            or conv.op_type != "Conv"
            or conv.domain not in ("", "ai.onnx")
            or conv.graph is not graph
            or len(x.uses()) != 1  # type: ignore[union-attr]
            or x.is_graph_output()  # type: ignore[union-attr]
            or len(conv.inputs) < 2
        ):
            return
        weight = conv.inputs[1]
        found = _constant(weight)
        if weight is None or found is None or found[1] is not None or len(weight.uses()) != 1:
            return
        if any(fnmatch.fnmatchcase(weight.name or "", p) for p in self.exclude):
            return
        w = found[0].numpy()
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        old_bias = _constant(bias) if bias is not None else None
        if bias is not None and (old_bias is None or len(bias.uses()) != 1):
            return
        stats = [_constant(v) for v in bn.inputs[1:]]
        if any(s is None for s in stats) or w.ndim < 3:
            return
        channels = w.shape[0]
        params = [s[0].numpy().astype(np.float64) for s in stats]  # type: ignore[index]
        if any(p.shape != (channels,) for p in params):
            return
        gamma, beta, mean, var = params
        scale = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
        b = np.zeros(channels) if old_bias is None else old_bias[0].numpy().astype(np.float64)
        if b.shape != (channels,) or not np.isfinite(scale).all():
            return
        folded_w = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        folded_b = ((b - mean) * scale + beta).astype(w.dtype)
        if not (np.isfinite(folded_w).all() and np.isfinite(folded_b).all()):
            return  # e.g. float16 weights that the scale would overflow
        weight.const_value = ir.Tensor(folded_w, name=weight.name)
        if bias is not None and old_bias is not None and old_bias[1] is None:
            bias.const_value = ir.Tensor(folded_b, name=bias.name)
        else:
            name = names.fresh(f"{weight.name}_bias")
            new_bias = ir.Value(
                name=name,
                shape=ir.Shape([channels]),
                type=ir.TensorType(found[0].dtype),
                const_value=ir.Tensor(folded_b, name=name),
            )
            graph.register_initializer(new_bias)
            if bias is not None:
                conv.replace_input_with(2, new_bias)
                _drop_if_unused(bias, old_bias[1] if old_bias else None)
            else:
                conv.resize_inputs(3)
                conv.replace_input_with(2, new_bias)
        # The Conv's output takes the BatchNormalization's place, and its name.
        held = list(bn.inputs[1:])
        if out.type is not None:  # the same tensor: a graph output must keep its type
            x.type = out.type  # type: ignore[union-attr]
            x.shape = out.shape or x.shape  # type: ignore[union-attr]
        out.replace_all_uses_with(x, replace_graph_outputs=True)  # type: ignore[arg-type]
        graph.remove(bn, safe=True)
        out_name, out.name = out.name, None
        x.name = out_name  # type: ignore[union-attr]
        seen: set[int] = set()
        for value, (tensor, node) in zip(held, stats, strict=True):  # type: ignore[misc]
            if id(value) in seen:
                continue  # one value read twice (as both mean and bias, say)
            seen.add(id(value))
            if not value.uses() and not value.is_graph_output():  # type: ignore[union-attr]
                self.saved_bytes += int(tensor.nbytes)
                if node is None:  # an initializer: counted among the model's parameters
                    array = tensor.numpy()
                    self.removed_parameters += int(array.size)
                    self.removed_nonzeros += int(np.count_nonzero(array))
            _drop_if_unused(value, node)  # type: ignore[arg-type]
        if old_bias is None:  # a bias where there was none
            self.saved_bytes -= int(folded_b.nbytes)
        if old_bias is None or old_bias[1] is not None:  # a new bias initializer
            self.removed_parameters -= int(folded_b.size)
            self.removed_nonzeros -= int(np.count_nonzero(folded_b))
        self.folded.append(weight.name or "")


class _WeightPass(ir.passes.InPlacePass):
    """A pass over the selected weights, filling in their records."""

    def __init__(
        self,
        sites: Sequence[WeightSite],
        config: CompressConfig,
        records: dict[str, TensorRecord],
        progress: Progress = NO_PROGRESS,
    ) -> None:
        super().__init__()
        self.sites = sites
        self.config = config
        self.records = records
        self.progress = progress


class PrunePass(_WeightPass):
    """Zero rows by importance share (``threshold``) or weights by magnitude (``sparsity``)."""

    @staticmethod
    def _rule(
        w: np.ndarray, site: WeightSite, config: CompressConfig
    ) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        """The pruning function for this weight, and how many rows it zeroes."""
        if config.n_m is not None:
            n, m = config.n_m
            conv = any(op in ("Conv", "ConvTranspose") for op in site.op_types)
            axis = pruning.input_axis(w.ndim, site.axis, conv)
            return (lambda a: pruning.apply_zero_mask(a, pruning.n_m_mask(a, n, m, axis))), 0
        if config.threshold is not None:
            rows = pruning.rows_below_threshold(w, site.axis, config.threshold)
            mask = pruning.row_mask_broadcast(rows, w.ndim, site.axis)
            return (lambda a: pruning.apply_zero_mask(a, mask)), int(rows.sum())
        assert config.sparsity is not None
        cut = pruning.magnitude_cut(w, config.sparsity)
        return (lambda a: pruning.apply_zero_mask(a, cut.mask(a))), 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        todo = [s for s in self.sites if self.config.for_tensor(s.name).prune_method is not None]
        if not todo:
            return ir.passes.PassResult(model, modified=False)
        modified = False
        self.progress.stage("pruning", len(todo))
        for site in todo:
            self.progress.advance()
            config = self.config.for_tensor(site.name)
            source = site.value.const_value
            assert source is not None
            record = self.records[site.name]
            w = source.numpy()
            if not np.isfinite(w).all():
                record.note = "non-finite values: not pruned"
                continue
            rule, rows_zeroed = self._rule(w, site, config)
            record.rows_pruned = rows_zeroed
            record.prune_method = config.prune_method
            if config.threshold is not None and config.n_m is None and not rows_zeroed:
                zeros = record.zeros_before  # no row below the threshold: nothing changes
            else:
                zeros = zero_count(rule(w))
            record.zeros_after_prune = record.zeros_after = zeros
            if zeros == record.zeros_before:
                continue  # nothing new became zero: keep the original bytes
            del w

            def materialize(
                source: ir.TensorProtocol = source, rule: Callable = rule, name: str = site.name
            ) -> ir.Tensor:
                return ir.Tensor(rule(source.numpy()), name=name)

            pruned_tensor = ir.LazyTensor(
                materialize, dtype=source.dtype, shape=ir.Shape(dims(source)), name=site.name
            )
            pruned_tensor.meta["original"] = source  # so later errors count the pruning too
            site.value.const_value = pruned_tensor
            modified = True
        return ir.passes.PassResult(model, modified=modified)


HALF_SCALE_MIN_CHANNELS = 32
# At this many bits or fewer, scales are searched to minimise the weights' squared
# error (clipping a few outliers) instead of taken from min/max.
MSE_SCALE_MAX_BITS = 4
# MatMul weights kept quantized at <= 4 bits get a scale per block of this many input
# rows: the layout onnxruntime's MatMulNBits kernel runs without unpacking.
DQ_BLOCK = 32


def make_payload(
    w: np.ndarray,
    site: WeightSite,
    config: CompressConfig,
    pruned: bool,
    opset: int = 0,
    stats: Sequence[np.ndarray] | None = None,
) -> Payload:
    """Quantize one weight: uniform codes and scales, a codebook, or float16 values.

    With ``config.rounding == "gptq"`` and the layer's input statistics ``stats`` (one
    H = XᵀX per group, see calibrate.py), uniform and asymmetric codes are chosen by
    GPTQ with the same scales and zero points; otherwise each code is the nearest.
    """
    dtype = site.value.const_value.dtype  # type: ignore[union-attr]
    bits = config.bits or 8
    p = Payload(site.name, tuple(int(d) for d in w.shape), dtype, site.axis, bits)
    blocked = (
        config.keep_quantized
        and bits <= 4
        and opset >= 21
        and site.op_types == ("MatMul",)
        and w.ndim == 2
        and w.shape[0] % DQ_BLOCK == 0
        and dtype == ir.DataType.FLOAT
    )
    block_axis = 1 - site.axis if w.ndim == 2 else None  # the input side of a 2-D weight
    if (
        config.block_size
        and block_axis is not None
        and w.shape[block_axis] % config.block_size == 0
        and w.shape[block_axis] > config.block_size
    ):
        p.block_size, p.block_axis = config.block_size, block_axis
        scale = _stored_scale(quantization.per_block_scale(w, config.block_size, bits, block_axis))
        p.scale = scale
        full = np.repeat(scale.astype(w.dtype), config.block_size, axis=block_axis)
        p.codes = quantization.quantize(w, full, bits)
    elif blocked:
        p.block_size = DQ_BLOCK
        p.scale = quantization.per_block_scale(w, DQ_BLOCK, bits)
        p.codes = quantization.quantize(w, np.repeat(p.scale, DQ_BLOCK, axis=0), bits)
    elif bits == 16:
        p.half = w.astype(np.float16)
    elif config.quant == "codebook":
        p.codebook, p.indices = quantization.kmeans_codebook(w, 1 << bits, keep_zero=pruned)
    elif config.quant == "asymmetric":
        p.scale = _stored_scale(quantization.asymmetric_scale(w, site.axis, bits))
        p.zero_point = quantization.zero_point(w, site.axis, p.scale, bits)
        p.codes = quantization.quantize(w, p.scale.astype(w.dtype), bits, p.zero_point)
    else:
        if bits <= MSE_SCALE_MAX_BITS:
            scale = quantization.mse_scale(w, site.axis, bits)
        else:
            scale = quantization.per_channel_scale(w, site.axis, bits)
        p.scale = _stored_scale(scale)
        p.codes = quantization.quantize(w, p.scale.astype(w.dtype), bits)
    if config.rounding == "gptq" and stats and p.codes is not None and p.scale is not None:
        p.codes = _gptq_codes(w, site, p, stats, bits, pruned)
        p.rounding = "gptq"
    return p


def _gptq_codes(
    w: np.ndarray,
    site: WeightSite,
    p: Payload,
    stats: Sequence[np.ndarray],
    bits: int,
    pruned: bool,
) -> np.ndarray:
    """The payload's codes re-chosen by GPTQ, with the same scales and zero points.

    The weight is seen as matrices [output rows, inputs]: Conv kernels flattened as im2col
    reads them, one row group per Conv group; a recurrent W or R [directions, gates, inputs]
    as one matrix per direction. ``stats`` holds one H per group or direction.
    """
    assert p.scale is not None
    scale = p.scale.astype(np.float64)
    if p.block_size:
        scale = np.repeat(scale, p.block_size, axis=p.block_axis)
    scale = np.broadcast_to(scale, w.shape)
    zero = None if p.zero_point is None else np.broadcast_to(p.zero_point, w.shape)
    m = quantization.qmax(bits)
    lo = -m if zero is None else -m - 1
    out = np.empty(w.shape, dtype=np.int64)
    for where, h, to_matrix, back in _gptq_views(w, site, len(stats)):
        part = w[where]
        chosen = _gptq_matrix(
            to_matrix(part),
            to_matrix(scale[where]),
            None if zero is None else to_matrix(zero[where]),
            stats[h],
            lo,
            m,
            pruned,
        )
        out[where] = back(chosen, part.shape)
    return out.astype(np.int8)


Matrix = Callable[[np.ndarray], np.ndarray]
Unmatrix = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def _gptq_views(
    w: np.ndarray, site: WeightSite, count: int
) -> list[tuple[tuple[Any, ...], int, Matrix, Unmatrix]]:
    """How GPTQ sees ``w``: per statistics matrix h, the part of ``w`` it rounds, and how that
    part becomes a matrix [output rows, inputs] and back."""
    if set(site.op_types) & {"LSTM", "GRU", "RNN"}:  # [directions, gates, inputs]
        same: Matrix = np.asarray
        return [((d,), d, same, lambda c, shape: c) for d in range(count)]
    if site.op_types == ("ConvTranspose",):
        # [C_in, C_out/group, kernel...]: per group, a matrix [C_out/group · kernel, C_in/group]
        # (the outputs each input channel writes before they are summed into place)
        per_group = w.shape[0] // count

        def spread(a: np.ndarray) -> np.ndarray:
            return a.reshape(a.shape[0], -1).T

        def unspread(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
            return c.T.reshape(shape)

        return [
            ((slice(g * per_group, (g + 1) * per_group),), g, spread, unspread)
            for g in range(count)
        ]
    # MatMul/Gemm, and Conv kernels as im2col reads them: one row group per Conv group
    axis = site.axis % w.ndim
    per_group = w.shape[axis] // count

    def rows(a: np.ndarray) -> np.ndarray:
        return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)

    def unrows(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        moved = (shape[axis], *(d for i, d in enumerate(shape) if i != axis))
        return np.moveaxis(c.reshape(moved), 0, axis)

    lead = (slice(None),) * axis
    return [
        ((*lead, slice(g * per_group, (g + 1) * per_group)), g, rows, unrows) for g in range(count)
    ]


def _gptq_matrix(
    w: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray | None,
    h: np.ndarray,
    lo: int,
    hi: int,
    pruned: bool,
) -> np.ndarray:
    """GPTQ codes of one weight matrix [rows, inputs] with its scales (and zero points)."""
    quantizer = rounding.ColumnQuantizer(scale, zero, lo, hi)
    return rounding.gptq(w, h, quantizer, (w != 0) if pruned else None)


def _stored_scale(scale: np.ndarray) -> np.ndarray:
    """The scales as they are stored: float16 (rounded up so nothing clips) when there are
    enough of them. That moves the step by < 0.05% and halves the scale bytes; below
    HALF_SCALE_MIN_CHANNELS scales its Cast node costs more than it saves."""
    if scale.size < HALF_SCALE_MIN_CHANNELS or scale.dtype == np.float16:
        return scale
    return quantization.half_scale(scale)


class QuantizePass(_WeightPass):
    """Quantize each weight and write it with the smallest encoding the model's opset allows."""

    def __init__(
        self,
        sites: Sequence[WeightSite],
        config: CompressConfig,
        records: dict[str, TensorRecord],
        progress: Progress = NO_PROGRESS,
        corrections: Mapping[str, tuple[Correctable, np.ndarray]] | None = None,
        stats: Mapping[str, Sequence[np.ndarray]] | None = None,
    ) -> None:
        """``stats``: each GPTQ-rounded weight's layer-input statistics (calibrate.py)."""
        super().__init__(sites, config, records, progress)
        self.corrections = corrections or {}
        self.stats = stats or {}

    def candidates(self) -> tuple[encodings.Encoding, ...]:
        if self.config.keep_quantized:
            return encodings.KEEP_QUANTIZED
        return encodings.FORMATS[self.config.format]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        shared = encodings.SharedConstants(encodings.NameAuthority(model), opset)
        candidates = self.candidates()
        modified = False
        self.progress.stage("quantizing", len(self.sites))
        for site in self.sites:
            self.progress.advance()
            config = self.config.for_tensor(site.name)
            tensor = site.value.const_value
            assert tensor is not None
            if config.bits is None:
                modified |= self._store_float(site, tensor, opset, shared)
            else:
                modified |= self._quantize(site, tensor, config, candidates, opset, shared)
        return ir.passes.PassResult(model, modified=modified)

    def _quantize(
        self,
        site: WeightSite,
        tensor: ir.TensorProtocol,
        config: CompressConfig,
        candidates: tuple[encodings.Encoding, ...],
        opset: int,
        shared: encodings.SharedConstants,
    ) -> bool:
        record = self.records[site.name]
        w = tensor.numpy()
        if not np.isfinite(w).all():
            record.note = "non-finite values: not quantized"
            return False
        pruned = record.prune_method is not None
        payload = make_payload(w, site, config, pruned, opset, self.stats.get(site.name))
        encoding = encodings.choose(payload, opset, candidates, site.graph, shared)
        if encoding is None:
            record.note = f"no {self.config.format} encoding at opset {opset}: left in float"
            return False
        record.max_abs_error = _max_error(payload, tensor, w)
        if site.name in self.corrections:
            self._correct_bias(site.name, payload.decode(), tensor)
        del w
        encoded = encoding.encode(site.graph, site.value, payload, shared)
        site.value.const_value = None  # the float source is no longer needed
        if encoding in encodings.KEEP_QUANTIZED:
            record.note = _kept_quantized_note(site.op_types)
        record.zeros_after = payload.zeros()
        record.rounding = payload.rounding if payload.codes is not None else None
        record.bits = payload.bits
        record.encoding = encoded.encoding
        record.stored_bytes = encoded.stored_bytes
        return True

    def _correct_bias(self, name: str, decoded: np.ndarray, tensor: ir.TensorProtocol) -> None:
        layer, mean_x = self.corrections[name]
        original = _original(tensor).numpy()
        shift = bias_shift(layer, decoded.astype(np.float64) - original, mean_x)
        bias = layer.bias.const_value
        if shift is None or bias is None or shift.shape != tuple(bias.shape.numpy()):
            return
        old = bias.numpy()
        layer.bias.const_value = ir.Tensor((old - shift).astype(old.dtype), name=layer.bias.name)
        record = self.records[name]
        moved = float(np.abs(shift).max()) if shift.size else 0.0
        record.note = f"bias {layer.bias.name} corrected (largest shift {moved:.3g})"

    def _store_float(
        self,
        site: WeightSite,
        tensor: ir.TensorProtocol,
        opset: int,
        shared: encodings.SharedConstants,
    ) -> bool:
        """Without quantization, keep a weight with zeros as a bitmask (or coordinates) plus
        its non-zeros where that is smaller than the dense floats."""
        record = self.records[site.name]
        zeros = (
            record.zeros_before if record.zeros_after_prune is None else record.zeros_after_prune
        )
        if zeros == 0:
            return False
        w = tensor.numpy()
        shape = tuple(int(d) for d in w.shape)
        payload = Payload(site.name, shape, tensor.dtype, site.axis, 32, values=w)
        sparse = encodings.choose(payload, opset, encodings.SPARSE_FLOAT, site.graph, shared)
        if sparse is None or sparse.cost(site.graph, payload, shared) >= w.nbytes:
            return False
        encoded = sparse.encode(site.graph, site.value, payload, shared)
        site.value.const_value = None
        record.encoding = encoded.encoding
        record.stored_bytes = encoded.stored_bytes
        record.max_abs_error = _max_error(w, tensor)
        return True


def _original(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
    """The weight as the original model has it (before any pruning)."""
    return tensor.meta.get("original", tensor) if isinstance(tensor, ir.LazyTensor) else tensor


def _max_error(
    decoded: np.ndarray | encodings.Payload,
    tensor: ir.TensorProtocol,
    read: np.ndarray | None = None,
) -> float:
    """Largest change of a weight against the original model's (before any pruning);
    a payload is decoded a few rows at a time. ``read``: ``tensor``'s values, already read
    (used when they are the original's, i.e. the weight was not pruned)."""
    source = _original(tensor)
    original = read if read is not None and source is tensor else source.numpy()
    if original.size == 0:
        return 0.0
    if isinstance(decoded, np.ndarray):
        diff = original.astype(decoded.dtype, copy=True)
        np.subtract(decoded, diff, out=diff)  # in place: one temporary the size of the weight
        return float(np.abs(diff, out=diff).max())
    if original.ndim == 0:
        return float(np.abs(decoded.decode() - original).max())
    largest = 0.0
    for rows in row_blocks(original):
        part = decoded.decode(rows)
        np.subtract(part, original[rows], out=part)
        largest = max(largest, float(np.abs(part, out=part).max()))
    return largest


def _kept_quantized_note(op_types: Sequence[str]) -> str:
    """What keeping a weight quantized costs at run time (as measured with onnxruntime 1.32)."""
    unfused = ", ".join(sorted(set(op_types) - {"MatMul"}))
    if unfused:
        return (
            f"kept quantized: onnxruntime does not fuse DequantizeLinear into {unfused}, "
            "so it dequantizes on every run (slower than float)"
        )
    return (
        "kept quantized: onnxruntime fuses it into MatMulNBits (faster at batch 1, slower at "
        "large batch; outputs move slightly)"
    )


class RemoveUnusedInitializersPass(ir.passes.InPlacePass):
    """Drop initializers that nothing reads (dead weights) from every graph."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for graph in model.graphs():
            for name, value in list(graph.initializers.items()):
                if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                    del graph.initializers[name]
                    self.removed.append(name)
        return ir.passes.PassResult(model, modified=bool(self.removed))
