"""What a default evaluation (no --data) costs on a heavy model: bounded by its sample time.

Builds a seeded fully-convolutional model on 1024x1024 images (six 3x3 convolutions, 3 -> 32 ->
64 -> 64 -> 64 -> 32 -> 1 channels, a segmentation-like mask), then times whole
``prunequant compress MODEL OUT --bits 8`` processes (no other flag), and prints the wall time
and prunequant's note on how it bounded the evaluation. Usage:
``python bench/bench_eval_bound.py [--repeat K]``.
"""

from __future__ import annotations

import argparse
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

CHANNELS = (3, 32, 64, 64, 64, 32, 1)
SIDE = 1024


def build_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(len(CHANNELS) - 1):
        cin, cout = CHANNELS[i], CHANNELS[i + 1]
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        bias = np.zeros(cout, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        last = i == len(CHANNELS) - 2
        x = "mask" if last else f"r{i}"
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [f"c{i}"], [x]))
    graph = helper.make_graph(
        nodes,
        "segmentation",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, SIDE, SIDE])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


# What the unbounded evaluation ran of this fixed-batch model: 1 sample, then 3 warm-up and
# 20 timed runs, each through both models.
UNBOUNDED_RUNS = 2 * (1 + 3 + 20)


def sample_seconds(path: Path) -> float:
    """The median time of one sample through the original (one thread, after a warm-up)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, SIDE, SIDE), np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    cli = str(Path(sys.executable).with_name("prunequant"))
    with tempfile.TemporaryDirectory(prefix="prunequant-bench-") as tmp:
        src, out = Path(tmp) / "seg.onnx", Path(tmp) / "out.onnx"
        build_model(src)
        seconds, notes = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            r = subprocess.run(
                [cli, "compress", str(src), str(out), "--bits", "8", "--json"],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds.append(time.perf_counter() - t)
            notes = [n for n in json.loads(r.stdout)["evaluation"]["notes"] if "bounded" in n]
        sample = sample_seconds(src)
    median = statistics.median(seconds)
    print(
        f"1024x1024 segmentation CNN, default `compress --bits 8` (no --data): {median:.1f} s "
        f"(median of {args.repeat} whole processes) = {median / sample:.0f}x the {sample:.2f} s "
        f"of one sample through the original, measured in this run; unbounded, the 3 warm-up "
        f"and 20 timed runs of both models alone would be {UNBOUNDED_RUNS}x"
    )
    for note in notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
