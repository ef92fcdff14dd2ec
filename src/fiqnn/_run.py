"""Run directories: config, metrics, log and checkpoints of one training run.

Layout of a run directory::

    config.json      the config it was started with (and the fiqnn version)
    metrics.json     per-epoch history and final numbers, rewritten each epoch
    checkpoint.pt    latest resumable state, written atomically each epoch
    checkpoint.prev.pt  the one before it: used when the latest turns out unreadable
    train.log        human-readable log
    model.pt         the finished model (weights only)

Checkpoints hold only tensors and plain Python values and are loaded with
``torch.load(weights_only=True)``: loading one never runs code. Each carries a SHA-256 of
its contents, checked on load, so a flipped bit is caught rather than trained on.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import _io
from .errors import CheckpointError, RunDirError, TrainingError

CONFIG, METRICS, CHECKPOINT, LOG, MODEL = "config.json", "metrics.json", "checkpoint.pt", "train.log", "model.pt"
PREVIOUS = "checkpoint.prev.pt"


def check_writable(out: Path, target: Path | None = None) -> None:
    """Fail early (before any work) if ``out`` cannot become a writable directory; the error
    names ``target`` (what is to be written there, default ``out`` itself)."""
    p = Path(out)
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise RunDirError(f"cannot write to {target or out}: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write to {target or out}: {p} is not writable")


class RunDir:
    """A run directory, opened either fresh or for ``--resume``.

    In a data-parallel run every rank opens it (and reads its checkpoint), but only the
    ``main`` rank writes: on the others create/log/save_checkpoint/write_metrics do nothing.
    """

    def __init__(self, path: str | os.PathLike, config: dict[str, Any], *, resume: bool, main: bool = True):
        self.path = Path(path)
        self.config = config
        self.main = main
        self.resumed = False
        saved = self.path / CONFIG
        if saved.exists():
            if not resume:
                raise RunDirError(f"{self.path} already holds a run; pass --resume to continue it, "
                                  "or choose another --out")
            old = read_json(saved)
            diff = sorted(k for k in config if k in old.get("config", {}) and old["config"][k] != config[k])
            if diff:
                k = diff[0]
                raise RunDirError(f"{self.path} was started with {k}={old['config'][k]!r}, not "
                                  f"{config[k]!r}; resume with the same settings or choose another --out")
            self.resumed = True
        check_writable(self.path)

    def create(self, kind: str) -> None:
        """Create the directory and write config.json (after inputs are known to be good)."""
        if not self.main:
            return
        with _io.writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / CONFIG).exists():
            from . import __version__

            _io.write_json(self.path / CONFIG, {"kind": kind, "fiqnn": __version__, "config": self.config})

    def log(self, message: str) -> None:
        if not self.main:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        tqdm.write(line, file=sys.stderr)
        _io.append_text(self.path / LOG, line + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the new state atomically; the one it replaces stays as checkpoint.prev.pt (and,
        if the write fails, as on a full disk, is what :meth:`load_checkpoint` resumes from)."""
        if not self.main:
            return
        latest = self.path / CHECKPOINT
        if latest.exists():
            with _io.writing(self.path / PREVIOUS):
                os.replace(latest, self.path / PREVIOUS)
        _io.torch_save(state, latest)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest state; if it is unreadable (a disk fault, a copy cut short), say so in one
        line and use the previous one; with no readable one, the error names the file."""
        latest, previous = self.path / CHECKPOINT, self.path / PREVIOUS
        if not latest.exists():
            return load_torch(previous) if previous.exists() else None
        try:
            return load_torch(latest)
        except CheckpointError as e:
            if not previous.exists():
                raise
            state = load_torch(previous)  # raises, naming it, if this one is bad too
            self.log(f"warning: {e}; resuming from the previous checkpoint, {PREVIOUS}")
            return state

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if not self.main:
            return
        _io.write_json(self.path / METRICS, metrics)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read {path}: {e}") from None


def load_torch(path: Path) -> dict[str, Any]:
    """Load a checkpoint or model file safely (``weights_only=True``) and verify the content
    digest it was saved with (files from before digests load unverified)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except Exception as e:  # torch raises many types for corrupt files; all mean "unreadable"
        raise CheckpointError(f"{path} is corrupt or not a fiqnn checkpoint ({type(e).__name__})") from None
    if isinstance(state, dict) and _io.DIGEST in state:
        expected = state.pop(_io.DIGEST)
        if _io.content_digest(state) != expected:
            raise CheckpointError(f"{path} is corrupt: its contents do not match the SHA-256 saved with them")
    return state


def check_finite(modules: list[torch.nn.Module], loss: float, where: str) -> None:
    """Stop a diverged phase before its epoch is checkpointed (the last checkpoint stays the last
    good state): a non-finite loss, weight or BN statistic would otherwise surface later as a bare
    error from requantization."""
    bad = [] if math.isfinite(loss) else ["the loss"]
    bad += [name for m in modules for name, t in m.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())][:3]
    if bad:
        raise TrainingError(f"{where}: training diverged ({', '.join(bad)} became inf or NaN; loss {loss:.4g}); "
                            "the run stopped before saving this epoch. Try a lower learning rate (--lr, "
                            "--teacher-lr) or more bits, in a new --out")
