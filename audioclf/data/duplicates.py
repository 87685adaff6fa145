"""Clips whose decoded audio is identical. A validation or test clip that copies a training clip is scored on
memory, not on generalisation; identical clips under different labels contradict each other."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SUBSETS = ("train", "validation", "test")
COLUMNS = ("kind", "path", "subset", "labels", "same_audio_as", "its_subset", "its_labels")  # of duplicates.csv


def digest(clip: np.ndarray) -> bytes:
    """The first 16 bytes of the SHA-256 of the float32 samples: equal for identical audio (a copied file, or the
    same samples in another lossless container), different otherwise."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(clip, dtype=np.float32))).digest()[:16]


@dataclass
class Duplicates:
    """Pairs ``(path, subset, labels, same-audio path, its subset, its labels)``: ``copies``, the validation or test
    clips identical to a training clip; ``conflicts``, identical clips (in any subsets) whose labels differ."""

    copies: list[tuple[str, ...]] = field(default_factory=list)
    conflicts: list[tuple[str, ...]] = field(default_factory=list)

    def counts(self) -> dict:
        """``{"validation": n, "test": n, "label_conflicts": n}``: held-out clips that copy training clips, and
        pairs of identical clips under different labels."""
        return {"validation": sum(c[1] == "validation" for c in self.copies),
                "test": sum(c[1] == "test" for c in self.copies), "label_conflicts": len(self.conflicts)}

    def rows(self) -> list[list[str]]:
        """``duplicates.csv``'s rows (:data:`COLUMNS`), the copies first."""
        return [[kind, *pair] for kind, pairs in (("copy", self.copies), ("label conflict", self.conflicts))
                for pair in pairs]


def find_duplicates(subsets: dict[str, list[str]], digests: dict[str, bytes],
                    labels: dict[str, tuple[str, ...]]) -> Duplicates:
    """Identical clips among ``subsets`` (``{"train" | "validation" | "test": [path, ...]}``); ``digests``: path ->
    :func:`digest` of its audio; ``labels``: path -> its labels. Each clip is compared with the first clip of its
    audio, training clips first: a held-out clip is a copy when that one is a training clip, and a conflict when the
    labels differ."""
    first: dict[bytes, tuple[str, str]] = {}  # digest -> (path, subset) of the first clip with it
    found = Duplicates()
    for subset in SUBSETS:
        for path in subsets.get(subset, []):
            other, other_subset = first.setdefault(digests[path], (path, subset))
            if other == path:
                continue
            pair = (path, subset, ";".join(labels[path]), other, other_subset, ";".join(labels[other]))
            if subset != "train" and other_subset == "train":
                found.copies.append(pair)
            if set(labels[path]) != set(labels[other]):
                found.conflicts.append(pair)
    return found
