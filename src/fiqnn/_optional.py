"""Optional dependencies: import one, or fail in one line that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# top-level module -> pyproject extra
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "tflite": "tflite", "flatbuffers": "tflite",
          "ai_edge_litert": "tflite", "tflite_micro": "tflm", "qonnx": "qonnx", "matplotlib": "plots"}


def optional_import(name: str, needed_by: str) -> ModuleType:
    """Import module ``name`` (e.g. ``"onnxruntime"``, ``"matplotlib.pyplot"``) for ``needed_by``
    (e.g. ``"the onnx backend"``), or raise :class:`~fiqnn.errors.MissingExtraError`:
    "the onnx backend needs onnx and onnxruntime: pip install 'fiqnn[onnx]'"."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        extra = EXTRAS[name.split(".")[0]]
        packages = " and ".join(m for m, x in EXTRAS.items() if x == extra)
        broken = "" if e.name in (None, name, name.split(".")[0]) else f" ({name} failed to import: {e})"
        raise MissingExtraError(f"{needed_by} needs {packages}: pip install 'fiqnn[{extra}]'{broken}") from None
