"""fiqnn: BatchNorm-free, fully integer quantized CNNs by progressive tandem learning.

The public API is what ``__all__`` lists. Importing fiqnn never imports onnx,
onnxruntime or a C compiler; those load only when an export asks for them.
"""

from .arith import ARITH_VERSION as ARITH_VERSION
from .config import TeacherConfig as TeacherConfig
from .data import load_data as load_data
from .errors import FiqnnError as FiqnnError
from .models import MODELS as MODELS
from .models import build_model as build_model
from .teacher import load_teacher as load_teacher
from .teacher import train_teacher as train_teacher

__version__ = "0.1.0"

__all__ = [
    "ARITH_VERSION",
    "FiqnnError",
    "MODELS",
    "TeacherConfig",
    "build_model",
    "load_data",
    "load_teacher",
    "train_teacher",
]
