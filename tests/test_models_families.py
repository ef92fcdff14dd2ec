"""The torchvision families of fiqnn.nets.families: they run on small inputs, trace with
torch.fx, and have torchvision's parameter counts at 224x224 with 1000 classes."""

from __future__ import annotations

import pytest
import torch

from fiqnn.nets.families import _make_divisible, channel_shuffle
from fiqnn.nets.models import MODELS, build_model

FAMILIES = ["mobilenetv2", "mobilenetv2-w0.5", "mobilenetv3-small", "efficientnet-b0", "densenet121", "densenet-s",
            "shufflenetv2", "shufflenetv2-s"]

# torchvision's published parameter counts (its model cards) at (3, 224, 224), 1000 classes
TORCHVISION_PARAMS = {
    "mobilenetv2": 3_504_872,          # mobilenet_v2
    "mobilenetv3-small": 2_542_856,    # mobilenet_v3_small
    "efficientnet-b0": 5_288_548,      # efficientnet_b0
    "densenet121": 7_978_856,          # densenet121
    "shufflenetv2": 2_278_604,         # shufflenet_v2_x1_0
}


def test_the_families_are_registered():
    assert set(FAMILIES) <= set(MODELS) and set(TORCHVISION_PARAMS) <= set(FAMILIES)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("arch", FAMILIES)
def test_forward_and_fx_trace(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, 10, shape).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        y = model(x)
        traced = torch.fx.symbolic_trace(model)
        assert y.shape == (2, 10) and torch.isfinite(y).all()
        assert torch.equal(traced(x), y)


@pytest.mark.parametrize("arch, n_params", TORCHVISION_PARAMS.items())
def test_parameter_count_is_torchvisions(arch, n_params):
    model = build_model(arch, 1000, (3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)  # groups (0 1 2) (3 4 5)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_make_divisible_rounds_like_torchvision():
    assert [_make_divisible(v) for v in (16, 12, 3, 22.5, 640)] == [16, 16, 8, 24, 640]
