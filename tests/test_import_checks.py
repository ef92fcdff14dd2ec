"""Import that cannot silently build another network, and runs that stop in one line on a
model or data set that does not fit or a training run that diverges."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fiqnn import DistillConfig, distill, load_data
from fiqnn.errors import DataError, TrainingError
from fiqnn.nets.fximport import UnsupportedModelError, import_model, verify_import
from fiqnn.nets.models import build_model

SHORT = dict(w_bits=4, a_bits=4, steps_per_epoch=2, teacher_epochs=0, max_epochs_per_stage=1, finetune_epochs=1)


class Pooled(nn.Module):
    """conv -> BN -> ReLU -> a functional 3x3 average pool (stride 1, padding 1) -> fc."""

    def __init__(self, call):
        super().__init__()
        self.call = call
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.call(F.relu(self.bn(self.conv(x)))), 1))


@pytest.mark.parametrize("call", [
    lambda x: F.avg_pool2d(x, 3, 1, 1),  # positional: was read as stride 3, padding 0
    lambda x: F.avg_pool2d(x, kernel_size=3, stride=1, padding=1),  # keywords: was an IndexError
    lambda x: F.avg_pool2d(x, 3, padding=1, stride=1),
])
def test_functional_pool_arguments_bind_by_name(call):
    model = Pooled(call).eval()
    units = import_model(model)
    pool = next(u for u in units if u.kind == "avgpool")
    assert pool.window == ((3, 3), (1, 1), (1, 1))
    verify_import(model, units, torch.rand(4, 1, 8, 8))


def test_functional_max_pool_keywords_bind():
    class M(Pooled):
        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn(self.conv(x))), kernel_size=3, stride=1, padding=1)
            return self.fc(x.flatten(1))

    units = import_model(M(None))
    assert units[0].pool == (3, 1, 1)


@pytest.mark.parametrize("call, ceil, include", [
    (lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), False, False),
    (lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), True, True),
    (lambda x: F.avg_pool2d(x, 2, 3, 1, ceil_mode=True, count_include_pad=False), True, False),
])
def test_average_pool_variants_bind_by_keyword(call, ceil, include):
    model = Pooled(call)
    model.fc = nn.Linear(4 * call(torch.zeros(1, 1, 8, 8)).numel(), 4)
    model.eval()
    units = import_model(model)
    pool = next(u for u in units if u.kind == "avgpool")
    assert (pool.ceil_mode, pool.count_include_pad) == (ceil, include)
    verify_import(model, units, torch.rand(4, 1, 8, 8))


def test_a_divisor_override_is_refused_by_keyword():
    with pytest.raises(UnsupportedModelError, match="divisor override"):
        import_model(Pooled(lambda x: F.avg_pool2d(x, 3, 1, 1, divisor_override=2)))


@pytest.mark.parametrize("arch, shape", [("resnet20", (3, 32, 32)), ("mobilenetv2-s", (3, 32, 32)),
                                         ("alexnet-s", (1, 28, 28))])
def test_registry_models_pass_the_import_check(arch, shape):
    model = build_model(arch, 10, shape)
    for m in model.modules():  # BN statistics away from the identity, so a missed BN would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    verify_import(model, import_model(model), torch.rand(4, *shape))


def test_a_mis_import_is_refused_naming_the_unit():
    model = Pooled(lambda x: F.avg_pool2d(x, 3, 1, 1)).eval()
    units = import_model(model)
    units[0].act = None  # as if the ReLU had been lost on the way
    with pytest.raises(UnsupportedModelError, match=r"import check failed: unit conv \(conv, traced nodes conv, "
                                                    r"bn, relu\) differs from the module by up to"):
        verify_import(model, units, torch.rand(4, 1, 8, 8))
    units[0].act, units[1].window = "relu", ((3, 3), (3, 3), (0, 0))  # the old positional misreading
    with pytest.raises(UnsupportedModelError, match="unit avg_pool2d .* has 64 values where the module's node has "
                                                    "1024"):
        verify_import(model, units, torch.rand(4, 1, 8, 8))


@pytest.fixture(scope="module")
def synthetic():
    return load_data("synthetic")


def test_conv_logits_then_flatten_distills(synthetic):
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.head = nn.Conv2d(8, synthetic.num_classes, 1)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1)
            return torch.flatten(self.head(x), 1)

    torch.manual_seed(0)
    student = distill(Head(), synthetic, DistillConfig(**SHORT), progress=False, log=lambda m: None)
    assert student(torch.zeros(2, *synthetic.in_shape)).shape == (2, synthetic.num_classes)


def test_diverging_training_stops_in_one_line(synthetic):
    teacher = build_model("tiny", synthetic.num_classes, synthetic.in_shape)
    config = DistillConfig(**{**SHORT, "teacher_epochs": 1, "teacher_lr": 1e30})
    saved = []
    with pytest.raises(TrainingError, match=r"teacher QAT epoch 1: training diverged \(.* became inf or NaN"):
        distill(teacher, synthetic, config, checkpoint=saved.append, progress=False, log=lambda m: None)
    assert saved == []  # the diverged epoch was never checkpointed


@pytest.mark.parametrize("shape, classes, message", [
    ((3, 8, 8), None, r"cannot take the data's images of shape \(1, 8, 8\)"),
    ((1, 8, 8), 3, r"outputs \(3,\) per image but the data has 4 classes"),
])
def test_data_that_does_not_fit_the_teacher_is_refused(synthetic, shape, classes, message):
    teacher = build_model("tiny", classes or synthetic.num_classes, shape)
    with pytest.raises(DataError, match=message):
        distill(teacher, synthetic, DistillConfig(**SHORT), progress=False, log=lambda m: None)


def test_diverging_teacher_stops_in_one_line(cli, tmp_path):
    out = tmp_path / "teacher"
    code, _, err = cli("train-teacher", "--arch", "tiny", "--data", "synthetic", "--epochs", "2", "--lr", "1e30",
                       "--out", out, "--no-progress")
    assert code == 2 and err[-1].startswith("fiqnn: error: epoch 1: training diverged")
    assert not (out / "checkpoint.pt").exists()  # the diverged epoch was never saved
