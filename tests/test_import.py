"""`import fiqnn` stays light, and its public API is exactly ``__all__``."""

import inspect
import subprocess
import sys

# Exporters and plots load these on demand; importing fiqnn must not.
HEAVY = ["onnx", "onnxruntime", "matplotlib", "sklearn", "PIL", "distutils", "setuptools"]


def test_import_is_light():
    code = f"import sys, fiqnn; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_all():
    import fiqnn

    public = {n for n, v in vars(fiqnn).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == set(fiqnn.__all__)
