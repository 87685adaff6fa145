"""Start from another run's weights: matching tensors load, the rest is reported, never silently dropped."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..checkpoint import WEIGHTS_NAME, read_config


@dataclass
class InitSource:
    run: Path
    config: dict

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


def init_from_run(run) -> InitSource:
    """The run to start from; an ensemble run is refused (its tensors match no single model): name a member."""
    run = Path(run)
    config = read_config(run)
    if "ensemble" in config:
        raise ValueError(f"--init-from {run}: an ensemble of {config['ensemble']} models; fine-tune from one of them "
                         f"({run / 'member-1'}, ...)")
    return InitSource(run, config)
