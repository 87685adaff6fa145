"""No silent wrong results: output folders, stale derived files, input types, exit codes, flag validation, reports."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FSDD_CLIPS, make_tiny_run, run_cli

SR = 8000
TONES = {"low": 300.0, "high": 1200.0}
FAST = ["--model", "cnn", "--width", "0.25", "--epochs", "1", "--batch-size", "8", "--sample-rate", "8000",
        "--clip-seconds", "0.5", "--n-mels", "32", "--device", "cpu", "--no-amp", "--ema-decay", "0"]


def tone(freq: float, seconds: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_tones(root: Path, per_label: int = 10) -> Path:
    """``root/<label>/g<k>_<n>.wav``: two tone classes, five groups; returns ``root``."""
    for label, freq in TONES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            sf.write(root / label / f"g{n % 5}_{n}.wav", tone(freq * (1 + 0.01 * n), phase=n), SR)
    return root


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust")
    return write_tones(base / "data"), base / "cache"


@pytest.fixture(scope="module")
def trained(tones, tmp_path_factory):
    """One quick run on the tones (held-out test clips), trained through the CLI."""
    data, cache = tones
    run = tmp_path_factory.mktemp("trained") / "run"
    rc, out, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *FAST)
    assert rc == 0, err
    return run, out


def one_line_error(err: str, *words: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


# --- 1: output folders and stale derived files

def test_train_refuses_a_non_empty_out_and_overwrite_replaces_the_whole_run(tones, tmp_path):
    data, cache = tones
    run = tmp_path / "run"
    assert run_cli("train", data, "--out", run, "--cache-dir", cache, *FAST)[0] == 0
    assert run_cli("export", run)[0] == 0
    (run / "evaluation").mkdir()
    (run / "evaluation" / "report.json").write_text("{}")
    weights = (run / "model.safetensors").read_bytes()
    rc, _, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *FAST, "--seed", "1")
    assert rc == 2
    one_line_error(err, str(run), "--overwrite", "--resume")
    assert (run / "model.safetensors").read_bytes() == weights and (run / "model.onnx").is_file()
    rc, _, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *FAST, "--seed", "1", "--overwrite")
    assert rc == 0, err
    assert not (run / "model.onnx").exists() and not (run / "evaluation").exists()
    assert (run / "model.safetensors").read_bytes() != weights


def test_overwrite_only_replaces_audioclf_output(tones, tmp_path):
    data, cache = tones
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    rc, _, err = run_cli("train", data, "--out", folder, "--cache-dir", cache, *FAST, "--overwrite")
    assert rc == 2
    one_line_error(err, "holds none")
    assert (folder / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("sub", ["candidates", "selection"])
def test_overwrite_replaces_a_run_stopped_while_it_trained_its_candidates(tmp_path, sub):
    from audioclf.run_folder import claim, is_empty
    stopped = tmp_path / "stopped"  # interrupted before the run's own files were written
    (stopped / sub / "scratch" / "state").mkdir(parents=True)
    (stopped / sub / "scratch" / "metrics.csv").write_text("epoch\n1\n")
    with pytest.raises(ValueError, match="--resume"):
        claim(stopped)
    assert claim(stopped, overwrite=True) == stopped and is_empty(stopped)
    mine = tmp_path / "mine"  # a folder of that name holding no run is not audioclf's to remove
    (mine / sub / "photos").mkdir(parents=True)
    (mine / sub / "photos" / "a.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds none"):
        claim(mine, overwrite=True)
    assert (mine / sub / "photos" / "a.txt").read_text() == "keep me"


HOLDER = ("import sys; from audioclf.run_folder import claim; claim(sys.argv[1], overwrite=True, resume=True); "
          "print('held', flush=True); sys.stdin.read()")


@pytest.mark.parametrize("how", ["--overwrite", "--resume", "new"])
def test_a_folder_another_command_writes_into_is_refused_until_that_command_ends(tones, tmp_path, how):
    """Two commands writing into one folder would leave a run made of both: the second is refused while the first
    lives, and the lock goes with the first process however it ends (here SIGKILL)."""
    import subprocess

    data, cache = tones
    run = tmp_path / "run"
    if how != "new":
        assert run_cli("train", data, "--out", run, "--cache-dir", cache, *FAST)[0] == 0
    weights = (run / "model.safetensors").read_bytes() if how != "new" else None
    import audioclf
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(audioclf.__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        flags = [] if how == "new" else [how]
        rc, _, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *FAST, *flags)
        assert rc == 2
        one_line_error(err, str(run), f"process {holder.pid}", "writing into this folder")
        if weights:
            assert (run / "model.safetensors").read_bytes() == weights  # untouched
    finally:
        holder.kill()
        holder.wait()
    rc, _, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *FAST, "--overwrite")
    assert rc == 0, err
    assert not (run / ".audioclf.lock").exists()  # released, and its file removed, when the command ended


def test_claim_is_reentrant_in_a_process_and_a_lock_file_alone_is_an_empty_folder(tmp_path):
    from audioclf.run_folder import LOCK_NAME, claim, claimed, is_empty, release
    folder = tmp_path / "out"
    with claimed(folder) as held:
        assert held == folder and (folder / LOCK_NAME).is_file() and is_empty(folder)
        assert claim(folder) == folder  # the same process may claim it again
        release(folder)
        assert (folder / LOCK_NAME).is_file()  # still held: one release a claim
    assert not (folder / LOCK_NAME).exists()
    (folder / LOCK_NAME).write_text("12345\n")  # left by a process that was killed
    assert is_empty(folder) and claim(folder) == folder
    release(folder)
    assert list(folder.iterdir()) == []


def test_a_stale_onnx_export_is_refused_and_predict_exports_again(tmp_path):
    pytest.importorskip("onnxruntime")
    from audioclf.checkpoint import load_run, save_run
    from audioclf.inference import load
    from audioclf.onnx_predictor import OnnxClassifier
    run = make_tiny_run(tmp_path / "run", FSDD_CLIPS)
    assert run_cli("export", run)[0] == 0
    OnnxClassifier(run)  # current
    model, config = load_run(run)
    with torch.no_grad():
        model.get_classifier().bias.add_(torch.arange(10.0))  # other weights: other answers
    save_run(run, model, config)
    with pytest.raises(ValueError, match="exported from other weights"):
        OnnxClassifier(run)
    rc, out, err = run_cli("predict", run, FSDD_CLIPS[0], "--backend", "onnx", "--format", "json", "--top-k", "3")
    assert rc == 0 and "exporting it first" in err
    got = json.loads(out)[0]["predictions"]
    want = load(run).predict(FSDD_CLIPS[0], top_k=3)
    assert [p["label"] for p in got] == [p["label"] for p in want]


def test_reports_and_exports_name_the_weights_they_used_even_when_the_run_is_saved_again_meanwhile(tmp_path,
                                                                                                   monkeypatch):
    import audioclf.inference
    from audioclf.checkpoint import load_run
    run = make_tiny_run(tmp_path / "run", FSDD_CLIPS[:8])
    used = json.loads((run / "config.json").read_text())["weights_sha256"]
    data = tmp_path / "data"
    for clip in FSDD_CLIPS[:4]:
        (data / Path(clip).name[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, data / Path(clip).name[0])
    score = audioclf.inference.clip_logits

    def retrained_while_scoring(*args, **kwargs):  # another command saves the run between load and report
        make_tiny_run(run, FSDD_CLIPS[4:])
        return score(*args, **kwargs)
    monkeypatch.setattr(audioclf.inference, "clip_logits", retrained_while_scoring)
    rc, _, err = run_cli("evaluate", run, data, "--out", tmp_path / "eval")
    assert rc == 0, err
    now = json.loads((run / "config.json").read_text())["weights_sha256"]
    assert now != used and json.loads((tmp_path / "eval" / "report.json").read_text())["weights_sha256"] == used

    config = json.loads((run / "config.json").read_text())
    del config["weights_sha256"]  # a run saved before configs held it
    (run / "config.json").write_text(json.dumps(config))
    assert load_run(run)[1]["weights_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()


def test_weights_and_config_from_different_saves_are_refused(tmp_path):
    from audioclf.checkpoint import CheckpointError, load_run
    a = make_tiny_run(tmp_path / "a", FSDD_CLIPS[:8])
    b = make_tiny_run(tmp_path / "b", FSDD_CLIPS[4:])
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    shutil.copy(b / "model.safetensors", a / "model.safetensors")
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_run(a)


def test_config_carries_label_maps(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["id2label"] == {str(i): label for i, label in enumerate(config["labels"])}
    assert config["label2id"] == {label: i for i, label in enumerate(config["labels"])}


# --- 2: Classifier.predict inputs

def test_predict_takes_the_pipeline_inputs_and_resamples(tiny_run):
    import audioclf
    from audioclf.audio import load_audio, resample
    clf = audioclf.load(tiny_run)
    path = FSDD_CLIPS[3]
    want = clf.scores(path)[0]
    native, rate = sf.read(path, dtype="float32")
    assert rate == 8000
    same = lambda x, **kw: np.testing.assert_allclose(clf.scores(x, **kw)[0], want, atol=1e-5)  # noqa: E731
    same(native, sampling_rate=8000)
    same(Path(path).read_bytes())
    same({"raw": native, "sampling_rate": 8000})
    same({"array": native.astype(np.float64), "sampling_rate": 8000})
    same(load_audio(path), sampling_rate=8000)  # torch (1, samples)
    same(np.stack([native, native], axis=1), sampling_rate=8000)  # soundfile's stereo (samples, 2)
    same(np.stack([native, native]), sampling_rate=8000)  # (2, samples)
    same((native * 32767).astype(np.int16), sampling_rate=8000)
    up = resample(native, 8000, 16000)
    np.testing.assert_allclose(clf.scores(up, sampling_rate=16000)[0], want, atol=2e-2)
    single = clf.predict(native, sampling_rate=8000, top_k=2)
    assert isinstance(single, list) and len(single) == 2 and set(single[0]) == {"label", "score"}
    batch = clf.predict([path, {"raw": up, "sampling_rate": 16000}], top_k=2)
    assert len(batch) == 2 and all(len(row) == 2 for row in batch)


@pytest.mark.parametrize("audio, kw, match", [
    (np.zeros(8000, np.float32), {}, "sampling_rate="),
    (np.zeros((100, 200), np.float32), {"sampling_rate": 8000}, "ambiguous shape"),
    (np.zeros((2, 3, 4000), np.float32), {"sampling_rate": 8000}, "shape"),
    (np.zeros(0, np.float32), {"sampling_rate": 8000}, "no samples"),
    (np.full(800, np.nan, np.float32), {"sampling_rate": 8000}, "NaN"),
    (np.zeros(800, np.float32), {"sampling_rate": 0}, "sampling_rate must be"),
    ({"raw": np.zeros(800)}, {}, "'raw'"),
    (3.5, {}, "float is not audio"),
])
def test_predict_refuses_inputs_it_cannot_read_unambiguously(tiny_run, audio, kw, match):
    import audioclf
    with pytest.raises(ValueError, match=match):
        audioclf.load(tiny_run).predict(audio, **kw)


# --- 4: predict reports every input

def test_predict_gives_a_row_per_input_and_exit_1_when_one_failed(tiny_run, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    good = FSDD_CLIPS[0]
    rc, out, err = run_cli("predict", tiny_run, good, bad, FSDD_CLIPS[1], "--format", "json")
    assert rc == 1 and str(bad) in err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == [good, str(bad), FSDD_CLIPS[1]]
    assert "predictions" in rows[0] and "error" in rows[1] and "predictions" in rows[2]
    rc, out, _ = run_cli("predict", tiny_run, good, bad, "--format", "csv", "--top-k", "1")
    table = list(csv.DictReader(io.StringIO(out)))
    assert rc == 1 and [r["path"] for r in table] == [good, str(bad)]
    assert table[0]["error"] == "" and table[1]["error"] and table[1]["label"] == ""
    rc, out, _ = run_cli("predict", tiny_run, good, bad, "--window", "0.5")
    assert rc == 1 and f"{bad}: error:" in out
    assert run_cli("predict", tiny_run, good)[0] == 0


# --- 5 and the sweep: every flag checked up front, one line, exit 2, nothing written

SWEEP = [
    ("train", ["DATA", "--out", "OUT", "--balance", "maybe"], "--balance"),
    ("train", ["DATA", "--out", "OUT", "--clip-seconds", "-1"], "--clip-seconds"),
    ("train", ["DATA", "--out", "OUT", "--epochs", "two"], "--epochs"),
    ("train", ["DATA", "--out", "OUT", "--lr", "0"], "--lr"),
    ("train", ["DATA", "--out", "OUT", "--val-fraction", "1.5"], "--val-fraction"),
    ("train", ["DATA", "--out", "OUT", "--device", "gpu"], "--device gpu"),
    ("train", ["DATA", "--out", "OUT", "--device", "cuda:7"], "--device cuda:7"),
    ("train", ["DATA", "--out", "OUT", "--model", "nosuch"], "nosuch"),
    ("train", ["DATA", "--out", "OUT", "--aug", "nosuch=1"], "nosuch"),
    ("train", ["DATA", "--out", "OUT", "--pretrained", "nosuch_as"], "nosuch_as"),
    ("train", ["MISSING", "--out", "OUT"], "MISSING"),
    ("cv", ["DATA", "--out", "OUT", "--folds", "1"], "--folds"),
    ("cv", ["DATA", "--out", "OUT", "--jobs", "0"], "--jobs"),
    ("cv", ["DATA", "--out", "OUT", "--test-fold", "1"], "--test-fold"),
    ("cv", ["MISSING", "--out", "OUT"], "MISSING"),
    ("predict", ["RUN", "CLIP", "--top-k", "0"], "--top-k"),
    ("predict", ["RUN", "CLIP", "--median", "2"], "--median"),
    ("predict", ["RUN", "CLIP", "--window", "-1"], "--window"),
    ("predict", ["RUN", "CLIP", "--threshold", "nan"], "--threshold"),
    ("predict", ["RUN", "CLIP", "--device", "cuda"], "--device cuda"),
    ("predict", ["MISSING", "CLIP"], "MISSING"),
    ("predict", ["nosuch_as", "CLIP"], "nosuch_as"),
    ("evaluate", ["RUN", "MISSING"], "MISSING"),
    ("evaluate", ["MISSING", "DATA"], "MISSING"),
    ("embed", ["RUN", "CLIP", "--out", "OUT.txt"], ".npy"),
    ("export", ["MISSING"], "MISSING"),
    ("export", ["RUN", "--opset", "3"], "--opset"),
    ("adapt", ["RUN", "CLIP", "--out", "OUT", "--max-windows", "0"], "--max-windows"),
    ("adapt", ["MISSING", "CLIP", "--out", "OUT"], "MISSING"),
    ("pack", ["DATA", "--out", "OUT", "--shard-size", "0"], "--shard-size"),
    ("pack", ["MISSING", "--out", "OUT"], "MISSING"),
    ("serve", ["RUN", "--port", "70000"], "--port"),
    ("serve", ["RUN", "--max-batch", "0"], "--max-batch"),
    ("serve", ["MISSING"], "MISSING"),
    ("models", ["--sample-rate", "x"], "--sample-rate"),
]


@pytest.mark.parametrize("command, args, named", SWEEP, ids=[f"{c}-{'-'.join(a[2:] or a)}" for c, a, _ in SWEEP])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(command, args, named, tiny_run, tones, tmp_path):
    data, _ = tones
    names = {"DATA": str(data), "RUN": str(tiny_run), "CLIP": FSDD_CLIPS[0], "OUT": str(tmp_path / "out"),
             "OUT.txt": str(tmp_path / "out.txt"), "MISSING": str(tmp_path / "missing")}
    argv = [command] + [names.get(a, a) for a in args]
    named = names.get(named, named)
    before = sorted(tmp_path.iterdir())
    rc, _, err = run_cli(*argv)
    assert rc == 2
    one_line_error(err, f"audioclf {command}: error:", named)
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no empty folder left


def test_a_failed_train_leaves_no_folder_behind(tmp_path):
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for n in range(3):
            (data / label / f"{n}.wav").write_bytes(b"RIFF....WAVEjunk")
    rc, _, err = run_cli("train", data, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", *FAST)
    assert rc == 2 and "no usable training files" in err
    assert not (tmp_path / "run").exists()


def test_find_duplicates_names_held_out_copies_and_label_conflicts():
    from audioclf.data.duplicates import digest, find_duplicates
    a, b, c = tone(300.0), tone(1200.0), tone(600.0)
    clips = {"t1": a, "t2": b, "v1": a.copy(), "x1": b.copy(), "x2": c, "x3": c.copy(), "x4": a + 1e-7}
    assert digest(a[::-1]) != digest(a) and digest(a.astype(np.float64)) == digest(a)  # samples, as float32
    labels = {"t1": ("low",), "t2": ("high",), "v1": ("low",), "x1": ("low",), "x2": ("mid",), "x3": ("mid",),
              "x4": ("low",)}
    found = find_duplicates({"train": ["t1", "t2"], "validation": ["v1"], "test": ["x1", "x2", "x3", "x4"]},
                            {k: digest(v) for k, v in clips.items()}, labels)
    assert [(path, other) for path, _, _, other, *_ in found.copies] == [("v1", "t1"), ("x1", "t2")]
    assert found.conflicts == [("x1", "test", "low", "t2", "train", "high")]  # x3 repeats a test clip: no copy
    assert found.counts() == {"validation": 1, "test": 1, "label_conflicts": 1}  # x4 differs by 1e-7: not a copy


def train_on_rows(rows: list[list[str]], tmp_path: Path, cache: Path, *flags: str) -> tuple[Path, str]:
    """Train (``FAST``) on a CSV manifest of ``rows`` (a header first), tested on its fold ``test``, into
    ``tmp_path/run``; ``(the run, stdout)``."""
    manifest, run = tmp_path / "manifest.csv", tmp_path / "run"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    rc, out, err = run_cli("train", manifest, "--test-fold", "test", "--out", run, "--cache-dir", cache, *FAST, *flags)
    assert rc == 0, err
    return run, out


def test_train_notes_test_clips_that_copy_training_clips(tones, tmp_path):
    """A copied file in the test fold (and one under another label) is named in the output, duplicates.csv and
    config.json; a run without copies writes no such file."""
    data, cache = tones
    rows = [["path", "label", "fold"]]
    for label in TONES:
        files = sorted((data / label).glob("*.wav"))
        rows += [[str(f), label, "test" if n < 2 else "train"] for n, f in enumerate(files)]
    trained_file = Path(rows[5][0])  # a training clip of "low"
    for name, label in (("copy.wav", "low"), ("relabelled.wav", "high")):
        shutil.copy(trained_file, tmp_path / name)
        rows.append([str(tmp_path / name), label, "test"])
    run, out = train_on_rows(rows, tmp_path, cache)
    assert "note: 2 test and 0 validation clip(s) are copies of training clips" in out
    assert "note: 1 pair(s) of identical clips carry different labels" in out
    with open(run / "duplicates.csv") as f:
        found = list(csv.DictReader(f))
    assert {(r["kind"], Path(r["path"]).name, r["same_audio_as"]) for r in found} == {
        ("copy", "copy.wav", str(trained_file)), ("copy", "relabelled.wav", str(trained_file)),
        ("label conflict", "relabelled.wav", str(trained_file))}
    assert json.loads((run / "config.json").read_text())["duplicates"] == {"validation": 0, "test": 2,
                                                                         "label_conflicts": 1}
    clean = tmp_path / "clean"
    assert run_cli("train", data, "--out", clean, "--cache-dir", cache, *FAST)[0] == 0
    assert not (clean / "duplicates.csv").exists() and "duplicates" not in json.loads((clean / "config.json").read_text())


def test_cv_names_the_folds_whose_test_clips_copy_training_clips_or_share_its_groups(tones, tmp_path):
    data, cache = tones
    rows = [["path", "label", "group", "fold"]]
    for label in TONES:  # groups g0-g4 (g<n % 5>), each in both folds
        rows += [[str(f), label, f.name.split("_")[0], str(n % 2)]
                 for n, f in enumerate(sorted((data / label).glob("*.wav")))]
    shutil.copy(rows[1][0], tmp_path / "copy.wav")  # fold 0's first clip, again in fold 1
    rows.append([str(tmp_path / "copy.wav"), rows[1][1], "copied", "1"])
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "cv"
    rc, text, err = run_cli("cv", tmp_path / "manifest.csv", "--out", out, "--cache-dir", cache, *FAST)
    assert rc == 0, err
    counts = {"validation": 0, "test": 1, "label_conflicts": 0}
    assert json.loads((out / "cv_report.json").read_text())["duplicates"] == {"0": counts, "1": counts}
    assert text.count("test clip(s) copy training clips") == 2  # each fold tests one of the pair, the other trains
    assert "note: fold 0: 5 of its 5 test groups are also in its training folds" in text
    assert json.loads((out / "cv_report.json").read_text())["test_groups_heard"] == {"0": [5, 5], "1": [5, 6]}


def test_train_notes_a_declared_test_fold_that_shares_groups_with_train(tones, tmp_path):
    data, cache = tones
    rows = [["path", "label", "group", "fold"]]
    for label in TONES:
        for n, f in enumerate(sorted((data / label).glob("*.wav"))):  # groups g0-g4; test: g0 (also in train), g1
            group = f.name.split("_")[0]
            rows.append([str(f), label, group, "test" if group == "g1" or (group == "g0" and n % 2) else "train"])
    run, out = train_on_rows(rows, tmp_path, cache)
    assert "note: 1 of the test fold's 2 groups are also in train" in out
    assert json.loads((run / "config.json").read_text())["test_groups_heard"] == [1, 2]
    rows = [r if r[2] != "g0" or r[3] != "test" else [*r[:3], "train"] for r in rows]  # g1 alone: unheard
    run, out = train_on_rows(rows, tmp_path, cache, "--overwrite")
    assert "groups are also in train" not in out
    assert "test_groups_heard" not in json.loads((run / "config.json").read_text())


def test_aug_mixup_alpha_is_the_mixup_the_loop_uses(monkeypatch):
    from audioclf.features import FrontendConfig
    from audioclf.models import create_model
    from audioclf.training import loop
    from audioclf.training.config import TrainConfig
    from audioclf.training.settings import augment_config
    used = []
    monkeypatch.setattr(loop, "mixup", lambda w, t, alpha: (used.append(alpha), (w, t))[1])
    for cfg in (TrainConfig(mixup=0.0, aug="mixup_alpha=0.7,mixup_prob=1", amp=False),
                TrainConfig(mixup=0.3, augment=False, amp=False)):
        augment = augment_config(cfg)
        model = create_model("cnn", 2, FrontendConfig(sample_rate=8000, n_mels=16), augment, width=0.25)
        opt = torch.optim.AdamW(model.parameters())
        target = torch.nn.functional.one_hot(torch.tensor([0, 1]), 2).float()
        loop.train_step(model, model, opt, None, torch.randn(2, 4000), target, 1e-3, cfg, False, None)
    assert used == [0.7]  # --aug mixup_alpha=0.7 with --mixup 0 mixes; --no-augment does not


def test_train_config_check_names_the_flag():
    from audioclf.training.config import TrainConfig
    for kw, flag in [({"balance": "maybe"}, "--balance"), ({"clip_seconds": -1.0}, "--clip-seconds"),
                     ({"ensemble": 0}, "--ensemble"), ({"device": "gpu"}, "--device")]:
        with pytest.raises(ValueError, match=flag):
            TrainConfig(**kw).check()
    TrainConfig().check()


# --- 6: reports

def test_train_names_skipped_files_and_counts_usable_clips(tones, tmp_path):
    data, cache = tones
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "low" / "g0_broken.wav").write_bytes(b"RIFF....WAVEjunk")
    rc, out, err = run_cli("train", copy, "--out", tmp_path / "run", "--cache-dir", cache, *FAST)
    assert rc == 0, err
    assert "g0_broken.wav:" in out
    line = next(line for line in out.splitlines() if line.startswith("split:"))
    counts = [int(w.strip(",")) for w in line.split()[2:7:2]]
    assert sum(counts) == 20 and "usable clips" in line  # 21 files, 20 decodable
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert sum(config["split_sizes"].values()) == 20


def test_evaluate_leaves_out_the_clips_the_run_trained_on(trained, tones):
    run, _ = trained
    data, cache = tones
    split = list(csv.DictReader(open(run / "split.csv")))
    assert len(split) == 20 and {r["subset"] for r in split} == {"train", "validation", "test"}
    n_test = sum(r["subset"] == "test" for r in split)
    rc, out, _ = run_cli("evaluate", run, data, "--cache-dir", cache, "--out", run / "eval")
    assert rc == 0 and "leaving out" in out and "--include-training-clips" in out
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["n"] == n_test
    assert report["weights_sha256"] == json.loads((run / "config.json").read_text())["weights_sha256"]
    rc, out, _ = run_cli("evaluate", run, data, "--cache-dir", cache, "--out", run / "eval-all",
                         "--include-training-clips")
    assert rc == 0 and json.loads((run / "eval-all" / "report.json").read_text())["n"] == 20



def test_evaluate_leaves_out_renamed_copies_of_the_clips_the_run_trained_on(trained, tones, tmp_path):
    """The same audio under another name (a copied file, or the same samples as FLAC) is left out too."""
    run, _ = trained
    data, cache = tones
    split = list(csv.DictReader(open(run / "split.csv")))
    assert all(len(r["audio_sha256"]) == 32 for r in split)
    seen = [Path(r["path"]) for r in split if r["subset"] != "test"][:3]
    test = [Path(r["path"]) for r in split if r["subset"] == "test"]
    other = tmp_path / "other"
    for n, path in enumerate(seen + test):
        label = path.parent.name
        (other / label).mkdir(parents=True, exist_ok=True)
        if n == 1:  # the same samples in another container
            audio, sr = sf.read(path, dtype="int16")
            sf.write(other / label / f"copy{n}.flac", audio, sr, subtype="PCM_16")
        else:
            shutil.copy(path, other / label / f"copy{n}.wav")
    rc, out, err = run_cli("evaluate", run, other, "--cache-dir", cache, "--out", tmp_path / "eval")
    assert rc == 0, err
    assert "leaving out 3 clip(s) whose audio is identical to clips the run trained or validated on" in out
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["n"] == len(test)
    rc, _, _ = run_cli("evaluate", run, other, "--cache-dir", cache, "--out", tmp_path / "all",
                       "--include-training-clips")
    assert rc == 0 and json.loads((tmp_path / "all" / "report.json").read_text())["n"] == len(seen) + len(test)

# --- 7: progress and offline docs

def test_progress_lines_appear_only_where_no_bar_shows(capsys):
    from audioclf.training.outputs import ProgressLines
    lines = ProgressLines("epoch 3", 40, enabled=True, every=0.0)
    lines.update(10, 0.5)
    quiet = ProgressLines("epoch 3", 40, enabled=False, every=0.0)
    quiet.update(10, 0.5)
    out = capsys.readouterr().out
    assert out.count("epoch 3: batch 10/40, train_loss 0.5000") == 1


def test_docs_page_needs_no_internet(tiny_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("swagger_ui_bundle")
    import re
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from audioclf.serving import create_app
    with TestClient(create_app(tiny_run)) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(a.startswith("/") for a in assets)
        assert "http://" not in page.text and "https://" not in page.text
        for a in assets:
            assert client.get(a).status_code == 200, a


# --- 8: conventions

def test_version_help_defaults_and_one_top_k():
    import argparse
    import inspect

    from audioclf import __version__
    from audioclf.cli import build_parser
    from audioclf.predictions import DEFAULT_TOP_K, Predictor
    from audioclf.serving.config import ServeConfig
    parser = build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--version"])
    assert e.value.code == 0
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        own = {s for a in sub._actions for s in a.option_strings}
        text = sub.format_help()
        import re
        mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))
        assert mentioned <= own | {"--no-" + s[2:] for s in own}, (name, mentioned - own)
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.dest)
    assert commands["predict"].get_default("top_k") == DEFAULT_TOP_K == commands["serve"].get_default("top_k")
    assert inspect.signature(Predictor.predict).parameters["top_k"].default == DEFAULT_TOP_K
    assert ServeConfig().top_k == DEFAULT_TOP_K
    assert "(default: 1000)" in commands["pack"].format_help()
    assert __version__ and isinstance(parser, argparse.ArgumentParser)


def test_a_missing_extra_names_the_extra(tiny_run, monkeypatch):
    from audioclf.export import ExportError, export_onnx
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r"pip install 'audioclf\[export\]'"):
        export_onnx(tiny_run, tiny_run / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    from audioclf.onnx_predictor import OnnxClassifier
    with pytest.raises(RuntimeError, match=r"pip install 'audioclf\[export\]'"):
        OnnxClassifier(tiny_run)


# --- 10: cv resumes finished folds

@pytest.mark.parametrize("saved, resumed", [("state", True), ("candidates/scratch/state", True),
                                            ("selection/mn04_as-no-augment/state", True), ("candidates/scratch", False)])
def test_cv_resume_continues_an_unfinished_fold_from_its_own_or_its_candidates_state(tmp_path, monkeypatch, saved,
                                                                                     resumed):
    from audioclf.training import crossval
    data = tmp_path / "data.csv"
    data.write_text("path,label,fold\n" + "".join(f"{p},{'xy'[i % 2]},{'ab'[i // 6]}\n"
                                                   for i, p in enumerate(FSDD_CLIPS)))
    out = tmp_path / "cv"
    (out / "fold-a" / saved).mkdir(parents=True)  # killed before the fold's run wrote its own files
    calls = []

    def stop(csv_path, run, **settings):
        calls.append((Path(run).name, settings["resume"], settings["overwrite"]))
        raise KeyboardInterrupt
    monkeypatch.setattr(crossval, "train", stop)
    with pytest.raises(KeyboardInterrupt):
        crossval.cross_validate(data, out, resume=True)
    assert calls == [("fold-a", resumed, not resumed)]  # continued where it stopped, else trained again
    if resumed:  # a stopped cross-validation that saved a state is audioclf output: --overwrite replaces it
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            crossval.cross_validate(data, out, overwrite=True)
        assert calls == [("fold-a", False, True)] and not (out / "fold-a" / saved).exists()

@pytest.mark.slow
def test_cv_keeps_finished_folds_and_retrains_the_others(tones, tmp_path):
    data, cache = tones
    out = tmp_path / "cv"
    args = ["cv", data, "--out", out, "--folds", "2", "--cache-dir", cache, *FAST]
    rc, first, err = run_cli(*args)
    assert rc == 0, err
    report = json.loads((out / "cv_report.json").read_text())
    rc, _, err = run_cli(*args)
    assert rc == 2 and "--resume" in err  # not silently redone or overwritten
    folds = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folds) == 2
    (folds[1] / "report.json").unlink()  # a fold that did not finish
    rc, again, err = run_cli(*args, "--resume")
    assert rc == 0, err
    assert again.count("finished run kept") == 1 and "unfinished run" in again
    resumed = json.loads((out / "cv_report.json").read_text())
    assert resumed["folds"][0] == report["folds"][0]
    rc, changed, err = run_cli(*args[:-2], "--ema-decay", "0.5", "--resume")  # other settings: nothing kept
    assert rc == 0, err
    assert "finished run kept" not in changed and changed.count("settings differ (ema_decay)") == 2
