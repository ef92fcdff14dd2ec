"""Teacher architectures: BN CNNs built from named units.

Every model is an ``nn.Sequential`` of units, and every unit is an
``nn.Sequential`` with the named children ``drop`` (optional), ``conv`` or
``fc``, ``bn`` (all but the classifier), ``act`` (ReLU, all but the classifier)
and ``pool`` (optional), in that order; a ``flatten`` unit sits between the
convolutional and the linear units. This is the "layer l = conv/linear -> BN ->
ReLU (-> pool)" of METHOD.md, and it is what the student conversion walks.

``MODELS`` maps a name to ``constructor(num_classes, in_shape) -> nn.Sequential``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from .errors import ConfigError


def conv_unit(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
              pool: nn.Module | None = None) -> nn.Sequential:
    """conv (no bias) -> BN -> ReLU [-> pool]."""
    parts = [("conv", nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)),
             ("bn", nn.BatchNorm2d(c_out)), ("act", nn.ReLU(inplace=True))]
    if pool is not None:
        parts.append(("pool", pool))
    return nn.Sequential(OrderedDict(parts))


def fc_unit(f_in: int, f_out: int, dropout: float = 0.0) -> nn.Sequential:
    """[dropout ->] linear (no bias) -> BN -> ReLU."""
    parts = [("drop", nn.Dropout(dropout))] if dropout else []
    parts += [("fc", nn.Linear(f_in, f_out, bias=False)), ("bn", nn.BatchNorm1d(f_out)),
              ("act", nn.ReLU(inplace=True))]
    return nn.Sequential(OrderedDict(parts))


def classifier_unit(f_in: int, num_classes: int) -> nn.Sequential:
    """The last layer: linear with bias, no BN, no activation (its output is the logits)."""
    return nn.Sequential(OrderedDict([("fc", nn.Linear(f_in, num_classes))]))


def _flat_features(convs: list[tuple[str, nn.Module]], in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        x = torch.zeros(1, *in_shape)
        for _, unit in convs:
            x = unit.eval()(x)
    return x.numel()


def alexnet_s(num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Sequential:
    """The Fashion-MNIST benchmark network (DESIGN.md): five 3x3 convs, padding 1,
    channels/strides 32/1, 64/2, 96/1, 96/2, 64/1, each conv -> BN -> ReLU; flatten
    (64*7*7 at 28x28) -> linear 256 -> BN -> ReLU -> linear ``num_classes``."""
    c = in_shape[0]
    convs = [(f"conv{i + 1}", conv_unit(c_in, c_out, 3, s, 1))
             for i, (c_in, c_out, s) in enumerate([(c, 32, 1), (32, 64, 2), (64, 96, 1),
                                                   (96, 96, 2), (96, 64, 1)])]
    flat = _flat_features(convs, in_shape)
    return nn.Sequential(OrderedDict(convs + [("flatten", nn.Flatten()), ("fc6", fc_unit(flat, 256)),
                                              ("fc7", classifier_unit(256, num_classes))]))


def alexnet_bn(num_classes: int = 1000, in_shape: tuple[int, int, int] = (3, 224, 224)) -> nn.Sequential:
    """torchvision's AlexNet layout with BN after every conv and hidden linear (the
    paper's ImageNet network). At 224x224 the last feature map is already 6x6, so
    torchvision's adaptive average pool (an identity there) is left out."""
    c = in_shape[0]
    pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731
    convs = [("conv1", conv_unit(c, 64, 11, 4, 2, pool())), ("conv2", conv_unit(64, 192, 5, 1, 2, pool())),
             ("conv3", conv_unit(192, 384, 3, 1, 1)), ("conv4", conv_unit(384, 256, 3, 1, 1)),
             ("conv5", conv_unit(256, 256, 3, 1, 1, pool()))]
    flat = _flat_features(convs, in_shape)
    return nn.Sequential(OrderedDict(convs + [
        ("flatten", nn.Flatten()), ("fc6", fc_unit(flat, 4096, 0.5)), ("fc7", fc_unit(4096, 4096, 0.5)),
        ("fc8", classifier_unit(4096, num_classes))]))


def tiny(num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 8, 8)) -> nn.Sequential:
    """A few-channel network for tests: two convs (one strided, one pooled), one
    hidden linear, the classifier. Runs the whole pipeline in seconds."""
    c = in_shape[0]
    convs = [("conv1", conv_unit(c, 8, 3, 1, 1)),
             ("conv2", conv_unit(8, 16, 3, 2, 1, nn.MaxPool2d(2, 2)))]
    flat = _flat_features(convs, in_shape)
    return nn.Sequential(OrderedDict(convs + [("flatten", nn.Flatten()), ("fc3", fc_unit(flat, 32)),
                                              ("fc4", classifier_unit(32, num_classes))]))


MODELS: dict[str, Callable[..., nn.Sequential]] = {
    "alexnet-s": alexnet_s,
    "alexnet-bn": alexnet_bn,
    "tiny": tiny,
}


def build_model(arch: str, num_classes: int, in_shape: tuple[int, int, int]) -> nn.Sequential:
    """Build architecture ``arch`` for ``num_classes`` classes and (C, H, W) inputs."""
    if arch not in MODELS:
        raise ConfigError(f"unknown arch {arch!r}; choose one of {', '.join(MODELS)}")
    try:
        return MODELS[arch](num_classes, tuple(in_shape))
    except RuntimeError as e:  # the dry run found the input too small for the network
        raise ConfigError(f"{arch} cannot take {tuple(in_shape)} inputs ({e})") from None
