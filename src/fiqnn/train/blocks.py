"""The code-domain units other than conv/fc layers, and the table of every unit kind.

Each kind of unit is a pair: the teacher QNN's (BN world, fake-quantized, real-valued
inside) and the BN-free student's (eval mode computes the integer contract exactly). A pair
carries everything the torch side needs, so a new op is one new pair here plus its row in
:data:`TEACHERS` and :data:`STUDENTS` (docs/architecture.md):

- teacher ``from_unit(u, in_scales, xs, config, w_bits)``: build from an imported unit;
  ``calibrate(*xs)``: set the activation step on calibration inputs, return it;
  ``init_student(srcs, students, config)``: local initialisation of the student unit
  (conv/fc layers use :func:`fiqnn.train.fold.local_init` instead);
- student ``spec_type``, ``spec_fields()`` / ``from_fields(d)``: the saved structure;
  ``integer_params()`` and ``to_node(name, inputs)``: its IntGraph node.

:class:`QnnAdd` / :class:`IntAddUnit` are the residual add ((E9): one multiplier per input, one
shift) and :class:`QnnAvgPool` / :class:`IntAvgPoolUnit` the average pool ((E10)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..integer.arith import act_range, quantize_multiplier
from ..integer.graph import IntAdd, IntAvgPool
from ..nets.fximport import Unit
from .quantizers import LsqAct, round_half_up
from .units import IntUnit, QnnUnit, _Cached, _version_key, act, requantize_sum


def _int32(p: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return p["mult"].numpy().astype(np.int32), p["shift"].numpy().astype(np.int32)


class QnnAdd(nn.Module):
    """Teacher residual add: real sum of the inputs (codes x their step, or real values),
    ReLU/ReLU6, then A-bit activation codes."""

    def __init__(self, in_scales: list[float | None], a_bits: int, relu6: bool = False):
        super().__init__()
        self.register_buffer("in_scales", torch.tensor([s if s is not None else 0.0 for s in in_scales]))
        self.relu6, self.a_bits = relu6, a_bits
        self.aq = LsqAct(a_bits)

    def pre_act(self, *xs: torch.Tensor) -> torch.Tensor:
        return sum(x * s if s > 0 else x for x, s in zip(xs, self.in_scales.tolist()))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.aq(act(self.pre_act(*xs), self.relu6))

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> QnnAdd:
        return cls(in_scales, config.a_bits, u.act == "relu6")

    def calibrate(self, *xs: torch.Tensor) -> float:
        self.aq.init_step(act(self.pre_act(*xs), self.relu6))
        return float(self.aq.step)

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntAddUnit:
        """Each input's factor starts at its scale over the output step (a residual branch's
        scale is its student layer's alpha)."""
        out = float(self.aq.step)
        s = IntAddUnit(len(srcs), self.a_bits)
        betas = [float(sc) / out if sc > 0 else float(students[src].alpha) / out
                 for src, sc in zip(srcs, self.in_scales.tolist())]
        s.log_beta.copy_(torch.tensor(betas).log())
        return s


class IntAddUnit(_Cached):
    """Student residual add, (E9): ``clamp(round(sum_i v_i * beta_i), 0, 2^A - 1)``; eval mode
    computes the integers exactly (one mult per input, one shared shift)."""

    spec_type = "add"

    def __init__(self, n_inputs: int, a_bits: int):
        super().__init__()
        self.a_bits = a_bits
        self.log_beta = nn.Parameter(torch.zeros(n_inputs))
        self._int_cache: tuple | None = None

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_beta)
        if self._int_cache is None or self._int_cache[0] != key:
            beta = self.log_beta.double().exp()
            _, shift = quantize_multiplier(float(beta.max()))
            mult = torch.floor(beta * 2.0**shift + 0.5).clamp(1, 2**31 - 1).to(torch.int64)
            self._int_cache = (key, {"mult": mult, "shift": torch.tensor([shift], dtype=torch.int64)})
        return self._int_cache[1]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        qmax = act_range(self.a_bits)[1]
        if self.training:
            beta = self.log_beta.exp()
            return torch.clamp(round_half_up(sum(x * b for x, b in zip(xs, beta))), 0, qmax)
        p = self.integer_params()
        total = sum(x.to(torch.int64) * int(m) for x, m in zip(xs, p["mult"]))  # |total| < 2^62 (E9)
        return requantize_sum(total, int(p["shift"][0]), self.a_bits)

    def spec_fields(self) -> dict:
        return {"n_inputs": len(self.log_beta), "a_bits": self.a_bits}

    @classmethod
    def from_fields(cls, d: dict) -> IntAddUnit:
        return cls(d["n_inputs"], d["a_bits"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntAdd:
        mult, shift = _int32(self.integer_params())
        return IntAdd(name=name, inputs=inputs, mult=mult, shift=shift, a_bits=self.a_bits)


class QnnAvgPool(nn.Module):
    """Teacher average pool of codes (zero padding counts), then A-bit activation codes."""

    def __init__(self, window: tuple, in_scale: float, a_bits: int):
        super().__init__()
        self.window, self.a_bits = window, a_bits
        self.register_buffer("in_scale", torch.tensor(float(in_scale)))
        self.aq = LsqAct(a_bits)

    def pre_act(self, x_q: torch.Tensor) -> torch.Tensor:
        k, s, p = self.window
        return F.avg_pool2d(x_q * self.in_scale, k, s, p, count_include_pad=True)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.aq(self.pre_act(x_q))

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> QnnAvgPool:
        window = u.window
        if window == "global":
            h, w = xs[0].shape[2:]
            window = ((h, w), (1, 1), (0, 0))
        return cls(window, in_scales[0], config.a_bits)

    def calibrate(self, x_q: torch.Tensor) -> float:
        self.aq.init_step(self.pre_act(x_q))
        return float(self.aq.step)

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntAvgPoolUnit:
        """beta starts at ``s_in / (kernel area x s_out)``."""
        (kh, kw), _, _ = self.window
        s = IntAvgPoolUnit(self.window, 8 if srcs == ["input"] else config.a_bits, self.a_bits)
        s.log_beta.copy_(torch.tensor(float(self.in_scale) / (kh * kw * float(self.aq.step))).log())
        return s


class IntAvgPoolUnit(_Cached):
    """Student average pool, (E10): ``clamp(round(window_sum * beta), 0, 2^A - 1)``."""

    spec_type = "avgpool"

    def __init__(self, window: tuple, in_bits: int, a_bits: int):
        super().__init__()
        self.window, self.in_bits, self.a_bits = window, in_bits, a_bits
        self.log_beta = nn.Parameter(torch.zeros(()))
        self._int_cache: tuple | None = None

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_beta)
        if self._int_cache is None or self._int_cache[0] != key:
            mult, shift = quantize_multiplier(float(self.log_beta.double().exp()))
            self._int_cache = (key, {"mult": torch.tensor([mult]), "shift": torch.tensor([shift])})
        return self._int_cache[1]

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.window
        return F.avg_pool2d(x, k, s, p, count_include_pad=True, divisor_override=1)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        qmax = act_range(self.a_bits)[1]
        if self.training:
            return torch.clamp(round_half_up(self.window_sum(x_q) * self.log_beta.exp()), 0, qmax)
        p = self.integer_params()
        total = self.window_sum(x_q.double()).to(torch.int64) * int(p["mult"][0])  # sums exact in float64
        return requantize_sum(total, int(p["shift"][0]), self.a_bits)

    def spec_fields(self) -> dict:
        return {"window": [list(x) for x in self.window], "in_bits": self.in_bits, "a_bits": self.a_bits}

    @classmethod
    def from_fields(cls, d: dict) -> IntAvgPoolUnit:
        return cls(tuple(tuple(x) for x in d["window"]), d["in_bits"], d["a_bits"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntAvgPool:
        mult, shift = _int32(self.integer_params())
        k, s, p = self.window
        return IntAvgPool(name=name, kernel=tuple(k), stride=tuple(s), padding=tuple(p), mult=mult, shift=shift,
                          in_bits=self.in_bits, a_bits=self.a_bits, inputs=inputs)


# An imported unit's kind (fiqnn.nets.fximport.Unit.kind) -> its teacher QNN unit.
TEACHERS: dict[str, type[nn.Module]] = {"conv": QnnUnit, "fc": QnnUnit, "add": QnnAdd, "avgpool": QnnAvgPool}
# A student unit's type in a saved spec -> its class.
STUDENTS: dict[str, type[nn.Module]] = {c.spec_type: c for c in (IntUnit, IntAddUnit, IntAvgPoolUnit)}
