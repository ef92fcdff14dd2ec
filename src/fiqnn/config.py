"""Frozen, validated configuration objects; saved as JSON beside every run.

Each config checks itself in ``__post_init__`` and says what to pass instead,
so a bad value fails before any data is read or any file is written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ._archs import ARCHS
from .data import DATASETS
from .errors import ConfigError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class _Dict:
    """to_dict / from_dict for a flat dataclass of JSON scalars."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        _check(not unknown, f"{cls.__name__}: unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class TeacherConfig(_Dict):
    """How to train a float BN teacher.

    The default recipe (SGD + Nesterov momentum, one-cycle learning rate, label
    smoothing, weight decay on conv/linear weights only) reaches >= 93% on
    Fashion-MNIST with alexnet-s in 8 epochs; see README's results.
    """

    arch: str = "alexnet-s"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    image_size: int | None = None  # imagefolder / synthetic only
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.arch in ARCHS, f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        _check(self.data in DATASETS, f"unknown data set {self.data!r}; choose one of {', '.join(DATASETS)}")
        _check(isinstance(self.epochs, int) and self.epochs > 0,
               f"epochs must be a positive integer, got {self.epochs}")
        _check(isinstance(self.batch_size, int) and self.batch_size > 0,
               f"batch size must be a positive integer, got {self.batch_size}")
        _check(0 < self.lr < math.inf, f"lr must be positive and finite, got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(0 < self.val_fraction < 1, f"val fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.image_size is None or self.image_size > 0,
               f"image size must be positive, got {self.image_size}")


METHODS = ("ptl", "fold", "oneshot", "scratch")
SCALES = ("per-layer", "per-channel")
LR_SCHEDULES = ("constant", "cosine")
ROUNDINGS = ("single", "double")  # (E4), (E4d): fiqnn.integer.arith.ROUNDINGS (a layer below cannot import it)
TEACHER_QUANTIZERS = ("lsq", "dorefa")
TEACHER_WEIGHT_GRIDS = ("channel", "folded")


@dataclass(frozen=True)
class DistillConfig(_Dict):
    """How to turn a BN teacher into a BN-free integer student (docs/method.md).

    Bits: ``w_bits``/``a_bits`` everywhere, except the weights of the first and last
    layers, which get ``first_last_bits`` (set it equal to ``w_bits`` for none).
    One training "epoch" of the schedulers is ``steps_per_epoch`` batches (default:
    one pass over the training split) followed by a validation pass.
    """

    w_bits: int = 4
    a_bits: int = 4
    scale: str = "per-layer"
    rounding: str = "single"  # (E4) single rounding, or gemmlowp's double (E4d): TFLite Micro, CMSIS-NN exact
    first_last_bits: int = 8
    method: str = "ptl"
    teacher_quantizer: str = "lsq"
    # the teacher QNN's weight grid: "channel" (a step per output channel of the BN-free conv
    # weights) or "folded" (steps on the BN-folded weights, one per layer where the student
    # layer has one scale: the grid the student holds, so local initialisation re-quantizes nothing)
    teacher_weight_grid: str = "channel"
    teacher_epochs: int = 1  # step 0: QAT of the BN teacher (0: calibrate only)
    teacher_kd: float = 0.0  # step 0: weight of KD from the float teacher's logits (0: CE only)
    lambda_target: float = 1.0
    lambda_kd: float = 1.0
    kd_temperature: float = 4.0
    compensation: bool = True
    patience: int = 2
    max_epochs_per_stage: int = 4
    finetune_epochs: int = 2
    lr: float = 1e-4  # Adam, PTL stages (the last stage and the fine-tune use lr / 10)
    teacher_lr: float = 1e-4  # Adam, step-0 QAT of the BN teacher
    teacher_lr_schedule: str = "constant"  # step 0: constant, or cosine to 0 over its teacher_epochs
    scratch_lr: float = 1e-2  # Adam, method "scratch" (random init: one weight code step is 1/Q of the latent range)
    weight_decay: float = 1e-5
    batch_size: int = 128
    steps_per_epoch: int | None = None
    calib_images: int = 1024
    val_images: int | None = None  # PTL's decisions on the first N validation images (None: all)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "first_last_bits"):
            v = getattr(self, name)
            _check(isinstance(v, int) and 2 <= v <= 8, f"{name.replace('_', '-')} must be an integer in 2..8, "
                                                         f"got {v}")
        _check(self.scale in SCALES, f"unknown scale {self.scale!r}; choose one of {', '.join(SCALES)}")
        _check(self.rounding in ROUNDINGS, f"unknown rounding {self.rounding!r}; choose one of {', '.join(ROUNDINGS)}")
        _check(self.teacher_lr_schedule in LR_SCHEDULES, f"unknown teacher lr schedule "
               f"{self.teacher_lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        _check(self.method in METHODS, f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        _check(self.teacher_quantizer in TEACHER_QUANTIZERS,
               f"unknown teacher quantizer {self.teacher_quantizer!r}; choose lsq or dorefa")
        _check(self.teacher_weight_grid in TEACHER_WEIGHT_GRIDS, f"unknown teacher weight grid "
               f"{self.teacher_weight_grid!r}; choose one of {', '.join(TEACHER_WEIGHT_GRIDS)}")
        _check(self.teacher_weight_grid == "channel" or self.teacher_quantizer == "lsq",
               "teacher-weight-grid folded needs the lsq teacher quantizer (dorefa has no step to place)")
        for name in ("teacher_epochs", "finetune_epochs"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                   f"{name.replace('_', '-')} must be an integer >= 0, got {getattr(self, name)}")
        for name in ("patience", "max_epochs_per_stage", "batch_size", "calib_images"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                   f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        _check(self.steps_per_epoch is None or self.steps_per_epoch > 0,
               f"steps-per-epoch must be positive, got {self.steps_per_epoch}")
        _check(self.val_images is None or (isinstance(self.val_images, int) and self.val_images > 0),
               f"val-images must be a positive integer, got {self.val_images}")
        for name in ("lambda_target", "lambda_kd", "teacher_kd", "weight_decay"):
            _check(getattr(self, name) >= 0, f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        _check(self.kd_temperature > 0, f"kd-temperature must be positive, got {self.kd_temperature}")
        _check(0 < self.lr < math.inf, f"lr must be positive and finite, got {self.lr}")
        _check(0 < self.teacher_lr < math.inf, f"teacher-lr must be positive and finite, got {self.teacher_lr}")
        _check(0 < self.scratch_lr < math.inf, f"scratch-lr must be positive and finite, got {self.scratch_lr}")


DISTILL_FLAGS = {  # `fiqnn distill` flag (argparse dest) -> DistillConfig field
    "wbits": "w_bits", "abits": "a_bits", "scale": "scale", "rounding": "rounding",
    "first_last_bits": "first_last_bits",
    "method": "method", "teacher_quantizer": "teacher_quantizer",
    "teacher_weight_grid": "teacher_weight_grid", "teacher_epochs": "teacher_epochs",
    "teacher_kd": "teacher_kd",
    "lambda_target": "lambda_target", "kd": "lambda_kd", "patience": "patience",
    "max_epochs_per_stage": "max_epochs_per_stage", "finetune_epochs": "finetune_epochs",
    "lr": "lr", "teacher_lr": "teacher_lr", "teacher_lr_schedule": "teacher_lr_schedule", "scratch_lr": "scratch_lr",
    "batch_size": "batch_size", "steps_per_epoch": "steps_per_epoch", "calib_images": "calib_images",
    "val_images": "val_images", "seed": "seed",
}
