"""The automatic settings ``audioclf train DATA`` picks from the data (audioclf/training/autoconfig.py)."""
import numpy as np
import pytest

from audioclf.augment import AugmentConfig
from audioclf.training.autoconfig import (CEILING, FINETUNE_STEPS, MAX_EPOCHS, STEPS, DataSummary,
                                          choose_augmentation, choose_clip_seconds, choose_epochs, choose_patience)


def steps(train_files: int, batch_size: int, model: str = "cnn", **kw) -> int:
    """The optimiser steps ``choose_epochs`` allows at most, a last partial batch counted."""
    return choose_epochs(train_files, batch_size, model, **kw) * -(-train_files // batch_size)


def test_the_ceiling_is_a_multiple_of_the_typical_steps_whatever_the_size():
    for files in (243, 288, 400, 640):  # below ~200 files the epoch cap binds first
        assert 0.9 * CEILING * STEPS <= steps(files, 32) <= 1.1 * CEILING * STEPS, files
        assert 0.9 * STEPS <= steps(files, 32, validated=False) <= 1.1 * STEPS, files  # nothing to stop on
        assert 0.9 * CEILING * FINETUNE_STEPS <= steps(files, 32, finetune=True) <= 1.1 * CEILING * FINETUNE_STEPS
    assert 1700 * CEILING <= steps(640, 32, "crnn") <= 1900 * CEILING  # the recurrent model converges slower


def test_large_data_sets_train_at_least_ten_epochs_and_tiny_ones_at_most_the_cap():
    assert choose_epochs(85_000, 64) == 10
    assert choose_epochs(10, 32) == MAX_EPOCHS


def test_patience_is_a_share_of_the_typical_steps_and_at_least_three_epochs():
    assert choose_patience(1000, 10) == 20
    assert choose_patience(1000, 500) == 3
    assert choose_patience(200, 10) < choose_patience(1000, 10)


def test_clip_length_is_the_90th_percentile_within_limits():
    summary = lambda p90: DataSummary(100, 2, 16000, p90, p90, 1.0)  # noqa: E731
    assert choose_clip_seconds(summary(0.62)) == 0.75
    assert choose_clip_seconds(summary(0.1)) == 0.5
    assert choose_clip_seconds(summary(30.0)) == 10.0


def tones(rng, n, sr, freq, level_db, seconds=1.0):
    t = np.arange(int(seconds * sr)) / sr
    return [(10 ** (level_db / 20) * np.sin(2 * np.pi * freq * t) + 0.001 * rng.standard_normal(len(t))).astype(np.float32)
            for _ in range(n)]


def choose_on_two_thirds(rng, clips, ids, sr):
    """``choose_augmentation`` with a random two thirds of ``clips`` for training, the rest for validation."""
    ids = np.array(ids)
    order = rng.permutation(len(ids))
    train, val = order[:2 * len(ids) // 3], order[2 * len(ids) // 3:]
    return choose_augmentation(AugmentConfig(), None, set(), ([clips[i] for i in train], ids[train]),
                               ([clips[i] for i in val], ids[val]), 2, sr)


def test_a_label_carried_by_level_turns_level_normalisation_and_gain_off():
    """Two classes of the same sounds at levels 12 dB apart: level normalisation and the +-20 dB gain would erase
    the only cue; pitch and tempo say nothing, so speed and stretch stay."""
    rng, sr = np.random.default_rng(0), 8000
    clips, ids = [], []
    for k, level in enumerate((-30, -18)):
        for _ in range(30):
            clips += tones(rng, 1, sr, rng.uniform(140, 320), level + rng.uniform(-2, 2))
            ids.append(k)
    augment, level_norm, reasons = choose_on_two_thirds(rng, clips, ids, sr)
    assert level_norm is False and augment.gain_db == 0
    assert augment.speed == AugmentConfig().speed and augment.stretch == AugmentConfig().stretch
    assert "level alone tells the labels apart" in reasons["level_norm=off"]
    assert "gain_db=0" in reasons and "level" in reasons["cues"]


def test_a_label_carried_by_pitch_turns_speed_and_the_filter_bank_warp_off():
    """Two classes 6% apart in pitch (as two emotions of one voice) at random levels: speed perturbation
    (+-10%) and the filter-bank warp would blur them; level normalisation stays on."""
    rng, sr = np.random.default_rng(1), 16000
    clips, ids = [], []
    for k, f in enumerate((200, 212)):
        for _ in range(60):
            clips += tones(rng, 1, sr, f * rng.uniform(0.99, 1.01), rng.uniform(-40, -5))
            ids.append(k)
    augment, level_norm, reasons = choose_on_two_thirds(rng, clips, ids, sr)
    assert augment.speed == 0 and augment.fb_jitter == 0 and level_norm is True
    assert "pitch alone tells the labels apart" in reasons["speed=0"]
    assert augment.gain_db == AugmentConfig().gain_db and "level_norm=on" in reasons


def test_what_the_user_set_is_kept():
    rng, sr = np.random.default_rng(0), 8000
    clips = tones(rng, 20, sr, 200, -30) + tones(rng, 20, sr, 200, -10)
    ids = np.array([0] * 20 + [1] * 20)
    order = rng.permutation(40)
    train, val = order[:28], order[28:]
    augment, level_norm, reasons = choose_augmentation(
        AugmentConfig(gain_db=3.0), True, {"gain_db"}, ([clips[i] for i in train], ids[train]),
        ([clips[i] for i in val], ids[val]), 2, sr)
    assert level_norm is True and augment.gain_db == 3.0
    assert not any(k.startswith(("level_norm", "gain_db")) for k in reasons)


@pytest.mark.parametrize("train_clips, classes, expected", [(3000, 10, 0.1), (400, 5, 0.25), (600, 8, 100 / 600),
                                                              (2000, 35, 0.175)])
def test_validation_share_aims_at_enough_clips(train_clips, classes, expected):
    from audioclf.data.splits import validation_fraction
    assert validation_fraction(train_clips, classes) == pytest.approx(expected)


def test_a_small_or_missing_validation_split_is_noted(capsys):
    from audioclf.training.config import TrainConfig
    from audioclf.training.setup import note_validation
    y = np.eye(4)[np.arange(400) % 4]
    reasons = note_validation(TrainConfig(), 400, list(range(100)), y)
    out = capsys.readouterr().out
    assert reasons == {"val_fraction=0.25": reasons["val_fraction=0.25"]} and "auto: val_fraction=0.25" in out
    assert "note:" not in out  # 100 clips, 25 a class: enough
    assert note_validation(TrainConfig(val_fraction=0.05), 400, list(range(20)), y) == {}  # the user's share
    assert "note: validation holds 20 clips (5 of its rarest class; one clip is 5.0 accuracy points)" in \
        capsys.readouterr().out
    note_validation(TrainConfig(), 400, [i for i in range(400) if i % 4 != 2][:150], y, ["a", "b", "c", "d"])
    out = capsys.readouterr().out
    assert "note: validation holds no clip of c (no held-out group has one): the best epoch and the start kept are " \
        "chosen without it" in out and "rarest" not in out  # 150 clips, 50 of each other class
    note_validation(TrainConfig(val_fraction=0.0), 400, [], y)
    assert "note: no validation clips" in capsys.readouterr().out
