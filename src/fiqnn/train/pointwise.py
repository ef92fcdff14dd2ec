"""Units that map each code to a code: an elementwise function as a table ((E11)) and a
pre-activation BatchNorm as a per-channel affine requantization ((E15)).

The student of an elementwise function ``f`` (hard-swish, SiLU, sigmoid, ...) trains in float
with ``clamp(round(f(x * s_in) / s_out))`` and computes, in eval mode, exactly the table of
that expression over every input code: the same table :meth:`IntLutUnit.to_node` exports. The
function itself comes from the imported teacher and is not saved; the table is (a buffer), so
a saved student runs without the teacher, and trains again only beside it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..config import DistillConfig
from ..integer.arith import code_range, quantize_multiplier
from ..integer.graph import IntAffine, IntLut
from ..nets.fximport import Unit
from .quantizers import LsqAct
from .units import _Cached, _version_key, act, clamp_codes, in_code, requantize_sum


class QnnLut(nn.Module):
    """Teacher elementwise function: ``f(codes * s_in)``, then A-bit codes (signed unless f >= 0)."""

    def __init__(self, func: Callable, in_scale: float, a_bits: int, signed: bool):
        super().__init__()
        object.__setattr__(self, "func", func)  # not a submodule: its state is the teacher's, not the QNN's
        self.a_bits, self.signed = a_bits, signed
        self.register_buffer("in_scale", torch.tensor(float(in_scale)))
        self.aq = LsqAct(a_bits, signed=signed)

    def pre_act(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.func(x_q * self.in_scale)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.aq(self.pre_act(x_q))

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> QnnLut:
        return cls(u.func, in_scales[0], config.a_bits, u.signed)

    def calibrate(self, x_q: torch.Tensor) -> float:
        self.aq.init_step(self.pre_act(x_q))
        return float(self.aq.step)

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntLutUnit:
        in_bits, in_signed = in_code(srcs[0], students)
        s = IntLutUnit(in_bits, in_signed, self.a_bits, self.signed, self.func)
        s.log_s_in.fill_(float(self.in_scale.log()))
        s.log_s_out.fill_(float(self.aq.step.abs().clamp_min(1e-12).log()))
        return s


class IntLutUnit(_Cached):
    """Student elementwise function, (E11): a table of ``clamp(round(f(x * s_in) / s_out))`` over
    every input code; both steps are trained (as logs)."""

    spec_type = "lut"

    def __init__(self, in_bits: int, in_signed: bool, a_bits: int, signed: bool, func: Callable | None = None):
        super().__init__()
        self.in_bits, self.in_signed, self.a_bits, self.signed = in_bits, in_signed, a_bits, signed
        object.__setattr__(self, "func", func)
        self.log_s_in = nn.Parameter(torch.zeros(()))
        self.log_s_out = nn.Parameter(torch.zeros(()))
        self.register_buffer("table", torch.zeros(2**in_bits))  # the last table made (kept with the weights)
        self._int_cache: tuple | None = None

    def _value(self, x: torch.Tensor) -> torch.Tensor:
        if self.func is None:
            raise RuntimeError("this lookup-table unit was loaded without its function; it runs in eval mode only "
                               "(train it beside its teacher)")
        return self.func(x * self.log_s_in.exp()) / self.log_s_out.exp()

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_s_in, self.log_s_out)
        if self._int_cache is None or self._int_cache[0] != key:
            if self.func is not None:
                lo, hi = code_range(self.in_bits, self.in_signed)
                codes = torch.arange(lo, hi + 1, dtype=torch.float64, device=self.table.device)
                scaled = self.func((codes * self.log_s_in.double().exp()).reshape(1, 1, 1, -1).float()).double()
                value = scaled.reshape(-1) / self.log_s_out.double().exp()
                self.table.copy_(torch.floor(value + 0.5).clamp(*code_range(self.a_bits, self.signed)))
            self._int_cache = (key, {"table": self.table.to(torch.int64)})
        return self._int_cache[1]

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        if self.training:
            return clamp_codes(self._value(x_q), self.a_bits, self.signed)
        table = self.integer_params()["table"].to(x_q.device)
        return table[(x_q - code_range(self.in_bits, self.in_signed)[0]).long()].to(torch.float32)

    def spec_fields(self) -> dict:
        return {"in_bits": self.in_bits, "in_signed": self.in_signed, "a_bits": self.a_bits, "signed": self.signed}

    @classmethod
    def from_fields(cls, d: dict) -> IntLutUnit:
        return cls(d["in_bits"], d["in_signed"], d["a_bits"], d["signed"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntLut:
        table = self.integer_params()["table"].cpu().numpy().astype(np.int16)
        return IntLut(name=name, table=table, in_bits=self.in_bits, in_signed=self.in_signed, a_bits=self.a_bits,
                      signed=self.signed, inputs=inputs)


class QnnAffine(nn.Module):
    """Teacher pre-activation: ``BN(codes * s_in)`` [-> ReLU / ReLU6], then A-bit codes."""

    def __init__(self, bn: nn.Module, act_kind: str | None, in_scale: float, a_bits: int, signed: bool):
        super().__init__()
        self.bn, self.act, self.a_bits, self.signed = bn, act_kind, a_bits, signed
        self.register_buffer("in_scale", torch.tensor(float(in_scale)))
        self.aq = LsqAct(a_bits, signed=signed)

    def pre_act(self, x_q: torch.Tensor) -> torch.Tensor:
        return act(self.bn(x_q * self.in_scale), self.act)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.aq(self.pre_act(x_q))

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> QnnAffine:
        return cls(copy.deepcopy(u.bn), u.act, in_scales[0], config.a_bits, u.signed)

    def calibrate(self, x_q: torch.Tensor) -> float:
        self.aq.init_step(self.pre_act(x_q))
        return float(self.aq.step)

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntAffineUnit:
        """BN folded into codes: ``beta = g * s_in / s_out``, ``bias = (b - mean * g) / s_out`` per
        channel, ``g = gamma / sqrt(var + eps)``."""
        in_bits, in_signed = in_code(srcs[0], students)
        bn, s_out = self.bn, float(self.aq.step.abs())
        g = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        s = IntAffineUnit(len(g), in_bits, in_signed, self.a_bits, self.signed)
        s.beta.copy_((g * float(self.in_scale) / s_out).float())
        s.bias.copy_(((bn.bias.double() - bn.running_mean.double() * g) / s_out).float())
        return s


class IntAffineUnit(_Cached):
    """Student pre-activation, (E15): ``clamp(round(x * beta[c] + bias[c]))`` per channel; the clamp
    at 0 of unsigned codes is the ReLU. beta may be negative (a BN's gamma can be)."""

    spec_type = "affine"

    def __init__(self, channels: int, in_bits: int, in_signed: bool, a_bits: int, signed: bool):
        super().__init__()
        self.in_bits, self.in_signed, self.a_bits, self.signed = in_bits, in_signed, a_bits, signed
        self.beta = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self._int_cache: tuple | None = None

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        """(mult, shift) of |beta| by (E5), its sign on mult, and ``offset = round(bias * 2^shift)``."""
        key = _version_key(self.beta, self.bias)
        if self._int_cache is None or self._int_cache[0] != key:
            beta = self.beta.detach().double().cpu()
            pairs = [quantize_multiplier(max(abs(float(b)), 2.0**-20)) for b in beta]  # a dead channel: tiny
            sign = torch.where(beta < 0, -1, 1).to(torch.int64)
            mult = torch.tensor([m for m, _ in pairs], dtype=torch.int64) * sign
            shift = torch.tensor([s for _, s in pairs], dtype=torch.int64)
            offset = torch.floor(self.bias.detach().double().cpu() * torch.pow(2.0, shift.double()) + 0.5)
            self._int_cache = (key, {"mult": mult, "shift": shift, "offset": offset.to(torch.int64)})
        return self._int_cache[1]

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if x_q.ndim == 4 else (1, -1)
        if self.training:
            return clamp_codes(x_q * self.beta.reshape(shape) + self.bias.reshape(shape), self.a_bits, self.signed)
        p = {k: v.to(x_q.device).reshape(shape) for k, v in self.integer_params().items()}
        total = x_q.to(torch.int64) * p["mult"] + p["offset"]  # |total| < 2^62 (E15)
        return requantize_sum(total, p["shift"], self.a_bits, self.signed)

    def spec_fields(self) -> dict:
        return {"channels": len(self.beta), "in_bits": self.in_bits, "in_signed": self.in_signed,
                "a_bits": self.a_bits, "signed": self.signed}

    @classmethod
    def from_fields(cls, d: dict) -> IntAffineUnit:
        return cls(d["channels"], d["in_bits"], d["in_signed"], d["a_bits"], d["signed"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntAffine:
        p = self.integer_params()
        return IntAffine(name=name, mult=p["mult"].numpy().astype(np.int32), shift=p["shift"].numpy().astype(np.int32),
                         offset=p["offset"].numpy().astype(np.int64), in_bits=self.in_bits, in_signed=self.in_signed,
                         a_bits=self.a_bits, signed=self.signed, inputs=inputs)
