"""Teacher architectures: BN CNNs built from named units.

Every model is an ``nn.Sequential`` of units, and every unit is an
``nn.Sequential`` with the named children ``drop`` (optional), ``conv`` or
``fc``, ``bn`` (all but the classifier), ``act`` (ReLU, all but the classifier)
and ``pool`` (optional), in that order; a ``flatten`` unit sits between the
convolutional and the linear units. This is the "layer l = conv/linear -> BN ->
ReLU (-> pool)" of docs/method.md, and it is what the student conversion walks.

``MODELS`` maps a name to ``constructor(num_classes, in_shape) -> nn.Module``: the unit-built
``nn.Sequential`` models, the residual and depthwise ``nn.Module`` families further down, and
torchvision's mobile and dense families from :mod:`fiqnn.nets.families`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from . import families


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


# --- residual and depthwise families (nn.Modules, imported through torch.fx) ----------------

def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU, conv-BN, + shortcut (identity, or 1x1 conv-BN
    when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3)
        self.shortcut = (nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if stride != 1 or c_in != c_out
                         else nn.Identity())
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of basic blocks: a stem, stages of blocks, global average pool, linear."""

    def __init__(self, stem: list[nn.Module], widths: list[int], blocks: int, num_classes: int, c_stem: int):
        super().__init__()
        self.stem = nn.Sequential(*stem)
        layers, c = [], c_stem
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(c, w, 2 if j == 0 and i > 0 else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


def resnet20(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32)) -> ResNet:
    """He et al.'s CIFAR ResNet-20: 3x3 conv 16, three stages of three basic blocks (16, 32,
    64 channels; stride 2 between stages, 1x1 conv shortcuts), global average pool, linear."""
    return ResNet([*_conv_bn(in_shape[0], 16, 3), nn.ReLU(inplace=True)], [16, 32, 64], 3, num_classes, 16)


def resnet8(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32)) -> ResNet:
    """ResNet-8, the smallest of the CIFAR family: resnet20 with one basic block per stage."""
    return ResNet([*_conv_bn(in_shape[0], 16, 3), nn.ReLU(inplace=True)], [16, 32, 64], 1, num_classes, 16)


def resnet18(num_classes: int = 1000, in_shape: tuple[int, int, int] = (3, 224, 224)) -> ResNet:
    """torchvision's ResNet-18 layout: 7x7/2 conv 64, 3x3/2 max-pool, four stages of two
    basic blocks (64..512), global average pool, linear."""
    stem = [nn.Conv2d(in_shape[0], 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1)]
    return ResNet(stem, [64, 128, 256, 512], 2, num_classes, 64)


class VGG(nn.Module):
    """VGG with BN: 3x3 conv-BN-ReLU stages, each closed by a 2x2 max-pool; then linear layers."""

    def __init__(self, cfg: list, in_shape: tuple[int, int, int], num_classes: int, hidden: int):
        super().__init__()
        layers, c = [], in_shape[0]
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [*_conv_bn(c, v, 3), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        flat = _flat_features([("f", self.features)], in_shape)
        self.classifier = nn.Sequential(nn.Linear(flat, hidden, bias=False), nn.BatchNorm1d(hidden),
                                        nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def vgg11_bn(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32)) -> VGG:
    """VGG-11 with BN (configuration A: 64, M, 128, M, 256x2, M, 512x2, M, 512x2, M) and a
    512-unit hidden linear layer (the CIFAR variant; at 224x224 the flattened map is 7x7x512)."""
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    return VGG(cfg, in_shape, num_classes, 512)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand conv-BN-ReLU6, 3x3 depthwise conv-BN-ReLU6, 1x1 project
    conv-BN, + the input when shapes match, then ReLU6 (MobileNetV2 leaves the sum linear;
    fiqnn's activations are unsigned codes, so the block output passes a ReLU6)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.body = nn.Sequential(*_conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True),
                                  *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                                  *_conv_bn(hidden, c_out, 1))
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.act(x + y if self.residual else y)


class MobileNetV2S(nn.Module):
    """A small MobileNetV2-style network: stem conv-BN-ReLU6, inverted residual blocks
    (expansion 4), a 1x1 conv-BN-ReLU6, global average pool, linear."""

    def __init__(self, num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32),
                 blocks: tuple = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (64, 2), (64, 1)),
                 stem: int = 16, head: int = 128, expand: int = 4):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_shape[0], stem, 3), nn.ReLU6(inplace=True))
        layers, c = [], stem
        for c_out, stride in blocks:
            layers.append(InvertedResidual(c, c_out, stride, expand))
            c = c_out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(*_conv_bn(c, head, 1), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


MODELS.update({
    "vgg11-bn": vgg11_bn,
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "mobilenetv2-s": MobileNetV2S,
    "mobilenetv2": families.MobileNetV2,
    "mobilenetv2-w0.5": families.mobilenetv2_w05,
    "mobilenetv3-small": families.MobileNetV3Small,
    "efficientnet-b0": families.EfficientNetB0,
    "densenet121": families.densenet121,
    "densenet-s": families.densenet_s,
    "shufflenetv2": families.shufflenetv2,
    "shufflenetv2-s": families.shufflenetv2_s,
})

from .._archs import ARCHS  # noqa: E402  (the CLI's torch-free copy of the names)

if tuple(MODELS) != ARCHS:
    raise ImportError(f"fiqnn._archs.ARCHS {ARCHS} must list the keys of fiqnn.nets.models.MODELS {tuple(MODELS)}")
