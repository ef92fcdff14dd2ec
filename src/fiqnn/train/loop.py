"""Training one phase: the batch stream, the losses, the PTL scheduler and the stage trainer.

Shared by every phase of :mod:`fiqnn.train.distill` (teacher QAT, PTL stages, fine-tune):
:func:`train_with_patience` is the scheduler of docs/method.md (train an epoch, validate,
keep the best, stop after ``patience`` epochs without improvement, restore the best), and
:func:`train_stage` trains one PTL stage once its units are initialised and its loss built.
"""

from __future__ import annotations

import contextvars
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import bar as progress_bar
from .._run import check_finite
from ..config import DistillConfig
from ..data import DataBundle, batches, num_batches
from ..parallel import Runtime

Log = Callable[[str], None]


@dataclass
class EpochHook:
    """How the scheduler of the running phase checkpoints each epoch, and what it resumes from."""

    save: Callable[[dict[str, Any]], None]
    resume: dict[str, Any] | None = None


EPOCH_HOOK: contextvars.ContextVar[EpochHook | None] = contextvars.ContextVar("fiqnn_epoch_hook", default=None)


class Stream:
    """Training batches without end, one reshuffled pass after another, cut into
    scheduler epochs of ``steps`` batches (this rank's share of each, on its device).

    Its position (passes begun, batches taken from the current one) is part of every
    checkpoint, so a resumed run trains on the batches the uninterrupted run would have."""

    def __init__(self, data: DataBundle, config: DistillConfig, runtime: Runtime):
        self.data, self.config, self.rt = data, config, runtime
        self.passes = self.pos = 0
        full = num_batches(data.train, config.batch_size, drop_last=True)
        self.steps = min(config.steps_per_epoch, full) if config.steps_per_epoch else full
        self._it: Iterator | None = None

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "pos": self.pos}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.passes, self.pos, self._it = d["passes"], d["pos"], None

    def _open(self, skip: int) -> Iterator:
        """The current pass (number ``passes - 1``), from its batch ``skip`` on."""
        return batches(self.data.train, self.config.batch_size, shuffle=True, augment=self.data.augment,
                       seed=self.config.seed * 1_000_003 + self.passes - 1, drop_last=True, rank=self.rt.rank,
                       world=self.rt.world, skip=skip)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            if self._it is None and self.passes:  # resumed inside a pass
                self._it = self._open(self.pos)
            batch = next(self._it, None) if self._it is not None else None
            if batch is None:
                self.passes, self.pos = self.passes + 1, 0
                self._it = self._open(0)
                batch = next(self._it)
            self.pos += 1
            yield self.rt.to_device(batch[0]), self.rt.to_device(batch[1])


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation loss: T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def ptl_loss(logits: torch.Tensor, y: torch.Tensor, out: torch.Tensor, target: torch.Tensor,
             teacher_logits: torch.Tensor, qmax: float, config: DistillConfig) -> torch.Tensor:
    """``CE(logits, y) + lambda_target * MSE(out / qmax, target / qmax) + lambda_kd * KD``: the
    loss of a PTL stage whose converted output is ``out`` and whose teacher output is ``target``."""
    loss = F.cross_entropy(logits, y)
    if config.lambda_target:
        loss = loss + config.lambda_target * F.mse_loss(out / qmax, target / qmax)
    if config.lambda_kd:
        loss = loss + config.lambda_kd * kd_loss(logits, teacher_logits, config.kd_temperature)
    return loss


def freeze(module: nn.Module, frozen: bool = True) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


class _Loss(nn.Module):
    """The trained modules and their loss as one module, so DistributedDataParallel can wrap
    them: its forward is ``loss_fn``, which uses those very modules."""

    def __init__(self, modules: list[nn.Module], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.trained = nn.ModuleList(modules)
        self.loss_fn = loss_fn

    def forward(self, x_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(x_q, y)


def train_epoch(batches: Iterator, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                opt: torch.optim.Optimizer, rt: Runtime, *, steps: int, desc: str, progress: bool,
                after_step: Callable[[], None] | None = None) -> float:
    """One epoch of optimizer steps on ``loss_of(x_q, y)`` over ``batches`` (``steps`` of them;
    ``after_step``, e.g. a learning-rate schedule, after each); returns the mean loss over the
    epoch and the data-parallel ranks. The loss is summed on the device: no host sync per step."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    bar = progress_bar(batches, total=steps, desc=desc, progress=progress and rt.main)
    for i, (x_q, y) in enumerate(bar):
        with rt.autocast():
            loss = loss_of(x_q, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.detach()
        if i % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(loss_sum) / (i + 1):.4f}")
    return rt.sum(float(loss_sum))[0] / rt.world / steps


def train_with_patience(*, modules: list[nn.Module], set_modes: Callable[[], None],
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], evaluate: Callable[[], float],
                        stream: Stream, lr: float, weight_decay: float, max_epochs: int, patience: int,
                        desc: str, progress: bool, log: Log, schedule: str = "constant") -> list[dict[str, Any]]:
    """The PTL scheduler: train an epoch, validate, keep the best state; stop after
    ``patience`` epochs without improvement (or ``max_epochs``) and restore the best.
    ``schedule`` "cosine": the learning rate of step t of the ``max_epochs`` x steps the
    phase may take is ``lr`` x (1 + cos(pi t / T)) / 2, a function of the step alone, so a
    resumed phase continues on the same curve.

    The state before training (epoch 0) is a candidate too, so a phase never leaves the
    network worse on validation than it found it (at 8 bits the local initialisation is
    often already as good as training gets).

    Data-parallel: the modules train wrapped in DistributedDataParallel; before each
    validation every rank takes rank 0's buffers, and the validation accuracy is summed
    over ranks, so every rank makes the same decisions."""
    rt = stream.rt
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    net = rt.wrap(_Loss(modules, loss_fn))
    hook = EPOCH_HOOK.get()
    snap = hook.resume if hook is not None else None
    if hook is not None:
        hook.resume = None  # a snapshot resumes one scheduler run
    if snap is not None:  # mid-phase resume: the modules, optimizer and scheduler as after that epoch
        for m, sd in zip(modules, snap["modules"]):
            m.load_state_dict(sd)
        opt.load_state_dict(snap["optimizer"])
        best_acc, bad, best_state, rows = snap["best_acc"], snap["bad"], snap["best_state"], snap["rows"]
        log(f"{desc}: resuming after epoch {rows[-1]['epoch']}")
    else:
        best_acc, bad = evaluate(), 0
        best_state = [copy.deepcopy(m.state_dict()) for m in modules]
        rows = [{"epoch": 0, "loss": None, "val_acc": best_acc, "wall_s": 0.0}]
        log(f"{desc} epoch 0 (before training): val acc {best_acc:.2f}%")
    start = rows[-1]["epoch"]
    stopped = snap is not None and (bad >= patience or start >= max_epochs)
    total, step = max_epochs * stream.steps, start * stream.steps

    def set_lr() -> None:
        for group in opt.param_groups:
            group["lr"] = lr * (1 + math.cos(math.pi * step / total)) / 2

    def after_step() -> None:
        nonlocal step
        step += 1
        set_lr()

    if schedule == "cosine":
        set_lr()
    for epoch in range(start, max_epochs if not stopped else start):
        t0 = time.perf_counter()
        set_modes()
        loss = train_epoch(stream.epoch(), net, opt, rt, steps=stream.steps, desc=f"{desc} epoch {epoch + 1}",
                           progress=progress, after_step=after_step if schedule == "cosine" else None)
        check_finite(modules, loss, f"{desc} epoch {epoch + 1}")
        rt.sync_buffers(modules)
        acc = evaluate()
        rows.append({"epoch": epoch + 1, "loss": loss, "val_acc": acc,
                     "wall_s": time.perf_counter() - t0})
        if acc > best_acc:
            best_acc, bad = acc, 0
            best_state = [copy.deepcopy(m.state_dict()) for m in modules]
        else:
            bad += 1
        if hook is not None:  # checkpoint first: a logged epoch is always resumable
            hook.save({"modules": [m.state_dict() for m in modules], "optimizer": opt.state_dict(),
                       "best_acc": best_acc, "bad": bad, "best_state": best_state, "rows": rows})
        log(f"{desc} epoch {epoch + 1}: loss {rows[-1]['loss']:.4f}, val acc {acc:.2f}%")
        if bad >= patience:
            break
    for m, s in zip(modules, best_state):
        m.load_state_dict(s)
    return rows


def train_stage(*, prefix: list[nn.Module], stage: list[nn.Module], rest: list[nn.Module],
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], evaluate: Callable[[], float],
                stream: Stream, k: int, final: bool, config: DistillConfig, progress: bool,
                log: Log) -> list[dict[str, Any]]:
    """Train PTL stage k+1 (chain or DAG) once its units are initialised and its loss built.

    The converted ``prefix`` is frozen in eval mode; the ``stage``'s student units train;
    the downstream teacher units ``rest`` train only under downstream compensation (else
    frozen, in eval mode). The last stage trains at a tenth of the learning rate. The
    patience rule picks the best epoch; the stage ends frozen, in eval mode.
    """
    for m in prefix:
        freeze(m)
    for m in stage:
        freeze(m, False)
    for m in rest:
        freeze(m, not config.compensation)

    def set_modes() -> None:
        for m in prefix:
            m.eval()
        for m in stage:
            m.train()
        for m in rest:
            m.train(config.compensation)

    rows = train_with_patience(
        modules=[*stage, *rest], set_modes=set_modes, loss_fn=loss_fn, evaluate=evaluate, stream=stream,
        lr=config.lr * (0.1 if final else 1.0), weight_decay=config.weight_decay,
        max_epochs=config.max_epochs_per_stage, patience=config.patience, desc=f"stage {k + 1}",
        progress=progress, log=log)
    for m in stage:
        freeze(m)
        m.eval()
    return rows
