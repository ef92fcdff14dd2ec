"""Every registry family of the networks people deploy distills, and its integer student is
bit-exact across the eval-mode torch student, the numpy executor, ONNX Runtime and compiled C
on the whole digits test set.

Each family is built from its own registry class with a shorter block table and a narrower head
(the same block kinds: linear bottlenecks, squeeze-excite with hard-swish or SiLU,
pre-activation dense layers with concatenation, channel split and shuffle), so that a PTL run
fits in seconds.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiqnn import DistillConfig, convert, distill, load_data
from fiqnn.export.c99 import run_c
from fiqnn.export.onnx import run_onnx
from fiqnn.integer.execute import run
from fiqnn.nets import families

MINI = {
    "mobilenetv2": lambda shape: families.MobileNetV2(10, shape, width_mult=0.25,
                                                      setting=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2)), head=64),
    "mobilenetv3-small": lambda shape: families.MobileNetV3Small(10, shape, setting=(
        (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (5, 96, 24, True, "HS", 1))),
    "efficientnet-b0": lambda shape: families.EfficientNetB0(10, shape, setting=(
        (1, 3, 1, 16, 8, 1), (6, 3, 2, 8, 16, 2)), head=64),
    "densenet": lambda shape: families.DenseNet(10, shape, growth_rate=4, block_config=(2, 2), num_init_features=8,
                                                bn_size=2),
    "shufflenetv2": lambda shape: families.ShuffleNetV2(10, shape, repeats=(1, 2, 1), channels=(8, 16, 32, 64, 64)),
}
KINDS = {"mobilenetv2": {"add"}, "mobilenetv3-small": {"lut", "mul", "add"}, "efficientnet-b0": {"lut", "mul", "add"},
         "densenet": {"affine", "concat"}, "shufflenetv2": {"concat", "channels"}}
TINY = dict(steps_per_epoch=2, teacher_epochs=1, max_epochs_per_stage=1, finetune_epochs=1,
            calib_images=128)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _trained(model: torch.nn.Module, data, steps: int = 60) -> torch.nn.Module:
    """A few Adam steps, so that the BN statistics are a trained network's, not the identity."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.from_numpy(data.train.x_q.astype(np.float32) / 255), torch.from_numpy(data.train.y).long()
    model.train()
    for i in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    with torch.no_grad():  # BN statistics as cumulative averages (MobileNetV3's momentum 0.01 lags far behind)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for batch in x[:512].split(128):
            model(batch)
    return model.eval()


@pytest.mark.parametrize("family", list(MINI))
def test_family_distills_bit_exact_on_every_backend(family, digits):
    teacher = _trained(MINI[family](digits.in_shape), digits)
    torch.manual_seed(0)
    student = distill(teacher, digits, DistillConfig(w_bits=4, a_bits=4, **TINY), progress=False, log=lambda m: None)
    graph = convert(student)
    assert KINDS[family] <= {node.kind for node in graph.layers}
    assert graph.arith_version == 2  # signed codes, or a node of version 2
    x = digits.test.x_q
    logits = run(graph, x)
    with torch.no_grad():
        torch_logits = student.eval()(torch.from_numpy(x.astype(np.float32))).double().numpy()
    assert np.array_equal(torch_logits, logits.astype(np.float64)), "the eval-mode torch student is not the graph"
    assert np.array_equal(run_onnx(graph, x), logits)
    if shutil.which("cc"):
        assert np.array_equal(run_c(graph, x), logits)
    assert (logits.argmax(1) == digits.test.y).mean() > 0.3  # it learnt something (10 classes)
