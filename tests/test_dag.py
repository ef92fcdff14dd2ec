"""Residual, VGG and MobileNet-style networks end to end through the integer pipeline:
fx import -> teacher QNN -> local init (fold) -> IntGraph; the eval-mode torch student, the
numpy executor, ONNX Runtime and compiled C agree bit for bit on a synthetic batch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from fiqnn.config import DistillConfig
from fiqnn.integer.execute import run
from fiqnn.integer.graph import IntAdd, IntAvgPool, IntLayer
from fiqnn.nets.fximport import import_model
from fiqnn.nets.models import VGG, MobileNetV2S, ResNet, _conv_bn, build_model
from fiqnn.train.convert import convert
from fiqnn.train.fold import fold
from fiqnn.train.ptl import stages
from fiqnn.train.qnn import build_teacher_qnn

SHAPE = (3, 12, 12)
FAMILIES = {  # tiny instances of each family (CI), and resnet20 itself at a small input
    "resnet": lambda: ResNet([*_conv_bn(3, 8, 3), nn.ReLU()], [8, 16], 1, 5, 8),
    "vgg-bn": lambda: VGG([8, "M", 16, "M"], SHAPE, 5, 16),
    "mobilenetv2": lambda: MobileNetV2S(5, SHAPE, blocks=((8, 1), (12, 2), (12, 1)), stem=8, head=16, expand=2),
    "resnet20": lambda: build_model("resnet20", 5, SHAPE),
}


def _student(family: str, bits: int, scale: str):
    torch.manual_seed(0)
    model = FAMILIES[family]()
    model.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for _ in range(3):
            model(torch.rand(16, *SHAPE) * 2)
    model.eval()
    config = DistillConfig(w_bits=bits, a_bits=bits, scale=scale)
    gen = torch.Generator().manual_seed(1)  # images of different brightness, so global pools differ
    x = torch.floor(torch.rand(48, *SHAPE, generator=gen) * torch.linspace(20, 255, 48).reshape(-1, 1, 1, 1))
    qnn = build_teacher_qnn(import_model(model), config, x)
    student = fold(qnn, config, x)
    student.in_shape, student.num_classes = SHAPE, 5
    return student, convert(student), x.numpy().astype(np.uint8)


@pytest.mark.parametrize("family, bits, scale", [
    *((f, b, s) for f in ("resnet", "vgg-bn", "mobilenetv2") for b, s in ((4, "per-layer"), (2, "per-channel"),
                                                                           (8, "per-layer"))),
    ("resnet20", 4, "per-layer"),
])
def test_family_is_bit_exact_across_backends(family, bits, scale):
    from fiqnn.export.onnx import run_onnx, to_onnx

    student, graph, x_q = _student(family, bits, scale)
    ref = run(graph, x_q)
    with torch.no_grad():
        assert np.array_equal(student(torch.from_numpy(x_q)).numpy().astype(np.int64), ref)
    assert np.array_equal(run_onnx(to_onnx(graph), x_q), ref)
    if shutil.which("cc"):
        from fiqnn.export.c99 import run_c

        assert np.array_equal(run_c(graph, x_q), ref)
    if scale == "per-channel":  # except the logits, compared by argmax, which share one scale
        assert graph.layers[-1].mult.size == 1
        assert all(n.mult.size > 1 for n in graph.layers[:-1] if isinstance(n, IntLayer) and n.a_bits is not None)
    if family.startswith("resnet") or family == "mobilenetv2":
        assert any(isinstance(n, IntAdd) for n in graph.layers)
        assert any(isinstance(n, IntAvgPool) for n in graph.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_codes_are_not_degenerate(family):
    _, graph, x_q = _student(family, 4, "per-layer")
    outs = {}
    logits = run(graph, x_q, trace=lambda name, a: outs.setdefault(name, a))
    for node in graph.layers:
        if isinstance(node, IntAdd) or (node.a_bits is not None and node.kind == "conv"):
            assert len(np.unique(outs[node.name])) > 3, node.name
    assert len({tuple(row) for row in logits}) > 1  # random weights: global pools vary little, but vary


def test_ptl_stages_are_residual_blocks():
    model = build_model("resnet20", 5, SHAPE).eval()
    qnn = build_teacher_qnn(import_model(model), DistillConfig(), torch.rand(8, *SHAPE) * 255)
    groups = stages(qnn)
    assert len(groups) == 1 + 9 + 2  # stem, nine blocks, pool, fc
    assert groups[0] == ["stem_0"] and groups[-2:] == [["pool"], ["fc"]]
    for g in groups[1:-2]:
        assert g[-1].startswith("add") and g[0].endswith("conv1")
    assert sum(len(g) for g in groups[1:-2]) == 9 * 3 + 2  # two blocks with a 1x1 conv shortcut


def test_resnet_distills_end_to_end(cli, tmp_path):
    """train-teacher -> distill (PTL over blocks) -> bit-exact model -> eval on torch and C -> report."""
    teacher, run = tmp_path / "teacher", tmp_path / "ptl"
    assert cli("train-teacher", "--arch", "resnet8", "--data", "digits", "--epochs", "3", "--batch-size", "64",
               "--out", str(teacher), "--no-progress")[0] == 0
    code, out, err = cli("distill", "--teacher", str(teacher), "--wbits", "4", "--abits", "4", "--steps-per-epoch",
                         "3", "--max-epochs-per-stage", "1", "--finetune-epochs", "1", "--batch-size", "32",
                         "--calib-images", "128", "--out", str(run), "--json", "--no-progress")
    assert code == 0, err
    m = json.loads(out)
    assert m["bit_exact"] and m["test_images"] == 360
    phases = [h["phase"] for h in m["history"]]
    assert phases[0] == "teacher-qat" and phases[-1] == "finetune" and len(phases) == 2 + 6
    assert any("add" in p for p in phases)
    for backend in ("torch", "c"):
        if backend == "c" and not shutil.which("cc"):
            continue
        code, out, _ = cli("eval", str(run), "--backend", backend, "--json")
        assert code == 0 and json.loads(out)["test_acc"] == pytest.approx(m["test_acc"])
    assert cli("report", str(run))[0] == 0 and (run / "report.html").exists()
