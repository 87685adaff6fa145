"""The catalogue of pretrained weights: name -> release file, its sha256, the model, its labels and audio settings."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

EFFICIENTAT_RELEASE = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
EFFICIENTAT_FRONTEND = {"sample_rate": 32000, "n_mels": 128, "win_ms": 25.0, "hop_ms": 10.0, "f_min": 0.0,
                        "f_max": 15000.0, "level_norm": False}
LABELS_FILE = Path(__file__).with_name("audioset_labels.csv")


@dataclass(frozen=True)
class PretrainedWeights:
    """One release file. ``sha256`` None: not pinned (the hash is computed on download, recorded and printed)."""

    name: str
    model: str  # registered model name
    file: str  # the release file's name
    url: str
    sha256: str | None
    description: str
    frontend: dict = field(default_factory=lambda: dict(EFFICIENTAT_FRONTEND))
    clip_seconds: float = 10.0  # the clip length it was trained on
    license: str = "MIT (EfficientAT, Copyright (c) 2022 Florian Schmid)"

    def run_config(self, sha256: str) -> dict:
        """The run folder's ``config.json`` content (labels, task, audio settings, provenance)."""
        return {"labels": audioset_labels(), "task": "multi_label", "clip_seconds": self.clip_seconds,
                "pretrained": {"name": self.name, "file": self.file, "url": self.url, "sha256": sha256,
                               "license": self.license, "description": self.description}}


def _efficientat(width_name: str, release_file: str, map_: float, sha256: str | None = None) -> PretrainedWeights:
    return PretrainedWeights(f"{width_name}_as", width_name, release_file, EFFICIENTAT_RELEASE + release_file, sha256,
                             f"EfficientAT {width_name} AudioSet tagger (527 classes, mAP {map_:.3f})")


CATALOGUE: dict[str, PretrainedWeights] = {w.name: w for w in [
    _efficientat("mn01", "mn01_as_mAP_298.pt", 0.298),
    _efficientat("mn02", "mn02_as_mAP_378.pt", 0.378),
    _efficientat("mn04", "mn04_as_mAP_432.pt", 0.432,
                 "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"),
    _efficientat("mn05", "mn05_as_mAP_443.pt", 0.443),
    _efficientat("mn10", "mn10_as_mAP_471.pt", 0.471),
    _efficientat("mn20", "mn20_as_mAP_478.pt", 0.478),
    _efficientat("mn30", "mn30_as_mAP_482.pt", 0.482),
    _efficientat("mn40", "mn40_as_mAP_484.pt", 0.484),
]}


@lru_cache(maxsize=1)
def audioset_labels() -> list[str]:
    """AudioSet's 527 display names, in the order of the taggers' outputs."""
    with open(LABELS_FILE, newline="", encoding="utf-8") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def catalogue_table() -> str:
    """One line per entry: name, model, pinned or not, description."""
    return "\n".join(f"{w.name:<10}{w.model:<7}{'sha256 pinned' if w.sha256 else 'not pinned':<15}{w.description}"
                     for w in CATALOGUE.values())
