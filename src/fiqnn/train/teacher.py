"""Train the float BatchNorm teacher (the input of docs/method.md).

``train_teacher(config, out)`` trains ``config.arch`` on ``config.data`` with
the default recipe of :class:`~fiqnn.config.TeacherConfig`, checkpointing
atomically after every epoch so that ``resume=True`` continues from the last
finished epoch after a crash or a kill. A :class:`~fiqnn.parallel.Runtime` puts the
training on a device, in mixed precision, or data-parallel under torchrun.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _io
from .._run import MODEL, RunDir, check_finite, load_torch
from ..config import TeacherConfig
from ..data import batches, load_data, num_batches, to_float
from ..errors import CheckpointError, ConfigError
from ..nets.models import build_model
from ..parallel import Runtime
from .loop import train_epoch


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int = 512, runtime: Runtime | None = None) -> float:
    """Top-1 accuracy (%) of ``model`` on ``split``, in eval mode (data-parallel ranks
    each count their share; all get the same number)."""
    rt = runtime or Runtime()
    was_training = model.training
    model.eval()
    correct = total = 0
    for x_q, y in batches(split, batch_size, rank=rt.rank, world=rt.world):
        correct += int((model(to_float(rt.to_device(x_q))).argmax(1) == rt.to_device(y)).sum())
        total += len(y)
    model.train(was_training)
    correct, total = rt.sum(correct, total)
    return 100.0 * correct / total


def one_cycle(step: int, total: int, warmup: float = 0.25) -> float:
    """Learning-rate factor at ``step`` of ``total``: linear warm-up from 1/25 to 1
    over the first ``warmup`` share, then cosine decay to 1/25e4 (Smith's one-cycle).

    >>> [round(one_cycle(s, 8), 3) for s in (0, 1, 2, 5, 8)]
    [0.04, 0.52, 1.0, 0.5, 0.0]
    """
    peak = max(1, round(warmup * total))
    if step < peak:
        return 0.04 + 0.96 * step / peak
    t = min(1.0, (step - peak) / max(1, total - peak))
    return 4e-6 + (1 - 4e-6) * 0.5 * (1 + math.cos(math.pi * t))


def sgd_one_cycle(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                  total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with Nesterov momentum and a one-cycle schedule; weight decay only on
    conv/linear weights (not on BN parameters or biases)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=momentum, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: one_cycle(step, total_steps))
    return opt, sched


def train_teacher(config: TeacherConfig, out: str | os.PathLike, *, resume: bool = False,
                  progress: bool = True, runtime: Runtime | None = None) -> dict[str, Any]:
    """Train a float BN teacher into run directory ``out``; return its metrics.

    ``runtime`` (default: this process, CPU, float32) sets the device, mixed precision
    and the data-parallel rank (:mod:`fiqnn.parallel`); ``config.batch_size`` is the
    global batch.

    Raises:
        RunDirError: ``out`` already holds a run (and ``resume`` is False), was
            started with other settings, or cannot be written.
        OutputError: a write failed part way (a full disk); the last checkpoint stays,
            and ``resume=True`` continues from it.
        DataError: the data set is missing or malformed.
    """
    rt = runtime or Runtime()
    rt.check_batch(config.batch_size)
    run = RunDir(out, config.to_dict(), resume=resume, main=rt.main)
    data = load_data(config.data, config.data_dir, val_fraction=config.val_fraction,
                     image_size=config.image_size)
    torch.manual_seed(config.seed)
    model = rt.place(build_model(config.arch, data.num_classes, data.in_shape))
    steps = num_batches(data.train, config.batch_size, drop_last=True)
    if steps == 0:
        raise ConfigError(f"batch size {config.batch_size} is larger than the {len(data.train)} "
                          "training images; pass a smaller --batch-size")
    opt, sched = sgd_one_cycle(model, config.lr, config.momentum, config.weight_decay,
                               config.epochs * steps)
    ckpt = run.load_checkpoint() if run.resumed else None  # every rank reads it
    rt.barrier()  # before rank 0 creates the directory, which would look like a run to resume
    run.create("teacher")

    history: list[dict[str, Any]] = []
    start = 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            start, history = ckpt["epoch"], ckpt["history"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{run.path / 'checkpoint.pt'} does not match this run ({e})") from None
        run.log(f"resuming from epoch {start} of {config.epochs}")
    else:
        run.log(f"training {config.arch} on {config.data}: {len(data.train)} train, {len(data.val)} val, "
                f"{len(data.test)} test images, {config.epochs} epochs")

    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    net = rt.wrap(model)  # DistributedDataParallel across ranks: gradients averaged
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        model.train()
        train_batches = batches(data.train, config.batch_size, shuffle=True, augment=data.augment,
                                seed=config.seed * 1_000_003 + epoch, drop_last=True, rank=rt.rank, world=rt.world)
        train_loss = train_epoch(
            train_batches, lambda x_q, y: loss_fn(net(to_float(rt.to_device(x_q))), rt.to_device(y)), opt, rt,
            steps=steps, desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress, after_step=sched.step)
        check_finite([model], train_loss, f"epoch {epoch + 1}")
        rt.sync_buffers([model])  # BN statistics: rank 0's, so every rank validates one network
        rt.check_same([model], f"epoch {epoch + 1}")
        val_acc = evaluate(model, data.val, runtime=rt)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_acc": val_acc,
               "wall_s": time.perf_counter() - t0}
        history.append(row)
        run.save_checkpoint({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                             "history": history})
        run.write_metrics({"status": "running", "history": history})
        run.log(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, "
                f"val acc {val_acc:.2f}%, {row['wall_s']:.1f} s"
                + (f"; weights identical on all {rt.world} ranks" if rt.distributed else ""))

    test_acc = evaluate(model, data.test, runtime=rt)
    if rt.main:
        weights = {k: v.cpu().contiguous() for k, v in model.state_dict().items()}  # (--channels-last: NCHW again)
        _io.torch_save({"arch": config.arch, "num_classes": data.num_classes, "in_shape": list(data.in_shape),
                        "state_dict": weights}, run.path / MODEL)
    metrics = {"status": "done", "arch": config.arch, "data": config.data, "epochs": config.epochs,
               "val_acc": history[-1]["val_acc"], "test_acc": test_acc,
               "train_wall_s": sum(r["wall_s"] for r in history), "history": history}
    run.write_metrics(metrics)
    run.log(f"test accuracy {test_acc:.2f}% ({len(data.test)} images)")
    return metrics


def load_teacher(run_dir: str | os.PathLike) -> nn.Sequential:
    """The trained teacher of run directory ``run_dir``, in eval mode."""
    path = Path(run_dir) / MODEL
    if not path.exists():
        raise CheckpointError(f"{run_dir} holds no finished teacher ({MODEL} missing); "
                              f"finish it with `fiqnn train-teacher --resume --out {run_dir}`")
    blob = load_torch(path)
    try:
        model = build_model(blob["arch"], blob["num_classes"], tuple(blob["in_shape"]))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path} is not a fiqnn teacher ({e})") from None
    return model.eval()
