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


def test_cli_help_and_usage_errors_do_not_import_torch():
    """`fiqnn --help` and a usage error are instant, and a Ctrl-C there never lands in torch's import."""
    code = ("import sys, fiqnn.cli; light = 'torch' not in sys.modules; "
            "codes = fiqnn.cli.main(['--help']), fiqnn.cli.main(['distill']); "
            "print(light, codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "True (0, 2) False"


def test_public_api_is_all():
    """__all__ is what dir() lists and what loads on first use; submodules named like a public
    function (fiqnn.distill, fiqnn.convert), imported meanwhile, do not hide it."""
    import fiqnn
    import fiqnn.jobs  # noqa: F401  (imports the submodules fiqnn.train.distill and fiqnn.train.convert)
    from fiqnn import convert, distill

    public = {n for n in dir(fiqnn) if not n.startswith("_") and not inspect.ismodule(getattr(fiqnn, n))}
    assert public == set(fiqnn.__all__)
    assert inspect.isfunction(distill) and fiqnn.distill is distill and inspect.isfunction(convert)
    assert fiqnn.parallel.setup  # a submodule loads on first use too, as `import fiqnn` once left it
