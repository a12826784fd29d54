"""prunequant on nine real pretrained ONNX models, scored by their own task metrics.

The synthetic benchmarks say how fast and how small; they cannot say whether a detector
still finds the boxes. This one runs ``prunequant compress`` on the realmodels kit
(``shared/realmodels``: OCR, detection, speaker and wake-word models from PyPI wheels,
with true-label data) and scores every written model with the kit's ``evaluate.py`` on
samples that no run calibrated on (see ``real_splits.py``).

Modes, one prunequant process per model and mode, each given the kit's task metric as
``--metric bench/real_metrics.py:NAME`` (the kit's own ``evaluate.py`` metric on the
``labels`` of the split files, see ``real_metrics.py``):

* ``bits8`` / ``bits4``: ``--bits N --data holdout``; the metric is reported, not gated;
* ``gptq4``: ``--bits 4 --rounding gptq --calibration-data calibration --data holdout``;
* ``search_nearest`` (not in the default modes): the same search with nearest-rounded
  candidates only (``search_nearest.py``), to say what GPTQ adds to a search;
* ``search``: ``--calibration-data calibration --data holdout --max-metric-drop D``
  (``D`` = ``PRUNEQUANT_BENCH_METRIC_DROP``, default 0.02, absolute on the metric's scale);
  ``--min-cosine 0.99`` instead, without ``--metric``, for a model whose metric cannot be
  scored on the random halves of the calibration rows a search checks on
  (``real_metrics.NOT_ON_SUBSETS``: oww_embedding) or that has none. When the installed
  prunequant has no ``--calibration-data`` (or with ``--in-sample``) the search gets
  ``--data calibration`` and its rows are marked in-sample.

Per row: the file ratio (prunequant's ``compression_ratio``, original / compressed bytes),
prunequant's own metric (fp32, candidate) on the data it reported on and whether its budget
gate passed, the kit metric of fp32 and candidate on the held-out half and their
difference, the kit's fidelity cosine, the latency ratio (candidate / fp32, kit's
single-thread medians), the wall seconds of the prunequant run and the peak RSS of its
process tree.

Usage: ``python bench/bench_real.py [--models a,b] [--modes bits8,bits4,gptq4,search]``.
Environment: ``PRUNEQUANT_REALMODELS`` (kit cache, default ``~/.cache/prunequant/realmodels``),
``PRUNEQUANT_SHARED`` (default: ``shared/`` next to the repository),
``PRUNEQUANT_BENCH_TIME_BUDGET`` (search ``--time-budget``, default 600 s, the tool's own),
``PRUNEQUANT_BENCH_METRIC_DROP`` (search ``--max-metric-drop``, default 0.02),
``PRUNEQUANT_BENCH_SPLIT_SEED`` (the calibration / held-out permutation, default 0). The first two
are passed on to prunequant's processes, where ``real_metrics.py`` reads them.
Writes ``build/bench_real.json``; the Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import real_metrics
import real_splits
from real_splits import Split

REPO = Path(__file__).resolve().parents[1]
MODES = ("bits8", "bits4", "gptq4", "search", "search_nearest")
DEFAULT_MODES = MODES[:4]
METRIC_FILE = REPO / "bench" / "real_metrics.py"
NEAREST = REPO / "bench" / "search_nearest.py"
# The search's budget: the task metric may drop this much (absolute, the metric's scale).
METRIC_DROP = float(os.environ.get("PRUNEQUANT_BENCH_METRIC_DROP", "0.02"))
MIN_COSINE = 0.99  # the search's budget for a model without a usable metric
WITHIN = METRIC_DROP  # a row "holds" when the task metric drops by at most the budget
GATE_FAILED = 8  # prunequant's exit code for a failed gate: the model is still written

# Runs the command given after two file names (its stdout and stderr go there), then
# prints the wall time and the peak RSS of the process tree. A launcher of its own, so
# the peak is not this script's: on Linux a child's ru_maxrss starts from the RSS of the
# process it was forked from, and RUSAGE_CHILDREN is the largest of all the waited-for
# descendants (prunequant runs its work in a forked child, which it waits for).
LAUNCHER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    code = subprocess.call(sys.argv[3:], stdout=out, stderr=err)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": code, "seconds": seconds, "peak_rss": peak}))
"""


@dataclass
class Row:
    """One model × mode: what prunequant wrote and how the kit scored it."""

    model: str
    mode: str
    data: str  # which half prunequant was given (the kit always scores the held-out half)
    exit_code: int | None = None
    error: str = ""
    file_ratio: float | None = None
    bits_per_weight: float | None = None
    pq_min_cosine: float | None = None  # prunequant's own report, on the data it was given
    budget: str = ""  # the search's budget gate
    pq_metric_fp32: float | None = None  # prunequant's --metric: the original's own score
    pq_metric: float | None = None  # ... and the written model's
    pq_gate: bool | None = None  # whether the budget gate passed (search only)
    metric: str = ""
    fp32: float | None = None
    candidate: float | None = None
    delta: float | None = None
    fidelity_cos: float | None = None
    latency_ratio: float | None = None
    seconds: float | None = None
    peak_rss_mb: float | None = None
    n_holdout: int = 0
    notes: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def locate_kit_source() -> Path:
    """``shared/realmodels``: from PRUNEQUANT_SHARED, else next to the repository."""
    shared = Path(os.environ.get("PRUNEQUANT_SHARED", REPO.parent / "shared"))
    src = shared / "realmodels"
    if not (src / "get.sh").is_file():
        print(
            f"bench-real: the realmodels kit is not available ({src}/get.sh is missing; "
            "set PRUNEQUANT_SHARED to the folder that holds realmodels/)",
            file=sys.stderr,
        )
        sys.exit(2)
    return src


def build_kit(src: Path) -> Path:
    """Build (or reuse) the kit in the cache with its own ``get.sh``; the cache path."""
    default = Path.home() / ".cache" / "prunequant" / "realmodels"
    cache = Path(os.environ.get("PRUNEQUANT_REALMODELS", default)).expanduser().resolve()
    cache.parent.mkdir(parents=True, exist_ok=True)
    # get.sh talks on stdout; keep this script's stdout for the tables.
    done = subprocess.run(["bash", str(src / "get.sh"), str(cache)], stdout=sys.stderr)
    if done.returncode != 0 or not (cache / "manifest.json").is_file():
        print(f"bench-real: get.sh failed (exit {done.returncode}) for {cache}", file=sys.stderr)
        sys.exit(2)
    return cache


def prunequant_bin() -> str:
    """The prunequant of the interpreter running this script (the repository's venv)."""
    here = Path(sys.executable).with_name("prunequant")
    found = str(here) if here.exists() else shutil.which("prunequant")
    if not found:
        sys.exit("bench-real: no prunequant executable next to this python or on PATH")
    return found


def has_calibration_flag(pq: str) -> bool:
    """Whether ``compress`` takes ``--calibration-data`` (calibrate and score apart)."""
    out = subprocess.run([pq, "compress", "--help"], capture_output=True, text=True).stdout
    return "--calibration-data" in out


def metric_args(name: str, mode: str) -> list[str]:
    """``--metric`` for a mode, and in a search the budget gate on it (else on cosine)."""
    metric = ["--metric", f"{METRIC_FILE}:{name}"] if name in real_metrics.METRICS else []
    if mode not in ("search", "search_nearest"):
        return metric
    if metric and name not in real_metrics.NOT_ON_SUBSETS:
        return [*metric, "--max-metric-drop", str(METRIC_DROP)]
    return ["--min-cosine", str(MIN_COSINE)]


def mode_args(mode: str, split: Split, out_of_sample: bool, budget: str) -> tuple[list[str], str]:
    """The compress options of a mode, and which halves of the samples prunequant sees.

    Without ``--calibration-data`` the search tunes and gates on the calibration half only
    (its own reported figures are then not on the held-out half); the kit still scores the
    held-out half. ``--in-sample`` forces this form.
    """
    hold = str(split.holdout)
    if mode in ("bits8", "bits4"):
        return [
            "--bits",
            mode[4:],
            "--data",
            hold,
            *metric_args(split.name, mode),
        ], "holdout"
    if mode == "gptq4":
        cal = str(split.calibration)
        args = ["--bits", "4", "--rounding", "gptq", *metric_args(split.name, mode)]
        return [*args, "--calibration-data", cal, "--data", hold], "calibration + holdout"
    if mode in ("search", "search_nearest"):
        cal = str(split.calibration)
        common = [*metric_args(split.name, mode), "--time-budget", budget]
        if out_of_sample:
            return ["--calibration-data", cal, "--data", hold, *common], "calibration + holdout"
        return ["--data", cal, *common], "calibration only"
    raise ValueError(mode)


def last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def evaluate(cache: Path, kit: Path, src: Path, name: str, candidate: Path) -> dict[str, Any]:
    """The kit's ``evaluate.py`` on the held-out kit: its JSON, or ``{"error": ...}``."""
    cmd = [str(cache / "venv" / "bin" / "python"), str(src / "evaluate.py"), str(kit), name]
    try:
        done = subprocess.run([*cmd, str(candidate)], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "evaluate.py timed out after 1800 s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        err = [ln for ln in done.stderr.splitlines() if ln.strip()]
        return {"error": f"evaluate.py exit {done.returncode}: {err[-1] if err else ''}"[:300]}
    return dict(json.loads(lines[-1]))


def verify_kit(cache: Path, kit: Path, src: Path, names: list[str], manifest: dict) -> None:
    """Score each fp32 model as its own candidate on the held-out kit: delta must be 0.

    This is what shows the kit was sliced consistently (labels with their inputs, clip
    ids renumbered, per-sample files paired with their rows). Cached per data digest.
    """
    path = kit / "verified.json"
    try:
        done: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        done = {}
    for name in names:
        digest = manifest["models"][name]["data_digest"]
        if done.get(name, {}).get("data_digest") == digest:
            continue
        log(f"verify  {name}: fp32 as candidate on the held-out kit")
        r = evaluate(cache, kit, src, name, cache / "models" / f"{name}.onnx")
        if "error" in r or r["delta"] != 0 or r["fidelity_cos"] < 0.99999:
            sys.exit(f"bench-real: held-out kit check failed for {name}: {r}")
        done[name] = {"data_digest": digest, "fp32": r["fp32"], "n_samples": r["n_samples"]}
        path.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")


def run_one(
    pq: str, cache: Path, kit: Path, src: Path, split: Split, mode: str, args: list[str], data: str
) -> Row:
    """One prunequant process under the launcher, then the kit's score of what it wrote."""
    name = split.name
    row = Row(model=name, mode=mode, data=data, n_holdout=split.n_holdout)
    for flag in ("--max-metric-drop", "--min-cosine"):
        if flag in args:
            row.budget = f"{flag.removeprefix('--')} {args[args.index(flag) + 1]}"
    if split.note:
        row.notes.append(split.note)
    runs = cache / "runs"
    runs.mkdir(exist_ok=True)
    out = runs / f"{name}.{mode}.onnx"
    stdout, stderr = runs / f"{name}.{mode}.json", runs / f"{name}.{mode}.stderr"
    for stale in runs.glob(f"{name}.{mode}.onnx*"):
        stale.unlink()
    model = cache / "models" / f"{name}.onnx"
    # search_nearest: the same search without GPTQ candidates (see search_nearest.py)
    runner = [sys.executable, str(NEAREST)] if mode == "search_nearest" else [pq]
    cmd = [*runner, "compress", str(model), str(out), *args, "--json"]
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(stdout), str(stderr), *cmd],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(launched.stdout)
    row.exit_code, row.seconds = m["code"], round(m["seconds"], 1)
    row.peak_rss_mb = round(m["peak_rss"] / 2**20, 1)
    report: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):  # a crash may leave no JSON
        report = json.loads(stdout.read_text())
    if row.exit_code not in (0, GATE_FAILED):
        row.error = last_line(stderr) or f"exit {row.exit_code}, no message"
        if out.exists():
            row.notes.append("an output file was left behind")
        return row
    if row.exit_code == GATE_FAILED:
        # schema 1 lists gate objects, schema 2 gate names
        failed = [g.get("name", "?") if isinstance(g, dict) else str(g) for g in
                  report.get("failed_gates", [])]  # fmt: skip
        row.notes.append("gate failed: " + (", ".join(failed) or "?"))
    row.file_ratio = report.get("compression_ratio")
    row.bits_per_weight = (report.get("weight_storage") or {}).get("bits_per_weight")
    evaluation = report.get("evaluation") or {}
    cosines = [o.get("cosine") for o in evaluation.get("outputs", [])]
    cosines = [c for c in cosines if isinstance(c, float)]
    row.pq_min_cosine = min(cosines) if cosines else None
    pq_metric = evaluation.get("metric") or {}
    row.pq_metric_fp32, row.pq_metric = pq_metric.get("original"), pq_metric.get("compressed")
    budget_gates = [g for g in report.get("gates", []) if isinstance(g, dict)
                    and g.get("name") in ("--max-metric-drop", "--min-cosine")]  # fmt: skip
    if budget_gates:
        row.pq_gate = all(bool(g.get("passed")) for g in budget_gates)
    cal = evaluation.get("calibration")
    # schema 2: what the search tuned on
    if mode in ("search", "search_nearest") and isinstance(cal, dict):
        overlap = ", overlapping its check" if cal.get("overlap") else ""
        row.notes.append(f"pq tuned on {cal.get('samples')} ({cal.get('source')}{overlap})")
    if any("time-budget ran out" in n for n in report.get("notes", [])):
        row.notes.append("time budget ran out")
    chosen = (report.get("search") or {}).get("chosen")
    if chosen and chosen != "mixed":
        row.notes.append(f"search chose {chosen}")
    if not out.exists():
        row.error = "no output written"
        return row
    r = evaluate(cache, kit, src, name, out)
    if "error" in r:
        row.error = r["error"]
        return row
    row.metric, row.fp32, row.candidate = r["metric"], r["fp32"], r["candidate_value"]
    row.delta, row.fidelity_cos = r["delta"], r["fidelity_cos"]
    lat = r["latency_ms"]
    row.latency_ratio = round(lat["candidate"] / lat["fp32"], 3) if lat["fp32"] else None
    for v in (row.candidate, row.fidelity_cos):
        if v is None or not math.isfinite(v):
            row.notes.append("non-finite score")
    return row


def fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "—"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}f}"


def markdown(header: list[str], rows: list[list[str]], numeric: range) -> list[str]:
    """A Markdown table; the ``numeric`` columns are right-aligned."""
    align = ["---:" if i in numeric else "---" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in [header, align, *rows]]


def table(rows: list[Row]) -> list[str]:
    header = ["model", "mode", "prunequant data", "budget", "exit", "file ×", "bits/w",
              "pq cos", "pq metric fp32", "pq metric", "pq gate", "metric fp32", "candidate",
              "Δ", "fidelity cos", "latency ×", "seconds", "peak RSS MB", "note"]  # fmt: skip
    body = []
    for r in rows:
        note = "; ".join([r.error, *r.notes] if r.error else r.notes)
        gate = "—" if r.pq_gate is None else ("pass" if r.pq_gate else "FAIL")
        body.append(
            [r.model, r.mode, r.data, r.budget or "—", str(r.exit_code), fmt(r.file_ratio, 2),
             fmt(r.bits_per_weight, 2), fmt(r.pq_min_cosine, 4), fmt(r.pq_metric_fp32, 4),
             fmt(r.pq_metric, 4), gate, fmt(r.fp32, 4),
             fmt(r.candidate, 4), "—" if r.delta is None else f"{r.delta:+.4f}",
             fmt(r.fidelity_cos, 4),
             fmt(r.latency_ratio, 2), fmt(r.seconds, 1), fmt(r.peak_rss_mb, 0), note]
        )  # fmt: skip
    return markdown(header, body, range(4, len(header) - 1))


def summary(rows: list[Row], modes: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Per mode: the median file ratio, and how many models held the task metric."""
    out: list[dict[str, Any]] = []
    for mode in modes:
        rs = [r for r in rows if r.mode == mode]
        ratios = [r.file_ratio for r in rs if r.file_ratio is not None and r.delta is not None]
        deltas = [r.delta for r in rs if r.delta is not None]
        out.append(
            {
                "mode": mode,
                "models": len(rs),
                "scored": len(deltas),
                "median_file_ratio": round(statistics.median(ratios), 2) if ratios else None,
                "held": sum(1 for d in deltas if d >= -WITHIN),
                "gate_failed": sum(1 for r in rs if r.exit_code == GATE_FAILED),
                "failed": sum(1 for r in rs if r.error),
            }
        )
    header = ["mode", "models", "scored", "median file ×", f"metric drop ≤ {WITHIN}",
              "gate failed (exit 8)", "failed"]  # fmt: skip
    body = [
        [s["mode"], str(s["models"]), str(s["scored"]), fmt(s["median_file_ratio"], 2),
         f"{s['held']}/{s['scored']}", str(s["gate_failed"]), str(s["failed"])]
        for s in out
    ]  # fmt: skip
    return markdown(header, body, range(1, len(header))), out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated subset of the kit's models (default: all)")
    p.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help="subset of bits8,bits4,gptq4,search,search_nearest (default: all but the last)",
    )
    p.add_argument(
        "--in-sample",
        action="store_true",
        help="search with --data calibration even if --calibration-data exists",
    )
    p.add_argument("--output", type=Path, default=REPO / "build" / "bench_real.json")
    p.add_argument(
        "--table",
        type=Path,
        nargs="+",
        help="print the condensed per-model table of these bench_real.json files (later "
        "files' rows win) and exit",
    )
    return p.parse_args()


def condensed(rows: list[dict[str, Any]]) -> list[str]:
    """One line per model: each mode's file ratio and held-out metric change (the README's
    table). ``rows`` are bench_real.json rows; a later row of a model and mode wins."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        last[(r["model"], r["mode"])] = r
    modes = [m for m in MODES if any(k[1] == m for k in last)]
    models = list(dict.fromkeys(k[0] for k in last))

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return ""
        if r.get("file_ratio") is None:
            return f"exit {r.get('exit_code')}"
        missed = r.get("pq_gate") in (False, "FAIL")
        delta = r.get("delta")
        change = "—" if delta is None else f"{delta:+.4f}"
        return f"×{r['file_ratio']:.2f}, {change}" + (", missed its budget" if missed else "")

    out = [
        "| model | metric (fp32, held-out) | " + " | ".join(modes) + " |",
        "| --- | --- | " + " | ".join("---" for _ in modes) + " |",
    ]
    for name in models:
        some = next(r for k, r in last.items() if k[0] == name)
        fp32 = f"{some.get('metric') or ''} {fmt(some.get('fp32'), 4)}".strip()
        out.append(
            f"| {name} | {fp32} | " + " | ".join(cell(last.get((name, m))) for m in modes) + " |"
        )
    return out


def main() -> None:
    args = parse_args()
    if args.table:
        rows = [r for path in args.table for r in json.loads(path.read_text())["rows"]]
        print("\n".join(condensed(rows)))
        return
    src = locate_kit_source()
    cache = build_kit(src)
    manifest = json.loads((cache / "manifest.json").read_text())
    all_names = list(manifest["models"])
    names = all_names if not args.models else args.models.split(",")
    modes = args.modes.split(",")
    unknown = [n for n in names if n not in all_names] + [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"bench-real: unknown model or mode: {', '.join(unknown)}")
    pq = prunequant_bin()
    # For real_metrics.py in prunequant's processes: where the kit and evaluate.py are.
    os.environ["PRUNEQUANT_REALMODELS"] = str(cache)
    os.environ["PRUNEQUANT_SHARED"] = str(src.parent)
    out_of_sample = has_calibration_flag(pq) and not args.in_sample
    budget = os.environ.get("PRUNEQUANT_BENCH_TIME_BUDGET", "600")

    t0 = time.perf_counter()
    # Every model's split, so that the held-out kit is complete whatever --models says.
    splits = {n: real_splits.prepare(cache, n, manifest["models"][n]) for n in all_names}
    kit = real_splits.write_kit_manifest(cache, manifest, splits)
    verify_kit(cache, kit, src, names, manifest)

    rows: list[Row] = []
    jobs = [(n, m) for n in names for m in modes]
    for i, (name, mode) in enumerate(jobs, 1):
        extra, data = mode_args(mode, splits[name], out_of_sample, budget)
        log(f"[{i}/{len(jobs)}] {name} {mode} ({data}) ...")
        row = run_one(pq, cache, kit, src, splits[name], mode, extra, data)
        done = row.error or f"file ×{fmt(row.file_ratio, 2)}, Δ {fmt(row.delta, 4)}"
        log(f"[{i}/{len(jobs)}] {name} {mode}: exit {row.exit_code}, {done}, {row.seconds} s")
        rows.append(row)
    total = time.perf_counter() - t0

    search_note = ""
    if "search" in modes:
        how = (
            "--calibration-data calibration --data holdout"
            if out_of_sample
            else "--data calibration (no --calibration-data: prunequant's own gate never sees "
            "the kit's held-out half)"
        )
        search_note = (
            f" search: --metric real_metrics.py:NAME --max-metric-drop {METRIC_DROP} "
            f"(--min-cosine {MIN_COSINE} where the budget column says so), {how}, "
            f"--time-budget {budget}."
        )
    head = (
        f"prunequant on {len(names)} real models (realmodels kit), modes {','.join(modes)}. "
        "Metric: the kit's true-label task metric on the held-out half of each model's samples "
        f"(seed-{real_splits.SEED} permutation; oww_embedding by clip). file × = original / "
        "compressed bytes; "
        "pq cos = prunequant's own min output cosine; pq metric fp32 / pq metric = prunequant's "
        "--metric (the same task metric, bench/real_metrics.py) of the original and the written "
        "model on the data it reported on; pq gate = its budget gate (search); latency × = "
        "candidate / fp32 (kit, median, 1 thread); seconds and peak RSS: the whole prunequant "
        f"run (compress + its own check).{search_note}"
    )
    lines, summ = summary(rows, modes)
    print(head + "\n")
    print("\n".join(table(rows)) + "\n")
    print(f"Per mode (a model holds when its metric drops by at most {WITHIN}):\n")
    print("\n".join(lines))
    print("\nCondensed (file ×, held-out metric change; whether a search missed its budget):\n")
    print("\n".join(condensed([asdict(r) for r in rows])))
    log(f"bench-real: {len(jobs)} runs in {total:.0f} s")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "header": head,
        "kit": str(cache),
        "holdout_kit": str(kit),
        "search_out_of_sample": out_of_sample,
        "time_budget": budget,
        "metric_drop": METRIC_DROP,
        "rows": [asdict(r) for r in rows],
        "summary": summ,
        "total_seconds": round(total, 1),
    }
    args.output.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    log(f"bench-real: wrote {args.output}")


if __name__ == "__main__":
    main()
