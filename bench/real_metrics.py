"""The realmodels kit's task metrics, as ``prunequant --metric bench/real_metrics.py:NAME``.

One function per kit model, named after it (``ppocr_cls``, ``ppocrv4_det``, ...), called by
prunequant as ``NAME(reference, candidate, labels) -> float``. Each scores ``candidate``
(one ``{output: array}`` per batch, in order) against the true labels with the kit's own
``evaluate.py`` metric, imported, not copied: the batches are cut into the per-sample output
lists that ``evaluate.py`` works on (batch 1, outputs in the model's order), ``labels``
into the metadata it reads, and its ``m_NAME`` does the scoring. ``reference`` is not used.

What a metric needs beyond ``labels`` is packed into ``labels`` by :func:`pack_labels`,
which ``real_splits.py`` uses to write the split files (numeric, one row per sample as
prunequant counts them, loadable with ``allow_pickle=False``):

* slanet_plus: a structured array ``rc`` (rows, cols) and ``cells`` (the true cell boxes);
* oww_embedding: per window row, its ``clip``, its position ``pos`` in the clip, the clip's
  window count ``windows`` and the clip's wake-word ``label``;
* the others: the kit's ``labels`` as they are (class ids, voice ids, NaN-padded boxes,
  strings).

What comes from the kit folder (``$PRUNEQUANT_REALMODELS``, default
``~/.cache/prunequant/realmodels``, which ``bench_real.py`` sets): the ddddocr charset and
the openWakeWord heads in ``aux/``, the character lists in ``models/NAME.onnx`` metadata,
and, when prunequant's environment has no scipy (DBNet post-processing of ppocrv4_det), the
kit venv's scipy (same Python and numpy). ``evaluate.py`` is found in
``$PRUNEQUANT_SHARED/realmodels`` (default: ``shared/`` next to the repository).

oww_embedding's metric slides heads of up to 34 windows over whole clips, so it cannot be
computed on a random subset of the rows; it raises on an incomplete clip (see
``NOT_ON_SUBSETS``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METRICS = (
    "ppocr_cls",
    "oww_embedding",
    "ppocrv4_det",
    "resemblyzer_lstm",
    "slanet_plus",
    "ppocrv4_rec",
    "nudenet_320n",
    "ddddocr_old_int8",
    "ddddocr_det",
)
# Models whose metric is only defined on whole groups of rows, which a random split of the
# samples (prunequant's calibration folds) breaks: model -> why.
NOT_ON_SUBSETS = {
    "oww_embedding": "its metric slides wake-word heads (16-34 windows) over whole clips, and "
    "prunequant's calibration folds are random halves of the window rows",
}
# The axis of the outputs that holds the samples, where it is not 0.
OUTPUT_BATCH_AXIS = {"ddddocr_old_int8": 1}  # its output is (T, 1, classes)

Batches = Sequence[dict[str, np.ndarray]]


def kit_dest() -> Path:
    """The built kit (its ``models/`` and ``aux/``)."""
    default = Path.home() / ".cache" / "prunequant" / "realmodels"
    return Path(os.environ.get("PRUNEQUANT_REALMODELS", default)).expanduser()


def kit_source() -> Path:
    """The kit's sources (``evaluate.py``)."""
    return Path(os.environ.get("PRUNEQUANT_SHARED", REPO.parent / "shared")) / "realmodels"


@functools.cache
def kit() -> ModuleType:
    """``evaluate.py``, imported under a private name."""
    path = kit_source() / "evaluate.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: set PRUNEQUANT_SHARED")
    spec = importlib.util.spec_from_file_location("_realmodels_evaluate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A search scores many candidates: read each model's character list once.
    module.metadata = functools.cache(module.metadata)  # type: ignore[attr-defined]
    return module


def _scipy() -> None:
    """Make ``scipy`` importable: prunequant's own, else the kit venv's (same Python)."""
    try:
        importlib.import_module("scipy.ndimage")
    except ImportError:
        v = sys.version_info
        site = kit_dest() / "venv" / "lib" / f"python{v.major}.{v.minor}" / "site-packages"
        if not (site / "scipy").is_dir():
            raise ImportError(f"ppocrv4_det needs scipy: not installed, nor in {site}") from None
        sys.path.append(str(site))  # after prunequant's own packages: only scipy is new
        importlib.import_module("scipy.ndimage")


def pack_labels(name: str, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The ``labels`` array of a split file, from the kit arrays of its samples (a model's
    ``clip`` ids renumbered 0..k-1 in the half); None for a model without a metric here."""
    if name not in METRICS:
        return None
    labels = arrays["labels"]
    if name == "slanet_plus":
        cells = arrays["cells"]
        dtype = [("rc", labels.dtype, labels.shape[1:]), ("cells", cells.dtype, cells.shape[1:])]
        out = np.empty(len(labels), dtype=dtype)
        out["rc"], out["cells"] = labels, cells
        return out
    if name == "oww_embedding":
        clip = arrays["clip"]
        if np.any(np.diff(clip) < 0):
            raise ValueError("oww_embedding: rows are not clip-major")
        counts = np.bincount(clip, minlength=len(labels))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        fields = [(k, np.int64) for k in ("clip", "pos", "windows", "label")]
        out = np.empty(len(clip), dtype=fields)
        out["clip"], out["windows"], out["label"] = clip, counts[clip], labels[clip]
        out["pos"] = np.arange(len(clip)) - starts[clip]
        return out
    return labels


def _oww_meta(
    outs: list[list[np.ndarray]], labels: np.ndarray
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """The kit's ``clip`` and per-clip ``labels`` from the packed rows; whole clips only."""
    clips, first, counts = np.unique(labels["clip"], return_index=True, return_counts=True)
    short = counts != labels["windows"][first]
    if short.any():
        c = int(np.flatnonzero(short)[0])
        raise ValueError(
            f"oww_embedding: clip {clips[c]} has {counts[c]} of its {labels['windows'][first[c]]} "
            f"window rows; the metric needs whole clips ({NOT_ON_SUBSETS['oww_embedding']})"
        )
    clip = np.searchsorted(clips, labels["clip"])
    order = np.lexsort((labels["pos"], clip))
    return [outs[i] for i in order], {"clip": clip[order], "labels": labels["label"][first]}


def _per_sample(name: str, batches: Batches) -> list[list[np.ndarray]]:
    """Each sample's outputs, in the model's output order, with a batch of 1 (``sess.run``)."""
    axis = OUTPUT_BATCH_AXIS.get(name, 0)
    outs = []
    for batch in batches:
        arrays = [np.asarray(a) for a in batch.values()]
        lead = (slice(None),) * axis
        for i in range(arrays[0].shape[axis]):
            outs.append([a[(*lead, slice(i, i + 1))] for a in arrays])
    return outs


def score(name: str, candidate: Batches, labels: np.ndarray | None) -> float:
    """The kit's metric ``m_NAME`` of the outputs ``candidate`` against the ``labels``."""
    if labels is None:
        raise ValueError(f"{name}: the data has no 'labels' (write it with bench/real_splits.py)")
    ev = kit()
    outs = _per_sample(name, candidate)
    if len(outs) != len(labels):
        raise ValueError(f"{name}: {len(outs)} samples in the outputs, {len(labels)} labels")
    meta: dict[str, Any]
    if name == "slanet_plus":
        meta = {"labels": labels["rc"], "cells": labels["cells"]}
    elif name == "oww_embedding":
        outs, meta = _oww_meta(outs, labels)
    else:
        meta = {"labels": labels}
    if name == "ppocrv4_det":
        _scipy()
    return float(ev.METRICS[name](outs, meta, str(kit_dest())))


def ppocr_cls(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Accuracy of the 0/180° prediction."""
    return score("ppocr_cls", candidate, labels)


def oww_embedding(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Wake-phrase accuracy per clip, through the package's fp32 wake-word heads."""
    return score("oww_embedding", candidate, labels)


def ppocrv4_det(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Text-line box F1 at IoU 0.5 (DBNet post-processing)."""
    return score("ppocrv4_det", candidate, labels)


def resemblyzer_lstm(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Speaker-verification ROC-AUC over all utterance pairs."""
    return score("resemblyzer_lstm", candidate, labels)


def slanet_plus(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Mean cell IoU (0 for a table whose rows/cols structure is wrong)."""
    return score("slanet_plus", candidate, labels)


def ppocrv4_rec(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Character accuracy, 1 - CER, of the CTC decoding."""
    return score("ppocrv4_rec", candidate, labels)


def nudenet_320n(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Face box F1 at IoU 0.5."""
    return score("nudenet_320n", candidate, labels)


def ddddocr_old_int8(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Character accuracy, 1 - CER, of the CTC decoding (the kit's charset)."""
    return score("ddddocr_old_int8", candidate, labels)


def ddddocr_det(reference: Batches, candidate: Batches, labels: Any) -> float:
    """Glyph box F1 at IoU 0.5 (YOLOX decoding)."""
    return score("ddddocr_det", candidate, labels)
