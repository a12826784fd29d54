"""Compression speed and memory against the I/O floor, measured in the same run.

Builds a ~200 MB fp32 model (a chain of 2048x2048 MatMuls, seeded), then, in fresh
processes, alternately times:

* the floor: ``onnx.load`` + ``onnx.save`` of that model;
* ``prunequant compress`` (no evaluation) through the Python API, and its peak RSS.

Prints the medians and the ratios. Targets: compress <= 1.5x the floor, peak RSS
<= 1.5x the model size. Usage: ``python bench/bench_compress.py [--layers N] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DIM = 2048

# VmHWM is the peak of this process's own memory map. (ru_maxrss would not do: Linux
# carries the parent's peak across fork + exec into the child's ru_maxrss.)
PEAK_RSS = """
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

FLOOR = (
    PEAK_RSS
    + """
import json, sys, time
import onnx
t = time.perf_counter()
m = onnx.load(sys.argv[1])
onnx.save(m, sys.argv[2])
dt = time.perf_counter() - t
rss = peak_rss()
print(json.dumps({"seconds": dt, "peak_rss": rss}))
"""
)

COMPRESS = (
    PEAK_RSS
    + """
import json, sys, time
from prunequant_cli import CompressConfig, EvalConfig, compress
t = time.perf_counter()
r = compress(sys.argv[1], sys.argv[2], CompressConfig(threshold=float(sys.argv[3]), bits=8),
             EvalConfig(enabled=False))
dt = time.perf_counter() - t
rss = peak_rss()
print(json.dumps({"seconds": dt, "peak_rss": rss, "ratio": r.ratio}))
"""
)

BASELINE = (
    PEAK_RSS
    + """
import json
import numpy, onnx, onnx_ir, prunequant_cli.pipeline
print(json.dumps({"peak_rss": peak_rss()}))
"""
)


def build_model(path: Path, layers: int) -> None:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for i in range(layers):
        w = (rng.standard_normal((DIM, DIM), dtype=np.float32) / np.sqrt(DIM)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", DIM])],
        [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, ["N", DIM])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)


def run(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers", type=int, default=12, help="2048x2048 fp32 layers (16 MiB each)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=1e-4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prunequant-bench-") as tmp:
        src = Path(tmp) / "model.onnx"
        build_model(src, args.layers)
        size = src.stat().st_size
        floors, comps = [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            floors.append(run(FLOOR, str(src), str(Path(tmp) / "copy.onnx")))
            comps.append(run(COMPRESS, str(src), str(Path(tmp) / "out.onnx"), str(args.threshold)))
        base = run(BASELINE)["peak_rss"]
    floor_s = statistics.median(f["seconds"] for f in floors)
    comp_s = statistics.median(c["seconds"] for c in comps)
    floor_rss = max(f["peak_rss"] for f in floors)
    comp_rss = max(c["peak_rss"] for c in comps)
    mb = 1e6
    rows = [
        ("model size", f"{size / mb:.1f} MB", ""),
        ("onnx.load + onnx.save (floor)", f"{floor_s:.3f} s", "1.00"),
        (
            "prunequant compress, no eval",
            f"{comp_s:.3f} s",
            f"{comp_s / floor_s:.2f}  (target <= 1.50)",
        ),
        ("peak RSS, floor process", f"{floor_rss / mb:.0f} MB", f"{floor_rss / size:.2f} x model"),
        (
            "peak RSS, compress process",
            f"{comp_rss / mb:.0f} MB",
            f"{comp_rss / size:.2f} x model  (target <= 1.50)",
        ),
        ("  of which interpreter + imports", f"{base / mb:.0f} MB", ""),
        ("output / input size", f"{comps[-1]['ratio']:.3f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  ratio")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>10}  {ratio}")
    print(f"(medians of {args.repeat} interleaved runs, single process each)")


if __name__ == "__main__":
    main()
