"""prunequant: prune and quantize the weights of ONNX models, verified in onnxruntime.

The command-line tool is a thin layer over this package::

    from prunequant_cli import compress, CompressConfig

    report = compress("model.onnx", "model.small.onnx", CompressConfig(threshold=0.01, bits=8))
    print(report.ratio, report.evaluation.accuracy_drop_points)
"""

from __future__ import annotations

from prunequant_cli.config import CompressConfig, EvalConfig, GateConfig
from prunequant_cli.errors import PrunequantError
from prunequant_cli.pipeline import compare, compress, inspect_model

__version__ = "0.1.0"

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
