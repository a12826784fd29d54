"""Nearest against GPTQ rounding: held-out output SQNR and compress time, same file size.

Each sample model's 450 held-out digits are cut in two halves (even and odd rows); GPTQ
records its layer inputs on the even half, and both roundings are scored on the odd half.

Run: ``python bench/bench_rounding.py`` (part of ``make bench``); prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prunequant_cli import CompressConfig, EvalConfig, compress  # noqa: E402


def main() -> None:
    print(
        "| model | bits | nearest SQNR | gptq SQNR | gain | size nearest | size gptq "
        "| seconds nearest | seconds gptq |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("digits_cnn", "digits_mlp"):
            data = np.load(ROOT / "sample_models" / f"{name}.npz")
            cal, held = work / "cal.npz", work / "held.npz"
            np.savez(cal, input=data["input"][0::2], labels=data["labels"][0::2])
            np.savez(held, input=data["input"][1::2], labels=data["labels"][1::2])
            src = ROOT / "sample_models" / f"{name}.onnx"
            for bits in (4, 3):
                cells = []
                for rounding, ev in (
                    ("nearest", EvalConfig(data=held, latency_runs=1)),
                    ("gptq", EvalConfig(data=held, calibration_data=cal, latency_runs=1)),
                ):
                    started = time.perf_counter()
                    config = CompressConfig(bits=bits, rounding=rounding, all_layers=True)
                    report = compress(src, work / "out.onnx", config, ev)
                    seconds = time.perf_counter() - started
                    sqnr = report.evaluation.outputs[0].sqnr_db
                    cells.append((sqnr, report.ratio, seconds))
                (s_n, r_n, t_n), (s_g, r_g, t_g) = cells
                print(
                    f"| {name} | {bits} | {s_n:.1f} dB | {s_g:.1f} dB | {s_g - s_n:+.1f} dB "
                    f"| ×{r_n:.3f} | ×{r_g:.3f} | {t_n:.2f} | {t_g:.2f} |"
                )
    print(
        "\nSQNR of the output on the 225 odd rows; GPTQ calibrated on the 225 even rows; every "
        "layer at the bits given (--all-layers). The seconds include loading and evaluating."
    )
    cost()


def cost() -> None:
    """What rounding a ~100 MB model costs against one evaluation pass over its data."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width, layers, samples = 2048, 6, 256
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    base = rng.standard_normal((samples, 64)) @ rng.standard_normal((64, width))
    data = (base + 0.1 * rng.standard_normal((samples, width))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src, cal, held = work / "mlp.onnx", work / "cal.npz", work / "held.npz"
        onnx.save(model, src)
        np.savez(cal, x=data[: samples // 2])
        np.savez(held, x=data[samples // 2 :])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        started = time.perf_counter()
        for start in range(0, samples // 2, 64):
            session.run(None, {"x": data[start : start + 64]})
        one_pass = time.perf_counter() - started
        timings = {}
        outputs = {}
        for rounding in ("nearest", "gptq"):
            started = time.perf_counter()
            out = work / f"{rounding}.onnx"
            report = compress(
                src,
                out,
                CompressConfig(bits=4, rounding=rounding, all_layers=True),
                EvalConfig(
                    data=held,
                    calibration_data=cal if rounding == "gptq" else None,
                    latency_runs=1,
                ),
            )
            timings[rounding] = (time.perf_counter() - started, report.evaluation.outputs[0])
            outputs[f"prunequant --bits 4 --rounding {rounding}"] = out
        outputs.update(ort_int4(src, work))
        reference = session.run(None, {"x": data[samples // 2 :]})[0].astype(np.float64)
        versus = []
        for what, path in outputs.items():
            got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            y = got.run(None, {"x": data[samples // 2 :]})[0].astype(np.float64)
            noise = float(np.sum((y - reference) ** 2))
            sqnr = 10 * np.log10(float(np.sum(reference**2)) / noise) if noise else float("inf")
            versus.append((what, sqnr, src.stat().st_size / path.stat().st_size))
    (t_n, o_n), (t_g, o_g) = timings["nearest"], timings["gptq"]
    mb = layers * width * width * 4 / 1e6
    print(
        f"\nCost on a {mb:.0f} MB MatMul model ({layers} weights of {width}×{width}, "
        f"{samples // 2} calibration samples, 4 bits, one thread for the evaluation pass):\n"
    )
    print("| measure | seconds | ratio to one evaluation pass |")
    print("| --- | ---: | ---: |")
    print(f"| one evaluation pass over the calibration samples | {one_pass:.2f} | 1.0 |")
    print(
        f"| compress, nearest (load, encode, save, evaluate) | {t_n:.2f} | {t_n / one_pass:.1f} |"
    )
    print(f"| compress, gptq (+ statistics and rounding) | {t_g:.2f} | {t_g / one_pass:.1f} |")
    print(
        f"| gptq's extra time | {t_g - t_n:.2f} | {(t_g - t_n) / one_pass:.1f} |\n\n"
        f"Held-out output SQNR there: nearest {o_n.sqnr_db:.1f} dB, gptq {o_g.sqnr_db:.1f} dB."
    )
    print(
        "\nAgainst onnxruntime's own int4 weight quantizer (`MatMulNBitsQuantizer`, its "
        "default round-to-nearest, MatMulNBits blocks) on the same model, held-out output SQNR "
        "and file ratio (original / compressed):\n"
    )
    print("| quantizer | held-out SQNR | file × |")
    print("| --- | ---: | ---: |")
    for what, sqnr, ratio in versus:
        print(f"| {what} | {sqnr:.1f} dB | ×{ratio:.2f} |")


def ort_int4(src: Path, work: Path) -> dict[str, Path]:
    """The model at ``src`` through onnxruntime's MatMulNBitsQuantizer (default RTN): block 32
    symmetric and block 128 asymmetric (its default)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    found = {}
    for block, symmetric in ((32, True), (128, False)):
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric)
        quantizer = MatMulNBitsQuantizer(
            str(src), bits=4, block_size=block, is_symmetric=symmetric, algo_config=config
        )
        quantizer.process()
        path = work / f"ort_{block}.onnx"
        quantizer.model.save_model_to_file(str(path))
        kind = "symmetric" if symmetric else "asymmetric"
        found[f"onnxruntime MatMulNBits, block {block}, {kind}"] = path
    return found


if __name__ == "__main__":
    main()
