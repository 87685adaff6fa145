"""Defaults that generalise: five kinds of labelled audio, each with its groups held out, trained with the default
and its alternatives side by side in one run.

    python bench/generalise.py [--sets speech,prosody,env,music,multilabel] \
        [--configs default,scratch,pretrained,no-augment] [--seeds 0,1,2] [--jobs 2] [--out DIR] [--csv FILE]

Sets (built into ``OUT/<set>`` on first use; each a ``manifest.csv`` with ``path,label,group,fold``, tested on
``fold == test``, whose groups training never hears):

- ``speech``: FSDD's spoken digits; speakers jackson and yweweler held out (600 of 3,000 clips).
- ``prosody``: espeak-ng voices saying the same sentences with five emotion-like styles made of pitch, rate and
  loudness (``neutral happy sad angry fearful``, each jittered per clip); four of sixteen voices held out.
- ``env``: ``bench/envsounds.py`` (drum kits and Sonic Pi's samples over background recordings, 3 s clips);
  the sources of its fold 1 held out.
- ``music``: eight General MIDI instruments rendered note by note from the FluidR3 SoundFont through
  ``fluidsynth``, labelled by instrument; every fourth pitch (MIDI note % 4 == 1) held out.
- ``multilabel``: 3 s mixtures of one to three of speech, the env classes and music notes, labelled by what is in
  them; the held-out groups of the three sets above make the test mixtures.

Configurations: ``default`` (``audioclf train`` with no flags), ``scratch`` (``--pretrained off``), ``pretrained``
(``--pretrained mn04_as``), ``no-augment`` (``--no-augment`` on the start the default kept). The default trains
from scratch and fine-tunes with and without augmentation, and keeps one (:mod:`audioclf.training.selection`); its
candidates are the runs those flags make (same split and seed), read from
``OUT/runs/<set>/seed<S>/default/candidates/`` when the default ran (``no-augment`` from ``mn04_as-no-augment`` when
it kept the fine-tuned start), trained otherwise. Each seed draws its own validation groups and initialisation;
``--seeds`` reports each score as mean +- sd over them, as one seed's test of 66-144 clips moves by a few points.
``--jobs`` runs (a set and a seed each) train at once, each process with its share of the cores. Prints one table:
accuracy (mAP for the multi-label set), macro-F1 and process CPU seconds of each, and the default's mean minus the
best column's; ``--csv`` appends the rows (one a run and seed, with the code's commit).
Needs ``apt-get install espeak-ng fluidsynth fluid-soundfont-gm hydrogen-drumkits sonic-pi-samples``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from results_csv import append_rows, code_version, machine_name

from audioclf.workers import process_pool

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "datasets/fsdd"
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
CONFIGS = {"default": {}, "scratch": {"pretrained": "off"}, "pretrained": {"pretrained": "mn04_as"},
           "no-augment": {"augment": False}}
FLAGS = {"default": "", "scratch": "--pretrained off", "pretrained": "--pretrained mn04_as",
         "no-augment": "--no-augment"}
SETS = ("speech", "prosody", "env", "music", "multilabel")
COST = {"multilabel": 5, "env": 3, "prosody": 3, "music": 2, "speech": 1}  # relative training time: longest first


def write_manifest(out: Path, rows: list[list]) -> Path:
    """``OUT/manifest.csv`` (``path,label,group,fold``) written last, so a half-built set is rebuilt."""
    with open(out / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "group", "fold"], *rows])
    return out / "manifest.csv"


def build_speech(out: Path, seed: int) -> Path:
    """FSDD with two speakers held out: a manifest over the bundled recordings."""
    held_out = {"jackson", "yweweler"}
    rows = []
    for path in sorted((FSDD / "recordings").glob("*.flac")):
        digit, speaker, _ = path.stem.split("_")
        rows.append([str(path), digit, speaker, "test" if speaker in held_out else "train"])
    return write_manifest(out, rows)


STYLES = {  # espeak-ng pitch (0-99), rate (words per minute), amplitude (0-200)
    "neutral": (50, 165, 100), "happy": (72, 190, 125), "sad": (32, 125, 60),
    "angry": (55, 200, 185), "fearful": (85, 215, 70),
}
VOICES = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "adam", "linda", "david", "steph"]
HELD_OUT_VOICES = {"m3", "f2", "david", "m7"}
SENTENCES = ["Kids are talking by the door.", "Dogs are sitting by the door.", "I will be back before noon.",
             "The window was left open all night.", "Please put the box on the table.",
             "We walked along the river to town."]


def build_prosody(out: Path, seed: int) -> Path:
    """espeak-ng voices (the groups) saying each sentence in each style, the style's pitch, rate and loudness
    jittered per clip; 480 clips at 22.05 kHz."""
    rng = np.random.default_rng(seed)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for voice in VOICES:
        for s, sentence in enumerate(SENTENCES):
            for style, (pitch, rate, amplitude) in STYLES.items():
                name = f"clips/{voice}-{s}-{style}.wav"
                pitch = int(np.clip(pitch + rng.integers(-6, 7), 0, 99))
                rate = int(rate * rng.uniform(0.93, 1.07))
                amplitude = int(amplitude * rng.uniform(0.85, 1.15))
                subprocess.run(["espeak-ng", "-v", f"en+{voice}", "-p", str(pitch), "-s", str(rate),
                                "-a", str(amplitude), "-w", str(out / name), sentence], check=True)
                rows.append([name, style, voice, "test" if voice in HELD_OUT_VOICES else "train"])
    return write_manifest(out, rows)


def build_env(out: Path, seed: int) -> Path:
    """``bench/envsounds.py``'s set (40 clips a class, 3 s), its fold 1 as the test fold."""
    sys.path.insert(0, str(ROOT / "bench"))
    import envsounds
    manifest = envsounds.build(out, 40, 3.0, seed)
    rows = [[r["path"], r["label"], r["group"], "test" if r["fold"] == "1" else "train"]
            for r in csv.DictReader(open(manifest))]
    return write_manifest(out, rows)


INSTRUMENTS = {"piano": 0, "marimba": 12, "organ": 19, "guitar": 24, "violin": 40, "trumpet": 56,
               "clarinet": 71, "flute": 73}  # General MIDI programs (0-based)
NOTES = range(48, 84)  # C3 to B5
MUSIC_RATE = 22050


def midi_file(program: int, events: list[tuple[int, int]], note_seconds: float, spacing: float) -> bytes:
    """A one-track standard MIDI file: the program, then each ``(note, velocity)`` held ``note_seconds``,
    one every ``spacing`` seconds (960 ticks a second at the default tempo)."""
    def varlen(n: int) -> bytes:
        out = [n & 0x7F]
        while n > 0x7F:
            n >>= 7
            out.insert(0, (n & 0x7F) | 0x80)
        return bytes(out)
    ticks_on, ticks_off = int(note_seconds * 960), int((spacing - note_seconds) * 960)
    track = varlen(0) + bytes([0xC0, program])
    for i, (note, velocity) in enumerate(events):
        track += varlen(0 if i == 0 else ticks_off) + bytes([0x90, note, velocity])
        track += varlen(ticks_on) + bytes([0x80, note, 0])
    track += varlen(0) + b"\xff\x2f\x00"
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track)


def build_music(out: Path, seed: int) -> Path:
    """Each instrument plays every note of ``NOTES`` twice (velocities 50-120), rendered in one ``fluidsynth``
    pass per instrument and cut into 1.5 s clips; 576 clips."""
    rng = np.random.default_rng(seed)
    spacing, clip = 2.0, 1.5
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, program in INSTRUMENTS.items():
            events = [(note, int(rng.integers(50, 121))) for note in NOTES for _ in range(2)]
            mid, wav = Path(tmp) / f"{name}.mid", Path(tmp) / f"{name}.wav"
            mid.write_bytes(midi_file(program, events, 1.0, spacing))
            subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(MUSIC_RATE),
                            "-F", str(wav), str(SOUNDFONT), str(mid)], check=True, capture_output=True)
            audio, _ = sf.read(wav, dtype="float32", always_2d=True)
            audio = audio.mean(axis=1)
            for i, (note, _) in enumerate(events):
                piece = audio[int(i * spacing * MUSIC_RATE):int((i * spacing + clip) * MUSIC_RATE)]
                path = f"clips/{name}-{note}-{i % 2}.flac"
                sf.write(out / path, piece, MUSIC_RATE, subtype="PCM_16")
                rows.append([path, name, str(note), "test" if note % 4 == 1 else "train"])
    return write_manifest(out, rows)


def read_mono(path: Path, rate: int) -> np.ndarray:
    audio, native = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return soxr.resample(audio, native, rate).astype(np.float32) if native != rate else audio


def build_multilabel(out: Path, seed: int, sources: dict[str, Path]) -> Path:
    """400 mixtures (3 s, 16 kHz) of one to three parts with different labels: a spoken digit (``speech``), an
    env clip (its class) or a note (``music``), each at a random offset and a level within 12 dB of the others;
    test mixtures are made of held-out parts only."""
    rng, rate, seconds = np.random.default_rng(seed), 16000, 3.0
    pools: dict[tuple[str, str], list[Path]] = {}  # (label, fold) -> files
    for kind, manifest in sources.items():
        for r in csv.DictReader(open(manifest)):
            label = {"speech": "speech", "music": "music"}.get(kind, r["label"])
            path = Path(r["path"]) if Path(r["path"]).is_absolute() else manifest.parent / r["path"]
            pools.setdefault((label, r["fold"]), []).append(path)
    labels = sorted({label for label, _ in pools})
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows, n = [], int(seconds * rate)
    for i in range(400):
        fold = "test" if i % 4 == 0 else "train"
        parts = rng.choice(labels, size=int(rng.integers(1, 4)), replace=False)
        mix = np.zeros(n, np.float32)
        for label in parts:
            files = pools[(label, fold)]
            x = read_mono(files[int(rng.integers(len(files)))], rate)[:n]
            x = x / (np.sqrt(np.mean(x ** 2)) + 1e-9) * 10 ** (rng.uniform(-12, 0) / 20)
            start = int(rng.integers(0, n - len(x) + 1))
            mix[start:start + len(x)] += x
        mix = mix / (np.abs(mix).max() + 1e-9) * 10 ** (rng.uniform(-12, -1) / 20)
        path = f"clips/mix-{i:04d}.flac"
        sf.write(out / path, mix, rate, subtype="PCM_16")
        rows.append([path, ";".join(sorted(parts)), f"mix{i % 20}", fold])
    return write_manifest(out, rows)


def dataset(name: str, root: Path, seed: int = 0) -> Path:
    """The set's manifest, built first when missing."""
    manifest = root / name / "manifest.csv"
    if manifest.is_file():
        return manifest
    (root / name).mkdir(parents=True, exist_ok=True)
    if name == "multilabel":
        return build_multilabel(root / name, seed, {k: dataset(k, root, seed) for k in ("speech", "env", "music")})
    return {"speech": build_speech, "prosody": build_prosody, "env": build_env, "music": build_music}[name](
        root / name, seed)


def result(run: Path, cpu: float, wall: float) -> dict:
    """A finished run's test figures: accuracy (or mAP), macro-F1, CPU and wall seconds, epochs, the kept start."""
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "report.json").read_text())
    multilabel = config["task"] == "multi_label"
    return {"metric": "mAP" if multilabel else "accuracy", "value": report["mAP" if multilabel else "accuracy"],
            "macro_f1": report["macro_f1"], "cpu_seconds": cpu, "wall_seconds": wall,
            "epochs": sum(1 for _ in open(run / "metrics.csv")) - 1, "best_epoch": config.get("best_epoch"),
            "kept": config["training"].get("pretrained"), "augment": config["training"].get("augment", True)}


def run_one(manifest: Path, out: Path, settings: dict) -> dict:
    """Train and test one configuration; its :func:`result`."""
    from audioclf.training import train

    cpu, wall = time.process_time(), time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        train(manifest, out, test_fold="test", overwrite=True, **settings)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    (out / "train.log").write_text(log.getvalue())
    return result(out, cpu, wall)


def candidate(default_run: Path, config: str, kept: str | None) -> dict | None:
    """The default run's candidate for ``config`` (``scratch``, ``pretrained``, or ``no-augment`` of the fine-tuned
    start it ``kept``), or None when it trained none."""
    from audioclf.training.config import SCRATCH
    from audioclf.training.selection import DEFAULT_PRETRAINED, Start

    start = {"scratch": Start(SCRATCH), "pretrained": Start(DEFAULT_PRETRAINED),
             "no-augment": Start(kept, augment=False) if kept == DEFAULT_PRETRAINED else None}.get(config)
    run = default_run / "candidates" / (start.folder if start else "")
    if start is None or not (run / "report.json").is_file():
        return None
    metrics = json.loads((run / "config.json").read_text())["metrics"]
    return result(run, metrics["cpu_seconds"], metrics["wall_seconds"])


def run_set(name: str, manifest: Path, configs: list[str], out: Path, seed: int) -> list[dict]:
    """Every configuration of one set and seed, the default first, in ``OUT/runs/<set>/seed<S>/<config>``: the
    default's candidates are the scratch, pretrained and (when it kept the fine-tuned start) no-augment columns;
    otherwise ``no-augment`` retrains the start it kept without."""
    rows, kept, runs = [], None, out / "runs" / name / f"seed{seed}"
    for config in sorted(configs, key=lambda c: c != "default"):
        settings = {**CONFIGS[config], "seed": seed}
        if config == "no-augment" and kept:
            settings["pretrained"] = kept
        r = ("default" in configs and candidate(runs / "default", config, kept)
             or run_one(manifest, runs / config, settings))
        kept = r["kept"] if config == "default" else kept
        flags = FLAGS[config] + (f" --pretrained {settings['pretrained']}" if "pretrained" in settings
                                 and config == "no-augment" else "")
        command = f"audioclf train {manifest} --test-fold test --seed {seed} {flags}".strip()
        rows.append({"set": name, "config": config, **r, "command": command})
        print(f"{name:10s} seed {seed} {config:10s} {r['metric']} {100 * r['value']:6.2f}  macro-F1 "
              f"{r['macro_f1']:.3f}  CPU {r['cpu_seconds']:7.0f} s  wall {r['wall_seconds']:6.0f} s  best epoch "
              f"{r['best_epoch']}/{r['epochs']}  start {r['kept']}{'' if r['augment'] else ' without augmentation'}",
              flush=True)
    return rows


def start_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def spread(values: list[float]) -> str:
    """``mean +- sd`` in percent (the sample sd), or the one value."""
    v = 100 * np.asarray(values)
    return f"{v.mean():.2f}" + (f" +- {v.std(ddof=1):.2f}" if len(v) > 1 else "")


def table(rows: list[dict], sets: list[str], configs: list[str]) -> str:
    """The Markdown table: per set and configuration the score (mean +- sd over the seeds), macro-F1 and CPU seconds
    (means), and how far the default's mean is under the best column's."""
    lines = ["| set | " + " | ".join(configs) + " | default - best |", "|---|" + "---|" * (len(configs) + 1)]
    for name in sets:
        cells = {c: [r for r in rows if r["set"] == name and r["config"] == c] for c in configs}
        means = {c: np.mean([r["value"] for r in cells[c]]) for c in configs}
        gap = f"{100 * (means['default'] - max(means.values())):+.2f}" if "default" in configs else "-"
        lines.append(f"| {name} ({cells[configs[0]][0]['metric']}, {len(cells[configs[0]])} seed(s)) | " + " | ".join(
            f"{spread([r['value'] for r in cells[c]])} (F1 {np.mean([r['macro_f1'] for r in cells[c]]):.3f}, "
            f"CPU {np.mean([r['cpu_seconds'] for r in cells[c]]):.0f} s)" for c in configs) + f" | {gap} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/audioclf-generalise"))
    ap.add_argument("--csv", type=Path, help="append the rows to this CSV")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated: each set is trained once a seed "
                                                 "and reported as mean +- sd (default 0)")
    ap.add_argument("--jobs", type=int, default=2, help="sets trained at once, each in its own process with the "
                                                        "cores shared out (default 2)")
    args = ap.parse_args()
    sets, configs = args.sets.split(","), args.configs.split(",")
    unknown = [s for s in sets if s not in SETS] + [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown set or configuration: {', '.join(unknown)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds {args.seeds}: not comma-separated integers")
    t_suite = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    machine = machine_name()
    manifests = {name: dataset(name, args.out) for name in sets}  # built first: the mixtures read the others
    tasks = sorted(((name, seed) for name in sets for seed in seeds), key=lambda t: -COST[t[0]])  # longest first
    jobs = max(1, min(args.jobs, len(tasks)))
    done_rows, failed = {}, {}
    with process_pool(jobs, start_worker, (max(1, cores // jobs),)) as pool:  # ended with the suite, not awaited
        running = {pool.submit(run_set, name, manifests[name], configs, args.out, seed): (name, seed)
                   for name, seed in tasks}
        for done in as_completed(running):
            try:
                done_rows[running[done]] = done.result()
            except Exception as e:  # the other sets' rows are still reported and kept
                failed[running[done]] = f"{type(e).__name__}: {e}"
                print(f"{running[done][0]} seed {running[done][1]}: failed: {failed[running[done]]}", file=sys.stderr,
                      flush=True)
    finished = [name for name in sets if all((name, seed) in done_rows for seed in seeds)]
    code = code_version(ROOT)
    rows = [{"code": code, **r, "machine": machine, "jobs": jobs}
            for name, seed in sorted(done_rows, key=lambda t: (sets.index(t[0]), t[1])) for r in done_rows[name, seed]]
    print(f"\nsuite: {time.perf_counter() - t_suite:.0f} s wall on {machine}, {jobs} set(s) at a time\n")
    print(table(rows, finished, configs))
    if args.csv and rows:
        append_rows(args.csv, rows)
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: " + "; ".join(f"{k[0]} seed {k[1]}: {v}" for k, v in failed.items()))


if __name__ == "__main__":
    main()
