"""Which augmentations would erase a cue the labels live in: level, pitch and tempo, probed on the data.

Each cue is one number per clip (:func:`clip_cues`). A one-feature classifier trained on the training clips and
scored on the validation clips (held-out groups when there are any) says how much the cue alone tells the labels
apart; trained again on cues jittered as the augmentations would jitter them, it says how much of that survives the
augmentation. An augmentation that erases a real cue is switched off (:func:`augment_policy`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRAME_SECONDS, HOP_SECONDS = 0.04, 0.02
ACTIVE_DB = 30.0  # frames within this many dB of the loudest one are "active"
VOICING = 0.45  # normalised autocorrelation peak of a voiced (periodic) frame
F0_RANGE = (60.0, 500.0)  # Hz
PROBE_CLIPS = 3000  # clips probed at most (drawn at random)


def frames(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """``(frames, frame_samples)`` views of ``x`` ``(samples,)``, 40 ms every 20 ms (one zero-padded frame if shorter)."""
    size, hop = int(FRAME_SECONDS * sample_rate), int(HOP_SECONDS * sample_rate)
    if len(x) < size:
        x = np.pad(x, (0, size - len(x)))
    n = 1 + (len(x) - size) // hop
    return np.lib.stride_tricks.as_strided(x, (n, size), (x.strides[0] * hop, x.strides[0]), writeable=False)


def clip_cues(x: np.ndarray, sample_rate: int) -> tuple[float, float, float]:
    """``(level_db, log_f0, log_duration)`` of one clip: the mean power of its active frames in dB, the log of the
    median fundamental frequency (Hz) of its voiced active frames (``nan`` when none is voiced), and the log of
    its active time in seconds."""
    f = frames(np.asarray(x, np.float32), sample_rate).astype(np.float64)
    power = (f ** 2).mean(axis=1) + 1e-12
    db = 10 * np.log10(power)
    active = db >= db.max() - ACTIVE_DB
    level = float(10 * np.log10(power[active].mean()))
    duration = math.log(max(HOP_SECONDS, active.sum() * HOP_SECONDS))
    a = f[active] - f[active].mean(axis=1, keepdims=True)
    a = a * np.hanning(a.shape[1])
    spec = np.fft.rfft(a, 2 * a.shape[1])
    r = np.fft.irfft(np.abs(spec) ** 2)[:, :a.shape[1]]
    lo, hi = int(sample_rate / F0_RANGE[1]), min(a.shape[1] - 1, int(sample_rate / F0_RANGE[0]))
    r = r / np.maximum(r[:, :1], 1e-12)
    lag = lo + r[:, lo:hi].argmax(axis=1)
    voiced = r[np.arange(len(r)), lag] >= VOICING
    f0 = math.log(float(np.median(sample_rate / lag[voiced]))) if voiced.any() else float("nan")
    return level, f0, duration


def binned_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    classes: int, bins: int = 8) -> float:
    """Expected balanced validation accuracy of a classifier on one feature that guesses each class with its share of
    the training clips in the value's bin (quantile bins of the training values, ``nan`` a bin of its own, class
    priors equalised): a smooth measure, where a hard vote would flip on near-ties."""
    edges = np.unique(np.nanquantile(train_x, np.linspace(0, 1, bins + 1)[1:-1])) if np.isfinite(train_x).any() else []

    def bin_of(v):
        return np.where(np.isnan(v), len(edges) + 1, np.searchsorted(edges, np.nan_to_num(v)))
    counts = np.zeros((len(edges) + 2, classes))
    np.add.at(counts, (bin_of(train_x), train_y), 1)
    likelihood = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    posterior = likelihood / np.maximum(likelihood.sum(axis=1, keepdims=True), 1e-12)
    posterior[likelihood.sum(axis=1) == 0] = 1.0 / classes  # a bin no training clip fell in: a uniform guess
    right = posterior[bin_of(val_x), val_y]
    recalls = [right[val_y == c].mean() for c in range(classes) if (val_y == c).any()]
    return float(np.mean(recalls))


@dataclass
class Cue:
    """What one cue says of the labels: balanced validation accuracy from the cue alone (``clean``), after the
    augmentations' jitter (``jittered``), and chance."""

    name: str
    clean: float
    jittered: float | None
    chance: float
    n_val: int

    @property
    def informative(self) -> bool:
        """Tells the labels apart beyond chance: at least ``INFORMATIVE`` of the way to perfect, and beyond two
        standard errors of chance on this many validation clips."""
        se = math.sqrt(self.chance * (1 - self.chance) / max(1, self.n_val))
        return self.clean - self.chance >= max(INFORMATIVE * (1 - self.chance), 2 * se)

    @property
    def erased(self) -> bool:
        """Informative, and the jitter takes away at least ``ERASED`` of what it tells beyond chance."""
        return self.informative and self.clean - self.jittered >= ERASED * (self.clean - self.chance)


INFORMATIVE = 0.15
ERASED = 0.25
JITTER_COPIES = 5  # jittered copies of each training cue


def probe(cues_train: np.ndarray, y_train: np.ndarray, cues_val: np.ndarray, y_val: np.ndarray, classes: int,
          gain_db: float, speed: float, stretch: float, fb_jitter: float, seed: int = 0) -> list[Cue]:
    """The three :class:`Cue` s from per-clip cues ``(clips, 3)`` (:func:`clip_cues`) and single-label class ids,
    the jitter drawn as the augmentations draw it: gain in ``+-gain_db`` dB, pitch by the speed and filter-bank
    warp factors, duration by the speed and stretch factors."""
    rng = np.random.default_rng(seed)
    n = len(y_train) * JITTER_COPIES
    factor = lambda width: np.log1p(rng.uniform(-width, width, n)) if width > 0 else np.zeros(n)  # noqa: E731
    speed_log = factor(speed)
    jitter = {"level": rng.uniform(-gain_db, gain_db, n),
              "pitch": speed_log + factor(fb_jitter),
              "tempo": -speed_log + factor(stretch)}
    out = []
    chance = 1.0 / classes
    for k, name in enumerate(("level", "pitch", "tempo")):
        clean = binned_accuracy(cues_train[:, k], y_train, cues_val[:, k], y_val, classes)
        jittered = binned_accuracy(np.repeat(cues_train[:, k], JITTER_COPIES) + jitter[name],
                                   np.repeat(y_train, JITTER_COPIES), cues_val[:, k], y_val, classes)
        out.append(Cue(name, clean, jittered, chance, len(y_val)))
    return out


ERASING = {"level": ("gain_db",), "pitch": ("speed", "fb_jitter"), "tempo": ("speed", "stretch")}


def augment_policy(cues: list[Cue]) -> dict[str, str]:
    """``{setting: reason}`` for each setting that would erase a cue: ``level_norm`` (it removes level altogether)
    when level is informative, an augmentation (``ERASING``) when its jitter erases its cue. They go off."""
    off = {}
    for cue in cues:
        told = (f"{cue.name} alone tells the labels apart at {100 * cue.clean:.0f}% balanced accuracy on validation "
                f"(chance {100 * cue.chance:.0f}%)")
        if cue.name == "level" and cue.informative:
            off["level_norm"] = told + ", and level normalisation removes it"
        if cue.erased:
            for setting in ERASING[cue.name]:
                off.setdefault(setting, told + f", {100 * cue.jittered:.0f}% after the augmentation's jitter")
    return off
