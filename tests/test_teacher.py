"""train-teacher end to end on the tiny model: files, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fiqnn import TeacherConfig, load_teacher, train_teacher
from fiqnn.errors import CheckpointError, ConfigError, RunDirError


def test_run_directory_contents(tiny_teacher):
    names = sorted(p.name for p in tiny_teacher.iterdir())
    assert names == ["checkpoint.prev.pt", "checkpoint.pt", "config.json", "metrics.json", "model.pt", "train.log"]
    metrics = json.loads((tiny_teacher / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert 0 <= metrics["test_acc"] <= 100
    config = json.loads((tiny_teacher / "config.json").read_text())
    assert config["kind"] == "teacher" and config["config"]["arch"] == "tiny"
    model = load_teacher(tiny_teacher)
    assert not model.training and model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


def test_json_output_is_one_object(cli, tmp_path):
    code, out, err = cli("train-teacher", "--arch", "tiny", "--data", "synthetic", "--epochs", "1",
                         "--out", tmp_path / "r", "--json", "--no-progress")
    assert code == 0
    metrics = json.loads(out)
    assert metrics["epochs"] == 1 and "test_acc" in metrics


def test_same_seed_same_weights(tmp_path):
    config = TeacherConfig(arch="tiny", data="synthetic", epochs=1)
    train_teacher(config, tmp_path / "a", progress=False)
    train_teacher(config, tmp_path / "b", progress=False)
    a, b = torch.load(tmp_path / "a/model.pt"), torch.load(tmp_path / "b/model.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_sigkill_then_resume_continues(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fiqnn", "train-teacher", "--arch", "tiny", "--data", "synthetic",
           "--epochs", "4", "--batch-size", "2", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        m = out / "metrics.json"
        if m.exists() and len(json.loads(m.read_text())["history"]) >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done = len(json.loads((out / "metrics.json").read_text())["history"])
    assert 1 <= done < 4

    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "done"
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4]
    assert f"resuming from epoch {done} of 4" in (out / "train.log").read_text()
    assert not list(out.glob(".*.tmp"))
    load_teacher(out)


def test_resume_refuses_other_settings(cli, tiny_teacher):
    code, _, err = cli("train-teacher", "--out", tiny_teacher, "--resume", "--epochs", "5")
    assert code == 2 and len(err) == 1
    assert "was started with epochs=3, not 5" in err[0]


def test_resume_of_finished_run_only_reports(cli, tiny_teacher):
    before = (tiny_teacher / "model.pt").read_bytes()
    code, out, _ = cli("train-teacher", "--out", tiny_teacher, "--resume", "--json", "--no-progress")
    assert code == 0 and json.loads(out)["epochs"] == 3
    assert (tiny_teacher / "model.pt").read_bytes() == before


def test_corrupt_checkpoints_on_resume(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train-teacher", "--arch", "tiny", "--data", "synthetic", "--epochs", "2", "--out", out,
               "--no-progress")[0] == 0
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (out / "checkpoint.prev.pt").write_bytes(b"not one either")
    code, _, err = cli("train-teacher", "--out", out, "--resume", "--no-progress")
    assert code == 2 and len(err) == 1 and "checkpoint.prev.pt is corrupt" in err[0]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train-teacher", "--arch", "tiny", "--data", "synthetic", "--epochs", "3", "--out", out,
               "--no-progress")[0] == 0
    (out / "model.pt").unlink()  # pretend it died after epoch 3's checkpoint ...
    (out / "metrics.json").write_text(json.dumps({"status": "running"}))
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:100])  # ... which is cut short
    code, out_json, err = cli("train-teacher", "--out", out, "--resume", "--json", "--no-progress")
    assert code == 0
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1 and "checkpoint.pt is corrupt" in warnings[0] and "checkpoint.prev.pt" in warnings[0]
    assert any("resuming from epoch 2 of 3" in line for line in err)
    assert json.loads(out_json)["epochs"] == 3 and (out / "model.pt").exists()


def test_load_teacher_needs_model(tmp_path):
    with pytest.raises(CheckpointError, match="holds no finished teacher"):
        load_teacher(tmp_path)


# --- bad input: exit 2, one line, nothing written ---------------------------------------------

BASE = ["train-teacher", "--arch", "tiny", "--data", "synthetic", "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["--arch", "resnet9000"], "unknown arch 'resnet9000'; choose one of alexnet-s, alexnet-bn, tiny"),
    (["--data", "mnist2"], "unknown data set 'mnist2'"),
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--epochs", "-3"], "epochs must be a positive integer, got -3"),
    (["--batch-size", "0"], "batch size must be a positive integer"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
])
def test_bad_flags(cli, tmp_path, args, message):
    code, out, err = cli(*BASE, "--out", tmp_path / "run", *args)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_missing_arch(cli, tmp_path):
    code, _, err = cli("train-teacher", "--data", "digits", "--out", tmp_path / "r")
    assert code == 2 and err == ["fiqnn: error: train-teacher needs --arch"]


def test_missing_data_dir(cli, tmp_path):
    code, _, err = cli("train-teacher", "--arch", "tiny", "--data", "fashion-mnist",
                       "--data-dir", tmp_path / "nope", "--out", tmp_path / "run")
    assert code == 2 and len(err) == 1 and "data directory" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "run").exists()


def test_corrupt_idx(cli, tmp_path):
    from tests.test_data import _write_fake_fashion

    d = _write_fake_fashion(tmp_path / "fm")
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    code, _, err = cli("train-teacher", "--arch", "tiny", "--data", "fashion-mnist", "--data-dir", d,
                       "--out", tmp_path / "run")
    assert code == 2 and len(err) == 1 and "train-images-idx3-ubyte.gz: cannot read IDX file" in err[0]
    assert not (tmp_path / "run").exists()


def test_unwritable_out(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = cli(*BASE, "--out", blocker / "run")
    assert code == 2 and len(err) == 1 and "is not a directory" in err[0]
    assert blocker.read_text() == "x"


def test_existing_run_is_not_clobbered(cli, tiny_teacher):
    before = {p.name: p.read_bytes() for p in tiny_teacher.iterdir()}
    code, _, err = cli(*BASE, "--out", tiny_teacher)
    assert code == 2 and "already holds a run; pass --resume" in err[0]
    assert {p.name: p.read_bytes() for p in tiny_teacher.iterdir()} == before


def test_config_rejects_bad_values_directly():
    with pytest.raises(ConfigError, match="lr must be positive"):
        TeacherConfig(lr=0)
    with pytest.raises(RunDirError):
        train_teacher(TeacherConfig(arch="tiny", data="synthetic"), "/proc/version/run", progress=False)


def test_flipped_bit_in_a_checkpoint_is_caught(cli, tmp_path):
    """A checkpoint that still unzips and unpickles but whose tensor bytes changed (bit rot, a
    bad copy) fails its SHA-256; resume says so and uses the previous checkpoint."""
    out = tmp_path / "run"
    assert cli("train-teacher", "--arch", "tiny", "--data", "synthetic", "--epochs", "3", "--out", out,
               "--no-progress")[0] == 0
    (out / "model.pt").unlink()
    (out / "metrics.json").write_text(json.dumps({"status": "running"}))
    blob = bytearray((out / "checkpoint.pt").read_bytes())
    w = torch.load(out / "checkpoint.pt", weights_only=True)["model"]["fc3.fc.weight"]
    at = bytes(blob).index(w.numpy().tobytes()[:64])  # inside the stored tensor data
    blob[at + 5] ^= 0x10
    (out / "checkpoint.pt").write_bytes(bytes(blob))
    assert not torch.equal(torch.load(out / "checkpoint.pt", weights_only=True)["model"]["fc3.fc.weight"], w)
    code, _, err = cli("train-teacher", "--out", out, "--resume", "--no-progress")
    assert code == 0
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1 and "do not match the SHA-256" in warnings[0] and "checkpoint.prev.pt" in warnings[0]
    assert any("resuming from epoch 2 of 3" in line for line in err)
