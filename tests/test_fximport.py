"""torch.fx import: the model families become fiqnn units; anything without an integer form
is refused before training, naming the node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fiqnn.nets.fximport import UnsupportedModelError, import_model
from fiqnn.nets.models import build_model


@pytest.mark.parametrize("arch, shape, n_units, n_adds", [
    ("resnet20", (3, 32, 32), 32, 9),
    ("resnet18", (3, 64, 64), 30, 8),
    ("vgg11-bn", (3, 32, 32), 10, 0),
    ("mobilenetv2-s", (3, 32, 32), 29, 4),
    ("alexnet-s", (1, 28, 28), 7, 0),
])
def test_model_families_import(arch, shape, n_units, n_adds):
    model = build_model(arch, 10, shape).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    units = import_model(model)
    assert len(units) == n_units and sum(u.kind == "add" for u in units) == n_adds
    names = {"input"}
    for u in units:  # topological order, every input defined before use
        assert set(u.inputs) <= names
        names.add(u.name)
    last = units[-1]
    assert last.kind == "fc" and last.act is None and last.bn is None
    assert all(u.act is not None for u in units if u.kind == "add")
    for u in units:
        if u.kind == "conv" and u.act is None:  # residual branches: int32 accumulators into an add
            assert all(v.kind == "add" for v in units if u.name in v.inputs)


def test_resnet_block_structure():
    units = {u.name: u for u in import_model(build_model("resnet20", 10, (3, 32, 32)))}
    add = next(u for u in units.values() if u.kind == "add")
    branch, skip = (units.get(n) for n in add.inputs)
    assert branch.kind == "conv" and branch.bn is not None and branch.act is None
    assert skip.kind == "conv" and skip.act == "relu"  # the identity shortcut: the block input
    down = [u for u in units.values() if u.kind == "conv" and u.layer.kernel_size == (1, 1)]
    assert len(down) == 2 and all(u.act is None and u.layer.stride == (2, 2) for u in down)
    pool = next(u for u in units.values() if u.kind == "avgpool")
    assert pool.window == "global"


def test_depthwise_and_relu6_import():
    units = import_model(build_model("mobilenetv2-s", 10, (3, 32, 32)))
    dw = [u for u in units if u.kind == "conv" and u.layer.groups > 1]
    assert dw and all(u.layer.groups == u.layer.in_channels == u.layer.out_channels for u in dw)
    assert {u.act for u in units if u.kind == "conv"} == {"relu6", None}


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return self.fc((y * torch.sigmoid(y)).flatten(1))


class Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.LayerNorm([4, 6, 6])
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.norm(self.conv(x))), 1))


class LinearBottleneck(nn.Module):  # MobileNetV2's add without an activation after it
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.fc(torch.flatten(y + self.b(y), 1))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            x = self.conv(x)
        return self.fc(x.mean((2, 3)))


class PoolFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


@pytest.mark.parametrize("model, message", [
    (Gate(), "node 'sigmoid' (function sigmoid) is not supported"),
    (Norm(), "node 'norm' (LayerNorm module 'norm') is not supported"),
    (LinearBottleneck(), "add (residual add) has no ReLU/ReLU6 after it"),
    (Branchy(), "torch.fx cannot trace Branchy"),
    (PoolFirst(), "node 'pool' (MaxPool2d module 'pool') is a max-pool that does not directly follow a conv -> ReLU"),
])
def test_unsupported_ops_are_refused_naming_the_node(model, message):
    with pytest.raises(UnsupportedModelError, match=None) as e:
        import_model(model)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_distill_refuses_an_unsupported_model_before_any_work():
    from fiqnn.config import DistillConfig
    from fiqnn.train.distill import distill

    with pytest.raises(UnsupportedModelError, match="node 'sigmoid'"):
        distill(Gate(), None, DistillConfig(), progress=False)  # data is never touched
