"""The code-domain units that join or move tensors, and the table of every unit kind.

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
shift), :class:`QnnMul` / :class:`IntMulUnit` the channel-wise multiply of a squeeze-excite gate
((E12)), :class:`QnnConcat` / :class:`IntConcatUnit` the concatenation ((E13)) and
:class:`ChannelsUnit` the channel split and shuffle ((E14)). The pools are in
:mod:`fiqnn.train.pools`, the per-code units (lookup tables, pre-activation affines) in
:mod:`fiqnn.train.pointwise`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import DistillConfig
from ..integer.arith import quantize_multiplier
from ..integer.graph import IntAdd, IntChannels, IntConcat, IntMul
from ..nets.fximport import Unit, channel_index
from .pointwise import IntAffineUnit, IntLutUnit, QnnAffine, QnnLut
from .pools import IntAvgPoolUnit, MaxPoolUnit, QnnAvgPool
from .quantizers import LsqAct
from .units import IntUnit, QnnUnit, _Cached, _version_key, act, clamp_codes, in_code, requantize_sum


def _int32(p: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return p["mult"].numpy().astype(np.int32), p["shift"].numpy().astype(np.int32)


def _pairs(log_beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E5) of each ``exp(log_beta)``: int64 (mult, shift) tensors, one pair per entry."""
    pairs = [quantize_multiplier(float(b)) for b in log_beta.detach().double().cpu().exp()]
    return (torch.tensor([m for m, _ in pairs], dtype=torch.int64),
            torch.tensor([s for _, s in pairs], dtype=torch.int64))


class _Joined(nn.Module):
    """A teacher unit over several inputs: real values (codes x their step, or real values as they
    are), combined by :meth:`combine`, then [ReLU ->] A-bit codes."""

    def __init__(self, in_scales: list[float | None], a_bits: int, act_kind: str | None = "relu",
                 signed: bool = False):
        super().__init__()
        self.register_buffer("in_scales", torch.tensor([s if s is not None else 0.0 for s in in_scales]))
        self.act, self.a_bits, self.signed = act_kind, a_bits, signed
        self.aq = LsqAct(a_bits, signed=signed)

    def combine(self, xs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def pre_act(self, *xs: torch.Tensor) -> torch.Tensor:
        return act(self.combine([x * s if s > 0 else x for x, s in zip(xs, self.in_scales.tolist())]), self.act)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.aq(self.pre_act(*xs))

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> _Joined:
        return cls(in_scales, config.a_bits, u.act, u.signed)

    def calibrate(self, *xs: torch.Tensor) -> float:
        self.aq.init_step(self.pre_act(*xs))
        return float(self.aq.step)


class QnnAdd(_Joined):
    """Teacher residual add: the real sum of the inputs, [ReLU/ReLU6 ->] A-bit activation codes."""

    def combine(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return sum(xs)

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntAddUnit:
        """Each input's factor starts at its scale over the output step (a residual branch's
        scale is its student layer's alpha)."""
        out = float(self.aq.step)
        s = IntAddUnit(len(srcs), self.a_bits, self.signed)
        betas = [float(sc) / out if sc > 0 else float(students[src].alpha) / out
                 for src, sc in zip(srcs, self.in_scales.tolist())]
        s.log_beta.copy_(torch.tensor(betas).log())
        return s


class IntAddUnit(_Cached):
    """Student residual add, (E9): ``clamp(round(sum_i v_i * beta_i), lo, hi)``; eval mode
    computes the integers exactly (one mult per input, one shared shift)."""

    spec_type = "add"

    def __init__(self, n_inputs: int, a_bits: int, signed: bool = False):
        super().__init__()
        self.a_bits, self.signed = a_bits, signed
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
        if self.training:
            beta = self.log_beta.exp()
            return clamp_codes(sum(x * b for x, b in zip(xs, beta)), self.a_bits, self.signed)
        p = self.integer_params()
        total = sum(x.to(torch.int64) * int(m) for x, m in zip(xs, p["mult"]))  # |total| < 2^62 (E9)
        return requantize_sum(total, int(p["shift"][0]), self.a_bits, self.signed)

    def spec_fields(self) -> dict:
        return {"n_inputs": len(self.log_beta), "a_bits": self.a_bits} | ({"signed": True} if self.signed else {})

    @classmethod
    def from_fields(cls, d: dict) -> IntAddUnit:
        return cls(d["n_inputs"], d["a_bits"], d.get("signed", False))

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntAdd:
        mult, shift = _int32(self.integer_params())
        return IntAdd(name=name, inputs=inputs, mult=mult, shift=shift, a_bits=self.a_bits, signed=self.signed)


class QnnMul(_Joined):
    """Teacher channel-wise multiply (a squeeze-excite gate): the real product, then A-bit codes."""

    def combine(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return xs[0] * xs[1]

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntMulUnit:
        """beta starts at ``s_x * s_g / s_out``."""
        s = IntMulUnit(self.a_bits, self.signed)
        s.log_beta.fill_(float(self.in_scales.prod().log() - self.aq.step.abs().log()))
        return s


class IntMulUnit(_Cached):
    """Student channel-wise multiply, (E12): ``clamp(round(x * g * beta))``, g broadcast over the map."""

    spec_type = "mul"

    def __init__(self, a_bits: int, signed: bool = False):
        super().__init__()
        self.a_bits, self.signed = a_bits, signed
        self.log_beta = nn.Parameter(torch.zeros(()))
        self._int_cache: tuple | None = None

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_beta)
        if self._int_cache is None or self._int_cache[0] != key:
            mult, shift = _pairs(self.log_beta.reshape(1))
            self._int_cache = (key, {"mult": mult, "shift": shift})
        return self._int_cache[1]

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.training:
            return clamp_codes(x * g * self.log_beta.exp(), self.a_bits, self.signed)
        p = self.integer_params()
        total = x.to(torch.int64) * g.to(torch.int64) * int(p["mult"][0])  # below 2^47 (E12)
        return requantize_sum(total, int(p["shift"][0]), self.a_bits, self.signed)

    def spec_fields(self) -> dict:
        return {"a_bits": self.a_bits, "signed": self.signed}

    @classmethod
    def from_fields(cls, d: dict) -> IntMulUnit:
        return cls(d["a_bits"], d["signed"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntMul:
        mult, shift = _int32(self.integer_params())
        return IntMul(name=name, inputs=inputs, mult=mult, shift=shift, a_bits=self.a_bits, signed=self.signed)


class QnnConcat(_Joined):
    """Teacher concatenation of real values along channels, then one A-bit code step for all."""

    def combine(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)

    @torch.no_grad()
    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> IntConcatUnit:
        """Each input's factor starts at its step over the output step."""
        s = IntConcatUnit(len(srcs), self.a_bits, self.signed)
        s.log_beta.copy_((self.in_scales.double() / float(self.aq.step.abs())).log().float())
        return s


class IntConcatUnit(_Cached):
    """Student concatenation, (E13): input j becomes ``clamp(round(x_j * beta_j))``, one (mult,
    shift) pair each."""

    spec_type = "concat"

    def __init__(self, n_inputs: int, a_bits: int, signed: bool = False):
        super().__init__()
        self.a_bits, self.signed = a_bits, signed
        self.log_beta = nn.Parameter(torch.zeros(n_inputs))
        self._int_cache: tuple | None = None

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_beta)
        if self._int_cache is None or self._int_cache[0] != key:
            mult, shift = _pairs(self.log_beta)
            self._int_cache = (key, {"mult": mult, "shift": shift})
        return self._int_cache[1]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.training:
            return torch.cat([clamp_codes(x * b, self.a_bits, self.signed) for x, b in zip(xs, self.log_beta.exp())],
                             1)
        p = self.integer_params()
        return torch.cat([requantize_sum(x.to(torch.int64) * int(m), int(s), self.a_bits, self.signed)
                          for x, m, s in zip(xs, p["mult"], p["shift"])], 1)

    def spec_fields(self) -> dict:
        return {"n_inputs": len(self.log_beta), "a_bits": self.a_bits, "signed": self.signed}

    @classmethod
    def from_fields(cls, d: dict) -> IntConcatUnit:
        return cls(d["n_inputs"], d["a_bits"], d["signed"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntConcat:
        mult, shift = _int32(self.integer_params())
        return IntConcat(name=name, inputs=inputs, mult=mult, shift=shift, a_bits=self.a_bits, signed=self.signed)


class ChannelsUnit(nn.Module):
    """(E14) A channel gather (split, shuffle), the same in the teacher QNN and the student: the
    output has the input's codes and step. The index is found once, on the calibration batch,
    by running the imported chain (:func:`fiqnn.nets.fximport.channel_index`)."""

    spec_type = "channels"

    def __init__(self, index: list[int], a_bits: int, signed: bool = False, in_scale: float = 1.0):
        super().__init__()
        self.register_buffer("index", torch.tensor(index, dtype=torch.int64), persistent=False)
        self.a_bits, self.signed, self.in_scale = a_bits, signed, in_scale

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return x_q.index_select(1, self.index)

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> ChannelsUnit:
        index = channel_index(u.func, tuple(xs[0].shape))
        return cls(index, 8 if u.inputs == ["input"] else config.a_bits, u.signed, in_scales[0])

    def calibrate(self, x_q: torch.Tensor) -> float:
        return self.in_scale

    def init_student(self, srcs: list[str], students: dict[str, nn.Module], config: DistillConfig) -> ChannelsUnit:
        a_bits = in_code(srcs[0], students)[0]
        return ChannelsUnit(self.index.tolist(), a_bits, self.signed)

    def spec_fields(self) -> dict:
        return {"index": self.index.tolist(), "a_bits": self.a_bits, "signed": self.signed}

    @classmethod
    def from_fields(cls, d: dict) -> ChannelsUnit:
        return cls(d["index"], d["a_bits"], d["signed"])

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntChannels:
        return IntChannels(name=name, index=self.index.cpu().numpy().astype(np.int32), a_bits=self.a_bits,
                           signed=self.signed, inputs=inputs)


# An imported unit's kind (fiqnn.nets.fximport.Unit.kind) -> its teacher QNN unit.
TEACHERS: dict[str, type[nn.Module]] = {"conv": QnnUnit, "fc": QnnUnit, "add": QnnAdd, "avgpool": QnnAvgPool,
                                        "maxpool": MaxPoolUnit, "lut": QnnLut, "mul": QnnMul, "concat": QnnConcat,
                                        "channels": ChannelsUnit, "affine": QnnAffine}
# A student unit's type in a saved spec -> its class.
STUDENTS: dict[str, type[nn.Module]] = {c.spec_type: c for c in (
    IntUnit, IntAddUnit, IntAvgPoolUnit, MaxPoolUnit, IntLutUnit, IntMulUnit, IntConcatUnit, ChannelsUnit,
    IntAffineUnit)}
