"""The paper's ImageNet network, alexnet-bn at 224x224x3: it builds, runs PTL stages,
converts to an IntGraph, and the executor matches the torch student (synthetic data:
shapes and arithmetic only)."""

from __future__ import annotations

import numpy as np
import torch

from fiqnn.config import DistillConfig
from fiqnn.data import ArraySplit, DataBundle
from fiqnn.jobs import compare_backends
from fiqnn.nets.models import build_model
from fiqnn.train.convert import convert
from fiqnn.train.distill import distill


def _split(n: int, seed: int) -> ArraySplit:
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, (n, 3, 224, 224), dtype=np.uint8), rng.integers(0, 5, n))


def test_alexnet_bn_distills_and_converts():
    torch.manual_seed(0)
    teacher = build_model("alexnet-bn", 5, (3, 224, 224)).eval()
    data = DataBundle("synthetic", _split(8, 0), _split(4, 1), _split(4, 2), 5, (3, 224, 224))
    config = DistillConfig(w_bits=4, a_bits=4, teacher_epochs=0, steps_per_epoch=1, max_epochs_per_stage=1,
                           finetune_epochs=0, batch_size=4, calib_images=8)
    student = distill(teacher, data, config, progress=False, log=lambda m: None)
    assert [h["phase"] for h in student.history][1:] == [
        f"stage {k}/8 ({n})" for k, n in enumerate(["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
                                                   "fc8"], 1)]
    graph = convert(student)
    assert [layer.w_q.shape for layer in graph.layers][::3] == [(64, 3, 11, 11), (256, 384, 3, 3), (4096, 4096)]
    assert graph.layers[0].pool == (3, 2, 0) and graph.layers[0].stride == (4, 4)
    check = compare_backends(student, graph, data.test)
    assert check["bit_exact"], check
