"""Evaluation and calibration data: reading, checking against the model, splitting, batching.

A data set is a list of *groups*: samples of one shape, each input's array holding them
along that input's batch axis. Same-shaped files are concatenated into one group; files
(or ``IDX/INPUT`` keys of an ``.npz``) whose shapes differ stay separate groups and are run
batch by batch, so OCR lines of different widths need no padding.

The batch axis of each input comes from the model: the axis that carries the batch's
symbolic dimension (``state [2, batch, 128]`` has it on axis 1), the batch being the symbol
in the most inputs among those that lead an input or appear in several (a recurrent model's
``x [time, batch, features]`` beside ``h0 [1, batch, hidden]``); scalar inputs and, when there
is a batch symbol, fixed-shape inputs without it are shared by all samples; otherwise axis 0.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunequant_cli.errors import EvaluationError, InputError, ResourceError, UsageError, safe_text

LABELS = "labels"
_INDEXED = re.compile(r"^(\d+)/(.+)$")

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy dtype, shape (None for a symbolic dimension), the
    names of its symbolic dimensions, and the axis that holds samples (None: shared)."""

    name: str
    dtype: Any
    shape: tuple[int | None, ...]
    symbols: tuple[str | None, ...] = ()
    batch_axis: int | None = 0


def input_specs(session: Any) -> list[InputSpec]:
    """The inputs of an onnxruntime session, each with its batch axis (see module docstring)."""
    raw = []
    for i in session.get_inputs():
        dtype = _ORT_TYPES.get(i.type)
        if dtype is None:
            raise EvaluationError(
                f"input {safe_text(i.name)} has unsupported type {safe_text(i.type)}"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in i.shape)
        symbols = tuple(d if isinstance(d, str) and d else None for d in i.shape)
        raw.append((i.name, dtype, shape, symbols))
    batch_symbol = _batch_symbol([symbols for _, _, _, symbols in raw])
    specs = []
    for name, dtype, shape, symbols in raw:
        axis: int | None = 0 if shape else None
        if batch_symbol is not None:
            if batch_symbol in symbols:
                axis = symbols.index(batch_symbol)
            elif all(d is not None for d in shape):
                axis = None  # a fixed-shape side input (a scale, a table): shared
        specs.append(InputSpec(name, dtype, shape, symbols, axis))
    return specs


def _batch_symbol(inputs: list[tuple[str | None, ...]]) -> str | None:
    """The symbolic dimension that counts samples: of those that lead an input or appear in
    several, the one in the most inputs, a leading one first (``x [time, batch, f]`` with
    ``h0 [1, batch, h]`` has it in both), then the first seen."""
    counts: dict[str, int] = {}
    order: dict[str, int] = {}
    leading = {s[0] for s in inputs if s and s[0] is not None}
    for symbols in inputs:
        for sym in dict.fromkeys(x for x in symbols if x is not None):
            counts[sym] = counts.get(sym, 0) + 1
            order.setdefault(sym, len(order))
    candidates = [s for s in counts if counts[s] > 1 or s in leading]
    if not candidates:
        return None
    return max(candidates, key=lambda s: (counts[s], s in leading, -order[s]))


def apply_input_shapes(
    specs: list[InputSpec], shapes: tuple[tuple[str, tuple[int, ...]], ...]
) -> list[InputSpec]:
    """Fix symbolic dimensions with ``--input-shape name:1x3x224x224``."""
    by_name = {s.name: s for s in specs}
    for name, dims in shapes:
        spec = by_name.get(name)
        if spec is None:
            known = ", ".join(by_name)
            raise UsageError(
                f"--input-shape names no model input: {safe_text(name, 80)!r} "
                f"(inputs: {safe_text(known)})"
            )
        if len(dims) != len(spec.shape) or any(
            d is not None and d != v for d, v in zip(spec.shape, dims, strict=True)
        ):
            shape = "×".join("?" if d is None else str(d) for d in spec.shape)
            raise UsageError(
                f"--input-shape {safe_text(name, 80)}:{'x'.join(map(str, dims))} does not fit "
                f"input shape {shape}"
            )
        by_name[name] = InputSpec(name, spec.dtype, tuple(dims), spec.symbols, spec.batch_axis)
    return [by_name[s.name] for s in specs]


@dataclass
class Dataset:
    """Samples in groups of one shape, with optional labels (one per sample, group order)."""

    groups: list[dict[str, np.ndarray]]
    axes: dict[str, int | None]
    labels: np.ndarray | None = None
    source: str = "data"  # "data" or "synthetic"
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def group_size(self, group: dict[str, np.ndarray]) -> int:
        return samples_of(group, self.axes)

    @property
    def samples(self) -> int:
        return sum(self.group_size(g) for g in self.groups)

    def take(self, indices: Sequence[int]) -> Dataset:
        """The samples at ``indices`` (sorted), in the same group structure."""
        wanted = np.asarray(sorted(indices), dtype=np.int64)
        groups, start = [], 0
        for g in self.groups:
            n = self.group_size(g)
            local = wanted[(wanted >= start) & (wanted < start + n)] - start
            start += n
            if not local.size:
                continue
            groups.append(
                {
                    k: v if self.axes.get(k) is None else np.take(v, local, axis=self.axes[k])
                    for k, v in g.items()
                }
            )
        labels = None if self.labels is None else self.labels[wanted]
        return Dataset(groups, dict(self.axes), labels, self.source, self.path, list(self.notes))

    def batches(self, batch_size: int, fixed: int | None) -> Iterator[dict[str, np.ndarray]]:
        """Runs the model accepts: each group cut along the batch axes."""
        for g in self.groups:
            n = self.group_size(g)
            step = fixed or batch_size
            if fixed is not None and fixed != n and n % fixed:
                raise UsageError(
                    f"{n} samples cannot be split into batches of the model's fixed size {fixed}"
                )
            if not any(self.axes.get(k) is not None for k in g):
                yield g
                continue
            for s in range(0, n, step):
                yield {
                    k: v
                    if self.axes.get(k) is None
                    else np.take(v, range(s, min(s + step, n)), axis=self.axes[k])
                    for k, v in g.items()
                }


def samples_of(batch: Mapping[str, np.ndarray], axes: Mapping[str, int | None]) -> int:
    """How many samples one batch holds (1 when no input has a batch axis)."""
    for k, v in batch.items():
        axis = axes.get(k, 0)
        if axis is not None and v.ndim > axis:
            return int(v.shape[axis])
    return 1


def cut(
    batch: Mapping[str, np.ndarray], axes: Mapping[str, int | None], start: int, stop: int
) -> dict[str, np.ndarray]:
    """Samples start..stop of one batch, each input cut along its batch axis."""
    return {
        k: v
        if axes.get(k, 0) is None or v.ndim == 0
        else np.take(v, range(start, stop), axis=axes.get(k, 0))
        for k, v in batch.items()
    }


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size the model insists on, if any."""
    fixed = {
        s.shape[s.batch_axis]
        for s in specs
        if s.batch_axis is not None and s.shape[s.batch_axis] is not None
    }
    if len(fixed) > 1:
        raise UsageError(f"the model's inputs disagree on the batch size: {sorted(fixed)}")  # type: ignore[type-var]
    return fixed.pop() if fixed else None


# The most bytes of arrays a data set may declare (its .npy headers), read or not: a few
# megabytes of zip can declare gigabytes. Half of this machine's memory, at most.
def max_data_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _wanted(members: list[str], names: set[str]) -> set[str]:
    """The members of one .npz that loading it can use: the model's inputs and the labels,
    plainly or as ``IDX/NAME``; or a group's one array, which stands for a single input."""
    groups: dict[str | None, dict[str, str]] = {}  # index (None: plain) -> key -> name
    for k in members:
        m = _INDEXED.match(k)
        index, name = (m.group(1), m.group(2)) if m else (None, k)
        groups.setdefault(index, {})[k] = name
    wanted = set()
    for keys in groups.values():
        arrays = [k for k, name in keys.items() if name != LABELS]
        for k, name in keys.items():
            if name == LABELS or name in names or len(arrays) == 1:
                wanted.add(k)
    return wanted


def _npz_member(npz: zipfile.ZipFile, member: str, budget: list[int], path: Path) -> np.ndarray:
    """One ``.npy`` member: its header read and its size spent from ``budget`` before a
    byte of its data is, then exactly the data the header declares (read by us, not by
    numpy's NpzFile, which would prefer a raw member of the same name without .npy)."""
    with npz.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype.hasobject:
            raise ValueError(f"member {member!r} holds Python objects")
        count = int(np.prod(shape, dtype=np.float64))
        _spend(budget, count * dtype.itemsize, path)
        array = np.empty(count, dtype=dtype)
        view, filled = memoryview(array.view(np.uint8)), 0  # type: ignore[arg-type]
        while filled < len(view):
            got = f.readinto(view[filled:])  # type: ignore[attr-defined]
            if not got:
                raise ValueError(f"member {member!r} is shorter than its header says")
            filled += got
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_npz(path: Path, names: set[str], budget: list[int]) -> dict[str, np.ndarray]:
    """The arrays of an .npz that the model can use (other members are never read)."""
    with zipfile.ZipFile(path) as npz:
        members = {n.removesuffix(".npy"): n for n in npz.namelist() if n.endswith(".npy")}
        keep = _wanted(sorted(members), names)
        return {key: _npz_member(npz, members[key], budget, path) for key in sorted(keep)}


def _spend(budget: list[int], nbytes: int, path: Path) -> None:
    budget[0] -= nbytes
    if budget[0] < 0:
        raise ResourceError(
            f"data {safe_text(path)} declares more arrays than the "
            f"{max_data_bytes() / 2**30:.1f} GiB allowed (half of this machine's memory)"
        )


def _read_files(
    path: Path, names: set[str] | None = None
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(file name, arrays) of an ``.npz``/``.npy`` or of every such file in a folder.

    ``names``: the model's inputs; an ``.npz`` member that is neither one of them nor the
    labels (and not a file's single array) is never read. Every array read is first
    sized from its header, and all together may not declare more than max_data_bytes().
    """
    from prunequant_cli.model_io import check_readable_file

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise InputError(f"no .npy or .npz files in data folder {safe_text(path)}")
        for f in files:
            check_readable_file(f, "data file")
    else:
        check_readable_file(path, "data file")
        files = [path]
    budget = [max_data_bytes()]
    out = []
    for f in files:
        try:
            if f.suffix == ".npy":
                header = np.load(f, mmap_mode="r", allow_pickle=False)
                _spend(budget, int(header.nbytes), f)
                out.append((f.name, {f.stem: np.array(header)}))
                del header
            else:
                out.append((f.name, _read_npz(f, names or set(), budget)))
        except ResourceError:
            raise
        except Exception as e:
            raise InputError(f"cannot read data file {safe_text(f)}: {safe_text(e)}") from None
    return out


def _split_indexed(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``000/x``, ``001/x`` … keys: one sample group per index, in index order."""
    if not arrays or not all(_INDEXED.match(k) for k in arrays):
        return [arrays]
    by_index: dict[int, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        m = _INDEXED.match(k)
        assert m is not None
        by_index.setdefault(int(m.group(1)), {})[m.group(2)] = v
    return [by_index[i] for i in sorted(by_index)]


def _fit(a: np.ndarray, spec: InputSpec, notes: list[str]) -> np.ndarray:
    """``a`` as the input wants it (dtype cast without loss), checked against its shape."""
    want = np.dtype(spec.dtype)
    if a.dtype != want:
        if a.dtype.kind == want.kind == "f" or (a.dtype.kind in "iu" and want.kind in "iu"):
            back = a.astype(want).astype(a.dtype)
            if not np.array_equal(back, a, equal_nan=a.dtype.kind == "f"):
                raise UsageError(
                    f"input {safe_text(spec.name)!r} is {want}; "
                    f"the {a.dtype} data does not fit in it"
                )
            note = f"input {spec.name}: {a.dtype} data cast to {want}"
            if note not in notes:
                notes.append(note)
            a = a.astype(want)
        else:
            raise UsageError(f"input {safe_text(spec.name)!r} is {want} but the data is {a.dtype}")
    if not spec.shape and a.size == 1:
        return a.reshape(())
    if a.ndim != len(spec.shape) or any(
        d is not None and d != s and i != spec.batch_axis
        for i, (d, s) in enumerate(zip(spec.shape, a.shape, strict=True))
    ):
        shape = "×".join("?" if d is None else str(d) for d in spec.shape)
        have = "×".join(map(str, a.shape))
        raise UsageError(f"input {safe_text(spec.name)!r} expects shape {shape}, data has {have}")
    return a


def load_dataset(path: Path, specs: list[InputSpec]) -> Dataset:
    """Inputs keyed by name (checked against the model) in groups of one shape, and labels."""
    notes: list[str] = []
    axes = {s.name: s.batch_axis for s in specs}
    groups: list[dict[str, np.ndarray]] = []
    labels: list[np.ndarray] = []
    names = {s.name for s in specs}
    raws = [g for _, arrays in _read_files(path, names) for g in _split_indexed(arrays)]
    if len(raws) > 1 and not all(_complete(r, specs) for r in raws):
        if len(specs) == 1:  # one input: each file's one array is that input, whatever its name
            raws = [_as_input(r, specs[0].name) for r in raws]
        raws = [_by_name(raws, axes)]
    for raw in raws:
        raw = dict(raw)
        label = raw.pop(LABELS, None)
        if len(specs) == 1 and specs[0].name not in raw and len(raw) == 1:
            only = next(iter(raw))
            note = f"data array {only!r} used as input {specs[0].name!r}"
            if note not in notes:
                notes.append(note)
            raw = {specs[0].name: raw[only]}
        group = {}
        for spec in specs:
            if spec.name not in raw:
                have = ", ".join(sorted(raw)) or "nothing"
                raise UsageError(
                    f"data has no array for input {safe_text(spec.name)!r} "
                    f"(it has: {safe_text(have)})"
                )
            group[spec.name] = _fit(raw[spec.name], spec, notes)
        sizes = {
            int(a.shape[axes[k]])  # type: ignore[index]
            for k, a in group.items()
            if axes[k] is not None and a.ndim
        }
        if len(sizes) > 1:
            raise UsageError(f"data arrays disagree on the number of samples: {sorted(sizes)}")
        n = sizes.pop() if sizes else 1
        if label is not None:
            label = np.asarray(label)
            if label.ndim == 0:
                label = label.reshape(1)
            if label.shape[0] != n:
                raise UsageError(f"data has {label.shape[0]} labels for {n} samples")
            labels.append(label)
        groups.append(group)
    if labels and len(labels) != len(groups):
        raise UsageError("some data files have labels and others do not")
    groups = _merge_same_shapes(groups, axes)
    all_labels = None
    if labels:
        try:
            all_labels = np.concatenate(labels)
        except ValueError as e:
            raise UsageError(f"labels of the data files do not stack: {safe_text(e)}") from None
    if len(groups) > 1:
        notes.append(f"data in {len(groups)} groups of different shapes, run one by one")
    dataset = Dataset(groups, axes, all_labels, "data", path, notes)
    if dataset.samples == 0:
        raise UsageError(f"data {safe_text(path)} has no samples")
    return dataset


def _complete(raw: dict[str, np.ndarray], specs: list[InputSpec]) -> bool:
    """Whether one file (or indexed sample) holds every input by itself."""
    have = set(raw) - {LABELS}
    return all(s.name in have for s in specs) or (len(specs) == 1 and len(have) == 1)


def _as_input(raw: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    others = [k for k in raw if k != LABELS]
    if len(others) == 1 and others[0] != name:
        raw = {(name if k == others[0] else k): v for k, v in raw.items()}
    return raw


def _by_name(
    raws: list[dict[str, np.ndarray]], axes: dict[str, int | None]
) -> dict[str, np.ndarray]:
    """Files that each hold some arrays: arrays of one name are concatenated in file order."""
    parts: dict[str, list[np.ndarray]] = {}
    for raw in raws:
        for k, v in raw.items():
            parts.setdefault(k, []).append(v)
    try:
        return {
            k: v[0] if len(v) == 1 else np.concatenate(v, axis=axes.get(k) or 0)
            for k, v in parts.items()
        }
    except (ValueError, np.exceptions.AxisError) as e:
        raise UsageError(f"data files do not stack: {safe_text(e)}") from None


def _merge_same_shapes(
    groups: list[dict[str, np.ndarray]], axes: dict[str, int | None]
) -> list[dict[str, np.ndarray]]:
    """Consecutive groups whose arrays differ only along the batch axes become one."""

    def key(g: dict[str, np.ndarray]) -> tuple[Any, ...]:
        return tuple(
            (k, a.dtype.str, tuple(d for i, d in enumerate(a.shape) if i != axes.get(k)))
            if axes.get(k) is not None
            else (k, a.dtype.str, a.shape, a.tobytes())
            for k, a in sorted(g.items())
        )

    merged: list[list[dict[str, np.ndarray]]] = []
    keys: list[tuple[Any, ...]] = []
    for g in groups:
        k = key(g)
        if keys and keys[-1] == k:
            merged[-1].append(g)
        else:
            merged.append([g])
            keys.append(k)
    out = []
    for run in merged:
        if len(run) == 1:
            out.append(run[0])
            continue
        out.append(
            {
                k: run[0][k]
                if axes.get(k) is None
                else np.concatenate([g[k] for g in run], axis=axes[k])
                for k in run[0]
            }
        )
    return out


# Sizes tried, in order, for the free (symbolic, non-batch) dimensions of synthetic inputs,
# until the original model runs: image-like inputs (4-D float) take sizes images have, any
# other free dimension (a sequence, a width) lengths sequences have; 1 last, as the smallest
# size that a model with any shape arithmetic may still accept.
IMAGE_SIZES = (224, 320, 640, 256, 32, 1)
SEQUENCE_SIZES = (16, 32, 64, 128, 256, 512, 1)


def free_dimensions(specs: list[InputSpec]) -> dict[str, bool]:
    """The free dimensions of the inputs, keyed ``symbol`` (or ``input:axis`` when unnamed),
    and whether each is image-like (the first input it appears in is 4-D float)."""
    free: dict[str, bool] = {}
    for spec in specs:
        image = len(spec.shape) == 4 and np.dtype(spec.dtype).kind == "f"
        for axis, dim in enumerate(spec.shape):
            if dim is None and axis != spec.batch_axis:
                free.setdefault(_free_key(spec, axis), image)
    return free


def _free_key(spec: InputSpec, axis: int) -> str:
    symbol = spec.symbols[axis] if axis < len(spec.symbols) else None
    return symbol or f"{spec.name}:{axis}"


def size_attempts(specs: list[InputSpec]) -> list[list[InputSpec]]:
    """The inputs with their free dimensions fixed, one list per attempt, in the order tried
    (one attempt, unchanged, when nothing is free)."""
    free = free_dimensions(specs)
    if not free:
        return [specs]

    def nth(sizes: tuple[int, ...], k: int) -> int:
        return sizes[min(k, len(sizes) - 1)]  # the last size once a list runs out

    attempts = []
    for k in range(max(len(IMAGE_SIZES), len(SEQUENCE_SIZES))):
        size = {
            key: nth(IMAGE_SIZES if image else SEQUENCE_SIZES, k) for key, image in free.items()
        }
        trial = []
        for spec in specs:
            shape = tuple(
                size[_free_key(spec, axis)] if d is None and axis != spec.batch_axis else d
                for axis, d in enumerate(spec.shape)
            )
            trial.append(InputSpec(spec.name, spec.dtype, shape, spec.symbols, spec.batch_axis))
        if trial not in attempts:
            attempts.append(trial)
    return attempts


def synthetic_dataset(
    specs: list[InputSpec], samples: int, seed: int, values: Mapping[str, float] | None = None
) -> Dataset:
    """Seeded inputs: the batch axis holds ``samples`` when free, other free dims are 1;
    an input named in ``values`` holds that value everywhere."""
    rng = np.random.default_rng(seed)
    values = values or {}
    unknown = sorted(set(values) - {s.name for s in specs})
    if unknown:
        names = ", ".join(s.name for s in specs)
        raise UsageError(
            f"--input-value names no model input: {safe_text(unknown[0], 80)!r} "
            f"(inputs: {safe_text(names)})"
        )
    group = {}
    for spec in specs:
        shape = [d if d is not None else 1 for d in spec.shape]
        if spec.batch_axis is not None and spec.shape[spec.batch_axis] is None:
            shape[spec.batch_axis] = samples
        kind = np.dtype(spec.dtype).kind
        if spec.name in values:
            group[spec.name] = _filled(spec, shape, values[spec.name])
            continue
        if kind == "f":
            a = rng.standard_normal(shape).astype(spec.dtype)
        elif kind == "b":
            a = rng.integers(0, 2, shape).astype(np.bool_)
        else:  # ids, indices: stay in the smallest valid range
            a = rng.integers(0, 2, shape).astype(spec.dtype)
        group[spec.name] = a
    return Dataset([group], {s.name: s.batch_axis for s in specs}, None, "synthetic")


def _filled(spec: InputSpec, shape: list[int], value: float) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iub" and value != int(value):
        raise UsageError(f"--input-value {safe_text(spec.name, 80)}: the input is {dtype}")
    if dtype.kind in "iu" and not np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
        raise UsageError(f"--input-value {safe_text(spec.name, 80)}: {value:g} is outside {dtype}")
    return np.full(shape, value, dtype=dtype)


def split_indices(
    n: int, fraction: float, seed: int, labels: np.ndarray | None
) -> tuple[list[int], list[int]]:
    """(calibration, held-out) sample indices: a seeded split, stratified by label when the
    labels are one class id per sample, so both parts see every class."""
    rng = np.random.default_rng(seed)
    strata: list[np.ndarray]
    if labels is not None and labels.ndim == 1 and labels.dtype.kind in "iu" and len(labels) == n:
        strata = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    else:
        strata = [np.arange(n)]
    # round(fraction × n) held out in all, shared among the classes by largest remainder
    total = round(fraction * n)
    quotas = [fraction * len(idx) for idx in strata]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(strata)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: max(0, total - sum(counts))]:
        counts[i] += 1
    held: list[int] = []
    for idx, k in zip(strata, counts, strict=True):
        held.extend(int(i) for i in rng.permutation(idx)[:k])
    held_set = set(held)
    calibration = [i for i in range(n) if i not in held_set]
    if n >= 2 and not calibration:
        calibration = [held.pop()]
    return sorted(calibration), sorted(held)
