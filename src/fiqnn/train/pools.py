"""Pooling units: average pool ((E10), every PyTorch variant) and max pool ((E7) as a node of its own).

A max pool computes the same thing in the teacher QNN and in the student (the max of codes is a
code of the same step), so one class serves both. An average pool's teacher averages real values
and quantizes them; its student sums codes and requantizes with one multiplier per window divisor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..integer.arith import quantize_multiplier
from ..integer.graph import IntAvgPool, IntMaxPool
from ..integer.nodes import pool_divisors
from ..nets.fximport import Unit
from .quantizers import LsqAct
from .units import _Cached, _version_key, clamp_codes, in_code, requantize_sum


def _window(u: Unit, x: torch.Tensor) -> tuple:
    """(kernel, stride, padding) pairs of an imported pool; a global one is the whole map of ``x``."""
    if u.window == "global":
        h, w = x.shape[2:]
        return ((h, w), (1, 1), (0, 0))
    return u.window


class QnnAvgPool(nn.Module):
    """Teacher average pool of real values (PyTorch's, any variant), then A-bit activation codes."""

    def __init__(self, window: tuple, in_scale: float, a_bits: int, signed: bool = False, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__()
        self.window, self.a_bits, self.signed = window, a_bits, signed
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.register_buffer("in_scale", torch.tensor(float(in_scale)))
        self.aq = LsqAct(a_bits, signed=signed)

    def pre_act(self, x_q: torch.Tensor) -> torch.Tensor:
        k, s, p = self.window
        return F.avg_pool2d(x_q * self.in_scale, k, s, p, ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.aq(self.pre_act(x_q))

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> QnnAvgPool:
        return cls(_window(u, xs[0]), in_scales[0], config.a_bits, u.signed, u.ceil_mode, u.count_include_pad)

    def calibrate(self, x_q: torch.Tensor) -> float:
        self.aq.init_step(self.pre_act(x_q))
        return float(self.aq.step)

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntAvgPoolUnit:
        """beta starts at ``s_in / (kernel area x s_out)``."""
        (kh, kw), _, _ = self.window
        in_bits = in_code(srcs[0], students)[0]
        s = IntAvgPoolUnit(self.window, in_bits, self.a_bits, self.signed, self.ceil_mode, self.count_include_pad)
        s.log_beta.copy_(torch.tensor(float(self.in_scale) / (kh * kw * float(self.aq.step))).log())
        return s


class IntAvgPoolUnit(_Cached):
    """Student average pool, (E10): ``clamp(round(window_sum * beta * area / d))`` for the window's
    divisor d; one (mult, shift) when every divisor is the area (floor mode, padding counted),
    else one per divisor."""

    spec_type = "avgpool"

    def __init__(self, window: tuple, in_bits: int, a_bits: int, signed: bool = False, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__()
        self.window, self.in_bits, self.a_bits, self.signed = window, in_bits, a_bits, signed
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.log_beta = nn.Parameter(torch.zeros(()))
        self._int_cache: tuple | None = None

    @property
    def area(self) -> int:
        (kh, kw), _, _ = self.window
        return kh * kw

    @property
    def one_divisor(self) -> bool:
        return (not self.ceil_mode and self.count_include_pad) or self.area == 1

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_beta)
        if self._int_cache is None or self._int_cache[0] != key:
            beta = float(self.log_beta.double().exp())
            pairs = [quantize_multiplier(beta)] if self.one_divisor else \
                [quantize_multiplier(beta * self.area / d) for d in range(1, self.area + 1)]
            self._int_cache = (key, {"mult": torch.tensor([m for m, _ in pairs]),
                                     "shift": torch.tensor([s for _, s in pairs])})
        return self._int_cache[1]

    def divisors(self, x: torch.Tensor) -> torch.Tensor:
        """Each output position's window divisor, (Ho, Wo), as in docs/arithmetic.md (E10)."""
        (kh, kw), (sh, sw), (ph, pw) = self.window
        h, w = x.shape[2:]
        rows = pool_divisors(h, kh, sh, ph, self.ceil_mode, self.count_include_pad)
        cols = pool_divisors(w, kw, sw, pw, self.ceil_mode, self.count_include_pad)
        return torch.from_numpy(np.outer(rows, cols)).to(x.device)

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sums of each window's cells inside the map (padding is zero)."""
        k, s, p = self.window
        return F.avg_pool2d(x, k, s, p, ceil_mode=self.ceil_mode, count_include_pad=True, divisor_override=1)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        if self.training:
            scale = self.log_beta.exp() if self.one_divisor else self.log_beta.exp() * self.area / self.divisors(x_q)
            return clamp_codes(self.window_sum(x_q) * scale, self.a_bits, self.signed)
        p = self.integer_params()
        total = self.window_sum(x_q.double()).to(torch.int64)  # sums of small integers: exact in float64
        if self.one_divisor:
            return requantize_sum(total * int(p["mult"][0]), int(p["shift"][0]), self.a_bits, self.signed)
        pick = (self.divisors(x_q) - 1).long()
        return requantize_sum(total * p["mult"].to(x_q.device)[pick], p["shift"].to(x_q.device)[pick], self.a_bits,
                              self.signed)

    def spec_fields(self) -> dict:
        fields = {"window": [list(x) for x in self.window], "in_bits": self.in_bits, "a_bits": self.a_bits}
        extra = {"signed": self.signed, "ceil_mode": self.ceil_mode}
        return fields | {k: v for k, v in extra.items() if v} | (
            {} if self.count_include_pad else {"count_include_pad": False})  # older specs have none of these

    @classmethod
    def from_fields(cls, d: dict) -> IntAvgPoolUnit:
        return cls(tuple(tuple(x) for x in d["window"]), d["in_bits"], d["a_bits"], d.get("signed", False),
                   d.get("ceil_mode", False), d.get("count_include_pad", True))

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntAvgPool:
        p = self.integer_params()
        k, s, pad = self.window
        return IntAvgPool(name=name, kernel=tuple(k), stride=tuple(s), padding=tuple(pad),
                          mult=p["mult"].numpy().astype(np.int32), shift=p["shift"].numpy().astype(np.int32),
                          in_bits=self.in_bits, a_bits=self.a_bits, inputs=inputs, ceil_mode=self.ceil_mode,
                          count_include_pad=self.count_include_pad, in_signed=self.signed)


class MaxPoolUnit(nn.Module):
    """(E7) A max pool of codes, the same in the teacher QNN and the student: cells outside the
    map never count (PyTorch pads with -infinity), and the output has the input's step."""

    spec_type = "maxpool"

    def __init__(self, window: tuple, a_bits: int, signed: bool = False, ceil_mode: bool = False,
                 in_scale: float = 1.0):
        super().__init__()
        self.window, self.a_bits, self.signed, self.ceil_mode = window, a_bits, signed, ceil_mode
        self.in_scale = in_scale  # (teacher only) the step of its codes, which it passes on

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        k, s, p = self.window
        return F.max_pool2d(x_q, k, s, p, ceil_mode=self.ceil_mode)

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> MaxPoolUnit:
        return cls(u.window, 8 if u.inputs == ["input"] else config.a_bits, u.signed, u.ceil_mode, in_scales[0])

    def calibrate(self, x_q: torch.Tensor) -> float:
        return self.in_scale

    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> MaxPoolUnit:
        a_bits = in_code(srcs[0], students)[0]
        return MaxPoolUnit(self.window, a_bits, self.signed, self.ceil_mode)

    def spec_fields(self) -> dict:
        return {"window": [list(x) for x in self.window], "a_bits": self.a_bits, "signed": self.signed,
                "ceil_mode": self.ceil_mode}

    @classmethod
    def from_fields(cls, d: dict) -> MaxPoolUnit:
        return cls(tuple(tuple(x) for x in d["window"]), d["a_bits"], d["signed"], d["ceil_mode"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntMaxPool:
        k, s, p = self.window
        return IntMaxPool(name=name, kernel=tuple(k), stride=tuple(s), padding=tuple(p), a_bits=self.a_bits,
                          signed=self.signed, ceil_mode=self.ceil_mode, inputs=inputs)
