"""Step 0 of docs/method.md: the BN teacher in the code domain, with W/A-bit quantizers.

:func:`build_teacher_qnn` wraps every unit of an imported teacher (:func:`fiqnn.import_model`)
in its teacher-QNN counterpart (:mod:`fiqnn.train.units`: BN kept, fake-quantized weights,
LSQ activation codes) and calibrates each activation step for minimum MSE on a batch of
training images; distill then trains it by QAT.
"""

from __future__ import annotations

import torch

from ..config import DistillConfig
from ..nets.fximport import Unit
from .blocks import TEACHERS
from .graphnet import GraphNet


@torch.no_grad()
def build_teacher_qnn(units: list[Unit], config: DistillConfig, calib_x: torch.Tensor) -> GraphNet:
    """The teacher QNN of an imported model: every activation step calibrated for minimum MSE
    on ``calib_x`` (uint8 codes as floats). The model's modules are copied, never mutated.

    The first and the last conv/fc layer get ``first_last_bits`` weights, the others ``w_bits``."""
    layers = [u.name for u in units if u.kind in ("conv", "fc")]
    env, scale, built = {"input": calib_x.float()}, {"input": 1.0 / 255.0}, []
    for u in units:
        if u.kind == "mul" and env[u.inputs[0]].shape[2:] == (1, 1) != env[u.inputs[1]].shape[2:]:
            u.inputs.reverse()  # (E12): the gate, one value per channel, is the second factor
        xs = [env[s] for s in u.inputs]
        w_bits = config.first_last_bits if u.name in (layers[0], layers[-1]) else config.w_bits
        q = TEACHERS[u.kind].from_unit(u, [scale[s] for s in u.inputs], xs, config, w_bits).eval()
        scale[u.name] = q.calibrate(*xs)  # None: real values out (a residual branch, or the logits)
        env[u.name] = q(*xs)
        built.append((u.name, q, u.inputs))
    return GraphNet(built)
