from __future__ import annotations

import json
from pathlib import Path

import pytest

from fiqnn.cli import main


@pytest.fixture
def cli(capsys):
    """Run ``fiqnn ARGS`` in-process; return (exit code, stdout, stderr lines)."""

    def run(*args: str) -> tuple[int, str, list[str]]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, [line for line in err.splitlines() if line.strip()]

    return run


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A finished tiny teacher on the synthetic data (a few seconds), shared by tests."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train-teacher", "--arch", "tiny", "--data", "synthetic", "--epochs", "3",
                 "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "done"
    return out


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A finished tiny teacher on scikit-learn's digits (real data, 360 test images)."""
    out = tmp_path_factory.mktemp("digits-teacher") / "run"
    assert main(["train-teacher", "--arch", "tiny", "--data", "digits", "--epochs", "15", "--batch-size", "64",
                 "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def digits_student(digits_teacher, tmp_path_factory) -> Path:
    """A finished W4A4 fold student run on digits (seconds)."""
    out = tmp_path_factory.mktemp("digits-student") / "run"
    assert main(["distill", "--teacher", str(digits_teacher), "--wbits", "4", "--abits", "4", "--method", "fold",
                 "--teacher-epochs", "0", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def digits(digits_teacher):
    """(teacher, data) of the digits teacher run."""
    from fiqnn.jobs import teacher_data
    from fiqnn.train.teacher import load_teacher

    return load_teacher(digits_teacher), teacher_data(digits_teacher)[1]


@pytest.fixture(scope="session")
def fold_student(digits):
    """``fold_student(bits, scale, rounding)``: a fold (local-init only) W{bits}A{bits} student on digits,
    cached."""
    from fiqnn.config import DistillConfig
    from fiqnn.train.distill import distill

    cache = {}

    def make(bits: int = 4, scale: str = "per-layer", rounding: str = "single"):
        if (bits, scale, rounding) not in cache:
            config = DistillConfig(w_bits=bits, a_bits=bits, scale=scale, rounding=rounding, method="fold",
                                   teacher_epochs=0)
            cache[bits, scale, rounding] = distill(*digits, config, progress=False, log=lambda m: None)
        return cache[bits, scale, rounding]

    return make
