"""``audioclf train DATA`` with the model left to the data: from scratch and fine-tuned mn04_as both trained, the
better on validation kept (audioclf/training/selection.py)."""
from __future__ import annotations

import json

import pytest
from test_cli import write_tones

import audioclf
from audioclf.training.config import SCRATCH, TrainConfig
from audioclf.training.selection import DEFAULT_PRETRAINED, candidates, keep


@pytest.mark.parametrize("settings, starts, named", [
    ({}, [SCRATCH, DEFAULT_PRETRAINED], "validation"),
    ({"sample_rate": 32000}, [SCRATCH, DEFAULT_PRETRAINED], "validation"),  # the rate the pretrained model takes
    ({"model": "cnn"}, [SCRATCH], "--model"),
    ({"width": 0.5}, [SCRATCH], "--width"),
    ({"sample_rate": 16000}, [SCRATCH], "--sample-rate"),
    ({"ensemble": 3}, [SCRATCH], "--ensemble"),
    ({"val_fraction": 0.0}, [SCRATCH], "--val-fraction 0"),
    ({"pretrained": SCRATCH}, [SCRATCH], "--pretrained"),
    ({"pretrained": "mn04_as"}, ["mn04_as"], "--pretrained"),
])
def test_both_starts_are_tried_unless_a_setting_fixes_the_model(tmp_path, settings, starts, named):
    chosen, why = candidates(TrainConfig(**settings), tmp_path, tmp_path / "run")
    assert chosen == starts and named in why


def test_a_single_run_interrupted_before_resumes_as_it_began(tmp_path):
    (tmp_path / "run" / "state").mkdir(parents=True)
    chosen, why = candidates(TrainConfig(resume=True), tmp_path, tmp_path / "run")
    assert chosen == [SCRATCH] and "--resume" in why
    (tmp_path / "run" / "candidates").mkdir()  # a run of candidates resumes them
    assert candidates(TrainConfig(resume=True), tmp_path, tmp_path / "run")[0] == [SCRATCH, DEFAULT_PRETRAINED]


def test_a_clear_accuracy_lead_decides_and_within_the_noise_the_loss_does():
    run = lambda acc, loss: {"val_accuracy": acc, "val_loss": loss}  # noqa: E731
    assert keep([run(0.80, 0.50), run(0.95, 0.60)], 200)[0] == 1  # 15 points on 200 clips: clear
    best, why = keep([run(0.985, 0.094), run(0.995, 0.141)], 200)  # two clips apart: the loss decides
    assert best == 0 and "lower loss" in why
    assert keep([run(0.635, 0.946), run(0.762, 0.975)], 63)[0] == 0  # 8 clips of 63: within two standard errors
    assert keep([run(0.635, 0.946), run(0.762, 0.975)], 630)[0] == 1  # the same lead on ten times the clips
    assert keep([run(1.0, 0.02), run(1.0, 0.01)], 100)[0] == 1
    assert keep([{}, run(0.5, 2.0)], 100)[0] == 1  # a run without validation figures is never kept over one with
    assert keep([{"val_mAP": 0.6, "val_loss": 0.1}, {"val_mAP": 0.7, "val_loss": 0.3}], 100) == (1, "the higher mAP")


def test_the_run_keeps_the_candidate_that_validates_better(tmp_path, capsys):
    root, run = tmp_path / "tones", tmp_path / "run"
    write_tones(root, groups=("a", "b", "c", "d"), per_group=3)
    audioclf.train(str(root), str(run), clip_seconds=0.25, batch_size=8, epochs=2, cache_dir=str(tmp_path / "cache"))
    out = capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    tried = {c["pretrained"]: c for c in config["candidates"]}
    assert set(tried) == {SCRATCH, DEFAULT_PRETRAINED} and sum(c["kept"] for c in tried.values()) == 1
    kept = next(name for name, c in tried.items() if c["kept"])
    other = next(name for name in tried if name != kept)
    assert keep([tried[kept], tried[other]], config["split_sizes"]["val"])[0] == 0
    folder = run / tried[kept]["run"]
    assert (run / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert json.loads((run / "report.json").read_text()) == json.loads((folder / "report.json").read_text())
    assert config["training"]["pretrained"] == kept and config["model"] == tried[kept]["model"]
    assert (run / tried[other]["run"] / "report.json").is_file()  # the other candidate stays, complete
    reason = config["training"]["reasons"][f"pretrained={kept}"]
    assert f"auto: pretrained={kept}: {reason}" in out and "accuracy" in reason
    assert "auto: cues: balanced validation accuracy from each cue alone" in out and "cues" in config["training"]["reasons"]
    assert audioclf.load(run).labels == config["labels"]  # the run folder serves as any other
