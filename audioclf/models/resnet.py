"""Audio ResNet: a ResNet-18-like stack of basic residual blocks on the log-mel image."""
from __future__ import annotations

from torch import nn

from .base import AudioClassifier, time_pool
from .cnn import scaled
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class AudioResNet(AudioClassifier):
    """Stem conv, then stages of ``blocks`` basic blocks (stride 2 from the second stage)."""

    def __init__(self, num_classes, frontend, augment, channels=(32, 64, 128, 256), blocks=(2, 2, 2, 2),
                 dropout=0.2):
        super().__init__(num_classes, frontend, augment, dropout)
        stages, c_in = [nn.Sequential(nn.Conv2d(1, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                      nn.ReLU(inplace=True))], channels[0]
        for i, (c, n) in enumerate(zip(channels, blocks)):
            stages += [BasicBlock(c_in if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            c_in = c
        self.body = nn.Sequential(*stages)
        self.init_head(channels[-1])

    def forward_features(self, waveform):
        return self.body(self.frontend(waveform))

    def pool(self, features):
        return time_pool(features)


@register_model
def resnet(num_classes, frontend, augment, width: float = 1.0, **kw):
    """ResNet-18-like: 4 stages x 2 basic blocks, 32-256 channels at width 1."""
    return AudioResNet(num_classes, frontend, augment, channels=scaled((32, 64, 128, 256), width), **kw)
