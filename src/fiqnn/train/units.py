"""Code-domain units: the teacher QNN's and the BN-free student's layers.

Both kinds map *codes in* to *codes out* (float tensors holding exact small
integers), so a hybrid network S_1..S_k + T_{k+1}..T_L (docs/method.md, phase 2) is a
plain :class:`fiqnn.train.graphnet.GraphNet` of units. The network input is the uint8 pixel code ``x_q`` (0..255).

- :class:`QnnUnit` (teacher, step 0): ``codes * in_scale`` -> conv/linear with
  fake-quantized weights -> BatchNorm -> ReLU -> A-bit activation codes [-> max-pool].
  The last unit returns float logits.
- :class:`IntUnit` (student): no BN. ``acc = conv(x_q, w_q) + bias_q`` (E2) ->
  ``clamp(round_half_up(alpha * acc), 0, 2^A - 1)`` (E4) [-> max-pool (E7)]. The last
  unit returns its accumulators, the integer logits. In eval mode it computes exactly
  what the integer executor computes (:meth:`IntUnit.integer_params` is the single
  source of the integers that ``convert`` exports).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..integer.arith import (
    DOUBLE_HALF,
    ROUNDINGS,
    acc_bound,
    code_range,
    exact_float_dtype,
    quantize_multiplier,
    weight_range,
)
from ..integer.graph import IntLayer
from ..nets.fximport import Unit
from .quantizers import DorefaWeight, LsqAct, LsqWeight, round_half_up


@dataclass(frozen=True)
class Geometry:
    """What a unit's linear map and pool look like (everything but the numbers)."""

    kind: str  # "conv" | "fc"
    out_channels: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    pool: tuple[int, int, int] | None = None  # max-pool (kernel, stride, padding)

    @staticmethod
    def of(unit: nn.Sequential) -> Geometry:
        pool = getattr(unit, "pool", None)
        pool_t = None
        if pool is not None:
            k, s, p = (x if isinstance(x, int) else x[0] for x in (pool.kernel_size, pool.stride, pool.padding))
            pool_t = (k, s, p)
        if hasattr(unit, "conv"):
            c = unit.conv
            return Geometry("conv", c.out_channels, c.stride, c.padding, c.dilation, c.groups, pool_t)
        return Geometry("fc", unit.fc.out_features, pool=pool_t)

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "conv":
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x.flatten(1), w, b)

    def max_pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return x
        k, s, p = self.pool
        return F.max_pool2d(x, k, s, p)  # padding of -inf never wins: p < k/2 (torch requires it)

    def channel_shape(self) -> tuple[int, ...]:
        return (1, -1, 1, 1) if self.kind == "conv" else (1, -1)


def _version_key(*tensors: torch.Tensor) -> tuple:
    """Identifies the current values of ``tensors``: every in-place change (an optimizer
    step, ``load_state_dict``) bumps a tensor's version; a copy or a move to another device
    gets new storage."""
    return tuple((t.device, t.data_ptr(), t._version) for t in tensors)


class _Cached(nn.Module):
    """A module holding a derived-value cache that copies must not inherit."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_w_cache=None, _int_cache=None)
        return state


def requantize_sum(total: torch.Tensor, shift, a_bits: int, signed: bool = False,
                   rounding: str = "single") -> torch.Tensor:
    """(E3) then the clamp of (E4) on an int64 tensor of products or sums: A-bit codes (unsigned,
    or signed) as float32. ``>>`` on int64 is arithmetic, i.e. floor division by 2^shift.
    ``rounding="double"``: (E4d), gemmlowp's offset added first (:func:`fiqnn.integer.arith.double_offset`)."""
    if rounding == "double":
        half = torch.where(total >= -DOUBLE_HALF, DOUBLE_HALF, -DOUBLE_HALF)
        total = total + torch.where(torch.as_tensor(shift) > 31, half, 0)
    codes = (total + ((1 << shift) >> 1)) >> shift
    return codes.clamp(*code_range(a_bits, signed)).to(torch.float32)


def in_code(src: str, students: dict[str, nn.Module]) -> tuple[int, bool]:
    """(bits, signed) of the codes a student unit reads from ``src``: the network input's 8-bit
    pixels, or its source's codes."""
    if src == "input":
        return 8, False
    return students[src].a_bits, bool(students[src].signed)


def act(x: torch.Tensor, kind: str | None) -> torch.Tensor:
    """The teacher's activation: "relu", "relu6", or None (none: signed codes follow)."""
    return F.hardtanh(x, 0.0, 6.0) if kind == "relu6" else F.relu(x) if kind == "relu" else x


def clamp_codes(x: torch.Tensor, a_bits: int, signed: bool) -> torch.Tensor:
    """Round half up (E3) with a straight-through gradient, then clamp to the code range."""
    return torch.clamp(round_half_up(x), *code_range(a_bits, signed))


class QnnUnit(_Cached):
    """One teacher layer in the code domain, BN kept (the paper's BN-enabled QNN teacher).

    Args:
        unit: a model unit (``conv``/``fc``, optional ``bn``, ``act``, ``pool``, ``drop``);
            it is copied, never mutated.
        in_scale: the float value of one input code (1/255 for the network input).
        w_bits: weight bits, or None to keep float weights.
        a_bits: output activation bits, or None for the last layer (float logits).
        quantizer: "lsq" (learned per-channel step) or "dorefa".
        signed: signed output codes (no activation: a linear bottleneck's projection).
        weight_grid: "channel" (the quantizer's steps on the conv weights) or "folded" (LSQ
            steps on the BN-folded weights ``w * g``, ``g = gamma / sqrt(var + eps)`` from the
            running statistics, one per channel if ``grid_per_channel`` else one per layer;
            the weights used are ``quantize(w * g) / g``, so that folding lands on the grid). A
            step per channel starts at max|w * g| / Q (the "channel" grid exactly, scaled by g);
            one per layer at the least-squares step (max-abs would zero most channels).
    """

    def __init__(self, unit: nn.Sequential, in_scale: float, w_bits: int | None, a_bits: int | None,
                 quantizer: str = "lsq", signed: bool = False, weight_grid: str = "channel",
                 grid_per_channel: bool = True):
        super().__init__()
        self.geometry = Geometry.of(unit)
        self.layer = copy.deepcopy(unit.conv if hasattr(unit, "conv") else unit.fc)
        self.bn = copy.deepcopy(getattr(unit, "bn", None))
        self.drop = copy.deepcopy(getattr(unit, "drop", None))
        self.register_buffer("in_scale", torch.tensor(float(in_scale)))
        unit_act = getattr(unit, "act", None)
        self.act = None if unit_act is None else "relu6" if isinstance(unit_act, nn.ReLU6) else "relu"
        self.w_bits, self.a_bits, self.signed = w_bits, a_bits, signed
        self.folded_grid = weight_grid == "folded" and w_bits is not None
        if not w_bits:
            self.wq = None
        elif self.folded_grid:
            self.wq = LsqWeight(w_bits, self.layer.weight.detach() * self.bn_gain(), grid_per_channel,
                                init="max" if grid_per_channel else "mse")
        else:
            self.wq = {"lsq": LsqWeight, "dorefa": DorefaWeight}[quantizer](w_bits, self.layer.weight)
        self.aq = LsqAct(a_bits, signed=signed) if a_bits else None
        self._w_cache: tuple[tuple, torch.Tensor] | None = None

    def pre_act(self, x_q: torch.Tensor) -> torch.Tensor:
        """Float output of conv/linear -> BN (before ReLU and quantization)."""
        x = x_q.flatten(1) if self.geometry.kind == "fc" else x_q
        if self.drop is not None:
            x = self.drop(x)
        y = self.geometry.linear(x * self.in_scale, self.quantized_weight(), self.layer.bias)
        return self.bn(y) if self.bn is not None else y

    def bn_gain(self) -> torch.Tensor:
        """``g = gamma / sqrt(running_var + eps)`` per output channel, shaped to scale the
        weights (ones without BN), kept at least 1e-8 in magnitude; no gradient."""
        w = self.layer.weight
        shape = (len(w),) + (1,) * (w.ndim - 1)
        if self.bn is None:
            return torch.ones(shape, dtype=w.dtype, device=w.device)
        g = (self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)).detach()
        g = torch.where(g < 0, g.clamp(max=-1e-8), g.clamp(min=1e-8))
        return g.reshape(shape).to(w.dtype)

    def grid_step(self) -> torch.Tensor | None:
        """The folded grid's step(s) in the student's code units (``w_c`` of docs/method.md,
        phase 1), or None when the weights are not on a folded grid."""
        if not self.folded_grid:
            return None
        s_out = float(self.aq.step.detach().abs()) if self.aq is not None else 1.0
        return self.wq.grid().detach().double().reshape(-1) * (float(self.in_scale) / s_out)

    def _quantize(self) -> torch.Tensor:
        if not self.folded_grid:
            return self.wq(self.layer.weight)
        g = self.bn_gain()
        return self.wq(self.layer.weight * g) / g

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weights; cached while no gradient is needed and nothing changed."""
        if self.wq is None:
            return self.layer.weight
        if torch.is_grad_enabled():
            return self._quantize()
        bn = (self.bn.weight, self.bn.running_var) if self.folded_grid and self.bn is not None else ()
        key = _version_key(self.layer.weight, *self.wq.parameters(), *bn)
        if self._w_cache is None or self._w_cache[0] != key:
            self._w_cache = (key, self._quantize())
        return self._w_cache[1]

    def core(self, x_q: torch.Tensor) -> torch.Tensor:
        """Output codes before pooling (or float logits for the last layer)."""
        y = self.pre_act(x_q)
        return y if self.aq is None else self.aq(act(y, self.act))

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.geometry.max_pool(self.core(x_q))

    @classmethod
    def from_unit(cls, u: Unit, in_scales: list[float | None], xs: list[torch.Tensor], config: DistillConfig,
                  w_bits: int) -> QnnUnit:
        """The teacher unit of an imported conv/fc ``u`` reading codes of step ``in_scales[0]``."""
        if in_scales[0] is None:
            raise ValueError(f"{u.name} reads int32 accumulators")
        parts = [("drop", u.drop)] if u.drop is not None else []
        parts += [(u.kind, u.layer)] + ([("bn", u.bn)] if u.bn is not None else [])
        if u.act:
            parts.append(("act", nn.ReLU6() if u.act == "relu6" else nn.ReLU()))
        if u.pool:
            parts.append(("pool", nn.MaxPool2d(*u.pool)))
        a_bits = None if u.acc else config.a_bits
        return cls(nn.Sequential(OrderedDict(parts)), in_scales[0], w_bits, a_bits, config.teacher_quantizer, u.signed,
                   config.teacher_weight_grid, grid_per_channel=config.scale == "per-channel" and a_bits is not None)

    def calibrate(self, x_q: torch.Tensor) -> float | None:
        """Set the activation step for minimum MSE on ``x_q``; the step, or None for accumulators."""
        if self.aq is None:
            return None
        self.aq.init_step(act(self.pre_act(x_q), self.act))
        return float(self.aq.step)


class IntUnit(_Cached):
    """One BN-free student layer computing in the integer code domain.

    Parameters (float, trained through straight-through estimators):
        ``weight``: latent weights scaled to [-1, 1]; ``w_q = clamp(round_half_up(Q * weight), -Q, Q)``.
        ``bias``: in output-code units; ``bias_q = round_half_up(bias / alpha)``.
        ``log_alpha``: ``alpha = exp(log_alpha)``, the layer's scale, one per layer
        (the paper's) or one per output channel (only where the output is requantized:
        the logits' accumulators are compared by argmax, so they share one scale).

    Train mode computes in float32 with fake quantization; eval mode computes the
    integer contract exactly: accumulators in float32 when the layer's (E6) bound is
    at most 2^24 and in float64 otherwise (exact either way, (E8)), requantization
    (E4) in int64. ``rounding`` "double" requantizes by (E4d) with 24-bit multipliers (float32
    scales, so that TFLite-family runtimes rebuild the same pair).
    """

    spec_type = "int"  # its type in a student's spec (GraphNet.spec)

    def __init__(self, geometry: Geometry, weight_shape: tuple[int, ...], in_bits: int, w_bits: int,
                 a_bits: int | None, per_channel: bool = False, raw: bool = False, signed: bool = False,
                 in_signed: bool = False, rounding: str = "single"):
        super().__init__()
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        if per_channel and a_bits is None:
            raise ValueError("a layer without activation bits (logits, residual branch) has one scale, "
                             "not one per channel: its int32 accumulators are compared or summed across channels")
        self.geometry = geometry
        self.raw = raw  # a residual branch: int32 accumulators out (train mode too), scaled by the add
        self.in_bits, self.w_bits, self.a_bits, self.per_channel = in_bits, w_bits, a_bits, per_channel
        self.signed, self.in_signed = signed and a_bits is not None, in_signed  # codes out / in are signed
        self.rounding = rounding if a_bits is not None else "single"  # (E4) only: accumulators are not rounded
        self.q = weight_range(w_bits)[1]
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        self.bias = nn.Parameter(torch.zeros(geometry.out_channels))
        self.log_alpha = nn.Parameter(torch.zeros(geometry.out_channels if per_channel else 1))
        self._int_cache: tuple[tuple, dict] | None = None  # (parameter versions, integer_params())

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def _fake_w_q(self) -> torch.Tensor:
        return torch.clamp(round_half_up(self.weight * self.q), -self.q, self.q)

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        """The layer's integers: ``w_q`` (W-bit codes), ``bias_q`` (int32),
        ``mult``, ``shift`` (one pair, or one per channel) as int64 tensors.

        ``(mult, shift) = quantize_multiplier(alpha)`` (E5); the bias uses the dyadic
        scale: ``bias_q = round_half_up(bias * 2^shift / mult)``.
        """
        # Every in-place change of a parameter (optimizer step, load_state_dict) bumps its version.
        key = _version_key(self.weight, self.bias, self.log_alpha)
        if self._int_cache is not None and self._int_cache[0] == key:
            return self._int_cache[1]
        bits = 24 if self.rounding == "double" else 31
        pairs = [quantize_multiplier(float(a), bits) for a in self.alpha.detach().cpu().double()]
        mult = torch.tensor([m for m, _ in pairs], dtype=torch.int64)
        shift = torch.tensor([s for _, s in pairs], dtype=torch.int64)
        dyadic = mult.double() / torch.pow(2.0, shift.double())
        bias_q = torch.floor(self.bias.detach().cpu().double() / dyadic + 0.5)
        bias_q = bias_q.clamp(-(2**31), 2**31 - 1).to(torch.int64)
        w_q = torch.clamp(torch.floor(self.weight.detach().cpu().double() * self.q + 0.5), -self.q, self.q)
        w_q = w_q.to(torch.int64)
        x_min, x_max = code_range(self.in_bits, self.in_signed)
        lo, hi = acc_bound(w_q.numpy(), x_max, bias_q.numpy(), x_min)
        # float32 sums are exact below 2^24 (E8) on the CPU; CUDA convolutions may use inexact
        # algorithms (Winograd, FFT) in float32, so there float64 always.
        small = exact_float_dtype(max(int(hi.max()), -int(lo.min()))) == np.float32
        dtype = torch.float32 if small and self.weight.device.type == "cpu" else torch.float64
        dev = self.weight.device
        out = {"w_q": w_q.to(dev), "bias_q": bias_q.to(dev), "mult": mult.to(dev), "shift": shift.to(dev),
               "dtype": dtype}
        self._int_cache = (key, out)
        return out

    def core(self, x_q: torch.Tensor) -> torch.Tensor:
        """Output codes before pooling (logits for the last layer)."""
        if not self.training:
            return self._core_exact(x_q)
        shape = self.geometry.channel_shape()
        alpha = self.alpha.reshape(shape)
        bias_q = round_half_up(self.bias / self.alpha)
        acc = self.geometry.linear(x_q, self._fake_w_q(), bias_q)
        if self.raw:
            return acc
        if self.a_bits is None:
            return acc * alpha  # float logits for the loss
        return clamp_codes(acc * alpha, self.a_bits, self.signed)

    def _core_exact(self, x_q: torch.Tensor) -> torch.Tensor:
        p = self.integer_params()
        dt = p["dtype"]  # float32 when the (E6) bound is <= 2^24, else float64: exact either way (E8)
        acc = self.geometry.linear(x_q.to(dt), p["w_q"].to(dt), p["bias_q"].to(dt))
        if self.a_bits is None:
            return acc.double()  # the int32 logits, exactly
        shape = self.geometry.channel_shape()
        prod = acc.to(torch.int64) * p["mult"].reshape(shape)  # |prod| < 2^62 (E4)
        shift = p["shift"].reshape(shape)
        return requantize_sum(prod, shift, self.a_bits, self.signed, self.rounding)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.geometry.max_pool(self.core(x_q))

    def spec_fields(self) -> dict:
        fields = {"geometry": dataclasses.asdict(self.geometry), "weight_shape": list(self.weight.shape),
                  "in_bits": self.in_bits, "w_bits": self.w_bits, "a_bits": self.a_bits,
                  "per_channel": self.per_channel, "raw": self.raw}
        fields |= {k: True for k in ("signed", "in_signed") if getattr(self, k)}  # older specs: absent
        return fields | ({"rounding": self.rounding} if self.rounding != "single" else {})

    @classmethod
    def from_fields(cls, d: dict) -> IntUnit:
        g = d["geometry"]
        geometry = Geometry(g["kind"], g["out_channels"], tuple(g["stride"]), tuple(g["padding"]),
                            tuple(g["dilation"]), g["groups"], tuple(g["pool"]) if g["pool"] else None)
        return cls(geometry, tuple(d["weight_shape"]), d["in_bits"], d["w_bits"], d["a_bits"], d["per_channel"],
                   d["raw"], d.get("signed", False), d.get("in_signed", False), d.get("rounding", "single"))

    def to_node(self, name: str, inputs: tuple[str, ...]) -> IntLayer:
        """The IntGraph node of this (eval-mode) layer: the integers it computes with."""
        p, g = self.integer_params(), self.geometry
        return IntLayer(name=name, kind=g.kind, w_q=p["w_q"].numpy().astype(np.int8),
                        bias_q=p["bias_q"].numpy().astype(np.int32), mult=p["mult"].numpy().astype(np.int32),
                        shift=p["shift"].numpy().astype(np.int32), in_bits=self.in_bits, w_bits=self.w_bits,
                        a_bits=self.a_bits, stride=tuple(g.stride), padding=tuple(g.padding),
                        dilation=tuple(g.dilation), groups=g.groups, pool=g.pool, inputs=inputs, signed=self.signed,
                        in_signed=self.in_signed, rounding=self.rounding)
