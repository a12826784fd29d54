"""What each weight encoding costs: file size, latency and session memory vs fp32.

For a 4096x4096 fp32 MatMul model (64 MiB, seeded) and the sample digits CNN, each
encoding is written with ``prunequant_cli.compress`` and then measured against the
fp32 original in the same run:

* file ratio: compressed / original bytes;
* latency ratio at batch 1 and batch 32: medians of interleaved runs, one thread;
* session memory: resident memory of an onnxruntime session, in a fresh process.

Usage: ``python bench/bench_encodings.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from common import print_table, session
from onnx import TensorProto, helper, numpy_helper

from prunequant_cli import CompressConfig, EvalConfig, compress
from prunequant_cli.evaluate import SessionCost, session_cost

ROOT = Path(__file__).resolve().parent.parent
DIM = 4096

# (label, config, opset the model must have for it)
# all_layers: the one MatMul is the first and last layer, which 4 bits would keep at 8
VARIANTS = [
    ("int8", CompressConfig(all_layers=True, bits=8, format="int8"), 17),
    ("packed4", CompressConfig(all_layers=True, bits=4, format="dense"), 17),
    ("packed6", CompressConfig(all_layers=True, bits=6, format="dense"), 17),
    ("int4 (native)", CompressConfig(all_layers=True, bits=4, format="dense"), 21),
    (
        "int4 asymmetric",
        CompressConfig(all_layers=True, bits=4, quant="asymmetric", format="dense"),
        21,
    ),
    (
        "sparse4 asym., 50% pruned",
        CompressConfig(all_layers=True, bits=4, quant="asymmetric", sparsity=0.5),
        17,
    ),
    (
        "sparse, 50% pruned",
        CompressConfig(all_layers=True, bits=8, sparsity=0.5, format="sparse"),
        17,
    ),
    (
        "sparse4, 50% pruned",
        CompressConfig(all_layers=True, bits=4, sparsity=0.5, format="sparse"),
        17,
    ),
    ("codebook 4-bit", CompressConfig(all_layers=True, bits=4, quant="codebook"), 17),
    ("float16", CompressConfig(all_layers=True, bits=16), 17),
    ("keep-quantized int8", CompressConfig(all_layers=True, bits=8, keep_quantized=True), 17),
    ("keep-quantized int4", CompressConfig(all_layers=True, bits=4, keep_quantized=True), 21),
]


def matmul_model(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((DIM, DIM), dtype=np.float32) / np.sqrt(DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", DIM])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def cnn_model(opset: int) -> onnx.ModelProto:
    model = onnx.load(ROOT / "sample_models" / "digits_cnn.onnx")
    model.opset_import[0].version = opset  # every op of the CNN means the same at 17 and 21
    model.ir_version = 10
    return model


def latency_ratio(base: Path, other: Path, feed: dict, runs: int) -> float:
    a, b = session(base), session(other)
    for s in (a, b):
        for _ in range(3):
            s.run(None, feed)
    ta, tb = [], []
    for _ in range(runs):  # interleaved, so drift hits both alike
        for s, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            s.run(None, feed)
            times.append(time.perf_counter() - t)
    return statistics.median(tb) / statistics.median(ta)


def feed_for(path: Path, batch: int) -> dict:
    rng = np.random.default_rng(1)
    inp = session(path).get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    return {inp.name: rng.standard_normal(shape).astype(np.float32)}


def bench(name: str, make, tmp: Path, runs: int) -> list[list[str]]:
    rows = []
    sources = {}
    for opset in (17, 21):
        sources[opset] = tmp / f"{name}_opset{opset}.onnx"
        onnx.save(make(opset), sources[opset])
    base = {opset: session_cost(str(p), 1) for opset, p in sources.items()}
    rows.append([name, "fp32 (original)", "1.000", "1.00", "1.00", *_session(base[17], base[17])])
    for label, config, opset in VARIANTS:
        src, out = sources[opset], tmp / f"{name}_{label.replace(' ', '_')}.onnx"
        report = compress(src, out, config, EvalConfig(enabled=False))
        encodings = sorted({t.encoding or "float" for t in report.tensors})
        b1 = latency_ratio(src, out, feed_for(src, 1), runs)
        b32 = latency_ratio(src, out, feed_for(src, 32), max(5, runs // 3))
        ratio = f"{report.ratio:.3f}"
        rows.append(
            [
                name,
                f"{label} [{', '.join(encodings)}]",
                ratio,
                f"{b1:.2f}",
                f"{b32:.2f}",
                *_session(session_cost(str(out), 1), base[opset]),
            ]
        )
    return rows


def _session(cost: SessionCost | None, base: SessionCost | None) -> list[str]:
    """Session creation time against the original's, peak and settled MiB."""
    if cost is None or base is None:
        return ["?", "?", "?"]
    return [
        f"{cost.seconds / base.seconds:.2f}",
        f"{cost.peak_rss / 2**20:.1f}",
        f"{cost.rss / 2**20:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model at batch 1")
    args = parser.parse_args()
    head = ["model", "encoding", "file ratio", "latency b1", "latency b32"]
    rows = [[*head, "session time ×", "session peak MiB", "session MiB"]]
    with tempfile.TemporaryDirectory(prefix="prunequant-bench-") as tmp:
        for name, make in (("matmul 4096²", matmul_model), ("digits_cnn", cnn_model)):
            rows += bench(name, make, Path(tmp), args.runs)
            print(f"measured {name}", file=sys.stderr)
    print_table(
        rows,
        2,
        "(ratios vs the fp32 original in the same run; latency: medians of interleaved runs)",
    )


if __name__ == "__main__":
    main()
