"""Several trained models as one model: the mean of their logits.

Members differ in their training randomness (``audioclf train --ensemble K``: seeds ``seed + 1000 k``, one split) and
may differ in architecture (``--model cnn,crnn``), so their errors are partly independent and averaging removes that
part. A run folder stores the members' weights as ``members.K.*``, and ``config.json``
holds ``"ensemble": K`` and each member's ``model`` and ``model_args`` (``member_models``);
:func:`audioclf.checkpoint.load_run` rebuilds it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """Waveform ``(batch, samples)`` -> mean logits ``(batch, classes)`` of ``members`` (any architectures, one
    front end, kind and configuration, and class count). In eval mode the log-mel is computed once, in float32, and each member
    normalises it with its own statistics; in training mode each member runs whole (its own augmentation)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        if any(m.frontend.config != first.frontend.config or type(m.frontend) is not type(first.frontend)
               or m.num_classes != first.num_classes for m in members):
            raise ValueError("ensemble members must share their front-end settings and classes, and one kind of front "
                             "end (one log-mel feeds them all)")
        self.members = nn.ModuleList(members)
        self.model_name, self.model_args = first.model_name, first.model_args  # config.json's "model": the first's
        self.num_classes = first.num_classes
        self.supports_onnx = all(getattr(m, "supports_onnx", True) for m in members)

    @property
    def member_models(self) -> list[dict]:
        """Each member's registered name and constructor arguments, in order: ``[{"model", "model_args"}, ...]``."""
        return [{"model": m.model_name, "model_args": dict(m.model_args)} for m in self.members]

    @property
    def frontend(self):
        """The first member's front end: its settings and log-mel are every member's (its normalisation is its own)."""
        return self.members[0].frontend

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.training:
            return torch.stack([m(waveform) for m in self.members]).mean(dim=0)
        with torch.autocast(waveform.device.type, enabled=False):  # the features stay float32, as in Frontend
            spec = self.frontend.spectrogram(waveform.float())
        return self.forward_spectrogram(spec[:, None])

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Mean logits of windows ``(batch, 1, n_mels, frames)`` of ``frontend.spectrogram`` output."""
        return torch.stack([m.forward_spectrogram(spec).float() for m in self.members]).mean(dim=0)
