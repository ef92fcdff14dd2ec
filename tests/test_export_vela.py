"""The LiteRT export compiles with Arm's Vela for an Ethos-U55 NPU, every operator on the NPU."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tflite")
pytest.importorskip("ethosu.vela", reason="ethos-u-vela is not installed")

from fiqnn.export.tflite import export_tflite  # noqa: E402
from fiqnn.train.convert import convert  # noqa: E402

VELA = shutil.which("vela") or str(Path(sys.executable).parent / "vela")


def test_vela_puts_every_operator_on_the_npu(fold_student, tmp_path):
    tfl = tmp_path / "model.tflite"
    export_tflite(convert(fold_student(4)), tfl)
    res = subprocess.run([VELA, str(tfl), "--accelerator-config", "ethos-u55-128", "--output-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-500:]
    ops = dict(re.findall(r"(CPU|NPU) operators = (\d+)", res.stdout))
    assert ops["CPU"] == "0" and int(ops["NPU"]) > 0, res.stdout[-800:]
    assert (tmp_path / "model_vela.tflite").stat().st_size > 0
