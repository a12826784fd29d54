"""Calibration / held-out splits of the realmodels kit, and a kit that scores held-out rows only.

A compressor tuned on the very rows it is scored on flatters itself, so ``bench_real.py``
hands prunequant one half of each model's samples for calibration and scores the result
on the other half. This module makes those halves, deterministically:

* ``CACHE/splits/NAME/calibration.npz`` and ``holdout.npz``: the model's input arrays and
  ``labels``, one row per sample as prunequant counts them, in the form the metric
  ``real_metrics.NAME`` reads (``real_metrics.pack_labels``: slanet_plus's ``cells`` and
  oww_embedding's clip ids go into a structured ``labels``); no other keys. For
  ddddocr_old_int8 (batch 1, variable width) also ``calibration/`` and ``holdout/`` with one
  ``.npz`` per sample at its native width (its input and a one-row ``labels``): what
  prunequant is given, as the kit scores native widths (the ``.npz`` files hold the kit's
  white-padded rows).
* ``CACHE/holdout-kit/``: a copy of the kit's layout that ``evaluate.py`` accepts, whose
  ``data/NAME.npz`` holds the held-out rows of every key, inputs and labels alike, so the
  real task metric is computed on samples the compressor never calibrated on.

The split is over *samples* as the metric sees them: a row of the input array for most
models, a clip for oww_embedding (its rows are sliding windows of 48 clips, and its metric
slides a wake-word head over the windows of each clip in order, so a clip cannot be cut in
two). Indices are kept sorted in both halves so that order-sensitive keys stay in order.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import real_metrics

# PRUNEQUANT_BENCH_SPLIT_SEED picks another split (to see how much a result owes to which
# samples fell in which half); the cached splits are rebuilt when it changes.
SEED = int(os.environ.get("PRUNEQUANT_BENCH_SPLIT_SEED", "0"))
# Bump when the layout of what is written changes: a stale split is then rebuilt.
SCHEME = 2

# Models whose rows are grouped: rows -> group id key. ``labels`` then holds one entry per
# group, the id key is renumbered 0..k-1 within each half, and every other key is per row.
GROUP_KEY = {"oww_embedding": "clip"}


@dataclass(frozen=True)
class Split:
    """Where the two halves of one model's inputs are, in the forms prunequant reads."""

    name: str
    calibration: Path  # what to pass to prunequant for calibration
    holdout: Path  # what to pass to prunequant for evaluation
    n_calibration: int  # samples (rows, or clips for a grouped model)
    n_holdout: int
    note: str  # anything a reader of the table should know about the data passed


def halves(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted sample indices of the calibration half and of the held-out half.

    A seeded permutation, first half calibration, second half held-out (the extra sample
    of an odd count goes to the held-out half).
    """
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def _select(
    arrays: dict[str, np.ndarray], name: str, inputs: list[str], units: np.ndarray, n_units: int
) -> dict[str, np.ndarray]:
    """Every key of a kit ``.npz`` restricted to the samples ``units``, consistently."""
    group = GROUP_KEY.get(name)
    if group is None:
        for k, a in arrays.items():
            if a.shape[0] != n_units:
                raise ValueError(f"{name}: key {k!r} has {a.shape[0]} rows, expected {n_units}")
        return {k: a[units] for k, a in arrays.items()}
    ids = arrays[group]
    if np.any(np.diff(ids) < 0) or ids.min() < 0 or ids.max() >= n_units:
        raise ValueError(f"{name}: {group!r} is not a clip-major id in 0..{n_units - 1}")
    rows = np.isin(ids, units)
    out: dict[str, np.ndarray] = {}
    for k, a in arrays.items():
        if k == group:
            out[k] = np.searchsorted(units, ids[rows]).astype(ids.dtype)
        elif k == "labels":
            out[k] = a[units]
        elif a.shape[0] == len(ids):
            out[k] = a[rows]
        else:
            raise ValueError(f"{name}: key {k!r} is neither per row nor per {group}")
    for k in inputs:
        if k not in out:
            raise ValueError(f"{name}: data has no array for input {k!r}")
    return out


def _unit_count(arrays: dict[str, np.ndarray], name: str, inputs: list[str]) -> int:
    """How many samples the metric sees: groups for a grouped model, else rows."""
    if name in GROUP_KEY:
        return len(arrays["labels"])
    return int(arrays[inputs[0]].shape[0])


def _stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save(path: Path, arrays: dict[str, Any]) -> None:
    """Uncompressed: prunequant reads the inputs back whole, and a few MB of disk is cheap."""
    np.savez(path, **arrays)


def _write_folder(
    folder: Path, files: list[Path], keys: list[str], labels: np.ndarray | None
) -> None:
    """One ``.npz`` per sample, its input keys and its row of ``labels`` (when given), file
    names (and so order) kept."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        with np.load(f) as z:
            arrays = {k: z[k] for k in keys}
        if labels is not None:
            arrays["labels"] = labels[i : i + 1]
        _save(folder / f.name, arrays)


def _with_labels(name: str, inputs: list[str], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """What prunequant is given: the inputs and, for a model with a metric, ``labels``."""
    out: dict[str, Any] = {k: arrays[k] for k in inputs}
    labels = real_metrics.pack_labels(name, arrays)
    if labels is not None:
        out["labels"] = labels
    return out


def _link(target: Path, link: Path) -> None:
    """A relative symlink ``link -> target`` (replaced if present); a copy where not allowed."""
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    try:
        link.symlink_to(os.path.relpath(target, link.parent))
    except OSError:
        if target.is_dir():
            shutil.copytree(target, link)
        else:
            shutil.copy2(target, link)


def prepare(cache: Path, name: str, entry: dict[str, Any]) -> Split:
    """Write (or reuse) the splits of one model and its part of ``CACHE/holdout-kit``.

    ``entry`` is the model's record in the kit's ``manifest.json``. The work is skipped
    when a stamp says it was done for the same data digest and scheme.
    """
    inputs = list(entry["inputs"])
    out = cache / "splits" / name
    kit = cache / "holdout-kit"
    per_sample = cache / "data" / name
    variable = per_sample.is_dir()
    cal_npz, hold_npz = out / "calibration.npz", out / "holdout.npz"
    stamp_path = out / "split.json"
    key = {"scheme": SCHEME, "seed": SEED, "data_digest": entry["data_digest"]}
    stamp = _stamp(stamp_path)
    written = [cal_npz, hold_npz, kit / "data" / f"{name}.npz"]
    if variable:
        written += [out / "calibration", out / "holdout", kit / "data" / name]
    fresh = stamp is not None and all(stamp.get(k) == v for k, v in key.items())
    if not fresh or not all(p.exists() for p in written):
        with np.load(cache / "data" / f"{name}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        n = _unit_count(arrays, name, inputs)
        cal, hold = halves(n)
        out.mkdir(parents=True, exist_ok=True)
        (kit / "data").mkdir(parents=True, exist_ok=True)
        calib = _select(arrays, name, inputs, cal, n)
        held = _select(arrays, name, inputs, hold, n)
        cal_arrays = _with_labels(name, inputs, calib)
        hold_arrays = _with_labels(name, inputs, held)
        _save(cal_npz, cal_arrays)
        _save(hold_npz, hold_arrays)
        _save(kit / "data" / f"{name}.npz", held)
        if variable:
            files = sorted(per_sample.glob("*.npz"))
            if len(files) != n:
                raise ValueError(f"{name}: {len(files)} per-sample files for {n} rows")
            for i, f in enumerate(files):  # the kit pairs file i with row i: check it
                with np.load(f) as z:
                    if "labels" in z.files and str(z["labels"]) != str(arrays["labels"][i]):
                        raise ValueError(f"{name}: {f.name} does not match row {i}")
            _write_folder(
                out / "calibration", [files[i] for i in cal], inputs, cal_arrays.get("labels")
            )
            _write_folder(
                out / "holdout", [files[i] for i in hold], inputs, hold_arrays.get("labels")
            )
            kit_dir = kit / "data" / name
            if kit_dir.exists():
                shutil.rmtree(kit_dir)
            kit_dir.mkdir()
            for i in hold:
                _link(files[i], kit_dir / files[i].name)
        stamp = dict(key, n=n, unit=GROUP_KEY.get(name, "row"))
        stamp.update(calibration=cal.tolist(), holdout=hold.tolist())
        stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    assert stamp is not None
    note = ""
    if variable:
        note = "variable width: prunequant gets one file per sample at its native width"
    return Split(
        name=name,
        calibration=out / "calibration" if variable else cal_npz,
        holdout=out / "holdout" if variable else hold_npz,
        n_calibration=len(stamp["calibration"]),
        n_holdout=len(stamp["holdout"]),
        note=note,
    )


def write_kit_manifest(cache: Path, manifest: dict[str, Any], splits: dict[str, Split]) -> Path:
    """``CACHE/holdout-kit``: its manifest, and links to the kit's ``models/`` and ``aux/``.

    The manifest is the kit's own, with each model's sample count and data shapes
    replaced by the held-out ones, so that the folder reads as a kit of its own.
    """
    kit = cache / "holdout-kit"
    kit.mkdir(parents=True, exist_ok=True)
    for d in ("models", "aux"):
        _link(cache / d, kit / d)
    m = json.loads(json.dumps(manifest))
    m["holdout_of"] = str(cache)
    m["holdout_split"] = (
        f"seeded permutation (seed {SEED}) of the sample indices; second half held out "
        f"(oww_embedding: by clip); see splits/NAME/split.json"
    )
    m["models"] = {k: v for k, v in m["models"].items() if k in splits}
    for name, e in m["models"].items():
        with np.load(kit / "data" / f"{name}.npz") as z:
            e["data_shapes"] = {k: list(z[k].shape) for k in z.files}
        e["n_samples"] = e["data_shapes"][next(iter(e["inputs"]))][0]  # rows, as evaluate.py
    path = kit / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(m, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return kit
