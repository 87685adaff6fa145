"""Small spectrogram transformer (AST-style): overlapping 2-D patches, learned position embeddings,
pre-norm encoder, class-token or mean pooling."""
from __future__ import annotations

import torch
from torch import nn

from .base import AudioClassifier
from .registry import register_model


class SpectrogramTransformer(AudioClassifier):
    """Patches of ``patch`` x ``patch`` with ``stride`` < ``patch`` (overlap) -> ``depth`` encoder layers.

    Position embeddings are learned on a grid of ``max_frames`` time patches and sliced to the input.
    Features: tokens ``(batch, 1 + patches, dim)`` with a class token, else ``(batch, patches, dim)``.
    """

    def __init__(self, num_classes, frontend, augment, dim=192, depth=6, heads=3, patch=16, stride=10,
                 pooling="cls", max_frames=1024, dropout=0.1):
        super().__init__(num_classes, frontend, augment, dropout)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.patch_embed = nn.Conv2d(1, dim, patch, stride)
        f_patches = (frontend.n_mels - patch) // stride + 1
        t_patches = (max_frames - patch) // stride + 1
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, f_patches, t_patches))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.patch = patch
        self.init_head(dim)

    def forward_features(self, waveform):
        spec = self.frontend(waveform)
        if spec.shape[-1] < self.patch:  # too short for one patch: pad time with the normalised mean
            spec = nn.functional.pad(spec, (0, self.patch - spec.shape[-1]))
        x = self.patch_embed(spec)  # (batch, dim, f, t)
        x = x + self.pos_embed[:, :, :, : x.shape[-1]]
        x = x.flatten(2).transpose(1, 2)  # (batch, f * t, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.encoder(x))

    def pool(self, features):
        return features[:, 0] if self.pooling == "cls" else features.mean(dim=1)


@register_model
def ast_tiny(num_classes, frontend, augment, **kw):
    """AST-style transformer, 192-dim, 6 layers, 3 heads, 16x16 patches at stride 10."""
    return SpectrogramTransformer(num_classes, frontend, augment, **kw)
