"""Compression speed and memory against the I/O floor, measured in the same run.

For each size (default 20, 100 and 1000 MB), builds an fp32 model (a chain of 2048x2048
MatMuls, seeded), then, in fresh processes, alternately times:

* the floor: ``onnx.load`` + ``onnx.save`` of that model;
* ``prunequant compress`` (8 bits, no evaluation) through the Python API, and its peak RSS
  (both with their imports done before the clock starts);
* the same two as whole processes (interpreter start and imports included): ``python -c``
  load + save against the ``prunequant compress --no-eval`` command;
* creating an onnxruntime session of the original and of the compressed model: seconds
  and peak RSS while it is created (``evaluate.session_cost``).

The package's bytecode is compiled first, as installing it does (an editable checkout run
with ``PYTHONDONTWRITEBYTECODE`` set would otherwise recompile prunequant's modules in every
process, about 70 ms that an installed copy does not pay; the floor's onnx is installed).
Prints the medians and the ratios. Targets: compress <= 1.0x the floor, its peak RSS <= 1.5x
the model size; on the >= 1 GB model, session creation <= 1.3x the original's time and its
peak RSS <= 1.2x the original's. Usage: ``python bench/bench_compress.py [--sizes 20,100,1000]
[--repeat K]``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import statistics
import subprocess
import sys
import tempfile
import time
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
import prunequant_cli.pipeline  # imported before the clock starts, as onnx is for the floor
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


def session(path: Path) -> dict:
    """Creating an onnxruntime session of ``path`` in a fresh process (evaluate.session_cost)."""
    from prunequant_cli.evaluate import session_cost

    cost = session_cost(str(path), 1)
    assert cost is not None, f"no session of {path}"
    return {"seconds": cost.seconds, "peak_rss": cost.peak_rss, "rss": cost.rss}


def process_seconds(*command: str) -> float:
    """Wall time of a whole process: interpreter start, imports and work."""
    t = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - t


def measure(tmp: Path, layers: int, repeat: int, threshold: float) -> list[tuple[str, str, str]]:
    """The rows of one model size."""
    import prunequant_cli

    compileall.compile_dir(Path(prunequant_cli.__file__).parent, quiet=1)
    src = tmp / f"model{layers}.onnx"
    build_model(src, layers)
    size = src.stat().st_size
    out = tmp / "out.onnx"
    floors, comps, sess_a, sess_b, proc_a, proc_b = [], [], [], [], [], []
    cli = str(Path(sys.executable).with_name("prunequant"))
    save = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
    for _ in range(repeat):  # interleaved, so drift hits both alike
        floors.append(run(FLOOR, str(src), str(tmp / "copy.onnx")))
        comps.append(run(COMPRESS, str(src), str(out), str(threshold)))
        proc_a.append(process_seconds(sys.executable, "-c", save, str(src), str(tmp / "copy.onnx")))
        proc_b.append(
            process_seconds(
                cli, "compress", str(src), str(out), "--threshold", str(threshold), "--no-eval",
                "--quiet",
            )
        )  # fmt: skip
        sess_a.append(session(src))
        sess_b.append(session(out))
    src.unlink()
    floor_s = statistics.median(f["seconds"] for f in floors)
    comp_s = statistics.median(c["seconds"] for c in comps)
    floor_rss = max(f["peak_rss"] for f in floors)
    comp_rss = max(c["peak_rss"] for c in comps)
    a_s = statistics.median(x["seconds"] for x in sess_a)
    b_s = statistics.median(x["seconds"] for x in sess_b)
    a_peak, b_peak = max(x["peak_rss"] for x in sess_a), max(x["peak_rss"] for x in sess_b)
    mb = 1e6
    big = size >= 1e9
    return [
        (f"model size ({layers} MatMul weights)", f"{size / mb:.1f} MB", ""),
        ("onnx.load + onnx.save (floor)", f"{floor_s:.3f} s", "1.00"),
        (
            "prunequant compress, no eval",
            f"{comp_s:.3f} s",
            f"{comp_s / floor_s:.2f}  (target <= 1.00)",
        ),
        ("whole process: python -c load + save", f"{statistics.median(proc_a):.3f} s", "1.00"),
        (
            "whole process: prunequant compress --no-eval",
            f"{statistics.median(proc_b):.3f} s",
            f"{statistics.median(proc_b) / statistics.median(proc_a):.2f}",
        ),
        ("peak RSS, floor process", f"{floor_rss / mb:.0f} MB", f"{floor_rss / size:.2f} x model"),
        (
            "peak RSS, compress process",
            f"{comp_rss / mb:.0f} MB",
            f"{comp_rss / size:.2f} x model  (target <= 1.50)",
        ),
        ("output / input size", f"{comps[-1]['ratio']:.3f}", ""),
        ("session creation, original", f"{a_s:.3f} s", "1.00"),
        (
            "session creation, compressed",
            f"{b_s:.3f} s",
            f"{b_s / a_s:.2f}" + ("  (target <= 1.30)" if big else ""),
        ),
        ("session peak RSS, original", f"{a_peak / mb:.0f} MB", "1.00"),
        (
            "session peak RSS, compressed",
            f"{b_peak / mb:.0f} MB",
            f"{b_peak / a_peak:.2f}" + ("  (target <= 1.20)" if big else ""),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="20,100,1000",
        help="model sizes in MB, comma-separated (2048x2048 fp32 MatMul weights, 16.8 MB each)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=1e-4)
    args = parser.parse_args()
    layer_mb = DIM * DIM * 4 / 1e6
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="prunequant-bench-") as tmp:
        for mb in (float(x) for x in args.sizes.split(",")):
            rows += measure(Path(tmp), max(1, round(mb / layer_mb)), args.repeat, args.threshold)
            print(f"measured {mb:g} MB", file=sys.stderr)
        base = run(BASELINE)["peak_rss"]
    rows.append(("interpreter + imports of a compress process", f"{base / 1e6:.0f} MB", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  ratio")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>10}  {ratio}")
    print(f"(medians of {args.repeat} interleaved runs, each in a fresh process)")


if __name__ == "__main__":
    main()
