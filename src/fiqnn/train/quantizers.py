"""Training-time quantizers: float in, float out, straight-through gradients.

Rounding is :func:`round_half_up`, ``floor(x + 1/2)``, the rule of
docs/arithmetic.md (E3). ``torch.round`` rounds half to even and would make the
training-time network disagree with the integer one on exact ties.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..integer.arith import code_range, weight_range


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 1/2)`` (E3) with a straight-through gradient (d/dx = 1)."""
    return x + (torch.floor(x + 0.5) - x).detach()


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``scale`` (LSQ's step-size gradient scale)."""
    return x * scale + (x - x * scale).detach()


class LsqWeight(nn.Module):
    """Signed narrow-range ``w_bits`` weights with a learned step (LSQ, Esser et al. 2020).

    ``w_hat = clamp(round_half_up(w / s), -Q, Q) * s`` with ``Q = 2^(w_bits-1) - 1``
    and one step ``s`` per tensor or per output channel, starting at max|w| / Q (``init="max"``)
    or at the least-squares step of :func:`weight_step` (``init="mse"``).
    """

    def __init__(self, w_bits: int, weight: torch.Tensor, per_channel: bool = True, init: str = "max"):
        super().__init__()
        self.w_bits = w_bits
        self.q = weight_range(w_bits)[1]
        w = weight.detach().reshape(len(weight), -1)
        amax = w.abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
        step = amax.clamp_min(1e-8) / self.q if init == "max" else \
            weight_step(weight.detach().double(), self.q, per_channel).clamp_min(1e-8).to(weight.dtype)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        self.step = nn.Parameter(step.reshape(shape if per_channel else ()))

    def grid(self) -> torch.Tensor:
        """The step the weights are rounded to (positive, never zero)."""
        return self.step.abs() + 1e-12

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = _grad_scale(self.grid(), 1.0 / math.sqrt(w.numel() * self.q))
        return torch.clamp(round_half_up(w / s), -self.q, self.q) * s


class DorefaWeight(nn.Module):
    """DoReFa-style weights (Zhou et al. 2016), on the signed narrow grid of (E1):
    ``w_hat = round_half_up(Q * tanh(w) / max|tanh(w)|) / Q``. No learned parameter."""

    def __init__(self, w_bits: int, weight: torch.Tensor | None = None, per_channel: bool = False):
        super().__init__()
        self.w_bits = w_bits
        self.q = weight_range(w_bits)[1]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(w)
        t = t / t.abs().max().detach().clamp_min(1e-8)
        return round_half_up(t * self.q) / self.q


class LsqAct(nn.Module):
    """``a_bits`` activation codes, unsigned or signed (docs/arithmetic.md (E1)), with a learned step.

    ``forward(x)`` returns the *codes* ``clamp(round_half_up(x / s), lo, hi)`` as a float
    tensor of exact small integers; their value is ``codes * s``.
    """

    def __init__(self, a_bits: int, step: float = 1.0, signed: bool = False):
        super().__init__()
        self.a_bits, self.signed = a_bits, signed
        self.qmin, self.qmax = code_range(a_bits, signed)
        self.step = nn.Parameter(torch.tensor(float(step)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = _grad_scale(self.step.abs() + 1e-12, 1.0 / math.sqrt(x[0].numel() * self.qmax))
        return torch.clamp(round_half_up(x / s), self.qmin, self.qmax) * (s / s.detach())

    @torch.no_grad()
    def init_step(self, x: torch.Tensor) -> None:
        """Set the step to the clipping point that minimises the quantization MSE on
        calibration activations ``x`` (a grid search over percentiles of the values, or of their
        magnitudes for signed codes)."""
        x = x.detach().flatten().float()
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(x), generator=gen)[:50_000] if len(x) <= 1 << 25 else \
            torch.randint(len(x), (50_000,), generator=gen)  # (a permutation of 2^25+ values costs seconds)
        x = x[pick.to(x.device)]
        pos = (x.abs() if self.signed else x)
        pos = pos[pos > 0].sort().values
        if len(pos) == 0:
            return
        best, best_err = None, math.inf
        for q in torch.linspace(0.90, 1.0, 41):
            clip = float(pos[min(len(pos) - 1, int(q * (len(pos) - 1)))])
            if clip <= 0:
                continue
            s = clip / self.qmax
            err = float(((torch.clamp(torch.floor(x / s + 0.5), self.qmin, self.qmax) * s - x) ** 2).mean())
            if err < best_err:
                best, best_err = s, err
        if best is not None:
            self.step.fill_(best)


def weight_step(w: torch.Tensor, q: int, per_channel: bool, candidate: torch.Tensor | None = None) -> torch.Tensor:
    """The step ``s`` (per layer, or per output channel) minimising ``|w - s * clamp(round(w / s), -q, q)|^2``,
    searched over 96 clipping points from 5% to 100% of max|w| (on a sample of at most 2^17
    weights per layer, or 4,096 per channel, for speed), and ``candidate`` (one step per row,
    e.g. the grid the weights already lie on). At 2 bits (ternary) the
    max-abs step would send most weights to zero; the MSE step keeps them."""
    flat = w.reshape(len(w), -1) if per_channel else w.reshape(1, -1)
    amax = flat.abs().amax(dim=1).clamp_min(1e-12)
    limit = 4096 if per_channel else 1 << 17  # the error is estimated on a fixed random sample of columns
    if flat.shape[1] > limit:
        cols = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(0))[:limit]
        flat = flat[:, cols]
    best_step, best_err = amax / q, torch.full_like(amax, math.inf)
    steps = [amax * r / q for r in torch.linspace(0.05, 1.0, 96, dtype=torch.float64)]
    if candidate is not None and candidate.numel() == amax.numel():
        steps.append(candidate.to(amax).expand_as(amax))
    for step in steps:
        err = ((torch.clamp(torch.floor(flat / step[:, None] + 0.5), -q, q) * step[:, None] - flat) ** 2).sum(1)
        better = err < best_err
        best_step, best_err = torch.where(better, step, best_step), torch.where(better, err, best_err)
    return best_step
