"""EfficientAT's MobileNetV3 family (mn01 ... mn40; Schmid et al., "Efficient Large-Scale Audio Tagging via
Transformer-to-CNN Knowledge Distillation", ICASSP 2023), with the AudioSet release's state-dict names, so that
every official ``mnXX_as`` file loads strictly (:mod:`audioclf.weights`).

``(batch, samples)`` at 32 kHz -> :class:`~audioclf.models.base.KaldiFrontend` ``(batch, 1, 128, frames)`` ->
``features`` (stem, 15 inverted residual blocks, 1x1 conv to ``6 * last`` channels) -> ``classifier``: global
average pool, Linear to ``last_channel``, hard-swish, dropout, Linear to the classes. The embedding
(``forward_head(..., pre_logits=True)``) is the input of that last Linear, the head (``classifier.5``) that a
fine-tune replaces.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import AudioClassifier, KaldiFrontend
from .mobilenet import MNV3_LARGE
from .registry import register_model

WIDTHS = {"mn01": 0.1, "mn02": 0.2, "mn04": 0.4, "mn05": 0.5, "mn10": 1.0, "mn20": 2.0, "mn30": 3.0, "mn40": 4.0}


def make_divisible(v: float, divisor: int = 8) -> int:
    """``v`` rounded to a multiple of ``divisor`` (at least ``divisor``), never more than 10% below ``v``."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def conv_norm_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                  act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> batch norm (eps 1e-3, momentum 0.01) [-> activation]."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01)]
    return nn.Sequential(*layers, *([act()] if act else []))


class SqueezeExcite(nn.Module):
    """Channel squeeze-excitation: ``x * sigmoid(fc2(relu(fc1(mean over freq and time))))``. The single excitation
    sits in ``conc_se_layers.0``, where the release keeps it."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        excite = nn.Module()
        hidden = make_divisible(channels // reduction)
        excite.fc1, excite.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        self.conc_se_layers = nn.ModuleList([excite])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        excite = self.conc_se_layers[0]
        scale = torch.sigmoid(excite.fc2(torch.relu(excite.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class InvertedResidual(nn.Module):
    """[1x1 expand] -> kxk depthwise (stride) -> [squeeze-excite] -> 1x1 project, plus the input when the shapes
    match."""

    def __init__(self, c_in: int, c_exp: int, c_out: int, kernel: int, stride: int, se: bool, act: str):
        super().__init__()
        act_layer = nn.Hardswish if act == "hs" else nn.ReLU
        layers = [conv_norm_act(c_in, c_exp, 1, act=act_layer)] if c_exp != c_in else []
        layers.append(conv_norm_act(c_exp, c_exp, kernel, stride, groups=c_exp, act=act_layer))
        if se:
            layers.append(SqueezeExcite(c_exp))
        layers.append(conv_norm_act(c_exp, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class EfficientATMobileNet(AudioClassifier):
    """MobileNetV3-Large scaled by ``width`` (channels rounded by :func:`make_divisible`), EfficientAT's layout and
    initialisation; any front-end setting works, the AudioSet weights need 32 kHz, 128 mels, 25 / 10 ms and 15 kHz."""

    frontend_class = KaldiFrontend
    head_name = "classifier.5"

    def __init__(self, num_classes, frontend, augment, width: float = 1.0, dropout: float = 0.2):
        super().__init__(num_classes, frontend, augment, dropout=0.0)  # the dropout sits inside `classifier`
        c_in = make_divisible(16 * width)
        layers = [conv_norm_act(1, c_in, 3, 2)]
        for kernel, exp, out, se, act, stride in MNV3_LARGE:
            c_out = make_divisible(out * width)
            layers.append(InvertedResidual(c_in, make_divisible(exp * width), c_out, kernel, stride, se, act))
            c_in = c_out
        layers.append(conv_norm_act(c_in, 6 * c_in, 1))
        self.features = nn.Sequential(*layers)
        self.num_features = make_divisible(1280 * width)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(6 * c_in, self.num_features),
                                        nn.Hardswish(), nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.features(self.frontend(waveform))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, freq, time)`` -> the embedding ``(batch, num_features)``."""
        return self.classifier[:5](features)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[5]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes).to(self.classifier[5].weight.device)
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)
        self.classifier[5] = head


def _builder(name: str, width: float):
    def build(num_classes, frontend, augment, **kw):
        return EfficientATMobileNet(num_classes, frontend, augment, width=width, **kw)
    build.__name__ = name
    build.__doc__ = f"EfficientAT MobileNetV3 {name} (width {width}); AudioSet weights: --pretrained {name}_as"
    return build


for _name, _width in WIDTHS.items():
    register_model(_builder(_name, _width))
