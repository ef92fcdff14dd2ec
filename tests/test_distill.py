"""Distillation end to end on the tiny model: the integer executor equals the eval-mode
student on every test image, for every bit width and both scale granularities."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from fiqnn.config import DistillConfig
from fiqnn.integer.execute import run
from fiqnn.jobs import compare_backends, load_student, torch_logits
from fiqnn.train.convert import convert
from fiqnn.train.distill import accuracy, distill
from fiqnn.train.units import IntUnit

from .procs import kill_when_logged, resume_after_mid_stage_kill

FAST = dict(teacher_epochs=1, max_epochs_per_stage=1, finetune_epochs=1, steps_per_epoch=5, batch_size=32,
            calib_images=256)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_fold_student_bit_exact_on_whole_test_set(digits, fold_student, bits, scale):
    student = fold_student(bits, scale)
    check = compare_backends(student, convert(student), digits[1].test)
    assert check["images"] == 360 and check["bit_exact"], check


@pytest.mark.parametrize("method", ["ptl", "oneshot"])
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_trained_student_bit_exact_and_learns(digits, method, scale):
    teacher, data = digits
    config = DistillConfig(w_bits=3, a_bits=3, method=method, scale=scale, **FAST)
    student = distill(teacher, data, config, progress=False, log=lambda m: None)
    check = compare_backends(student, convert(student), data.test)
    assert check["bit_exact"], check
    assert check["numpy_acc"] > 50  # 10 classes: far above chance after a few steps
    assert [h["phase"] for h in student.history][0] == "teacher-qat"
    # the last phase reports its best epoch's validation accuracy: the network it leaves behind
    assert student.history[-1]["val_acc"] == accuracy(student, data.val)


@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_logits_rank_classes_as_the_real_logits(digits, fold_student, bits):
    """The int32 logits are compared by argmax, which ranks the classes as the real-valued
    logits (acc * alpha) do only if every class shares one alpha: under --scale per-channel
    the last layer keeps one scale. (With one per class, 4 of the 360 digits test images
    changed class at W8A8, and the student lost 1.1 points.)"""
    student = fold_student(bits, "per-channel")
    *hidden, last = student.units.values()
    assert all(u.alpha.numel() > 1 for u in hidden)
    assert last.alpha.numel() == 1
    logits = torch_logits(student, digits[1].test)
    real = logits * last.alpha.detach().double().numpy()
    assert np.array_equal(logits.argmax(1), real.argmax(1))


def test_a_logits_layer_cannot_have_per_channel_scales():
    from fiqnn.train.units import Geometry

    with pytest.raises(ValueError, match="one scale, not one per channel"):
        IntUnit(Geometry("fc", 3), (3, 4), in_bits=4, w_bits=8, a_bits=None, per_channel=True)


def test_teacher_is_not_mutated(digits):
    teacher, data = digits
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill(teacher, data, DistillConfig(method="ptl", **FAST), progress=False, log=lambda m: None)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_student_has_no_batchnorm(fold_student):
    student = fold_student()
    kinds = {type(m).__name__ for m in student.modules()}
    assert not any("BatchNorm" in k for k in kinds)
    assert all(isinstance(u, IntUnit) for u in student.units.values())
    graph = convert(student)  # walk the IntGraph: integer arrays and ints only, nothing from BN
    for layer in graph.layers:
        for key, value in vars(layer).items():
            assert not isinstance(value, float) and "bn" not in key
            if isinstance(value, np.ndarray):
                assert np.issubdtype(value.dtype, np.integer), (layer.name, key, value.dtype)


def test_executor_hands_only_integer_arrays(digits, fold_student):
    data = digits[1]
    student = fold_student()
    seen = []
    logits = run(convert(student), data.test.x_q, trace=lambda name, a: seen.append((name, a.dtype)))
    assert logits.dtype == np.int32 and seen
    assert all(np.issubdtype(dtype, np.integer) for _, dtype in seen), seen
    assert {str(d) for _, d in seen} == {"uint8", "int32"}


def test_eval_student_logits_are_integers(digits, fold_student):
    data = digits[1]
    student = fold_student()
    with torch.no_grad():
        out = student(torch.from_numpy(data.test.x_q[:50]))
    assert torch.equal(out, out.round())
    assert 0 <= accuracy(student, data.test) <= 100


# --- the CLI ------------------------------------------------------------------------------------

def test_distill_cli_eval_info(cli, digits_teacher, tmp_path):
    out = tmp_path / "w4a4"
    code, stdout, err = cli("distill", "--teacher", digits_teacher, "--wbits", "4", "--abits", "4", "--out", out,
                            "--steps-per-epoch", "5", "--max-epochs-per-stage", "1", "--finetune-epochs", "1",
                            "--json", "--no-progress")
    assert code == 0, err
    m = json.loads(stdout)
    assert m["bit_exact"] and m["test_images"] == 360 and m["w_bits"] == 4
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.json", "checkpoint.pt", "train.log",
                                               "student.pt", "model.npz"}
    code, stdout, _ = cli("eval", out, "--backend", "numpy", "--json")
    assert code == 0 and json.loads(stdout)["test_acc"] == pytest.approx(m["test_acc"])
    code, stdout, _ = cli("eval", out, "--backend", "torch", "--json")
    assert code == 0 and json.loads(stdout)["test_acc"] == pytest.approx(m["torch_acc"])
    code, stdout, _ = cli("info", out / "model.npz")
    assert code == 0 and "no BatchNorm, no float: arrays bias_q int32, mult int32, shift int32, w_q int8" in stdout
    assert "conv1" in stdout and "headroom" in stdout
    code, stdout, _ = cli("info", out, "--json")
    layers = json.loads(stdout)["layers"]
    assert [r["w_bits"] for r in layers] == [8, 4, 4, 8] and layers[-1]["a_bits"] is None
    assert load_student(out).num_classes == 10


def test_val_images_decide_on_the_head_of_the_validation_split(cli, digits_teacher, tmp_path):
    """--val-images 25: every validation accuracy PTL logs is a count out of 25 images (4% steps),
    and the config records the choice."""
    out = tmp_path / "v"
    code, stdout, err = cli("distill", "--teacher", digits_teacher, "--wbits", "4", "--abits", "4", "--out", out,
                            "--val-images", "25", "--steps-per-epoch", "3", "--max-epochs-per-stage", "1",
                            "--finetune-epochs", "1", "--json", "--no-progress")
    assert code == 0, err
    m = json.loads(stdout)
    accs = [r["val_acc"] for h in m["history"] for r in h["rows"]] + [h["val_acc"] for h in m["history"]]
    assert len(accs) > 8 and all(abs(a / 4 - round(a / 4)) < 1e-9 for a in accs), accs
    assert json.loads((out / "config.json").read_text())["config"]["val_images"] == 25
    assert m["bit_exact"]


@pytest.mark.parametrize("args, message", [
    (["--wbits", "9", "--abits", "4"], "w-bits must be an integer in 2..8, got 9"),
    (["--wbits", "4", "--abits", "1"], "a-bits must be an integer in 2..8, got 1"),
    (["--wbits", "4", "--abits", "4", "--method", "magic"], "unknown method 'magic'"),
    (["--wbits", "4"], "distill needs --abits"),
    (["--wbits", "4", "--abits", "4", "--val-images", "0"], "val-images must be a positive integer, got 0"),
])
def test_distill_bad_flags(cli, digits_teacher, tmp_path, args, message):
    code, _, err = cli("distill", "--teacher", digits_teacher, "--out", tmp_path / "r", *args)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_distill_teacher_without_checkpoint(cli, tmp_path):
    (tmp_path / "t").mkdir()
    code, _, err = cli("distill", "--teacher", tmp_path / "t", "--wbits", "4", "--abits", "4", "--out", tmp_path / "r")
    assert code == 2 and len(err) == 1 and "holds no finished teacher (model.pt missing)" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("member, message", [
    ("fc2.bias_q.npy", "fc2.bias_q.npy does not match its checksum"),
    ("meta.json", "was written for ARITH_VERSION 99; this fiqnn implements 3"),
])
def test_model_file_errors_exit_2(cli, tmp_path, member, message):
    import zipfile

    from fiqnn.integer.modelfile import save
    from tests.test_graph import _graph, _rewrite

    p = tmp_path / "m.npz"
    save(_graph(), p)
    with zipfile.ZipFile(p) as z:
        meta = json.loads(z.read("meta.json"))
    _rewrite(p, member, b"junk" if member.endswith(".npy") else json.dumps({**meta, "arith_version": 99}))
    code, _, err = cli("info", p)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_sigkill_then_resume_distill(digits_teacher, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fiqnn", "distill", "--teacher", str(digits_teacher), "--wbits", "4", "--abits",
           "4", "--out", str(out), "--batch-size", "8", "--steps-per-epoch", "40", "--max-epochs-per-stage", "2",
           "--patience", "2", "--finetune-epochs", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = kill_when_logged(cmd, env, out / "train.log", "stage 2/4 (conv2): ")
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    text = log.read_text()
    resumed_after = int(re.search(r"resuming after phase (\d+)", text).group(1))
    assert resumed_after >= 3  # teacher-qat, stage 1 and stage 2 were checkpointed before the kill
    assert text.count("stage 1/4 (conv1): ") == 1  # finished stages are not redone
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "done" and m["bit_exact"]
    assert [h["phase"] for h in m["history"]][:2] == ["teacher-qat", "stage 1/4 (conv1)"]


def test_seeded_runs_give_byte_identical_model_files(cli, digits_teacher, tmp_path):
    args = ["--teacher", str(digits_teacher), "--wbits", "3", "--abits", "3", "--steps-per-epoch", "4",
            "--max-epochs-per-stage", "1", "--finetune-epochs", "1", "--seed", "7", "--no-progress"]
    for name in ("a", "b"):
        assert cli("distill", *args, "--out", str(tmp_path / name))[0] == 0
    assert (tmp_path / "a" / "model.npz").read_bytes() == (tmp_path / "b" / "model.npz").read_bytes()


def test_sigkill_mid_stage_resumes_that_stage(digits_teacher, tmp_path):
    """Killed inside a PTL stage, after some of its epochs: the resumed run continues that stage
    from its last finished epoch (modules, optimizer, patience state, data position, random
    state), not from its start, and writes the very model file the uninterrupted run writes."""
    def cmd(out):
        return [sys.executable, "-m", "fiqnn", "distill", "--teacher", str(digits_teacher), "--wbits", "2", "--abits",
                "2", "--lr", "1e-3", "--out", str(out), "--batch-size", "8", "--steps-per-epoch", "30",
                "--max-epochs-per-stage", "3", "--patience", "3", "--finetune-epochs", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    resume_after_mid_stage_kill(cmd(tmp_path / "run"), env, tmp_path / "run")
    whole = subprocess.run(cmd(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert (tmp_path / "run" / "model.npz").read_bytes() == (tmp_path / "whole" / "model.npz").read_bytes()


def test_a_student_file_of_the_older_chain_form_still_loads(tmp_path, digits, fold_student):
    """Before one pipeline, chain students were saved as a unit list (no unit types or inputs,
    parameters under ``units.<i>.``): such a file loads as the same network."""
    import dataclasses

    from fiqnn import _io

    student = fold_student(4, "per-channel")
    names = list(student.units)
    spec = {"in_shape": list(student.in_shape), "num_classes": student.num_classes, "units": [
        {"name": n, "geometry": dataclasses.asdict(u.geometry), "weight_shape": list(u.weight.shape),
         "in_bits": u.in_bits, "w_bits": u.w_bits, "a_bits": u.a_bits, "per_channel": u.per_channel}
        for n, u in student.units.items()]}
    state = {re.sub(r"^units\.(\w+)\.", lambda m: f"units.{names.index(m[1])}.", k): v
             for k, v in student.state_dict().items()}
    assert any(k.startswith("units.0.") for k in state)
    _io.torch_save({"spec": spec, "config": {}, "state_dict": state}, tmp_path / "student.pt")
    loaded = load_student(tmp_path)
    assert list(loaded.units) == names
    assert np.array_equal(torch_logits(loaded, digits[1].test), torch_logits(student, digits[1].test))


def test_teacher_kd_trains_the_teacher_qnn_towards_the_float_teacher(digits):
    """--teacher-kd adds KD from the float teacher's logits to the teacher QAT: with it, the same
    seed and batches give another QAT (the fold student of its teacher QNN has other weights), and
    the student is exact."""
    teacher, data = digits
    short = {**FAST, "method": "fold", "teacher_epochs": 2}
    starts, weights = {}, {}
    for kd in (0.0, 1.0):
        student = distill(teacher, data, DistillConfig(w_bits=2, a_bits=2, teacher_kd=kd, **short), progress=False,
                          log=lambda m: None)
        starts[kd], weights[kd] = student.history[0]["rows"][0]["val_acc"], student.state_dict()
        assert compare_backends(student, convert(student), data.test)["bit_exact"]
    assert starts[0.0] == starts[1.0]  # the same start, another training: the fold of another teacher QNN
    assert any(not torch.equal(w, weights[1.0][k]) for k, w in weights[0.0].items())
    with pytest.raises(ValueError, match="teacher-kd must be >= 0"):
        DistillConfig(teacher_kd=-1.0)


def test_teacher_lr_schedule_cosine_changes_the_teacher_qat_only(digits):
    """--teacher-lr-schedule cosine: the same start, another teacher QAT (other student weights),
    an exact student."""
    teacher, data = digits
    short = {**FAST, "method": "fold", "teacher_epochs": 2}
    starts, weights = {}, {}
    for schedule in ("constant", "cosine"):
        student = distill(teacher, data, DistillConfig(w_bits=2, a_bits=2, teacher_lr_schedule=schedule, **short),
                          progress=False, log=lambda m: None)
        starts[schedule], weights[schedule] = student.history[0]["rows"][0]["val_acc"], student.state_dict()
        assert compare_backends(student, convert(student), data.test)["bit_exact"]
    assert starts["constant"] == starts["cosine"]
    assert any(not torch.equal(w, weights["cosine"][k]) for k, w in weights["constant"].items())


def test_a_cosine_schedule_sets_every_steps_rate_and_resumes_on_its_curve(monkeypatch):
    """train_with_patience(schedule="cosine"): step t of the phase's max_epochs x steps trains at
    lr (1 + cos(pi t / T)) / 2, from lr down towards 0, and a phase resumed from its snapshot after
    an epoch continues on the same curve; "constant" keeps lr."""
    import math
    from types import SimpleNamespace

    from fiqnn.parallel import Runtime
    from fiqnn.train import loop

    def fake_epoch(batches, net, opt, rt, *, steps, desc, progress, after_step=None):
        for _ in range(steps):
            seen.append(opt.param_groups[0]["lr"])
            if after_step is not None:
                after_step()
        return 0.0

    class Hook:  # keeps the last epoch's snapshot, the way the distill checkpoint does
        resume = None

        def save(self, snap):
            self.snap = snap

    monkeypatch.setattr(loop, "train_epoch", fake_epoch)
    stream = SimpleNamespace(steps=4, rt=Runtime(), epoch=lambda: iter(()))
    run = dict(loss_fn=None, evaluate=lambda: 0.0, stream=stream, lr=0.1, weight_decay=0.0, max_epochs=3,
               patience=3, desc="t", progress=False, log=lambda m: None)
    curve = [0.1 * (1 + math.cos(math.pi * t / 12)) / 2 for t in range(12)]
    for schedule, want in (("cosine", curve), ("constant", [0.1] * 12)):
        seen = []
        m = torch.nn.Linear(2, 2)
        loop.train_with_patience(modules=[m], set_modes=m.train, schedule=schedule, **run)
        assert seen == pytest.approx(want, rel=1e-12, abs=1e-15)
    hook, seen = Hook(), []
    token = loop.EPOCH_HOOK.set(hook)
    try:
        m = torch.nn.Linear(2, 2)
        loop.train_with_patience(modules=[m], set_modes=m.train, schedule="cosine", **{**run, "max_epochs": 1,
                                                                                    "patience": 1})
        hook.snap["rows"][-1]["epoch"], hook.snap["bad"] = 1, 0  # as if killed after epoch 1 of 3
        hook.resume, seen = hook.snap, []
        loop.train_with_patience(modules=[m], set_modes=m.train, schedule="cosine", **run)
    finally:
        loop.EPOCH_HOOK.reset(token)
    assert seen == pytest.approx(curve[4:], rel=1e-12)
    with pytest.raises(ValueError, match="unknown teacher lr schedule"):
        DistillConfig(teacher_lr_schedule="step")


@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_a_folded_teacher_grid_is_the_grid_the_student_holds(digits, scale):
    """--teacher-weight-grid folded: every teacher layer's BN-folded weights lie on the student's
    grid (one step per layer under per-layer), so local initialisation re-quantizes nothing: the
    student's integer weights times its step are the folded weights. With the default per-channel
    grid a per-layer student re-quantizes, and loses that."""
    from fiqnn.nets.fximport import import_model
    from fiqnn.train.distill import calibration
    from fiqnn.train.fold import fold_bn, local_init
    from fiqnn.train.qnn import build_teacher_qnn
    from fiqnn.train.units import QnnUnit

    teacher, data = digits
    calib = calibration(data, 256)
    err = {}
    for grid in ("folded", "channel"):
        config = DistillConfig(w_bits=3, a_bits=3, scale=scale, teacher_weight_grid=grid)
        qnn = build_teacher_qnn(import_model(teacher), config, calib).eval()
        env, err[grid] = qnn.outputs(calib), []
        for name, t in qnn.units.items():
            if not isinstance(t, QnnUnit):
                continue
            w_c = fold_bn(t)[0]
            src = qnn.inputs[name][0]
            s = local_init(t, env[src], 8 if src == "input" else 3, t.w_bits, scale == "per-channel")
            p = s.integer_params()
            step = w_c.reshape(len(w_c), -1).abs().amax(1) / p["w_q"].reshape(len(w_c), -1).abs().amax(1)
            step = step.reshape((-1,) + (1,) * (w_c.ndim - 1))
            err[grid].append(float((p["w_q"].double() * step - w_c).abs().max() / w_c.abs().max()))
            if grid == "folded":
                g = t.grid_step().reshape((-1,) + (1,) * (w_c.ndim - 1))
                assert g.numel() == (len(w_c) if scale == "per-channel" and t.a_bits else 1)
                assert torch.allclose(w_c / g, (w_c / g).round(), atol=1e-4)
    assert max(err["folded"]) < 1e-5
    if scale == "per-layer":
        assert max(err["channel"]) > 1e-2


def test_a_folded_teacher_grid_trains_an_exact_student(digits):
    teacher, data = digits
    for method in ("fold", "ptl"):
        config = DistillConfig(w_bits=4, a_bits=4, teacher_weight_grid="folded", method=method, **FAST)
        student = distill(teacher, data, config, progress=False, log=lambda m: None)
        assert compare_backends(student, convert(student), data.test)["bit_exact"]
        assert accuracy(student, data.test) > 50
    with pytest.raises(ValueError, match="unknown teacher weight grid 'row'"):
        DistillConfig(teacher_weight_grid="row")
    with pytest.raises(ValueError, match="needs the lsq teacher quantizer"):
        DistillConfig(teacher_weight_grid="folded", teacher_quantizer="dorefa")
