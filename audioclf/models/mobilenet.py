"""MobileNetV3-style model (EfficientAT-like): inverted residuals, depthwise convs, squeeze-excitation,
hard-swish, and a width multiplier. The natural default on a CPU: few FLOPs per second of audio."""
from __future__ import annotations

from torch import nn
import torch.nn.functional as F

from .base import AudioClassifier, time_pool
from .registry import register_model


def _divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = _divisible(channels / reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise (stride) -> [SE] -> 1x1 project, with a residual when shapes allow."""

    def __init__(self, c_in, c_exp, c_out, kernel, stride, se, act):
        super().__init__()
        act_layer = nn.Hardswish if act == "hs" else nn.ReLU
        layers = []
        if c_exp != c_in:
            layers += [nn.Conv2d(c_in, c_exp, 1, bias=False), nn.BatchNorm2d(c_exp), act_layer()]
        layers += [nn.Conv2d(c_exp, c_exp, kernel, stride, kernel // 2, groups=c_exp, bias=False),
                   nn.BatchNorm2d(c_exp), act_layer()]
        if se:
            layers.append(SqueezeExcite(c_exp))
        layers += [nn.Conv2d(c_exp, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


# MobileNetV3-Large: (kernel, expansion, out, SE, activation, stride)
MNV3_LARGE = [
    (3, 16, 16, False, "re", 1), (3, 64, 24, False, "re", 2), (3, 72, 24, False, "re", 1),
    (5, 72, 40, True, "re", 2), (5, 120, 40, True, "re", 1), (5, 120, 40, True, "re", 1),
    (3, 240, 80, False, "hs", 2), (3, 200, 80, False, "hs", 1), (3, 184, 80, False, "hs", 1),
    (3, 184, 80, False, "hs", 1), (3, 480, 112, True, "hs", 1), (3, 672, 112, True, "hs", 1),
    (5, 672, 160, True, "hs", 2), (5, 960, 160, True, "hs", 1), (5, 960, 160, True, "hs", 1),
]


class MobileNetV3(AudioClassifier):
    """MobileNetV3-Large layout scaled by ``width``; the last conv widens to ``6 * last`` channels."""

    def __init__(self, num_classes, frontend, augment, width=1.0, dropout=0.2):
        super().__init__(num_classes, frontend, augment, dropout)
        c_stem = _divisible(16 * width)
        layers = [nn.Conv2d(1, c_stem, 3, 2, 1, bias=False), nn.BatchNorm2d(c_stem), nn.Hardswish()]
        c_in = c_stem
        for k, exp, out, se, act, stride in MNV3_LARGE:
            c_out = _divisible(out * width)
            layers.append(InvertedResidual(c_in, _divisible(exp * width), c_out, k, stride, se, act))
            c_in = c_out
        c_last = _divisible(6 * c_in)
        layers += [nn.Conv2d(c_in, c_last, 1, bias=False), nn.BatchNorm2d(c_last), nn.Hardswish()]
        self.body = nn.Sequential(*layers)
        self.init_head(c_last)

    def forward_features(self, waveform):
        return self.body(self.frontend(waveform))

    def pool(self, features):
        return time_pool(features)


@register_model
def mobilenet(num_classes, frontend, augment, width: float = 0.5, **kw):
    """MobileNetV3-style (EfficientAT mn-like); ``width`` 0.5 is EfficientAT's mn05."""
    return MobileNetV3(num_classes, frontend, augment, width=width, **kw)
