"""fiqnn: BatchNorm-free, fully integer quantized CNNs by progressive tandem learning.

The public API is what ``__all__`` lists. Its names load on first use (PEP 562), so
``import fiqnn`` -- and with it the CLI's ``--help`` and usage errors -- does not import
torch; onnx, onnxruntime and a C compiler load only when an export asks for them.
"""

import importlib as _importlib
import logging as _logging

__version__ = "0.1.0"

# Library code logs progress to the "fiqnn" logger (info level) and prints nothing; an
# application shows it with logging.basicConfig(level=logging.INFO), the CLI on stderr.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

_SOURCES = {  # public name -> the submodule that defines it
    "ARITH_VERSION": "integer.arith",
    "ArraySplit": "data",
    "DataBundle": "data",
    "DistillConfig": "config",
    "FiqnnError": "errors",
    "IntGraph": "integer.graph",
    "MODELS": "nets.models",
    "TeacherConfig": "config",
    "build_model": "nets.models",
    "convert": "train.convert",
    "distill": "train.distill",
    "import_model": "nets.fximport",
    "load": "integer.modelfile",
    "load_data": "data",
    "load_teacher": "train.teacher",
    "run": "integer.execute",
    "save": "integer.modelfile",
    "train_teacher": "train.teacher",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> object:
    """A public name, or a submodule (``fiqnn.parallel``), imported on first use and kept here."""
    if name in _SOURCES:
        value = getattr(_importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    else:
        try:
            value = _importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
