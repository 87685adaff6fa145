"""Convolutional models: the classic recipe (``cnn``), the PANNs family (``cnn6/10/14``) and ``crnn``.

All are one ``ConvNet`` with depth/width settings: blocks of (conv-BN-ReLU) x ``convs`` then 2x2 average
pooling, PANNs time pooling, a linear head.
"""
from __future__ import annotations

from torch import nn

from .base import AudioClassifier, pooling_precision, time_pool
from .registry import register_model


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def conv_stack(channels: tuple[int, ...], convs: int, kernel: int) -> nn.Sequential:
    """``(batch, 1, mels, frames)`` -> ``(batch, channels[-1], mels / 2^k, frames / 2^k)``; the last block is not pooled."""
    layers, c_in = [], 1
    for i, c_out in enumerate(channels):
        block = [conv_bn_relu(c_in if j == 0 else c_out, c_out, kernel) for j in range(convs)]
        if i < len(channels) - 1:
            block.append(nn.AvgPool2d(2, ceil_mode=True))
        layers.append(nn.Sequential(*block))
        c_in = c_out
    return nn.Sequential(*layers)


class ConvNet(AudioClassifier):
    """Stacked conv blocks with PANNs pooling. ``channels``: width per block; ``convs``: convs per block."""

    def __init__(self, num_classes, frontend, augment, channels=(16, 32, 64, 128), convs=2, kernel=3,
                 dropout=0.2):
        super().__init__(num_classes, frontend, augment, dropout)
        self.body = conv_stack(tuple(channels), convs, kernel)
        self.init_head(channels[-1])

    def forward_features(self, waveform):
        return self.body(self.frontend(waveform))

    def pool(self, features):
        return time_pool(features)


class ConvRNN(AudioClassifier):
    """Conv blocks, then a bidirectional GRU over time; features ``(batch, frames', 2 * hidden)``."""

    def __init__(self, num_classes, frontend, augment, channels=(16, 32, 64), convs=2, hidden=96,
                 layers=1, dropout=0.2):
        super().__init__(num_classes, frontend, augment, dropout)
        self.body = conv_stack(tuple(channels), convs, 3)
        self.rnn = nn.GRU(channels[-1], hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.init_head(2 * hidden)

    def forward_features(self, waveform):
        x = self.body(self.frontend(waveform)).mean(dim=2)  # (batch, channels, frames')
        return self.rnn(x.transpose(1, 2))[0]

    def pool(self, features):
        features = pooling_precision(features)  # as in time_pool
        return features.amax(dim=1) + features.mean(dim=1)


def scaled(channels, width):
    """Channel counts times ``width``, 8 at least."""
    return tuple(max(8, int(round(c * width))) for c in channels)


@register_model
def cnn(num_classes, frontend, augment, width: float = 1.0, **kw):
    """The classic recipe done properly: 4 double-conv blocks (16-128 channels at width 1)."""
    return ConvNet(num_classes, frontend, augment, channels=scaled((16, 32, 64, 128), width), **kw)


@register_model
def cnn6(num_classes, frontend, augment, width: float = 1.0, **kw):
    """PANNs CNN6: 4 single 5x5-conv blocks, 64-512 channels."""
    return ConvNet(num_classes, frontend, augment, channels=scaled((64, 128, 256, 512), width), convs=1, kernel=5, **kw)


@register_model
def cnn10(num_classes, frontend, augment, width: float = 1.0, **kw):
    """PANNs CNN10: 4 double 3x3-conv blocks, 64-512 channels."""
    return ConvNet(num_classes, frontend, augment, channels=scaled((64, 128, 256, 512), width), **kw)


@register_model
def cnn14(num_classes, frontend, augment, width: float = 1.0, **kw):
    """PANNs CNN14: 6 double 3x3-conv blocks, 64-2048 channels."""
    return ConvNet(num_classes, frontend, augment, channels=scaled((64, 128, 256, 512, 1024, 2048), width), **kw)


@register_model
def crnn(num_classes, frontend, augment, width: float = 2.0, **kw):
    """The recipe's RNN: 3 double-conv blocks (32-128 channels at width 2), then a bidirectional GRU (96 per direction)."""
    return ConvRNN(num_classes, frontend, augment, channels=scaled((16, 32, 64), width), **kw)
