"""``audioclf train DATA`` with the model left to the data: from scratch and fine-tuned mn04_as (with its
augmentation and without) trained, the one kept by its score on clips of unheard groups, or the fine-tuned one unless
another leads clearly on clips of the training groups (audioclf/training/selection.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_cli import write_tones
from tones import SR, tone, write_csv

import audioclf
from audioclf.evaluation.metrics import average_precision
from audioclf.evaluation.metrics import mean_average_precision as mean_ap
from audioclf.training.config import SCRATCH, TrainConfig
from audioclf.run_folder import SELECTION_DIR
from audioclf.training.selection import DEFAULT_PRETRAINED, Start, candidates, keep, plan_comparison
from audioclf.training.validation import accuracy, paired_z, read_validation, write_validation


SCRATCH_RUN, PRETRAINED_RUN = Start(SCRATCH), Start(DEFAULT_PRETRAINED)
UNAUGMENTED_RUN = Start(DEFAULT_PRETRAINED, augment=False)
THREE = [SCRATCH_RUN, PRETRAINED_RUN, UNAUGMENTED_RUN]


@pytest.mark.parametrize("settings, starts, named", [
    ({}, THREE, "with its augmentation and without"),
    ({"sample_rate": 32000}, THREE, "validation"),  # the rate the pretrained model takes
    ({"augment": False}, [SCRATCH_RUN, PRETRAINED_RUN], "validation"),  # --no-augment: none to compare
    ({"aug": "mixup_alpha=0"}, [SCRATCH_RUN, PRETRAINED_RUN], "validation"),  # the user shaped the augmentation
    ({"model": "cnn"}, [SCRATCH], "--model"),
    ({"width": 0.5}, [SCRATCH], "--width"),
    ({"sample_rate": 16000}, [SCRATCH], "--sample-rate"),
    ({"ensemble": 3}, [SCRATCH], "--ensemble"),
    ({"val_fraction": 0.0}, [SCRATCH], "--val-fraction 0"),
    ({"pretrained": SCRATCH}, [SCRATCH], "--pretrained"),
    ({"pretrained": "mn04_as"}, ["mn04_as"], "--pretrained"),
])
def test_the_starts_are_tried_unless_a_setting_fixes_the_model(tmp_path, settings, starts, named):
    chosen, why = candidates(TrainConfig(**settings), tmp_path, tmp_path / "run")
    assert chosen == [s if isinstance(s, Start) else Start(s) for s in starts] and named in why
    assert len({s.folder for s in chosen}) == len({s.key for s in chosen}) == len(chosen)  # each its own folder


def test_a_single_run_interrupted_before_resumes_as_it_began(tmp_path):
    (tmp_path / "run" / "state").mkdir(parents=True)
    chosen, why = candidates(TrainConfig(resume=True), tmp_path, tmp_path / "run")
    assert chosen == [SCRATCH_RUN] and "--resume" in why
    (tmp_path / "run" / "candidates").mkdir()  # a run of candidates resumes them
    assert candidates(TrainConfig(resume=True), tmp_path, tmp_path / "run")[0] == THREE


def write_candidate(folder, targets, scores, labels=("a", "b")):
    folder.mkdir(parents=True)
    write_validation(folder, [f"clip{i}.wav" for i in range(len(targets))], list(labels), targets, scores)
    return folder


def single_label(n, wrong, classes=2):
    """``(targets, scores)`` of ``n`` clips, the clips in ``wrong`` scored as the next class."""
    truth = np.arange(n) % classes
    guess = np.where(np.isin(np.arange(n), list(wrong)), (truth + 1) % classes, truth)
    return np.eye(classes)[truth], 0.1 + 0.8 * np.eye(classes)[guess]


@pytest.mark.parametrize("n, scratch_wrong, pretrained_wrong, kept, why", [
    (200, range(0, 4), range(4, 44), SCRATCH, "a clear lead"),  # 36 clips better on 200: clear
    (200, range(0, 4), range(4, 8), DEFAULT_PRETRAINED, "no clear lead"),  # the same clips right: a tie
    (63, range(0, 4), range(4, 12), DEFAULT_PRETRAINED, "no clear lead"),  # 4 clips on 63: noise
    (630, range(0, 40), range(40, 120), SCRATCH, "a clear lead"),  # the same share on ten times the clips
    (200, range(0, 40), range(40, 44), DEFAULT_PRETRAINED, "no clear lead"),  # the pretrained one better
])
def test_on_clips_of_the_training_groups_scratch_must_lead_clearly(tmp_path, n, scratch_wrong, pretrained_wrong,
                                                                    kept, why):
    folders = [write_candidate(tmp_path / name, *single_label(n, wrong))
               for name, wrong in (("scratch", scratch_wrong), ("mn04_as", pretrained_wrong))]
    index, reason = keep([SCRATCH_RUN, PRETRAINED_RUN], folders, multilabel=False, held_out=False)
    assert [SCRATCH, DEFAULT_PRETRAINED][index] == kept and why in reason and f"on {n} validation clips" in reason


@pytest.mark.parametrize("scratch_wrong, pretrained_wrong, kept, why", [
    (range(0, 4), range(4, 12), SCRATCH, "the higher score on unheard groups"),  # 4 clips on 63: it wins
    (range(0, 4), range(4, 8), DEFAULT_PRETRAINED, "a tie, where fine-tuned mn04_as is preferred"),  # the same count
    (range(0, 8), range(8, 12), DEFAULT_PRETRAINED, "fine-tuned mn04_as scores higher"),  # the pretrained one better
])
def test_on_clips_of_unheard_groups_the_higher_score_wins(tmp_path, scratch_wrong, pretrained_wrong, kept, why):
    folders = [write_candidate(tmp_path / name, *single_label(63, wrong))
               for name, wrong in (("scratch", scratch_wrong), ("mn04_as", pretrained_wrong))]
    index, reason = keep([SCRATCH_RUN, PRETRAINED_RUN], folders, multilabel=False, held_out=True,
                         clips="clips of the held-out groups")
    assert [SCRATCH, DEFAULT_PRETRAINED][index] == kept and why in reason
    assert "on 63 clips of the held-out groups" in reason


@pytest.mark.parametrize("wrong, held_out, kept, why", [
    # without augmentation the fine-tune must lead the one with it clearly, on any clips: 18 of 63 does ...
    ((range(0, 20), range(20, 40), range(40, 42)), True, 2, "a clear lead without augmentation"),
    # ... 4 of 63 does not (z 1.4), and an equal count keeps augmentation
    ((range(0, 10), range(10, 16), range(16, 18)), True, 1, "no clear lead without augmentation; fine-tuned mn04_as "
                                                             "scores higher"),
    ((range(0, 10), range(10, 16), range(16, 22)), True, 1, "no clear lead without augmentation"),
    # then from scratch against the fine-tune kept: on unheard groups the higher score wins, 8 of 63 ...
    ((range(0, 2), range(2, 12), range(12, 16)), True, 0, "the higher score on unheard groups"),
    # ... also over the fine-tune without augmentation, once that one was kept
    ((range(0, 1), range(1, 21), range(21, 24)), True, 0, "over fine-tuned mn04_as without augmentation"),
    # on clips of the training groups every change needs a clear lead
    ((range(0, 20), range(20, 70), range(70, 80)), False, 2, "a clear lead without augmentation"),
    ((range(0, 30), range(30, 36), range(36, 38)), False, 1, "no clear lead"),
])
def test_the_run_without_augmentation_replaces_the_augmented_one_only_on_a_clear_lead(tmp_path, wrong, held_out,
                                                                                     kept, why):
    n = 63 if max(w.stop for w in wrong) <= 63 else 200
    folders = [write_candidate(tmp_path / s.folder, *single_label(n, w)) for s, w in zip(THREE, wrong)]
    index, reason = keep(THREE, folders, multilabel=False, held_out=held_out)
    assert index == kept and why in reason
    assert "fine-tuned mn04_as without augmentation" in reason and "from scratch" in reason


def test_multi_label_compares_map_and_a_missing_comparison_keeps_the_pretrained_start(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.random((120, 4)) < 0.3).astype(float)
    good, poor = targets * 0.6 + rng.random((120, 4)) * 0.5, rng.random((120, 4))
    labels = ("a", "b", "c", "d")
    folders = [write_candidate(tmp_path / "s", targets, good, labels), write_candidate(tmp_path / "p", targets, poor, labels)]
    index, reason = keep([SCRATCH_RUN, PRETRAINED_RUN], folders, multilabel=True, held_out=False)
    assert index == 0 and "mAP" in reason and "a clear lead" in reason
    assert keep([SCRATCH_RUN, PRETRAINED_RUN], folders[::-1], True, held_out=False)[0] == 1  # roles swapped: it leads
    assert keep([SCRATCH_RUN, PRETRAINED_RUN], [folders[0], tmp_path / "none"], True, held_out=True)[0] == 1
    ap = mean_ap(targets, good)
    assert ap == pytest.approx(np.mean([average_precision(targets[:, c], good[:, c]) for c in range(4)]))


def test_validation_scores_round_trip_and_paired_differences_scale_with_the_clips(tmp_path):
    targets, scores = single_label(50, range(5), classes=3)
    write_candidate(tmp_path / "v", targets, scores, ("x", "y", "z"))
    paths, t, s = read_validation(tmp_path / "v")
    assert paths == [f"clip{i}.wav" for i in range(50)] and np.array_equal(t, targets) and np.allclose(s, scores)
    assert accuracy(t, s) == pytest.approx(0.9)
    small = paired_z(accuracy, *single_label(100, range(10))[:1], single_label(100, range(10))[1],
                     single_label(100, range(10, 16))[1])
    large = paired_z(accuracy, *single_label(1000, range(100))[:1], single_label(1000, range(100))[1],
                     single_label(1000, range(100, 160))[1])
    assert small[0] == pytest.approx(-0.04) and large[0] == pytest.approx(-0.04)
    assert abs(large[1]) > 2.5 * abs(small[1])  # the same difference, ten times the clips: about sqrt(10) times the z


@pytest.mark.parametrize("speakers, test, held_out, selection", [
    (13, "speaker", True, False),  # twelve training speakers: validation holds some out
    (5, "speaker", True, True),  # four: a selection hold-out of one of them
    (5, "take", False, False),  # the test shares the speakers (FSDD's split by take): validation shares them too
    (0, "take", False, False),  # no speakers named
])
def test_the_starts_are_compared_on_unheard_groups_where_the_data_have_them(tmp_path, speakers, test, held_out,
                                                                          selection):
    rows = []
    for k in range(max(speakers, 5) * 2 * 6):
        speaker, label, take = k % max(speakers, 5), (k // max(speakers, 5)) % 2, k // (max(speakers, 5) * 2)
        sf.write(tmp_path / f"{k}.wav", tone(300.0 * (1 + label)), SR)
        fold = "test" if (speaker == 0 if test == "speaker" else take == 0) else "train"
        rows.append([f"{k}.wav", f"c{label}", f"s{speaker}" if speakers else "", fold])
    data = write_csv(tmp_path / "data.csv", ["path", "label", "group", "fold"], rows)
    compared = plan_comparison(TrainConfig(test_fold="test"), data, tmp_path / "run")
    assert compared.held_out == held_out and bool(compared.manifest) == selection
    assert (tmp_path / "run" / SELECTION_DIR / "manifest.csv").is_file() == selection


@pytest.mark.slow
def test_the_run_keeps_the_candidate_that_validates_better(tmp_path, capsys):
    root, run = tmp_path / "tones", tmp_path / "run"
    write_tones(root, groups=("a", "b", "c", "d"), per_group=3)
    audioclf.train(str(root), str(run), clip_seconds=0.25, batch_size=8, epochs=2, cache_dir=str(tmp_path / "cache"))
    out = capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    tried = {Start(c["pretrained"], c["augment"]): c for c in config["candidates"]}
    assert list(tried) == THREE and sum(c["kept"] for c in tried.values()) == 1
    kept = next(start for start, c in tried.items() if c["kept"])
    n_val = config["split_sizes"]["val"]
    for start, c in tried.items():  # each candidate's validation clips at its best epoch, which the choice compared
        assert len(read_validation(run / c["run"])[0]) == n_val and c["run"] == f"candidates/{start.folder}"
        trained = json.loads((run / c["run"] / "config.json").read_text())
        reasons = trained["training"]["reasons"]
        lr = "lr=0.003" if start.pretrained == SCRATCH else "lr=0.001"  # each start's peak rate, with its reason
        assert lr in reasons and f"auto: {lr}: {reasons[lr]}" in out
        assert trained["training"]["augment"] == start.augment and (run / c["run"] / "report.json").is_file()
        assert any(v for k, v in trained["augment"].items() if k != "snr_db") == start.augment  # as it says
    folder = run / tried[kept]["run"]
    assert (run / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert json.loads((run / "report.json").read_text()) == json.loads((folder / "report.json").read_text())
    assert config["training"]["pretrained"] == kept.pretrained and config["model"] == tried[kept]["model"]
    reason = config["training"]["reasons"][kept.key]
    assert f"auto: {kept.key}: {reason}" in out and "accuracy" in reason and f"on {n_val} validation clips" in reason
    assert "auto: cues: balanced validation accuracy from each cue alone" in out and "cues" in config["training"]["reasons"]
    assert audioclf.load(run).labels == config["labels"]  # the run folder serves as any other


@pytest.mark.slow
def test_with_few_training_groups_the_starts_are_compared_on_held_out_ones(tmp_path, capsys):
    """Five speakers, one of them the test: validation would share the other four, so the starts train without a
    held-out one, are compared on it, and the kept start trains again on all four."""
    root, run = tmp_path / "tones", tmp_path / "run"
    write_tones(root, groups=("a", "b", "c", "d", "e"), per_group=3)
    audioclf.train(str(root), str(run), pattern=r"(?P<label>[^/]+)/(?P<group>[a-z])_\d+\.wav", clip_seconds=0.25,
                   batch_size=8, epochs=2, cache_dir=str(tmp_path / "cache"))
    out = capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    rows = [line.split(",") for line in (run / config["selection"]["manifest"]).read_text().splitlines()[1:]]
    held = [r for r in rows if r[3] == "validation"]
    held_groups, rest_groups = {r[2] for r in held}, {r[2] for r in rows if r[3] == "train"}
    test_groups = {Path(r["path"]).name.split("_")[0] for r in csv.DictReader(open(run / "split.csv")) if r["subset"] == "test"}
    assert len(held_groups) == 1 and not held_groups & rest_groups and not (held_groups | rest_groups) & test_groups
    assert f"selection: 1 of the 4 training groups held out ({held_groups.pop()}; {len(held)} clips)" in out
    tried = {Start(c["pretrained"], c["augment"]): c for c in config["candidates"]}
    assert list(tried) == THREE and sum(c["kept"] for c in tried.values()) == 1
    for c in tried.values():  # compared on the held-out clips, which they did not train on
        assert c["run"].startswith("selection/") and sorted(read_validation(run / c["run"])[0]) == sorted(r[0] for r in held)
    kept = next(start for start, c in tried.items() if c["kept"])
    reason = config["training"]["reasons"][kept.key]
    assert f"auto: {kept.key}: {reason}" in out and f"on {len(held)} clips of the held-out groups" in reason
    folder = run / config["selection"]["kept_run"]  # trained again on every training group, as it was compared
    assert folder.name == kept.folder and config["training"]["pretrained"] == kept.pretrained
    assert config["training"]["augment"] == kept.augment
    assert config["split_sizes"]["train"] + config["split_sizes"]["val"] == len(rows)
    assert (run / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert json.loads((run / "report.json").read_text()) == json.loads((folder / "report.json").read_text())
    assert audioclf.load(run).labels == config["labels"]
