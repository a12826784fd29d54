"""prunequant: prune and quantize the weights of ONNX models, verified in onnxruntime.

The command-line tool is a thin layer over this package::

    from prunequant_cli import compress, CompressConfig

    report = compress("model.onnx", "model.small.onnx", CompressConfig(threshold=0.01, bits=8))
    print(report.ratio, report.evaluation.accuracy_drop_points)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunequant_cli.config import CompressConfig, EvalConfig, GateConfig
    from prunequant_cli.errors import PrunequantError
    from prunequant_cli.pipeline import compare, compress, inspect_model

__version__ = "0.1.0"


class _OnFirstUse(importlib.abc.MetaPathFinder):
    """Loads the modules in ``names`` when something first reads from them, not when they
    are imported. onnx_ir imports sympy (for symbolic shape arithmetic, which prunequant
    never asks of it) and builds a table of sympy functions at import: 0.17 s of every
    run, a third of a small model's."""

    names = frozenset({"sympy", "onnx_ir._symbolic_shapes"})

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


if not any(isinstance(f, _OnFirstUse) for f in sys.meta_path):
    sys.meta_path.insert(0, _OnFirstUse())

# Imported on first use, so that the command line starts (and answers a signal) before
# onnx and numpy are loaded.
_LAZY = {
    "CompressConfig": "prunequant_cli.config",
    "EvalConfig": "prunequant_cli.config",
    "GateConfig": "prunequant_cli.config",
    "PrunequantError": "prunequant_cli.errors",
    "compare": "prunequant_cli.pipeline",
    "compress": "prunequant_cli.pipeline",
    "inspect_model": "prunequant_cli.pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prunequant_cli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CompressConfig",
    "EvalConfig",
    "GateConfig",
    "PrunequantError",
    "__version__",
    "compare",
    "compress",
    "inspect_model",
]
