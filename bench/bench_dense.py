"""Latency of densely pruned CNNs against the original, measured in the same run.

A VGG-style CNN (random weights, 3x64x64 input, convolutions of 64/128/256 channels)
and the sample digits CNN are pruned with ``--prune-mode dense`` removing 25% and 50%
of the channels of every prunable layer; each is timed against its original at batch
1 and 32 (medians of interleaved runs, one thread), with the parameter and file ratios.

Usage: ``python bench/bench_dense.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from common import print_table, session
from onnx import TensorProto, helper, numpy_helper

from prunequant_cli import CompressConfig, EvalConfig, compress

ROOT = Path(__file__).resolve().parent.parent


def vgg_like() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, x, c = [], [], "x", 3
    for i, (width, pool) in enumerate([(64, True), (128, True), (256, False), (256, True)]):
        w = (rng.standard_normal((width, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"conv{i}.w"),
            numpy_helper.from_array(np.zeros(width, np.float32), f"conv{i}.b"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x, c = f"r{i}", width
        if pool:
            nodes.append(
                helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            x = f"p{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
    ]
    inits += [
        numpy_helper.from_array(rng.standard_normal((10, c)).astype(np.float32) * 0.05, "fc.w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc.b"),
    ]
    nodes.append(helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1))
    graph = helper.make_graph(
        nodes,
        "vgg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def ratio(a: Path, b: Path, batch: int, runs: int) -> float:
    sa, sb = session(a), session(b)
    inp = sa.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    feed = {inp.name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    for s in (sa, sb):
        for _ in range(3):
            s.run(None, feed)
    ta, tb = [], []
    for _ in range(runs):
        for s, t in ((sa, ta), (sb, tb)):
            start = time.perf_counter()
            s.run(None, feed)
            t.append(time.perf_counter() - start)
    return statistics.median(tb) / statistics.median(ta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows = [("model", "channels removed", "parameters", "file", "latency b1", "latency b32")]
    with tempfile.TemporaryDirectory(prefix="prunequant-bench-") as tmp:
        vgg = Path(tmp) / "vgg.onnx"
        onnx.save(vgg_like(), vgg)
        for name, src in (
            ("vgg-like 64x64", vgg),
            ("digits_cnn", ROOT / "sample_models" / "digits_cnn.onnx"),
        ):
            for fraction in (0.25, 0.5):
                out = Path(tmp) / f"{src.stem}-{fraction}.onnx"
                report = compress(
                    src,
                    out,
                    CompressConfig(prune_mode="dense", sparsity=fraction, bits=None),
                    EvalConfig(enabled=False),
                )
                params = report.compressed.parameters / report.original.parameters
                b1 = ratio(src, out, 1, args.runs)
                b32 = ratio(src, out, 32, max(5, args.runs // 4))
                rows.append(
                    (
                        name,
                        f"{fraction:.0%}",
                        f"{params:.3f}",
                        f"{report.ratio:.3f}",
                        f"{b1:.2f}",
                        f"{b32:.2f}",
                    )
                )
    print_table(
        rows, 1, "(ratios vs the unpruned model in the same run; latency: medians, 1 thread)"
    )


if __name__ == "__main__":
    main()
