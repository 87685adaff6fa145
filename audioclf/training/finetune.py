"""Start from pretrained weights (``--pretrained``): matching tensors load, the rest is reported, never silently
dropped; and the fine-tuning recipe: learning rates, training length and augmentation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..augment import AugmentConfig
from ..checkpoint import WEIGHTS_NAME, read_config

FINETUNE_LR = 1e-3  # the new head's peak learning rate; the backbone's is backbone_lr_scale times it


def finetune_augment(mixup: float) -> AugmentConfig:
    """EfficientAT's fine-tuning augmentation: mixup, time shift, +-12 dB gain, a slight filter-bank warp; no masks,
    speed or tempo change, so the pretrained features see the sounds they were trained on."""
    off = AugmentConfig.off().to_dict()
    return AugmentConfig(**{**off, "mixup_alpha": mixup, "mixup_prob": AugmentConfig().mixup_prob, "gain_db": 12.0,
                            "shift_seconds": 0.1, "fb_jitter": 0.05})


@dataclass
class InitSource:
    """The run folder a fine-tune starts from, its config, and what the user named (``spec``)."""

    spec: str
    run: Path
    config: dict

    @property
    def keeps_window(self) -> bool:
        """A trained run keeps its clip length; a converted tagger (global pooling) takes the data's."""
        return "pretrained" not in self.config

    def provenance(self) -> dict:
        """Where the initial weights came from: ``{"source", "run", "name", "sha256"[, "release_sha256"]}``."""
        from ..io_utils import file_sha256

        release = self.config.get("pretrained") or {}
        return {"source": self.spec, "run": str(self.run), "name": release.get("name", self.run.name),
                "sha256": file_sha256(self.run / WEIGHTS_NAME),
                **({"release_sha256": release["sha256"]} if release.get("sha256") else {})}

    def apply(self, model: torch.nn.Module, freeze_backbone: bool = False) -> dict:
        """Copy every tensor whose name and shape match into ``model``; print what was loaded, reshaped or skipped.

        Returns ``{"loaded": [...], "skipped": [(name, reason)], "new": [...]}``.
        """
        source = load_file(str(self.run / WEIGHTS_NAME))
        target = model.state_dict()
        loaded, skipped = [], []
        for name, tensor in source.items():
            if name not in target:
                skipped.append((name, "not in the new model"))
            elif target[name].shape != tensor.shape:
                skipped.append((name, f"shape {tuple(tensor.shape)} -> {tuple(target[name].shape)} (new head)"))
            else:
                target[name] = tensor
                loaded.append(name)
        model.load_state_dict(target, strict=True)
        new = [n for n in target if n not in source or n in dict(skipped)]
        print(f"init from {self.run}: loaded {len(loaded)} tensors, skipped {len(skipped)}, freshly initialised {len(new)}")
        for name, reason in skipped:
            print(f"  skipped {name}: {reason}")
        for name in new:
            print(f"  new {name}")
        if freeze_backbone:
            for p in model.backbone_parameters():
                p.requires_grad_(False)
            print("  backbone frozen: training the classifier head only")
        return {"loaded": loaded, "skipped": skipped, "new": new}


def init_source(spec, cache_dir=None) -> InitSource:
    """The run to start from (:func:`audioclf.pretrained.pretrained`: a catalogue name, release file or run folder);
    an ensemble run is refused (its tensors match no single model): name a member."""
    from ..weights import pretrained

    run = pretrained(spec, cache_dir)
    config = read_config(run)
    if "ensemble" in config:
        raise ValueError(f"--pretrained {spec}: an ensemble of {config['ensemble']} models; fine-tune from one of them "
                         f"({run / 'member-1'}, ...)")
    return InitSource(str(spec), run, config)
