"""Step 0 of docs/method.md: the BN teacher in the code domain, with W/A-bit quantizers.

:func:`build_teacher_qnn` wraps every unit of an imported teacher (:func:`fiqnn.import_model`)
in its teacher-QNN counterpart (:mod:`fiqnn.train.units`: BN kept, fake-quantized weights,
LSQ activation codes) and calibrates each activation step for minimum MSE on a batch of
training images; distill then trains it by QAT.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..config import DistillConfig
from ..nets.fximport import Unit
from .graphnet import GraphNet
from .units import QnnAdd, QnnAvgPool, QnnUnit, _act


def _bits(i: int, n: int, first_input: bool, config: DistillConfig, act: bool) -> tuple[int, int, int | None]:
    in_bits = 8 if first_input else config.a_bits
    w_bits = config.first_last_bits if i in (0, n - 1) else config.w_bits
    return in_bits, w_bits, (config.a_bits if act else None)

@torch.no_grad()
def build_teacher_qnn(units: list[Unit], config: DistillConfig, calib_x: torch.Tensor) -> GraphNet:
    """The teacher QNN of an imported model: every activation step calibrated for minimum MSE
    on ``calib_x`` (uint8 codes as floats). The model's modules are copied, never mutated."""
    n = sum(u.kind in ("conv", "fc") for u in units)
    env, scale, built, i = {"input": calib_x.float()}, {"input": 1.0 / 255.0}, [], 0
    for u in units:
        xs = [env[s] for s in u.inputs]
        relu6 = u.act == "relu6"
        if u.kind in ("conv", "fc"):
            parts = [("drop", u.drop)] if u.drop is not None else []
            parts += [(u.kind, u.layer)] + ([("bn", u.bn)] if u.bn is not None else [])
            if u.act:
                parts.append(("act", nn.ReLU6() if relu6 else nn.ReLU()))
            if u.pool:
                parts.append(("pool", nn.MaxPool2d(*u.pool)))
            in_bits, w_bits, a_bits = _bits(i, n, u.inputs == ["input"], config, u.act is not None)
            if in_bits != 8 and scale[u.inputs[0]] is None:
                raise ValueError(f"{u.name} reads int32 accumulators")
            q = QnnUnit(nn.Sequential(OrderedDict(parts)), scale[u.inputs[0]], w_bits, a_bits,
                        config.teacher_quantizer).eval()
            i += 1
        elif u.kind == "add":
            q = QnnAdd([scale[s] for s in u.inputs], config.a_bits, relu6).eval()
        else:
            window = u.window
            if window == "global":
                h, w = xs[0].shape[2:]
                window = ((h, w), (1, 1), (0, 0))
            q = QnnAvgPool(window, scale[u.inputs[0]], config.a_bits).eval()
        if getattr(q, "aq", None) is not None:
            pre = q.pre_act(*xs)
            q.aq.init_step(_act(pre, relu6) if u.kind != "avgpool" else pre)
            scale[u.name] = float(q.aq.step)
        else:
            scale[u.name] = None  # real values (a residual branch, or the logits)
        env[u.name] = q(*xs)
        built.append((u.name, q, u.inputs))
    return GraphNet(built)
