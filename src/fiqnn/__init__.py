"""fiqnn: BatchNorm-free, fully integer quantized CNNs by progressive tandem learning.

The public API is what ``__all__`` lists. Importing fiqnn never imports onnx,
onnxruntime or a C compiler; those load only when an export asks for them.
"""

from .arith import ARITH_VERSION as ARITH_VERSION
from .config import DistillConfig as DistillConfig
from .config import TeacherConfig as TeacherConfig
from .convert import convert as convert
from .data import load_data as load_data
from .distill import distill as distill
from .errors import FiqnnError as FiqnnError
from .execute import run as run
from .fximport import import_model as import_model
from .graph import IntGraph as IntGraph
from .graph import load as load
from .graph import save as save
from .models import MODELS as MODELS
from .models import build_model as build_model
from .teacher import load_teacher as load_teacher
from .teacher import train_teacher as train_teacher

__version__ = "0.1.0"

__all__ = [
    "ARITH_VERSION",
    "DistillConfig",
    "FiqnnError",
    "IntGraph",
    "MODELS",
    "TeacherConfig",
    "build_model",
    "convert",
    "distill",
    "import_model",
    "load",
    "load_data",
    "load_teacher",
    "run",
    "save",
    "train_teacher",
]
