"""torch.fx import: the model families become fiqnn units; anything without an integer form
is refused before training, naming the node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fiqnn.nets.fximport import UnsupportedModelError, import_model, verify_import
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


class Swish(nn.Module):  # y * sigmoid(y): an elementwise function of one tensor, a lookup table
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = self.bn(self.conv(x))
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


class PoolFirst(nn.Module):  # a max-pool of a conv without a ReLU: signed codes, pooled by a maxpool unit
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class Upsampled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        return self.fc(F.interpolate(F.relu(self.conv(x)), scale_factor=2).flatten(1))


class Mixed(nn.Module):  # arithmetic in the middle of a channel shuffle
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        n, c, h, w = y.size()
        y = (y.view(n, 2, c // 2, h, w) + 1).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(y.flatten(1))


class Block(nn.Module):
    def forward(self, x):
        return x[0] if x.size(0) > 1 else x  # a Python branch on a size: not traceable


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.block, self.fc = nn.Conv2d(1, 4, 3), Block(), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("model, message", [
    (Norm(), "node 'norm' (LayerNorm module 'norm') is not supported; replace it by a BatchNorm2d"),
    (Branchy(), "torch.fx cannot trace Branchy"),
    (Holder(), "torch.fx cannot trace Holder in Block 'block'"),
    (Upsampled(), "node 'interpolate' (function interpolate) is not supported; fiqnn has no integer upsampling"),
    (Mixed(), "mixes elementwise arithmetic and moving channels in one expression"),
])
def test_unsupported_ops_are_refused_naming_the_node(model, message):
    with pytest.raises(UnsupportedModelError, match=None) as e:
        import_model(model)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_op_inside_a_user_module_names_that_module_class():
    class Scale(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.scale, self.fc = nn.Conv2d(1, 4, 3), Scale(), nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(self.scale(self.conv(x)).flatten(1))

    with pytest.raises(UnsupportedModelError, match=r"\(function cumsum in Scale 'scale'\) is not supported; fiqnn "
                                                    "converts"):
        import_model(M())


@pytest.mark.parametrize("model, kinds", [
    (Swish(), ["conv", "lut", "fc"]),
    (LinearBottleneck(), ["conv", "conv", "add", "fc"]),
    (PoolFirst(), ["conv", "maxpool", "fc"]),
])
def test_what_was_refused_before_imports_and_computes_the_module(model, kinds):
    units = import_model(model)
    assert [u.kind for u in units] == kinds
    verify_import(model, units, torch.rand(4, 1, 8, 8))


def test_codes_are_signed_where_a_value_can_be_negative():
    units = {u.name: u for u in import_model(LinearBottleneck())}
    a, b, add, fc = units.values()
    assert (a.signed, a.acc) == (False, False)  # after a ReLU
    assert (b.signed, b.acc) == (False, True)  # read only by the add: int32 accumulators
    assert add.signed and add.act is None  # the linear bottleneck's sum
    assert fc.acc  # the logits
    swish = {u.kind: u for u in import_model(Swish())}
    assert swish["conv"].signed and swish["lut"].signed  # SiLU dips below 0


def test_squeeze_excite_gate_and_hard_swish_by_what_they_compute():
    class SE(nn.Module):  # pytorchcv's spelling: HSwish as x * relu6(x + 3) / 6, an HSigmoid gate
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            y = self.bn(self.conv(x))
            y = y * F.relu6(y + 3.0) / 6.0
            w = F.relu6(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))) + 3.0) / 6.0
            return self.fc((y * w).mean((2, 3)))

    model = SE().eval()
    units = import_model(model)
    kinds = [u.kind for u in units]
    assert kinds == ["conv", "lut", "avgpool", "conv", "conv", "lut", "mul", "avgpool", "fc"]
    gate = units[5]
    assert not gate.signed and units[1].signed  # hard-sigmoid >= 0; hard-swish dips below 0
    verify_import(model, units, torch.rand(4, 1, 8, 8))


def test_channel_split_concat_and_shuffle():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.branch, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(8, 3)

        def forward(self, x):
            x = F.relu(self.conv(x))
            a, b = x.chunk(2, dim=1)
            y = torch.cat((a, F.relu(self.branch(b))), 1)
            n, c, h, w = y.size()
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
            return self.fc(y.mean([2, 3]))

    from fiqnn.nets.fximport import channel_index

    model = Shuffle().eval()
    units = import_model(model)
    assert [u.kind for u in units] == ["conv", "channels", "channels", "conv", "concat", "channels", "avgpool", "fc"]
    verify_import(model, units, torch.rand(4, 1, 8, 8))
    assert channel_index(units[1].func, (2, 8, 4, 4)) == [0, 1, 2, 3]
    assert channel_index(units[5].func, (2, 8, 4, 4)) == [0, 4, 1, 5, 2, 6, 3, 7]


def test_pre_activation_batchnorm_is_an_affine_unit():
    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, 1, 1)
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            x = self.conv(x)
            y = x + self.conv2(F.relu(self.bn(x)))  # the stream x feeds the BN and the sum
            return self.fc(y.flatten(1))

    model = PreAct().eval()
    units = import_model(model)
    assert [u.kind for u in units] == ["conv", "affine", "conv", "add", "fc"]
    assert units[1].act == "relu" and not units[1].signed and units[0].signed
    verify_import(model, units, torch.rand(4, 1, 8, 8))


def test_a_fused_batchnorm_activation_module_is_read_by_what_it_computes():
    class BatchNormAct2d(nn.BatchNorm2d):  # timm's spelling
        def forward(self, x):
            return F.relu(super().forward(x))

    class Odd(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    def net(norm):
        return nn.Sequential(nn.Conv2d(1, 4, 3), norm(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    units = import_model(net(BatchNormAct2d))
    assert [u.kind for u in units] == ["conv", "fc"] and units[0].act == "relu" and units[0].bn is not None
    with pytest.raises(UnsupportedModelError, match="Odd module '1'.* computes neither BN, BN -> ReLU nor BN -> ReLU6"):
        import_model(net(Odd))


def test_distill_refuses_an_unsupported_model_before_any_work():
    from fiqnn.config import DistillConfig
    from fiqnn.train.distill import distill

    with pytest.raises(UnsupportedModelError, match="node 'norm'"):
        distill(Norm(), None, DistillConfig(), progress=False)  # data is never touched


@pytest.mark.parametrize("arch, shape", [("mobilenetv2", (1, 28, 28)), ("mobilenetv3-small", (1, 28, 28)),
                                         ("efficientnet-b0", (1, 28, 28)), ("densenet-s", (1, 28, 28)),
                                         ("shufflenetv2-s", (1, 28, 28))])
def test_registry_families_import_and_compute_the_module(arch, shape):
    model = build_model(arch, 10, shape).eval()
    units = import_model(model)
    verify_import(model, units, torch.rand(2, *shape))
