"""`fiqnn export` and `fiqnn eval --backend`: every backend gives the same accuracy; errors exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from fiqnn.integer.execute import run
from fiqnn.integer.modelfile import load


@pytest.mark.parametrize("backend", ["numpy", "torch", "onnx", "openvino", "c"])
def test_eval_backends_agree(cli, digits_student, backend):
    if backend == "c" and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    code, out, err = cli("eval", digits_student, "--backend", backend, "--json")
    assert code == 0, err
    metrics = json.loads((digits_student / "metrics.json").read_text())
    assert json.loads(out)["test_acc"] == pytest.approx(metrics["test_acc"])


def test_export_formats(cli, digits_student, tmp_path):
    assert cli("export", digits_student, "--format", "npz", "--out", tmp_path / "m.npz")[0] == 0
    g = load(tmp_path / "m.npz")
    assert cli("export", digits_student, "--format", "onnx", "--out", tmp_path / "m.onnx")[0] == 0
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    assert cli("export", tmp_path / "m.npz", "--format", "c", "--out", tmp_path / "c")[0] == 0
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"model.h", "model.c", "fiqnn_arith.h", "main.c",
                                                            "Makefile"}
    assert run(g, np.zeros((1, 1, 8, 8), np.uint8)).shape == (1, 10)


@pytest.mark.parametrize("fmt,backend,module", [("tflite", "litert", "ai_edge_litert"), ("qonnx", "qonnx", "qonnx")])
def test_export_and_eval_tflite_and_qonnx(cli, digits_student, tmp_path, fmt, backend, module):
    """export --format tflite|qonnx writes a file its runtime reads; eval --backend litert|qonnx
    gives the numpy executor's accuracy (its logits are numpy's: tests/test_export_tflite.py, _qonnx.py)."""
    pytest.importorskip(module)
    out = tmp_path / f"m.{fmt}"
    assert cli("export", digits_student, "--format", fmt, "--out", out)[0] == 0 and out.stat().st_size > 0
    code, out, err = cli("eval", digits_student, "--backend", backend, "--json")
    assert code == 0, err
    assert json.loads(out)["test_acc"] == json.loads(cli("eval", digits_student, "--json")[1])["test_acc"]


def test_export_unwritable_and_unknown_format(cli, digits_student, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("export", digits_student, "--format", "onnx", "--out", blocker / "m.onnx")
    assert code == 2 and len(err) == 1 and "is not a directory" in err[0]
    code, _, err = cli("export", digits_student, "--format", "tf", "--out", tmp_path / "m")
    assert code == 2 and len(err) == 1 and "unknown format 'tf'" in err[0]
    code, _, err = cli("eval", digits_student, "--backend", "tpu")
    assert code == 2 and "unknown backend 'tpu'" in err[0]


def test_missing_compiler_exits_2(cli, digits_student, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, _, err = cli("eval", digits_student, "--backend", "c")
    assert code == 2 and len(err) == 1 and "no C compiler found" in err[0]
