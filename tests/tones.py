"""Synthetic tone data sets shared by the data tests: three tone labels spoken by four "speakers"."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 8000
FREQS = {"low": 300.0, "mid": 900.0, "high": 2500.0}
SPEAKERS = ["alice", "bob", "carol", "dave"]
TAKES = 3
GROUP_PATTERN = r"(?P<label>[^/]+)/(?P<group>[a-z]+)_\d+\.wav"
FSDD = Path(__file__).resolve().parents[1] / "datasets" / "fsdd" / "manifest.csv"


def tone(freq: float, seconds: float = 0.25, amp: float = 0.3, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_tone_set(root: Path) -> list[tuple[str, str, str]]:
    """``root/<label>/<speaker>_<n>.wav``; returns [(relative path, label, speaker)]."""
    rows = []
    for label, freq in FREQS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for s, speaker in enumerate(SPEAKERS):
            for n in range(TAKES):
                rel = f"{label}/{speaker}_{n}.wav"
                sf.write(root / rel, tone(freq * (1 + 0.02 * s), phase=n), SR)
                rows.append((rel, label, speaker))
    return rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path

