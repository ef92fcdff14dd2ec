"""Third-party model code: pytorchcv's own modules (built with random weights, nothing
downloaded) import, their imported float units compute what the module computes, and a tiny
distill of them is bit-exact across numpy, ONNX Runtime and C.

bench/zoo.py surveys 84 pytorchcv models (bench/results/zoo.md); this test keeps a spread of
them, one or two per family, in every ``make test``. The distill cases are small: PTL (tiny
budget) for the CIFAR models at 32x32, fold for the 224x224 ImageNet ones (whose final
average pools need that size); the slow ones run with ``-m slow``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fiqnn import DistillConfig, convert, distill
from fiqnn.data import ArraySplit, Augment, DataBundle
from fiqnn.export.c99 import run_c
from fiqnn.export.onnx import run_onnx
from fiqnn.integer.execute import run
from fiqnn.nets.fximport import import_model, verify_import

pytorchcv = pytest.importorskip("pytorchcv.model_provider", reason="pytorchcv (the zoo extra) is not installed")

# (family, model): one or two per family; the import check runs on each at its own input size.
IMPORTED = [
    ("ResNet", "resnet10"), ("ResNet", "resnet20_cifar10"), ("PreResNet", "preresnet20_cifar10"),
    ("ResNeXt", "resnext14_32x4d"), ("SE-ResNet", "seresnet20_cifar10"), ("DenseNet", "densenet40_k12_cifar10"),
    ("MobileNet", "mobilenet_wd4"), ("MobileNetV2", "mobilenetv2_wd4"), ("MobileNetV3", "mobilenetv3_small_w1"),
    ("MnasNet", "mnasnet_small"), ("ProxylessNAS", "proxylessnas_mobile"), ("EfficientNet", "efficientnet_b0"),
    ("GhostNet", "ghostnet"), ("ShuffleNet", "shufflenet_g1_w1"), ("ShuffleNetV2", "shufflenetv2_wd2"),
    ("IGCV3", "igcv3_wd2"), ("PeleeNet", "peleenet"), ("Inception", "bninception"),
]
# (model, input size, method): distilled and run on every backend. The 224x224 models and the
# squeeze-excite one take minutes each on two cores (C builds of megabyte sources, the numpy
# executor at 224x224): `-m slow` runs them (pytest -m slow tests/test_pytorchcv.py).
slow = pytest.mark.slow
DISTILLED = [
    ("resnet20_cifar10", 32, "ptl"), ("preresnet20_cifar10", 32, "ptl"),
    pytest.param("seresnet20_cifar10", 32, "ptl", marks=slow), pytest.param("mobilenetv2_wd4", 224, "fold", marks=slow),
    pytest.param("shufflenetv2_wd2", 224, "fold", marks=slow), pytest.param("mnasnet_small", 224, "fold", marks=slow),
]


def _synthetic(size: int, n: int = 96, classes: int = 10) -> DataBundle:
    """Learnable 3 x size x size images (a template per class plus noise): shapes, not accuracy."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (classes, 3, size, size))

    def split(m: int) -> ArraySplit:
        y = rng.integers(0, classes, m)
        x = templates[y] * 0.6 + rng.integers(0, 256, (m, 3, size, size)) * 0.4
        return ArraySplit(np.rint(x).astype(np.uint8), y.astype(np.int64))

    return DataBundle("synthetic", split(n), split(32), split(32), classes, (3, size, size), Augment())


def _build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return pytorchcv.get_model(name, pretrained=False, **kwargs).eval()


@pytest.mark.parametrize("family, name", IMPORTED, ids=[n for _, n in IMPORTED])
def test_imported_units_compute_the_module(family, name):
    model = _build(name)
    size = model.in_size if hasattr(model, "in_size") else (224, 224)
    units = import_model(model)
    verify_import(model, units, torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name, size, method", DISTILLED)
def test_a_tiny_distill_is_bit_exact_on_every_backend(name, size, method):
    data = _synthetic(size)
    teacher = _build(name, num_classes=data.num_classes)
    config = DistillConfig(method=method, w_bits=4, a_bits=4, steps_per_epoch=1, teacher_epochs=0,
                           max_epochs_per_stage=1, finetune_epochs=1, calib_images=32, batch_size=32)
    torch.manual_seed(0)
    student = distill(teacher, data, config, progress=False, log=lambda m: None)
    graph = convert(student)
    x = data.test.x_q
    logits = run(graph, x)
    with torch.no_grad():
        torch_logits = student.eval()(torch.from_numpy(x.astype(np.float32))).double().numpy()
    assert np.array_equal(torch_logits, logits.astype(np.float64))
    assert np.array_equal(run_onnx(graph, x), logits)
    if shutil.which("cc"):
        assert np.array_equal(run_c(graph, x), logits)
