"""Phase 1 of docs/method.md, local initialisation: one BN-free integer layer from one teacher layer.

For a teacher unit computing ``y = BN(conv(x_q * s_in, w_hat))`` followed by
ReLU and A-bit codes of step ``s_out``, BatchNorm folds into the weights and
bias (per output channel ``g = gamma / sqrt(var + eps)``)::

    w_c = w_hat * g * s_in / s_out,   b_c = ((b - mean) * g + beta) / s_out

so that ``conv(x_q, w_c) + b_c`` approximates the teacher's output *codes*. The
student quantizes ``w_c`` to W bits with one step per layer (or per channel),
makes the bias an integer, and then fits its scale ``alpha`` (= the step, at
first) by least squares against the teacher's codes on calibration inputs,
refined by a search on the true clipped-and-rounded error (:func:`local_init`). Units that
are not layers (adds, average pools) initialise themselves (``init_student``,
:mod:`fiqnn.train.blocks`); :func:`init_unit` picks the rule, :func:`fold` applies it to
every unit of a network at once: the ``fold`` baseline, and the start of oneshot.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._progress import bar as progress_bar
from ..config import DistillConfig
from ..integer.arith import code_range
from .graphnet import GraphNet
from .quantizers import weight_step
from .units import IntUnit, QnnUnit, in_code


@torch.no_grad()
def fold_bn(t: QnnUnit) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher unit's BN folded into code-unit weights ``w_c`` and bias ``b_c``."""
    w = t.quantized_weight().detach().double()
    b = t.layer.bias.detach().double() if t.layer.bias is not None \
        else torch.zeros(len(w), dtype=torch.float64, device=w.device)
    if t.bn is not None:
        g = t.bn.weight.double() / torch.sqrt(t.bn.running_var.double() + t.bn.eps)
        w = w * g.reshape((-1,) + (1,) * (w.ndim - 1))
        b = (b - t.bn.running_mean.double()) * g + t.bn.bias.double()
    s_out = float(t.aq.step.abs()) if t.aq is not None else 1.0
    return w * (float(t.in_scale) / s_out), b / s_out


@torch.no_grad()
def local_init(t: QnnUnit, x_q: torch.Tensor, in_bits: int, w_bits: int, per_channel: bool,
               in_signed: bool = False, rounding: str = "single") -> IntUnit:
    """Build the student layer for teacher unit ``t`` and fit its scale.

    Args:
        t: the teacher unit (its current state; it is not modified).
        x_q: calibration input codes of this layer, as the student network will see them.
        in_bits: bits of those codes (8 for the network input).
        in_signed: whether those codes are signed.
        w_bits: weight bits of the student layer.
        per_channel: one (mult, shift) per output channel instead of one per layer, for a
            layer whose output is requantized. A layer with no activation bits (the logits,
            or a residual branch's accumulators) keeps one scale whatever this says: the
            logits' int32 accumulators are compared by argmax across channels, and that
            ranks the classes as the real-valued logits do only if they share one scale.
        rounding: (E4)'s rounding, "single" or "double" (:class:`~fiqnn.train.units.IntUnit`).
    """
    per_channel = per_channel and t.a_bits is not None
    was_training = t.training
    t.eval()
    target = t.core(x_q).double()  # teacher's codes before pooling (or float logits)
    t.train(was_training)

    w_c, b_c = fold_bn(t)
    s = IntUnit(t.geometry, tuple(w_c.shape), in_bits, w_bits, t.a_bits, per_channel, signed=t.signed,
                in_signed=in_signed, rounding=rounding).to(w_c.device)
    # the weight step is the initial alpha: alpha * w_q ~ w_c (a folded teacher grid's own step is a candidate)
    step = weight_step(w_c, s.q, per_channel, t.grid_step())
    step_b = step.reshape((-1,) + (1,) * (w_c.ndim - 1)) if per_channel else step.reshape(())
    s.weight.copy_((w_c / (step_b * s.q)).float())  # latent weights: w_q = clamp(round(q * weight))
    s.log_alpha.copy_(step.log().float())
    s.bias.copy_(b_c.float())

    # Least-squares fit of alpha with the integer weights and bias fixed.
    s.eval()
    p = s.integer_params()
    acc = s.geometry.linear(x_q.double(), p["w_q"].double(), p["bias_q"].double())
    alpha = _fit_alpha(acc, target, t.a_bits, per_channel, t.signed)
    s.log_alpha.copy_(alpha.log().float())
    s.bias.copy_((p["bias_q"].double() * alpha).float())  # keep the integer bias of the fit
    s.train()
    return s


FIT_VALUES = 1 << 25  # the scale search reads at most this many accumulators (alexnet-s's layers all fit)


def _fit_alpha(acc: torch.Tensor, target: torch.Tensor, a_bits: int | None, per_channel: bool,
               signed: bool = False) -> torch.Tensor:
    """alpha minimising ``|clamp(round(alpha * acc)) - target|^2`` (per channel or overall), on the
    first images of the calibration batch that hold at most ``FIT_VALUES`` values."""
    if acc.numel() > FIT_VALUES:
        keep = max(1, len(acc) * FIT_VALUES // acc.numel())
        acc, target = acc[:keep], target[:keep]
    dims = [d for d in range(acc.ndim) if d != 1] if per_channel else list(range(acc.ndim))
    if a_bits is None:  # logits: plain least squares, no clipping
        mask = torch.ones_like(acc, dtype=torch.bool)
    else:
        qmin, qmax = code_range(a_bits, signed)
        mask = (target > qmin) & (target < qmax)  # the linear region of the clamp
    num = (acc * target * mask).sum(dim=dims)
    den = (acc * acc * mask).sum(dim=dims)
    ls = torch.where((den > 0) & (num > 0), num / den.clamp_min(1e-30), torch.full_like(num, math.nan))
    if a_bits is None:
        return torch.nan_to_num(ls, nan=1.0).clamp_min(2.0**-30).reshape(-1)
    # Refine on the true (clipped, rounded) error over a multiplicative grid.
    fallback = _median_ratio(acc, target, dims)
    base = torch.where(torch.isnan(ls), fallback, ls)
    shape = [-1 if d == 1 and per_channel else 1 for d in range(acc.ndim)]
    best = base.clone()
    best_err = torch.full_like(base, math.inf)
    out = torch.empty_like(acc)  # one buffer, in place: 5x faster than a new tensor per op, same values
    for f in torch.linspace(0.7, 1.3, 31, dtype=torch.float64):
        a = base * f
        torch.mul(acc, a.reshape(shape), out=out)
        err = out.add_(0.5).floor_().clamp_(qmin, qmax).sub_(target).square_().mean(dim=dims)
        better = err < best_err
        best = torch.where(better, a, best)
        best_err = torch.where(better, err, best_err)
    return best.clamp_min(2.0**-30).reshape(-1)


def _median_ratio(acc: torch.Tensor, target: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """A scale for channels whose calibration targets are never in the linear region."""
    big = acc.abs().amax(dim=dims).clamp_min(1.0)
    return 1.0 / big


@torch.no_grad()
def init_unit(t: nn.Module, srcs: list[str], env: dict[str, torch.Tensor], students: dict[str, nn.Module],
              config: DistillConfig, last: bool) -> nn.Module:
    """Local initialisation of one student unit from teacher unit ``t``, whose inputs on the
    calibration images are ``env[src]``; ``students`` holds the already initialised units
    (an add reads the scale of the residual branch feeding it). A conv/fc layer is folded and
    fitted by :func:`local_init`; every other unit initialises itself (``t.init_student``)."""
    if not isinstance(t, QnnUnit):
        return t.init_student(srcs, students, config)
    in_bits, in_signed = in_code(srcs[0], students)
    s = local_init(t, env[srcs[0]], in_bits, t.w_bits, config.scale == "per-channel", in_signed, config.rounding)
    s.raw = t.a_bits is None and not last  # a residual branch: its accumulators feed an add
    return s


@torch.no_grad()
def fold(qnn: GraphNet, config: DistillConfig, calib_x: torch.Tensor, progress: bool = False) -> GraphNet:
    """Step 1: every student unit from its teacher unit, on the teacher's own inputs.

    Residual branches get one scale per layer even with ``per-channel`` (the add's (E9)
    multiplier is one per input)."""
    env = qnn.eval().outputs(calib_x)
    last = list(qnn.units)[-1]
    students: dict[str, nn.Module] = {}
    for name, t in progress_bar(qnn.units.items(), progress=progress, desc="fold", total=len(qnn.units), unit="unit"):
        students[name] = init_unit(t, qnn.inputs[name], env, students, config, name == last)
    return GraphNet([(n, m, qnn.inputs[n]) for n, m in students.items()]).eval()


@torch.no_grad()
def fold_into(student: GraphNet, source: GraphNet, config: DistillConfig, calib: torch.Tensor,
              progress: bool = False) -> list[dict]:
    """Step 1 for every unit at once (the fold / oneshot / scratch start), into ``student``."""
    for name, unit in fold(source, config, calib, progress).units.items():
        student.units[name].load_state_dict(unit.state_dict())
    return []
