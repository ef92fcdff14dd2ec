"""torchvision's mobile and dense families, written out: MobileNetV2, MobileNetV3-Small,
EfficientNet-B0, DenseNet and ShuffleNetV2.

Each class follows torchvision's layout and initialisation, so that at (3, 224, 224) with
1000 classes its parameter count is torchvision's (tests/test_models_families.py checks
this). The one change is the CIFAR adaptation for small inputs: when H or W is under
64, the first downsampling steps are dropped (named in each docstring), so that 28x28
and 32x32 inputs keep enough spatial size for the later stages. Stochastic depth,
dilation and other training-only or detection-only options of torchvision are left out.

Everything traces with ``torch.fx.symbolic_trace``: no control flow depends on the data.
:mod:`fiqnn.nets.models` registers the constructors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

Shape = tuple[int, int, int]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: ``v`` to the nearest multiple of ``divisor`` (at
    least ``divisor``), one step up if rounding down lost more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _small_input(in_shape: Shape) -> bool:
    """The CIFAR adaptation applies: H or W under 64."""
    return min(in_shape[1:]) < 64


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                act: Callable[..., nn.Module] | None = None,
                bn: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """k x k conv (no bias, padding k // 2) -> BN [-> act]: torchvision's Conv2dNormActivation."""
    parts = [("conv", nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)), ("bn", bn(c_out))]
    if act is not None:
        parts.append(("act", act(inplace=True)))
    return nn.Sequential(OrderedDict(parts))


def _init_weights(model: nn.Module, conv_mode: str, linear: Callable[[torch.Tensor], object] | None) -> None:
    """torchvision's initialisation: convs kaiming-normal (``conv_mode`` fan), conv and
    linear biases 0, BN weight 1 and bias 0, linear weights by ``linear`` (PyTorch's if None)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear is not None:
                linear(m.weight)
            nn.init.zeros_(m.bias)


# --- inverted residuals: MobileNetV2, MobileNetV3, EfficientNet -------------------------------

class SqueezeExcite(nn.Module):
    """Squeeze-excite: ``x * gate(fc2(act(fc1(avgpool(x)))))``, fc1 and fc2 1x1 convs with bias
    (c -> squeeze -> c); the gate is Hardsigmoid in MobileNetV3, Sigmoid in EfficientNet."""

    def __init__(self, c: int, squeeze: int, act: Callable[..., nn.Module], gate: Callable[[], nn.Module]):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.act = act(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))  # (N, C, 1, 1)
        return x * scale


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2/V3, EfficientNet's MBConv): [1x1 expand conv-BN-act, when
    ``hidden != c_in``] -> k x k depthwise conv-BN-act -> [squeeze-excite] -> 1x1 project conv-BN
    with no activation (the linear bottleneck) -> ``x + y`` when stride 1 and ``c_in == c_out``,
    with no activation after the add."""

    def __init__(self, c_in: int, hidden: int, c_out: int, k: int, stride: int, act: Callable[..., nn.Module],
                 se: SqueezeExcite | None = None, bn: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.residual = stride == 1 and c_in == c_out
        parts = [conv_bn_act(c_in, hidden, 1, act=act, bn=bn)] if hidden != c_in else []
        parts.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act, bn=bn))
        parts += [se] if se is not None else []
        parts.append(conv_bn_act(hidden, c_out, 1, bn=bn))
        self.block = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def _strides(strides: list[int], small: bool) -> tuple[int, list[int]]:
    """(stem stride, block strides): 2 and ``strides``, or for small inputs 1 and ``strides``
    with its first 2 made 1 (the CIFAR adaptation)."""
    if not small:
        return 2, strides
    first = strides.index(2)
    return 1, strides[:first] + [1] + strides[first + 1:]


class _MobileNet(nn.Module):
    """features (stem, blocks, head conv) -> global average pool -> flatten -> classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class MobileNetV2(_MobileNet):
    """torchvision's MobileNetV2: 3x3/2 conv 32-BN-ReLU6; inverted residuals (ReLU6, no SE) by
    the (t, c, n, s) table; 1x1 conv 1280-BN-ReLU6; global average pool; dropout 0.2; linear.
    Channels are ``_make_divisible(c * width_mult)``, the last ``1280 * max(1, width_mult)``.
    For H or W under 64 the stem and the first stride-2 stage (24 channels) have stride 1."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, in_shape: Shape = (3, 32, 32), width_mult: float = 1.0,
                 dropout: float = 0.2, setting: tuple | None = None, head: int | None = None):
        super().__init__()
        rows = [(t, _make_divisible(c * width_mult), s if i == 0 else 1)
                for t, c, n, s in setting or self.SETTING for i in range(n)]
        stem_stride, strides = _strides([s for _, _, s in rows], _small_input(in_shape))
        c = _make_divisible(32 * width_mult)
        layers = [conv_bn_act(in_shape[0], c, 3, stem_stride, act=nn.ReLU6)]
        for (t, c_out, _), stride in zip(rows, strides):
            layers.append(MBConv(c, round(c * t), c_out, 3, stride, nn.ReLU6))
            c = c_out
        last = head or _make_divisible(1280 * max(1.0, width_mult))
        layers.append(conv_bn_act(c, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        _init_weights(self, "fan_out", lambda w: nn.init.normal_(w, 0, 0.01))


class MobileNetV3Small(_MobileNet):
    """torchvision's mobilenet_v3_small: 3x3/2 conv 16-BN-Hardswish; 11 inverted residuals by the
    (kernel, expanded, out, SE, activation, stride) table, SE after the depthwise conv with
    squeeze ``_make_divisible(expanded // 4)``, ReLU inside and a Hardsigmoid gate; 1x1 conv
    576-BN-Hardswish; global average pool; linear 1024 (bias) -> Hardswish -> dropout 0.2 ->
    linear. BN has eps 1e-3 and momentum 0.01, as torchvision's. For H or W under 64 the stem
    and the first block (the first stride-2 one) have stride 1."""

    SETTING = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
               (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
               (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
               (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))

    def __init__(self, num_classes: int = 10, in_shape: Shape = (3, 32, 32), dropout: float = 0.2,
                 setting: tuple | None = None):
        super().__init__()
        bn = lambda c: nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # noqa: E731
        setting = setting or self.SETTING
        stem_stride, strides = _strides([row[-1] for row in setting], _small_input(in_shape))
        layers, c = [conv_bn_act(in_shape[0], 16, 3, stem_stride, act=nn.Hardswish, bn=bn)], 16
        for (k, hidden, c_out, use_se, act_name, _), stride in zip(setting, strides):
            act = nn.Hardswish if act_name == "HS" else nn.ReLU
            se = SqueezeExcite(hidden, _make_divisible(hidden // 4), nn.ReLU, nn.Hardsigmoid) if use_se else None
            layers.append(MBConv(c, hidden, c_out, k, stride, act, se, bn))
            c = c_out
        layers.append(conv_bn_act(c, 6 * c, 1, act=nn.Hardswish, bn=bn))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(6 * c, 1024), nn.Hardswish(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(1024, num_classes))
        _init_weights(self, "fan_out", lambda w: nn.init.normal_(w, 0, 0.01))


class EfficientNetB0(_MobileNet):
    """torchvision's efficientnet_b0: 3x3/2 conv 32-BN-SiLU; MBConv stages by the (expand, kernel,
    stride, in, out, layers) table (SiLU, SE with squeeze ``max(1, in // 4)`` and a Sigmoid gate;
    stride only in a stage's first block); 1x1 conv 1280-BN-SiLU; global average pool; dropout
    0.2; linear. No stochastic depth (an identity in eval). For H or W under 64 the stem and the
    first stride-2 stage (24 channels) have stride 1."""

    SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
               (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

    def __init__(self, num_classes: int = 10, in_shape: Shape = (3, 32, 32), dropout: float = 0.2,
                 setting: tuple | None = None, head: int = 1280):
        super().__init__()
        setting = setting or self.SETTING
        rows = [(t, k, s if i == 0 else 1, c_in if i == 0 else c_out, c_out)
                for t, k, s, c_in, c_out, n in setting for i in range(n)]
        stem_stride, strides = _strides([row[2] for row in rows], _small_input(in_shape))
        layers = [conv_bn_act(in_shape[0], setting[0][3], 3, stem_stride, act=nn.SiLU)]
        for (t, k, _, c_in, c_out), stride in zip(rows, strides):
            hidden = _make_divisible(c_in * t)
            se = SqueezeExcite(hidden, max(1, c_in // 4), nn.SiLU, nn.Sigmoid)
            layers.append(MBConv(c_in, hidden, c_out, k, stride, nn.SiLU, se))
        layers.append(conv_bn_act(rows[-1][-1], head, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes))
        r = 1.0 / num_classes ** 0.5
        _init_weights(self, "fan_out", lambda w: nn.init.uniform_(w, -r, r))


# --- DenseNet --------------------------------------------------------------------------------

def _bn_relu_conv(c_in: int, c_out: int, k: int) -> list[tuple[str, nn.Module]]:
    return [("norm", nn.BatchNorm2d(c_in)), ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False))]


class DenseLayer(nn.Module):
    """DenseNet-BC layer, pre-activation: BN-ReLU-1x1 conv (``bn_size * growth``) -> BN-ReLU-3x3
    conv (``growth``); the output is ``cat([x, new], 1)`` (c_in + growth channels)."""

    def __init__(self, c_in: int, growth: int, bn_size: int):
        super().__init__()
        self.bottleneck = nn.Sequential(OrderedDict(_bn_relu_conv(c_in, bn_size * growth, 1)))
        self.body = nn.Sequential(OrderedDict(_bn_relu_conv(bn_size * growth, growth, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(self.bottleneck(x))], 1)


def transition(c_in: int, c_out: int) -> nn.Sequential:
    """DenseNet transition: BN -> ReLU -> 1x1 conv -> 2x2/2 average pool."""
    return nn.Sequential(OrderedDict(_bn_relu_conv(c_in, c_out, 1) + [("pool", nn.AvgPool2d(2, 2))]))


class DenseNet(nn.Module):
    """torchvision's DenseNet: 7x7/2 conv-BN-ReLU, 3x3/2 max-pool; dense blocks of ``block_config``
    layers, each but the last followed by a transition halving the channels; BN -> ReLU ->
    global average pool -> linear. For H or W under 64 the stem is a 3x3/1 conv-BN-ReLU with no
    max-pool (the CIFAR DenseNets' stem)."""

    def __init__(self, num_classes: int = 10, in_shape: Shape = (3, 32, 32), growth_rate: int = 32,
                 block_config: tuple[int, ...] = (6, 12, 24, 16), num_init_features: int = 64, bn_size: int = 4):
        super().__init__()
        c = num_init_features
        if _small_input(in_shape):
            stem = [("conv0", nn.Conv2d(in_shape[0], c, 3, 1, 1, bias=False))]
        else:
            stem = [("conv0", nn.Conv2d(in_shape[0], c, 7, 2, 3, bias=False))]
        stem += [("norm0", nn.BatchNorm2d(c)), ("relu0", nn.ReLU(inplace=True))]
        stem += [] if _small_input(in_shape) else [("pool0", nn.MaxPool2d(3, 2, 1))]
        self.features = nn.Sequential(OrderedDict(stem))
        for i, n in enumerate(block_config):
            block = nn.Sequential(*(DenseLayer(c + j * growth_rate, growth_rate, bn_size) for j in range(n)))
            self.features.add_module(f"denseblock{i + 1}", block)
            c += n * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)
        _init_weights(self, "fan_in", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --- ShuffleNetV2 ----------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> (N, c*g, H, W), channel i*c + j moved to j*g + i: torchvision's shuffle."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, -1, height, width)
    return x


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit, ``c_out // 2`` channels a branch. Stride 2: ``cat(branch1(x), branch2(x))``
    with branch1 = 3x3/2 depthwise conv-BN, 1x1 conv-BN-ReLU. Stride 1: ``x1, x2 = x.chunk(2, 1)``,
    ``cat(x1, branch2(x2))``. branch2 = 1x1 conv-BN-ReLU, 3x3 depthwise conv-BN (stride),
    1x1 conv-BN-ReLU. Then ``channel_shuffle(out, 2)``."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        c = c_out // 2
        if stride == 1 and c_in != 2 * c:
            raise ValueError(f"a stride-1 shuffle unit needs c_in == c_out, got {c_in} and {c_out}")
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(*conv_bn_act(c_in, c_in, 3, stride, groups=c_in),
                                         *conv_bn_act(c_in, c, 1, act=nn.ReLU))
        self.branch2 = nn.Sequential(*conv_bn_act(c_in if stride > 1 else c, c, 1, act=nn.ReLU),
                                     *conv_bn_act(c, c, 3, stride, groups=c), *conv_bn_act(c, c, 1, act=nn.ReLU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision's ShuffleNetV2: 3x3/2 conv-BN-ReLU (``channels[0]``), 3x3/2 max-pool; stages 2-4
    of ``repeats`` units (the first of stride 2) with ``channels[1:4]``; 1x1 conv-BN-ReLU
    ``channels[4]``; global mean ``x.mean([2, 3])``; linear. torchvision's x1.0 has channels
    (24, 116, 232, 464, 1024). For H or W under 64 the stem has stride 1 and no max-pool."""

    def __init__(self, num_classes: int = 10, in_shape: Shape = (3, 32, 32), repeats: tuple[int, ...] = (4, 8, 4),
                 channels: tuple[int, ...] = (24, 116, 232, 464, 1024)):
        super().__init__()
        small = _small_input(in_shape)
        self.conv1 = nn.Sequential(*conv_bn_act(in_shape[0], channels[0], 3, 1 if small else 2, act=nn.ReLU))
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages, c = [], channels[0]
        for n, c_out in zip(repeats, channels[1:4]):
            stages.append(nn.Sequential(*(ShuffleUnit(c if i == 0 else c_out, c_out, 2 if i == 0 else 1)
                                          for i in range(n))))
            c = c_out
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(*conv_bn_act(c, channels[4], 1, act=nn.ReLU))
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.conv5(x).mean([2, 3]))


# --- registry constructors -------------------------------------------------------------------

def mobilenetv2_w05(num_classes: int = 10, in_shape: Shape = (3, 32, 32)) -> MobileNetV2:
    """MobileNetV2 at width 0.5 (stem 16, last conv 1280)."""
    return MobileNetV2(num_classes, in_shape, width_mult=0.5)


def densenet121(num_classes: int = 10, in_shape: Shape = (3, 32, 32)) -> DenseNet:
    """torchvision's DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 stem features, bn_size 4."""
    return DenseNet(num_classes, in_shape, 32, (6, 12, 24, 16), 64, 4)


def densenet_s(num_classes: int = 10, in_shape: Shape = (3, 32, 32)) -> DenseNet:
    """A small DenseNet-BC for tests and CPU training: growth 12, blocks (4, 4, 4), 24 stem
    features, bn_size 4."""
    return DenseNet(num_classes, in_shape, 12, (4, 4, 4), 24, 4)


def shufflenetv2(num_classes: int = 10, in_shape: Shape = (3, 32, 32)) -> ShuffleNetV2:
    """torchvision's shufflenet_v2_x1_0: repeats (4, 8, 4), channels (24, 116, 232, 464, 1024)."""
    return ShuffleNetV2(num_classes, in_shape, (4, 8, 4), (24, 116, 232, 464, 1024))


def shufflenetv2_s(num_classes: int = 10, in_shape: Shape = (3, 32, 32)) -> ShuffleNetV2:
    """ShuffleNetV2 x0.5: repeats (4, 8, 4), channels (24, 48, 96, 192, 1024)."""
    return ShuffleNetV2(num_classes, in_shape, (4, 8, 4), (24, 48, 96, 192, 1024))
