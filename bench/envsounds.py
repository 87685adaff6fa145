"""An environmental-sound benchmark set built from real recordings: Debian's ``hydrogen-drumkits`` and
``sonic-pi-samples`` (``apt-get install hydrogen-drumkits sonic-pi-samples``).

    python bench/envsounds.py OUT [--clips-per-class 50] [--seconds 5] [--seed 0]

Eight classes of percussive sound events (kick, snare, hihat, tom, cymbal, clap, hand_drum, bell), each clip
``--seconds`` long at 44.1 kHz: two to six hits of one class, all from one source (a drum kit, or Sonic Pi's sample
library), at random times and levels, over a background recording (Sonic Pi's vinyl hiss and ambient textures) at
5-25 dB SNR, like ESC-50's five-second clips of repeated events. The sources are the groups; they are dealt into five
declared folds (``fold`` 1-5), so a test fold's kits are never heard in training. Writes ``OUT/clips/*.flac`` and
``OUT/manifest.csv`` (``path,label,group,fold``); 400 clips with the defaults.
"""
from __future__ import annotations

import argparse
import csv
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

KITS = Path("/usr/share/hydrogen/data/drumkits")
SONIC_PI = Path("/usr/share/sonic-pi/samples")
RATE = 44100
FOLDS = 5
CLASSES = {  # class -> instrument-name pattern (case-insensitive), checked in this order
    "clap": r"clap|snap",
    "hand_drum": r"conga|bongo|djembe|cajon|tabla|dununba|kenkeni|sangban.*head",
    "bell": r"cowbell|agogo|bell|triangle|chime",
    "hihat": r"hh|hat",
    "cymbal": r"crash|ride|cymbal|splash|china",
    "tom": r"tom",
    "snare": r"snare|^sn_",
    "kick": r"kick|bass ?drum|^bd_|drum_heavy_kick",
}
BACKGROUNDS = ["vinyl_hiss", "ambi_soft_buzz", "ambi_drone", "ambi_sauna", "ambi_glass_hum", "ambi_haunted_hum",
               "ambi_dark_woosh"]


def classify(name: str) -> str | None:
    name = name.lower()
    return next((c for c, pattern in CLASSES.items() if re.search(pattern, name)), None)


def kit_sources() -> dict[str, dict[str, list[Path]]]:
    """``{source: {class: [files]}}`` from every Hydrogen kit's ``drumkit.xml`` and Sonic Pi's sample names."""
    sources: dict[str, dict[str, list[Path]]] = {}
    for xml in sorted(KITS.glob("*/drumkit.xml")):
        kit = defaultdict(list)
        for inst in ET.parse(xml).getroot().iter():
            if inst.tag.split("}")[-1] != "instrument":
                continue
            name = next((c.text or "" for c in inst if c.tag.split("}")[-1] == "name"), "")
            label = classify(name)
            files = [xml.parent / f.text for f in inst.iter() if f.tag.split("}")[-1] == "filename" and f.text]
            if label:
                kit[label] += [f for f in files if f.is_file()]
        sources[xml.parent.name] = {k: sorted(set(v)) for k, v in kit.items() if v}
    pi = defaultdict(list)
    for f in sorted(SONIC_PI.glob("*.flac")):
        label = classify(f.stem.replace("drum_cymbal_closed", "hat").replace("drum_cymbal_pedal", "hat"))
        if label and not f.stem.startswith(("loop_", "ambi_", "guit_", "bass_")):
            pi[label].append(f)
    sources["sonic-pi"] = dict(pi)
    return {k: v for k, v in sources.items() if v}


def read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return soxr.resample(audio, rate, RATE).astype(np.float32) if rate != RATE else audio


def make_clip(hits: list[np.ndarray], background: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    clip = np.zeros(samples, np.float32)
    for hit in hits:
        start = int(rng.integers(0, samples - RATE // 5))
        piece = hit[:samples - start] * 10 ** (rng.uniform(-15, 0) / 20)
        clip[start:start + len(piece)] += piece
    offset = int(rng.integers(0, max(1, len(background) - samples)))
    noise = np.resize(background[offset:offset + samples], samples)
    snr = rng.uniform(5, 25)
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)) + 1e-9)  # noqa: E731
    clip += noise * rms(clip) / rms(noise) / 10 ** (snr / 20)
    return clip / np.abs(clip).max() * 10 ** (rng.uniform(-20, -3) / 20)


def deal_folds(counts: dict[str, int]) -> dict[str, int]:
    """Sources to folds 1..FOLDS, biggest first, each to the fold with the fewest clips so far."""
    load, fold_of = [0] * FOLDS, {}
    for source in sorted(counts, key=lambda s: (-counts[s], s)):
        k = int(np.argmin(load))
        fold_of[source], load[k] = k + 1, load[k] + counts[source]
    return fold_of


def build(out: Path, clips_per_class: int, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    sources = kit_sources()
    backgrounds = [read(SONIC_PI / f"{name}.flac") for name in BACKGROUNDS]
    plan = []  # (label, source)
    for label in CLASSES:
        eligible = [s for s in sources if label in sources[s]]
        plan += [(label, eligible[i % len(eligible)]) for i in rng.permutation(clips_per_class)]
    counts = defaultdict(int)
    for _, source in plan:
        counts[source] += 1
    fold_of = deal_folds(counts)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows, cache = [], {}
    for i, (label, source) in enumerate(plan):
        files = sources[source][label]
        hits = []
        for j in rng.integers(0, len(files), int(rng.integers(2, 7))):
            if files[j] not in cache:
                cache[files[j]] = read(files[j])
            hits.append(cache[files[j]])
        clip = make_clip(hits, backgrounds[int(rng.integers(len(backgrounds)))], int(seconds * RATE), rng)
        name = f"clips/{label}-{i:04d}.flac"
        sf.write(out / name, clip, RATE, subtype="PCM_16")
        rows.append([name, label, source, fold_of[source]])
    with open(out / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "group", "fold"], *rows])
    return out / "manifest.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--clips-per-class", type=int, default=50)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    manifest = build(args.out, args.clips_per_class, args.seconds, args.seed)
    rows = list(csv.DictReader(open(manifest)))
    per_fold = defaultdict(lambda: defaultdict(int))
    for r in rows:
        per_fold[r["fold"]][r["label"]] += 1
    print(f"wrote {len(rows)} clips and {manifest}")
    for fold in sorted(per_fold):
        groups = sorted({r["group"] for r in rows if r["fold"] == fold})
        print(f"fold {fold}: {sum(per_fold[fold].values())} clips, sources {', '.join(groups)}; "
              + " ".join(f"{k}={v}" for k, v in sorted(per_fold[fold].items())))


if __name__ == "__main__":
    main()
