"""Data-parallel training: real ``torchrun --nproc_per_node=2`` runs (gloo, CPU) on the tiny
model and digits, against single-process runs with the same global batch; and the runtime's
rules (sharding, device and precision options) in one process.

Tolerances, and why:
- A BN-free network (the oneshot student) trained on 2 ranks gets, every step, the gradient of
  the same global batch as one process, up to float summation order: its latent weights agree
  within 1e-5 and its integer codes on at least 99.9% of weights (measured: max |dw| 6e-8, every
  code equal).
- Where BatchNorm trains (the teacher, the teacher QNN's QAT and downstream compensation in PTL)
  each rank normalises with its own half-batch statistics, so runs differ as two seeds do: test
  accuracy within 2 points (7 of the 360 digits test images). Measured for the PTL W4A4 run
  below (PTL) over seeds 0-3: 2 ranks minus 1 process -0.83, 0, -0.83, -0.28 points, against
  a seed-to-seed spread of 0.83 points for the single-process run; for the teacher, 97.78% on
  both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fiqnn.data import ArraySplit, Augment, batches
from fiqnn.errors import ConfigError
from fiqnn.jobs import load_student
from fiqnn.parallel import Runtime, setup

from .procs import resume_after_mid_stage_kill

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SAME = "weights identical on all 2 ranks"


def torchrun(*args) -> dict:
    """Run ``torchrun --nproc_per_node=2 -m fiqnn ARGS --json``; return rank 0's metrics."""
    r = subprocess.run([*TORCHRUN, "-m", "fiqnn", *map(str, args), "--json", "--no-progress"], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, r.stdout  # rank 0 alone reports
    return json.loads(lines[0])


def test_teacher_on_two_ranks(digits_teacher, tmp_path):
    """The same command as the digits_teacher fixture, on 2 processes: the ranks agree on the
    weights after every epoch, and the teacher is as good as the single-process one."""
    m = torchrun("train-teacher", "--arch", "tiny", "--data", "digits", "--epochs", "15", "--batch-size", "64",
                 "--out", tmp_path / "ddp")
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert log.count(SAME) == 15
    single = json.loads((digits_teacher / "metrics.json").read_text())
    assert abs(m["test_acc"] - single["test_acc"]) <= 2.0
    assert sorted(os.listdir(tmp_path / "ddp")) == ["checkpoint.prev.pt", "checkpoint.pt", "config.json",
                                                    "metrics.json", "model.pt", "train.log"]


PTL = ["--wbits", "4", "--abits", "4", "--steps-per-epoch", "5", "--teacher-epochs", "1",
       "--max-epochs-per-stage", "2", "--finetune-epochs", "1", "--batch-size", "64"]


def test_ptl_on_two_ranks_matches_one(cli, digits_teacher, tmp_path):
    m = torchrun("distill", "--teacher", digits_teacher, *PTL, "--out", tmp_path / "ddp")
    log = (tmp_path / "ddp" / "train.log").read_text()
    phases = [h["phase"] for h in m["history"]]
    assert len(phases) == 6 and all(f"{p}: " in log for p in phases)
    assert log.count(SAME) == len(phases)  # checked at the end of every phase
    assert m["bit_exact"] and m["test_images"] == 360
    code, out, _ = cli("distill", "--teacher", digits_teacher, *PTL, "--out", tmp_path / "one", "--json",
                       "--no-progress")
    assert code == 0
    assert abs(m["test_acc"] - json.loads(out)["test_acc"]) <= 2.0


def test_bn_free_training_on_two_ranks_equals_one(cli, digits_teacher, tmp_path):
    """oneshot from the fold, no BN anywhere in training: the 2-rank student is the
    single-process one up to float summation order."""
    args = ["--teacher", digits_teacher, "--wbits", "4", "--abits", "4", "--method", "oneshot",
            "--teacher-epochs", "0", "--steps-per-epoch", "10", "--max-epochs-per-stage", "1", "--patience", "4",
            "--finetune-epochs", "0", "--lr", "1e-3", "--batch-size", "64"]
    m = torchrun("distill", *args, "--out", tmp_path / "ddp")
    assert cli("distill", *args, "--out", tmp_path / "one", "--no-progress")[0] == 0
    a, b = load_student(tmp_path / "one"), load_student(tmp_path / "ddp")
    for ua, ub in zip(a.units.values(), b.units.values()):
        assert (ua.weight - ub.weight).abs().max() <= 1e-5
        assert (ua.integer_params()["w_q"] == ub.integer_params()["w_q"]).float().mean() >= 0.999
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert abs(m["test_acc"] - one["test_acc"]) <= 0.3 and m["bit_exact"]


def test_two_ranks_killed_mid_stage_resume_to_the_end(digits_teacher, tmp_path):
    """SIGKILL the launcher and both workers inside PTL stage 2, resume on 2 processes: the
    stage continues after its last checkpointed epoch and the run finishes bit-exact."""
    out = tmp_path / "run"
    cmd = [*TORCHRUN, "-m", "fiqnn", "distill", "--teacher", str(digits_teacher), "--wbits", "4", "--abits", "4",
           "--out", str(out), "--batch-size", "16", "--steps-per-epoch", "30", "--max-epochs-per-stage", "3",
           "--patience", "3", "--finetune-epochs", "1", "--no-progress"]
    text, m = resume_after_mid_stage_kill(cmd, ENV, out)
    assert text.count(SAME) == len(m["history"]) - 2  # the phases after stage 2's start, re-checked


def test_diverged_ranks_are_an_error(tmp_path):
    """The end-of-phase digest check sees equal weights as equal and a changed one as an error."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import torch\n"
        "from fiqnn.parallel import setup, teardown\n"
        "rt = setup()\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Linear(3, 2)\n"
        "rt.check_same([m], 'probe')\n"
        "print('equal: ok', flush=True)\n"
        "if rt.rank == 1:\n"
        "    m.bias.data[0] += 1e-7\n"
        "rt.check_same([m], 'probe')\n"
        "teardown()\n")
    r = subprocess.run([*TORCHRUN, str(script)], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stdout.count("equal: ok") == 2
    assert "probe: the 2 ranks hold different weights" in r.stderr


# --- one process: the rules ------------------------------------------------------------------

def test_rank_shares_make_up_the_single_process_batches():
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, (50, 1, 6, 6), dtype=np.uint8), np.arange(50))
    kw = dict(shuffle=True, augment=Augment(pad=1, flip=True), seed=3, drop_last=True)
    whole = list(batches(split, 8, **kw))
    shares = [list(batches(split, 8, rank=r, world=2, **kw)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(whole) == 6
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shares):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)  # augmentation included
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
    # evaluation: every image exactly once over the ranks, also with a last batch smaller than world
    seen = [int(v) for r in range(3) for _, y in batches(split, 16, rank=r, world=3) for v in y]
    assert sorted(seen) == list(range(50))


def test_dataset_shares_are_the_ranks_images():
    class Split(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.zeros(1, 2, 2, dtype=torch.uint8), i

    assert [int(v) for _, y in batches(Split(), 4, rank=1, world=2) for v in y] == [1, 3, 5, 7, 9]
    shuffled = [[int(v) for _, y in batches(Split(), 4, shuffle=True, seed=1, rank=r, world=2) for v in y]
                for r in range(2)]
    whole = [int(v) for _, y in batches(Split(), 4, shuffle=True, seed=1) for v in y]
    assert sorted(shuffled[0] + shuffled[1]) == list(range(10)) and shuffled[0] == whole[0::2][:len(shuffled[0])]


def test_global_batch_must_split_over_ranks():
    with pytest.raises(ConfigError, match="batch size 65 .* over 2 processes; pass a multiple of 2"):
        Runtime(world=2).check_batch(65)


def test_device_errors_are_one_line(cli, digits_teacher, tmp_path):
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        setup("tpu")
    code, _, err = cli("distill", "--teacher", digits_teacher, "--wbits", "4", "--abits", "4", "--device", "tpu",
                       "--out", tmp_path / "x")
    assert code == 2 and len(err) == 1 and "unknown device" in err[0]
    assert not (tmp_path / "x").exists()
    if not torch.cuda.is_available():
        code, _, err = cli("train-teacher", "--arch", "tiny", "--data", "digits", "--device", "cuda",
                           "--out", tmp_path / "y")
        assert code == 2 and len(err) == 1 and "no CUDA device" in err[0]


@pytest.mark.parametrize("flag", ["--amp", "--channels-last"])
def test_runtime_options_keep_the_student_exact(cli, digits_teacher, tmp_path, flag):
    """--amp trains under bfloat16 autocast, --channels-last with NHWC weights; the exact integer
    path and the checks are untouched."""
    code, out, _ = cli("distill", "--teacher", digits_teacher, "--wbits", "4", "--abits", "4", flag,
                       "--steps-per-epoch", "5", "--max-epochs-per-stage", "1", "--finetune-epochs", "1",
                       "--out", tmp_path / "run", "--json", "--no-progress")
    assert code == 0
    m = json.loads(out)
    assert m["bit_exact"] and m["test_acc"] > 85


def test_channels_last_places_weights_and_saves_plain_tensors(cli, tmp_path):
    """--channels-last trains with NHWC weights (the activations follow); the teacher's saved
    weights are plain contiguous tensors."""
    from fiqnn.nets.models import build_model
    from fiqnn.parallel import Runtime

    model = Runtime(channels_last=True).place(build_model("tiny", 10, (1, 8, 8)))
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                         for w in convs if w.shape[1] > 1)
    code, _, _ = cli("train-teacher", "--arch", "tiny", "--data", "digits", "--epochs", "1", "--batch-size", "64",
                     "--channels-last", "--out", tmp_path / "t", "--no-progress")
    assert code == 0
    saved = torch.load(tmp_path / "t" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in saved.values())


def test_residual_network_on_two_ranks(cli, tmp_path):
    """PTL over blocks (fiqnn.train.ptl) under DDP: residual adds and average pools train on both ranks."""
    assert cli("train-teacher", "--arch", "resnet8", "--data", "digits", "--epochs", "2", "--batch-size", "64",
               "--out", tmp_path / "teacher", "--no-progress")[0] == 0
    m = torchrun("distill", "--teacher", tmp_path / "teacher", "--wbits", "4", "--abits", "4", "--steps-per-epoch", "3",
                 "--max-epochs-per-stage", "1", "--finetune-epochs", "1", "--batch-size", "64",
                 "--out", tmp_path / "ddp")
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert len(m["history"]) > 3 and log.count(SAME) == len(m["history"])
    assert m["bit_exact"] and m["test_images"] == 360
