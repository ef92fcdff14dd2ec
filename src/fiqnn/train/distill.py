"""Progressive tandem learning (docs/method.md): teacher QNN, local init, stages, fine-tune.

``distill(teacher, data, config) -> GraphNet`` imports the teacher into units
(:func:`fiqnn.import_model`: a chain of layers and a residual network alike) and runs,
for ``method="ptl"``:

0. Teacher QNN: wrap the float BN teacher with W/A-bit quantizers (activation
   steps calibrated for minimum MSE), then QAT for ``teacher_epochs``; BN is kept.
1. Local initialisation of each student unit from the (current) teacher unit
   (:func:`fiqnn.train.fold.local_init`).
2. Stages k = 1..L (:func:`fiqnn.stages`: every layer of a chain, every residual
   block as a whole): the network is S_1..S_k + T_{k+1}..T_L. S_k and, with
   compensation, T_{k+1}..T_L train on
   ``CE + lambda_target * MSE(S_k out, frozen T_k out) + lambda_kd * KD``;
   the PTL patience rule on validation accuracy picks the best epoch (at most
   ``max_epochs_per_stage``); restore it, freeze S_k, go on. The last stage trains
   at lr x 0.1.
3. Fine-tune the whole student with CE + KD at lr x 0.1.

Design choice (docs/method.md: the papers leave it open): S_k is initialised at the start of its
stage from the *compensated* T_k, calibrated on the codes the already-converted
S_1..S_{k-1} produce, so each conversion starts from the network as it now is.
``method="fold"`` is step 1 alone, every layer from the frozen teacher QNN;
``method="oneshot"`` converts every layer at once (as fold) and trains them all
(``L x max_epochs_per_stage`` epochs, then the fine-tune); ``method="scratch"``
trains the same BN-free student for the same epochs from a *random*
initialisation (a freshly initialised copy of the teacher architecture, folded),
with the same CE + KD loss at ``scratch_lr`` (a random start has to move weights by
whole code steps, 1/Q of the latent range, which lr 1e-4..1e-3 does not do in a short
budget), for all its epochs (keeping the best; no early stop, since a random start
often does not improve in its first epoch): the baseline that shows what the
teacher's weights are worth.

With a run directory, every phase ends with an atomic checkpoint (and every
scheduler epoch inside a phase too), and ``resume=True`` continues from the last one.
A :class:`~fiqnn.parallel.Runtime` runs the training on a device, in mixed precision,
or data-parallel under torchrun (:mod:`fiqnn.parallel` has the rules).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import bar as progress_bar
from ..config import DistillConfig
from ..data import DataBundle, batches, first_images, num_batches, to_float
from ..errors import DataError
from ..nets.fximport import import_model, verify_import
from ..parallel import Runtime
from .fold import fold, fold_into
from .graphnet import GraphNet, indexed_form, upgrade_state
from .loop import EPOCH_HOOK, EpochHook, Log, Stream, freeze, kd_loss, train_with_patience
from .ptl import hybrid, ptl_stage, stages
from .qnn import build_teacher_qnn

logger = logging.getLogger(__name__)  # "fiqnn.train.distill"


# --- building blocks --------------------------------------------------------------------------

@torch.no_grad()
def check_fits(teacher: nn.Module, data: DataBundle, x_q: torch.Tensor) -> None:
    """Refuse, before any training, data the teacher cannot take: images of another shape or
    channel count, or another number of classes than the teacher outputs."""
    was_training = teacher.training
    teacher.eval()
    try:
        out = teacher(to_float(x_q))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"the teacher cannot take the data's images of shape {tuple(data.in_shape)} (C, H, W): "
                        f"{first[:200]}") from None
    finally:
        teacher.train(was_training)
    if not bool(torch.isfinite(out).all()):
        raise DataError("the teacher's outputs are inf or NaN on the training images; its weights are broken "
                        "(retrain it, e.g. with a lower --lr)")
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise DataError(f"the teacher outputs {tuple(out.shape[1:])} per image but the data has {data.num_classes} "
                        "classes; use a teacher built for this data set")


def reinitialised(teacher: nn.Sequential, seed: int) -> nn.Sequential:
    """A copy of ``teacher`` with every layer's parameters (and BN statistics) freshly
    initialised by PyTorch's defaults, seeded."""
    fresh = copy.deepcopy(teacher)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    return fresh


def teacher_qnn_from_state(teacher: nn.Module, config: DistillConfig, state: dict[str, Any],
                           calib: torch.Tensor) -> GraphNet:
    """The trained teacher QNN (after step 0) of a distill checkpoint ``state``."""
    qnn = build_teacher_qnn(import_model(teacher), config, calib)
    qnn.load_state_dict(upgrade_state(state["frozen"], list(qnn.units)))
    return qnn.eval()


@torch.no_grad()
def accuracy(chain: nn.Module, split, batch_size: int = 500, runtime: Runtime | None = None,
             progress: bool = False, desc: str = "accuracy") -> float:
    """Top-1 accuracy (%) of a code-domain chain on ``split`` (eval mode; student layers exact).
    Data-parallel ranks each count their share of the images; all get the same number."""
    rt = runtime or Runtime()
    chain.eval()
    correct = total = 0
    for x_q, y in progress_bar(batches(split, batch_size, rank=rt.rank, world=rt.world), progress=progress and rt.main,
                               desc=desc, total=num_batches(split, batch_size)):
        correct += int((chain(rt.to_device(x_q)).argmax(1) == rt.to_device(y)).sum())
        total += len(y)
    correct, total = rt.sum(correct, total)
    return 100.0 * correct / total


# --- the pipeline -----------------------------------------------------------------------------

class _State:
    """Everything a distill run carries between phases (and saves in its checkpoint)."""

    def __init__(self, qnn: GraphNet, frozen: GraphNet, student: GraphNet):
        self.qnn, self.frozen, self.student = qnn, frozen, student
        self.done = 0  # phases finished
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "history": self.history, "qnn": self.qnn.state_dict(),
                "frozen": self.frozen.state_dict(), "student": self.student.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        names = list(self.qnn.units)
        self.qnn.load_state_dict(upgrade_state(d["qnn"], names))
        self.frozen.load_state_dict(upgrade_state(d["frozen"], names))
        self.student.load_state_dict(upgrade_state(d["student"], names))
        self.done, self.history = d["done"], d["history"]


def calibration(data: DataBundle, n: int) -> torch.Tensor:
    x, got = [], 0
    for x_q, _ in batches(data.train, 256):
        x.append(x_q.float())
        got += len(x_q)
        if got >= n:
            break
    return torch.cat(x)[:n]


def distill(teacher: nn.Module, data: DataBundle, config: DistillConfig, *,
            checkpoint: Callable[[dict[str, Any]], None] | None = None, resume_state: dict[str, Any] | None = None,
            progress: bool = True, log: Log | None = None, runtime: Runtime | None = None) -> GraphNet:
    """Turn the BN ``teacher`` into a BN-free integer student, a :class:`~fiqnn.train.graphnet.GraphNet`
    (see module doc).

    Args:
        teacher: a float BN model: one of :mod:`fiqnn.nets.models`, or any module
            :func:`fiqnn.import_model` accepts (not modified).
        data: the data set (train for learning, val for the schedulers; test is not used).
        config: the method and its settings.
        checkpoint: called with a resumable state after every phase.
        resume_state: a state passed earlier to ``checkpoint``; its finished phases are skipped.
        progress: show progress bars.
        log: where progress lines go (default: info records of the ``fiqnn.train.distill`` logger;
            nothing is printed unless the application configures :mod:`logging`).
        runtime: device, mixed precision and data-parallel rank (default: this process,
            CPU, float32); ``config.batch_size`` is the global batch.
    """
    log = log or logger.info
    rt = runtime or Runtime()
    rt.check_batch(config.batch_size)
    units = import_model(teacher)  # or, before any work, the refusal naming the op with no integer form
    torch.manual_seed(config.seed)
    calib = calibration(data, config.calib_images)  # built on the CPU; moved with the networks below
    check_fits(teacher, data, calib[:8])
    verify_import(teacher, units, to_float(calib[:64]))
    qnn = build_teacher_qnn(units, config, calib)
    student = fold(qnn, config, calib, progress and rt.main)  # the skeleton (and fold's result)
    student.in_shape, student.num_classes = tuple(data.in_shape), data.num_classes
    state = _State(qnn, copy.deepcopy(qnn), student)
    groups = stages(qnn)
    n = len(groups)
    stage_names = [f"{g[0]}..{g[-1]}" if len(g) > 1 else g[0] for g in groups]

    def random_qnn() -> nn.Module:
        fresh = build_teacher_qnn(import_model(reinitialised(teacher, config.seed)), config, calib.cpu())
        return rt.place(fresh)

    if resume_state is not None:
        state.load_state_dict(resume_state)
        log(f"resuming after phase {state.done}")
    for m in (state.qnn, state.frozen, state.student):
        rt.place(m)
    calib = calib.to(rt.device)
    stream = Stream(data, config, rt)
    if resume_state is not None and "stream" in resume_state:  # (older checkpoints have no position)
        stream.load_state_dict(resume_state["stream"])
        _set_rng_state(resume_state["rng"], rt.device)

    def run_state(**extra: Any) -> dict[str, Any]:
        """What a checkpoint holds: the networks, the phases done, and where the data and the
        random numbers stand, so that a resumed run goes on exactly as the uninterrupted one."""
        return {**state.state_dict(), "stream": stream.state_dict(), "rng": _rng_state(rt.device), **extra}

    val_split = first_images(data.val, config.val_images)

    def val_acc(chain: nn.Module) -> Callable[[], float]:
        return lambda: accuracy(chain, val_split, runtime=rt)

    # (name, run it -> per-epoch rows, the network its validation accuracy is reported for)
    Phase = tuple[str, Callable[[], list[dict[str, Any]]], Callable[[], nn.Module]]
    float_teacher = None
    if config.teacher_kd and config.teacher_epochs:  # a frozen copy on this device, in eval mode
        float_teacher = rt.place(copy.deepcopy(teacher)).eval()
        freeze(float_teacher)
    phases: list[Phase] = [("teacher-qat", lambda: _teacher_qat(state, config, stream, val_acc(state.qnn),
                                                                progress, log, float_teacher), lambda: state.qnn)]
    if config.method == "ptl":
        phases += [(f"stage {k + 1}/{n} ({stage_names[k]})",
                    lambda k=k: ptl_stage(state, groups, k, config, stream, calib, val_acc, progress, log),
                    lambda k=k: hybrid(state.student, state.qnn, groups, k + 1)) for k in range(n)]
    else:
        source = random_qnn if config.method == "scratch" else (lambda: state.frozen)
        phases.append(("fold", lambda: fold_into(state.student, source(), config, calib, progress and rt.main),
                       lambda: state.student))
        if config.method in ("oneshot", "scratch"):
            scratch = config.method == "scratch"
            phases.append((config.method, lambda: _finetune(
                state, config, stream, val_acc(state.student), progress, log,
                lr=config.scratch_lr if scratch else config.lr, epochs=n * config.max_epochs_per_stage,
                desc=config.method, patience=n * config.max_epochs_per_stage if scratch else None),
                lambda: state.student))
    if config.method != "fold" and config.finetune_epochs:
        phases.append(("finetune", lambda: _finetune(
            state, config, stream, val_acc(state.student), progress, log, lr=config.lr * 0.1,
            epochs=config.finetune_epochs, desc="finetune"), lambda: state.student))

    in_phase = (resume_state or {}).get("in_phase")
    if in_phase is not None and indexed_form(resume_state["student"]):
        # A chain checkpoint of fiqnn before one pipeline: its networks load (upgrade_state), but
        # its mid-phase snapshot lists the trained modules in another grouping.
        log(f"checkpoint from an older fiqnn: phase {in_phase['phase'] + 1} starts again from its beginning")
        in_phase = None
    for i, (name, run_phase, network) in enumerate(phases):
        if i < state.done:
            continue
        t0 = time.perf_counter()

        def save_epoch(snapshot: dict[str, Any], i: int = i) -> None:  # a checkpoint inside phase i
            if checkpoint is not None:
                checkpoint(run_state(in_phase={"phase": i, **snapshot}))

        # Each phase runs the scheduler once; a snapshot taken inside this phase resumes it.
        resume_here = in_phase if in_phase is not None and in_phase["phase"] == i else None
        token = EPOCH_HOOK.set(EpochHook(save_epoch, resume_here))
        try:
            rows = run_phase()
        finally:
            EPOCH_HOOK.reset(token)
        rt.check_same([state.qnn, state.student], name)
        # A trained phase keeps its best epoch, so its validation accuracy is already known.
        val = max(r["val_acc"] for r in rows) if rows else accuracy(network(), val_split, runtime=rt)
        wall = time.perf_counter() - t0
        epochs = sum(1 for r in rows if r["epoch"] > 0)  # rows start with the untrained epoch 0
        state.history.append({"phase": name, "epochs": epochs, "val_acc": val, "wall_s": wall, "rows": rows})
        state.done = i + 1
        if checkpoint is not None:
            checkpoint(run_state())
        same = f"; weights identical on all {rt.world} ranks" if rt.distributed else ""
        log(f"{name}: {epochs} epochs, val acc {val:.2f}%, {wall:.1f} s{same}")
    state.student.eval()
    state.student.history = state.history
    return state.student


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's global random state (dropout draws from it), and the GPU's when training on one."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng_state(d: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(d["cpu"])
    if device.type == "cuda" and "cuda" in d:
        torch.cuda.set_rng_state(d["cuda"], device)


def _teacher_qat(state: _State, config: DistillConfig, stream: Stream, evaluate, progress: bool,
                 log: Log, teacher: nn.Module | None) -> list[dict[str, Any]]:
    """Step 0: QAT of the BN teacher at W/A bits, loss CE (+ ``teacher_kd`` x KD from the float
    ``teacher``'s logits); the frozen copy is taken afterwards."""
    rows: list[dict[str, Any]] = []
    if config.teacher_epochs:
        qnn = state.qnn

        def loss_fn(x_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = qnn(x_q)
            loss = F.cross_entropy(logits, y)
            if config.teacher_kd:
                with torch.no_grad():
                    target = teacher(to_float(x_q))
                loss = loss + config.teacher_kd * kd_loss(logits, target, config.kd_temperature)
            return loss

        rows = train_with_patience(
            modules=[qnn], set_modes=qnn.train, loss_fn=loss_fn, evaluate=evaluate, stream=stream,
            lr=config.teacher_lr, weight_decay=config.weight_decay, max_epochs=config.teacher_epochs,
            patience=config.teacher_epochs, desc="teacher QAT", progress=progress, log=log,
            schedule=config.teacher_lr_schedule)
    state.frozen.load_state_dict(state.qnn.state_dict())
    state.frozen.eval()
    freeze(state.frozen)
    return rows


def _finetune(state: _State, config: DistillConfig, stream: Stream, evaluate, progress: bool, log: Log, *,
              lr: float, epochs: int, desc: str, patience: int | None = None) -> list[dict[str, Any]]:
    """Step 3 (and the one-shot baseline): train the whole student with CE + KD."""
    student, frozen = state.student, state.frozen
    freeze(student, False)

    def loss_fn(x_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = frozen(x_q)
        logits = student(x_q)
        loss = F.cross_entropy(logits, y)
        if config.lambda_kd:
            loss = loss + config.lambda_kd * kd_loss(logits, teacher_logits, config.kd_temperature)
        return loss

    rows = train_with_patience(modules=[student], set_modes=student.train, loss_fn=loss_fn, evaluate=evaluate,
                               stream=stream, lr=lr, weight_decay=config.weight_decay, max_epochs=epochs,
                               patience=patience or config.patience, desc=desc, progress=progress, log=log)
    freeze(student)
    return rows


def save_student(student: GraphNet, path: str | os.PathLike, config: DistillConfig) -> None:
    """Write the trained student (structure + weights; loads without the teacher)."""
    from .. import _io

    _io.torch_save({"spec": student.spec(), "config": config.to_dict(), "state_dict": student.state_dict()},
                   Path(path))
