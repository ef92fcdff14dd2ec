"""The new user surface: help that lists the registry, one rule for output paths, one-line
errors for missing extras, one calling convention for every backend, and a quiet library."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys

import numpy as np
import pytest

import fiqnn
from fiqnn.config import DistillConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(IntGraph, its model.npz path, uint8 test images): a fold W4A4 student of an untrained tiny
    teacher on the synthetic data (no training, about a second)."""
    data = fiqnn.load_data("synthetic")
    teacher = fiqnn.build_model("tiny", data.num_classes, data.in_shape)
    student = fiqnn.distill(teacher, data, DistillConfig(w_bits=4, a_bits=4, method="fold", teacher_epochs=0),
                            progress=False)
    graph = fiqnn.convert(student)
    path = tmp_path_factory.mktemp("surface") / "model.npz"
    fiqnn.save(graph, path)
    return graph, path, data.test.x_q[:40]


@pytest.fixture(scope="module")
def student_run(tiny_teacher, tmp_path_factory):
    """A finished fold W4A4 distill run of the tiny synthetic teacher (seconds)."""
    from fiqnn.cli import main

    out = tmp_path_factory.mktemp("surface-run") / "run"
    assert main(["distill", "--teacher", str(tiny_teacher), "--wbits", "4", "--abits", "4", "--method", "fold",
                 "--teacher-epochs", "0", "--out", str(out), "--no-progress"]) == 0
    return out


# 1. the arch choices come from the registry


def test_train_teacher_help_lists_every_model(cli):
    code, out, _ = cli("train-teacher", "--help")
    assert code == 0
    missing = [name for name in fiqnn.MODELS if name not in " ".join(out.split())]
    assert not missing, f"train-teacher --help leaves out {missing}"


def test_unknown_arch_error_lists_every_model(cli, tmp_path):
    code, _, err = cli("train-teacher", "--arch", "vgg99", "--data", "synthetic", "--out", tmp_path / "t")
    assert code == 2 and len(err) == 1 and "unknown arch 'vgg99'" in err[0]
    assert all(name in err[0] for name in fiqnn.MODELS)


# 2. every export format creates missing parent directories; errors name what was written


@pytest.mark.parametrize("fmt, name", [("npz", "m.npz"), ("onnx", "m.onnx"), ("c", "c_src")])
def test_export_creates_missing_parents(cli, model, tmp_path, fmt, name):
    out = tmp_path / "new" / "deeper" / name
    code, _, err = cli("export", model[1], "--format", fmt, "--out", out)
    assert code == 0, err
    if fmt == "npz":
        assert fiqnn.load(out).num_classes == model[0].num_classes
    elif fmt == "onnx":
        assert out.stat().st_size > 0
    else:
        assert (out / "model.c").is_file() and (out / "Makefile").is_file()


@pytest.mark.parametrize("fmt, name", [("npz", "m.npz"), ("onnx", "m.onnx"), ("c", "c_src")])
def test_export_error_names_the_output(cli, model, tmp_path, fmt, name):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / name
    code, _, err = cli("export", model[1], "--format", fmt, "--out", out)
    assert code == 2 and len(err) == 1
    assert f"the {fmt} model {out}" in err[0] and f"{blocker} is not a directory" in err[0]
    assert blocker.read_text() == "x"


# 3. bench --status on a directory that does not exist


def test_bench_status_of_missing_directory(cli, tmp_path):
    code, out, err = cli("bench", "--out", tmp_path / "nowhere", "--status", "--bits", "4", "--methods", "fold")
    assert code == 2 and out == "" and len(err) == 1
    assert f"{tmp_path / 'nowhere'} holds no bench" in err[0]
    assert not (tmp_path / "nowhere").exists()


# 4. a missing optional extra is one line naming it


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_eval_onnx_backend_without_onnx(cli, student_run, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)
    code, _, err = cli("eval", student_run, "--backend", "onnx")
    assert code == 2 and err == ["fiqnn: error: the onnx backend needs onnx and onnxruntime: "
                                 "pip install 'fiqnn[onnx]'"]


def test_eval_openvino_backend_without_openvino(cli, student_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    code, _, err = cli("eval", student_run, "--backend", "openvino")
    assert code == 2 and err == ["fiqnn: error: the openvino backend needs openvino: pip install 'fiqnn[openvino]'"]


def test_export_onnx_without_onnx(cli, model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, _, err = cli("export", model[1], "--format", "onnx", "--out", tmp_path / "new" / "m.onnx")
    assert code == 2 and len(err) == 1 and "pip install 'fiqnn[onnx]'" in err[0] and "onnx export" in err[0]
    assert not (tmp_path / "new").exists()


def test_report_without_matplotlib(cli, student_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = cli("report", student_run, "--out", tmp_path / "r")
    assert code == 2 and len(err) == 1 and "needs matplotlib: pip install 'fiqnn[plots]'" in err[0]
    assert not (tmp_path / "r").exists()


def test_optional_import_error_is_a_fiqnn_error(monkeypatch):
    from fiqnn._optional import optional_import
    from fiqnn.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"^run_onnx needs onnx and onnxruntime: pip install 'fiqnn\[onnx\]'$"):
        optional_import("onnxruntime", "run_onnx")
    assert issubclass(MissingExtraError, fiqnn.FiqnnError) and issubclass(MissingExtraError, ImportError)


# 5. every backend takes (graph or model file, uint8 images)


def test_backends_take_the_same_arguments(model):
    from fiqnn.export.onnx import run_onnx

    graph, path, x_q = model
    ref = fiqnn.run(graph, x_q)
    assert ref.dtype == np.int32 and ref.shape == (len(x_q), graph.num_classes)
    runs = [fiqnn.run, run_onnx]
    if importlib.util.find_spec("openvino") is not None:
        from fiqnn.export.onnx import run_openvino

        runs.append(run_openvino)
    if shutil.which("cc"):
        from fiqnn.export.c99 import run_c

        runs.append(run_c)
    for backend in runs:
        for first in (graph, path, str(path), path.parent):  # the graph, its file, a run directory
            got = backend(first, x_q)
            assert np.array_equal(got, ref), (backend.__name__, first)
    with pytest.raises(ValueError, match="input must be uint8"):
        run_onnx(graph, x_q.astype(np.float32))
    with pytest.raises(TypeError, match="IntGraph or the path of a model file"):
        fiqnn.run(42, x_q)


# 6. a library call prints nothing; its lines go to the "fiqnn" logger


def test_distill_prints_nothing_and_logs(capsys, caplog):
    data = fiqnn.load_data("synthetic")
    teacher = fiqnn.build_model("tiny", data.num_classes, data.in_shape)
    config = DistillConfig(w_bits=4, a_bits=4, method="fold", teacher_epochs=0)
    with caplog.at_level(logging.INFO, logger="fiqnn"):
        fiqnn.distill(teacher, data, config, progress=False)
    assert capsys.readouterr().out == ""
    assert caplog.records and all(r.name.startswith("fiqnn.") and r.levelno == logging.INFO
                                  for r in caplog.records)


# 7. the data classes are public


def test_bring_your_own_arrays():
    rng = np.random.default_rng(0)

    def split(n):
        return fiqnn.ArraySplit(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, n))

    data = fiqnn.DataBundle("mine", split(64), split(16), split(16), num_classes=3, in_shape=(1, 8, 8))
    teacher = fiqnn.build_model("tiny", data.num_classes, data.in_shape)
    student = fiqnn.distill(teacher, data, DistillConfig(w_bits=4, a_bits=4, method="fold", teacher_epochs=0,
                                                         calib_images=32), progress=False)
    assert fiqnn.run(fiqnn.convert(student), data.test.x_q).shape == (16, 3)
    assert {"ArraySplit", "DataBundle"} <= set(fiqnn.__all__)


class _Terminal:
    """A stderr that says it is a terminal (tqdm shows bars only there) and keeps what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("backend, desc", [("numpy", "numpy executor"), ("onnx", "ONNX Runtime"),
                                           ("c", "compiled C"), ("torch", "torch student")])
def test_eval_shows_progress_on_a_terminal_only(cli, student_run, monkeypatch, backend, desc):
    if backend == "c" and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli("eval", student_run, "--backend", backend)[0] == 0
    assert desc in terminal.text  # a bar on a terminal
    terminal.text = ""
    assert cli("eval", student_run, "--backend", backend, "--no-progress")[0] == 0
    assert desc not in terminal.text  # none with --no-progress
    monkeypatch.undo()
    code, _, err = cli("eval", student_run, "--backend", backend)  # stderr captured: not a terminal
    assert code == 0 and not any(desc in line for line in err)


def test_fold_and_the_test_split_comparison_show_progress(cli, tiny_teacher, tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli("distill", "--teacher", tiny_teacher, "--wbits", "4", "--abits", "4", "--method", "fold",
               "--teacher-epochs", "0", "--out", tmp_path / "run")[0] == 0
    for desc in ("fold", "torch student", "numpy executor", "teacher QNN, test"):
        assert desc in terminal.text, desc


def test_synthetic_takes_a_shape():
    data = fiqnn.load_data("synthetic", image_size=12, channels=3)
    assert data.in_shape == (3, 12, 12) and data.train.x_q.shape[1:] == (3, 12, 12)
    assert np.array_equal(fiqnn.load_data("synthetic").train.x_q, fiqnn.load_data("synthetic", channels=1).train.x_q)
    with pytest.raises(fiqnn.FiqnnError, match="channels is a setting of the synthetic set"):
        fiqnn.load_data("digits", channels=3)
