"""Recipes: per-weight settings in a small TOML file, written by a search, applied by --recipe.

```toml
# prunequant recipe
schema_version = 1
format = "auto"
bias_correction = true   # biases of Gemm/Conv absorb the mean error (needs --data)

[tensors."conv1.weight"]
bits = 4
quant = "uniform"
block = 32             # one scale per 32 input weights (2-D weights)
sparsity = 0.5

[tensors."fc2.weight"]
keep = true            # left in float
```
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prunequant_cli.config import CompressConfig
from prunequant_cli.errors import InputError, UsageError, safe_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_VERSION = 1
MAX_RECIPE_BYTES = 64 << 20  # a recipe is a line or two per weight
_KEYS = {"bits", "quant", "block", "sparsity", "threshold", "keep", "rounding"}


def _toml_string(text: str) -> str:
    # A JSON string with non-ASCII kept is a valid TOML basic string.
    return json.dumps(text, ensure_ascii=False)


def _setting_lines(config: CompressConfig) -> list[str]:
    if config.bits is None and config.prune_method is None:
        return ["keep = true"]
    lines = []
    if config.bits is not None:
        lines.append(f"bits = {config.bits}")
        if config.bits != 16:
            lines.append(f"quant = {_toml_string(config.quant)}")
        if config.block_size:
            lines.append(f"block = {config.block_size}")
        if config.rounding != "nearest":
            lines.append(f"rounding = {_toml_string(config.rounding)}")
    if config.sparsity is not None:
        lines.append(f"sparsity = {config.sparsity!r}")
    if config.threshold is not None:
        lines.append(f"threshold = {config.threshold!r}")
    return lines


def recipe_text(config: CompressConfig, comment: str = "") -> str:
    """The recipe for ``config``'s per-weight settings (and its storage format)."""
    lines = ["# prunequant recipe: per-weight settings."]
    lines += [f"# {line}" for line in comment.splitlines()]
    lines += [
        "# Apply with: prunequant compress MODEL OUTPUT --recipe THIS_FILE",
        f"schema_version = {RECIPE_VERSION}",
        f"format = {_toml_string(config.format)}",
        f"bias_correction = {'true' if config.bias_correction else 'false'}",
    ]
    for name in sorted(config.per_tensor):
        lines += ["", f"[tensors.{_toml_string(name)}]", *_setting_lines(config.per_tensor[name])]
    return "\n".join(lines) + "\n"


# What each per-weight setting must be (bool is not an int here, though Python says so).
_TYPES: dict[str, tuple[type, ...]] = {
    "bits": (int,),
    "quant": (str,),
    "block": (int,),
    "sparsity": (int, float),
    "threshold": (int, float),
    "keep": (bool,),
    "rounding": (str,),
}
_TOP_LEVEL = {"schema_version", "format", "bias_correction", "tensors"}


def _typed(where: str, key: str, value: Any, kinds: tuple[type, ...]) -> Any:
    if isinstance(value, bool) != (kinds == (bool,)) or not isinstance(value, kinds):
        want = (
            {"int": "an integer", "str": "a string", "bool": "true or false"}.get(
                kinds[0].__name__, "a number"
            )
            if len(kinds) == 1
            else "a number"
        )
        raise UsageError(f"recipe {where}: {key} must be {want}, got {safe_text(repr(value))}")
    return value


def _tensor_config(name: str, table: Any) -> CompressConfig:
    where = f"entry {safe_text(name)!r}"
    if not isinstance(table, dict) or not set(table) <= _KEYS:
        extra = sorted(set(table) - _KEYS) if isinstance(table, dict) else table
        raise UsageError(f"recipe {where} has unknown settings: {safe_text(extra)}")
    for key, value in table.items():
        _typed(where, key, value, _TYPES[key])
    if table.get("block") is not None and table["block"] < 2:
        raise UsageError(f"recipe {where}: block must be 2 or more, got {table['block']}")
    if table.get("keep"):
        if set(table) != {"keep"}:
            raise UsageError(f"recipe {where}: keep = true takes no other settings")
        return CompressConfig(bits=None)
    return CompressConfig(
        bits=table.get("bits"),
        quant=table.get("quant", "uniform"),
        block_size=table.get("block"),
        sparsity=table.get("sparsity"),
        threshold=table.get("threshold"),
        rounding=table.get("rounding", "nearest"),
    )


def read_recipe(path: Path, base: CompressConfig | None = None) -> CompressConfig:
    """A config whose per-weight settings come from the recipe at ``path``."""
    from prunequant_cli.model_io import check_readable_file

    check_readable_file(path, "recipe")  # not a FIFO or a device: they would never end
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise InputError(f"recipe {safe_text(path)} is over {MAX_RECIPE_BYTES >> 20} MiB")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"recipe not found: {safe_text(path)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read recipe {safe_text(path)}: {safe_text(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"recipe {safe_text(path)} is not valid TOML: {safe_text(e)}") from None
    except RecursionError:
        raise UsageError(f"recipe {safe_text(path)} is nested too deeply") from None
    version = data.get("schema_version")
    if type(version) is not int or version != RECIPE_VERSION:
        raise UsageError(f"recipe {safe_text(path)} has no schema_version = {RECIPE_VERSION}")
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise UsageError(f"recipe {safe_text(path)} has unknown keys: {safe_text(unknown)}")
    tensors = data.get("tensors", {})
    if not isinstance(tensors, dict):
        raise UsageError(f"recipe {safe_text(path)}: [tensors] must be a table")
    base = base or CompressConfig()
    where = safe_text(path)
    return CompressConfig(
        bits=base.bits,
        format=_typed(where, "format", data.get("format", base.format), (str,)),
        bias_correction=_typed(
            where, "bias_correction", data.get("bias_correction", base.bias_correction), (bool,)
        ),
        keep_quantized=base.keep_quantized,
        strip=base.strip,
        exclude=base.exclude,
        per_tensor={name: _tensor_config(name, t) for name, t in tensors.items()},
    )
