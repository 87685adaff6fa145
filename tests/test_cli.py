"""End-to-end tests of the ``audioclf`` command: train / evaluate / predict on a slice of the bundled FSDD,
bad files, fine-tuning with --pretrained / --freeze-backbone, and cross-validation."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import audioclf
from audioclf.cli import main
from conftest import run_cli, write_speech_commands, write_with_pyav

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO / "datasets" / "fsdd"
SPEAKERS = ("george", "jackson")
TAKES = 20  # takes 0-4 are the official test fold 0; 5-19 train
# The recipe (cnn width 1, 10 epochs, 224 training clips of two speakers) tests far above chance (0.10).
MIN_ACCURACY = 0.5
EPOCHS = 10
TRAIN_ARGS = ["--model", "cnn", "--width", "1.0", "--epochs", str(EPOCHS), "--seed", "0"]
# tiny settings for the synthetic data sets
TINY = ["--model", "cnn", "--width", "0.25", "--n-mels", "32", "--sample-rate", "8000", "--clip-seconds", "0.25",
        "--batch-size", "8"]
SR = 8000
TONES = {"low": 300.0, "mid": 900.0, "high": 2500.0}



def write_fsdd_subset(path: Path) -> list[dict]:
    rows = []
    with open(FSDD / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            digit, speaker, take = Path(r["path"]).stem.split("_")
            if speaker in SPEAKERS and int(take) < TAKES:
                rows.append({"path": str((FSDD / r["path"]).absolute()), "label": r["label"], "group": r["group"],
                             "fold": r["fold"]})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "group", "fold"])
        w.writeheader()
        w.writerows(rows)
    return rows


def tone(freq: float, seconds: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_tones(root: Path, groups=("a", "b"), per_group: int = 3) -> list[tuple[str, str, str]]:
    """``root/<label>/<group>_<n>.wav``; returns [(absolute path, label, group)]."""
    rows = []
    for label, freq in TONES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for gi, g in enumerate(groups):
            for n in range(per_group):
                p = root / label / f"{g}_{n}.wav"
                sf.write(p, tone(freq * (1 + 0.01 * (gi * per_group + n)), phase=n), SR)
                rows.append((str(p.absolute()), label, g))
    return rows


@pytest.fixture(scope="module")
def fsdd_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdd")
    manifest = base / "subset.csv"
    rows = write_fsdd_subset(manifest)
    assert len(rows) == len(SPEAKERS) * 10 * TAKES
    run, cache = base / "run", base / "cache"
    rc, out, err = run_cli("train", manifest, "--out", run, "--test-fold", "0", "--cache-dir", cache, *TRAIN_ARGS)
    assert rc == 0, err
    return {"run": run, "csv": manifest, "cache": cache, "rows": rows, "stdout": out, "base": base}


# ------------------------------------------------------------------------------------ (a) train / evaluate / predict


@pytest.mark.slow
def test_train_writes_a_complete_run_folder(fsdd_run):
    run, out = fsdd_run["run"], fsdd_run["stdout"]
    for name in ("model.safetensors", "config.json", "metrics.csv", "curves.png", "report.json",
                 "confusion_matrix.csv", "confusion_matrix.png", "skipped.csv"):
        assert (run / name).is_file(), name
    for png in ("curves.png", "confusion_matrix.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "split: train 224, validation 76, test 100 usable clips; 10 classes, single-label" in out
    assert "auto: val_fraction=0.25: at least 100 clips" in out  # 300 clips outside the test fold: a quarter
    assert "auto: sample_rate=8000: the files' median rate" in out and "model: cnn" in out

    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == [str(d) for d in range(10)]
    assert config["num_classes"] == 10 and config["task"] == "single_label"
    assert config["frontend"]["sample_rate"] == 8000
    assert config["training"]["sample_rate"] == 8000
    assert config["clip_seconds"] == 0.75  # p90 of FSDD durations (0.62 s) rounded up to 0.25 s
    assert config["model"] == "cnn" and config["model_args"] == {"width": 1.0}
    assert config["split_sizes"] == {"train": 224, "val": 76, "test": 100}
    assert config["skipped_files"] == 0
    from audioclf.training.settings import resolve_amp
    amp = resolve_amp(None, torch.device("cpu"))  # the default: what ran is stored, not "auto"
    assert config["training"]["amp"] is amp and ("with bf16 autocast" in out) == amp

    report = json.loads((run / "report.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "labels", "n"):
        assert key in report, key
    assert report["n"] == 100 and report["labels"] == config["labels"]
    assert report["accuracy"] >= MIN_ACCURACY, report["accuracy"]
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 100 and (matrix.sum(1) == 10).all()
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 100)
    assert set(report["per_class"]) == set(config["labels"])
    assert all(v["support"] == 10 for v in report["per_class"].values())
    metrics = config["metrics"]
    assert metrics["test_accuracy"] == report["accuracy"]
    assert metrics["test_macro_f1"] == report["macro_f1"]
    assert 1 <= metrics["best_epoch"] <= EPOCHS and metrics["train_seconds"] > 0
    assert f"test (100 clips, best epoch {metrics['best_epoch']}): accuracy {report['accuracy']:.4f}" in out

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    for r in rows:
        assert float(r["train_loss"]) > 0 and 0 <= float(r["val_accuracy"]) <= 1 and float(r["lr"]) > 0
    # the loss goes down
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])

    with open(run / "confusion_matrix.csv", newline="") as f:
        cm_rows = list(csv.reader(f))
    cells = np.array([[int(x) for x in r[1:]] for r in cm_rows[1:]])
    np.testing.assert_array_equal(cells, matrix)
    assert (run / "skipped.csv").read_text().strip() == "path,reason"


def test_evaluate_reproduces_the_train_report(fsdd_run):
    run = fsdd_run["run"]
    rc, out, err = run_cli("evaluate", run, fsdd_run["csv"], "--test-fold", "0", "--cache-dir", fsdd_run["cache"])
    assert rc == 0, err
    train_report = json.loads((run / "report.json").read_text())
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["n"] == 100 and report["skipped"] == 0
    assert report["accuracy"] == pytest.approx(train_report["accuracy"], abs=1e-12)
    assert report["confusion_matrix"] == train_report["confusion_matrix"]
    assert (run / "evaluation" / "confusion_matrix.png").is_file()
    assert f"accuracy {report['accuracy']:.4f}" in out
    # an unknown fold is a clear error, not a crash
    rc, _, err = run_cli("evaluate", run, fsdd_run["csv"], "--test-fold", "7", "--cache-dir", fsdd_run["cache"],
                         "--out", fsdd_run["base"] / "ev7")
    assert rc == 2 and "no items to evaluate" in err


@pytest.mark.slow
def test_predict_json_with_a_corrupt_file(fsdd_run, tmp_path):
    run = fsdd_run["run"]
    test_rows = [r for r in fsdd_run["rows"] if r["fold"] == "0"]
    good = [test_rows[0]["path"], test_rows[57]["path"]]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "audioclf", "predict", str(run), good[0], str(corrupt), good[1],
                           "--format", "json", "--top-k", "3"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=100)
    assert proc.returncode == 1, proc.stderr  # an input failed
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == [good[0], str(corrupt), good[1]]
    assert set(results[1]) == {"path", "error"} and "not a recognised audio format" in results[1]["error"]
    results = [results[0], results[2]]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(corrupt) in error_lines[0]
    labels = [str(d) for d in range(10)]
    clf = audioclf.load(run)
    for r in results:
        preds = r["predictions"]
        assert len(preds) == 3
        assert all(set(p) == {"label", "score"} for p in preds)
        assert len({p["label"] for p in preds}) == 3 and all(p["label"] in labels for p in preds)
        scores = [p["score"] for p in preds]
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= s <= 1 for s in scores) and sum(scores) <= 1 + 1e-6
        # the Python API gives the same answer
        api = clf.predict(r["path"], top_k=3)
        assert [p["label"] for p in api] == [p["label"] for p in preds]
        np.testing.assert_allclose([p["score"] for p in api], scores, rtol=1e-6, atol=1e-7)
    # only corrupt files: a non-zero exit
    proc = subprocess.run([sys.executable, "-m", "audioclf", "predict", str(run), str(corrupt), "--format", "json"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=100)
    assert proc.returncode == 1 and "error:" in proc.stderr
    assert [set(r) for r in json.loads(proc.stdout)] == [{"path", "error"}]


def test_predict_csv_and_folders(fsdd_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    test_rows = [r for r in fsdd_run["rows"] if r["fold"] == "0"][:3]
    for r in test_rows:
        (folder / Path(r["path"]).name).write_bytes(Path(r["path"]).read_bytes())
    (folder / "notes.txt").write_text("ignored")
    assert main(["predict", str(fsdd_run["run"]), str(folder), "--format", "csv", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,rank,label,score,error"
    assert len(lines) == 1 + 3 * 2
    ranks = [row[1] for row in csv.reader(lines[1:])]
    assert ranks == ["1", "2"] * 3


def test_predict_batches_many_files_in_chunks(fsdd_run, tmp_path, monkeypatch, capsys):
    """Many files: decoded clips go to the model in chunks (here of 3 files), so windows of several files share a
    forward pass; the answers are the one-file-at-a-time ones, in the files' order, and a bad file in a chunk costs
    only itself."""
    from audioclf.cli import predict as cli_predict
    from audioclf.inference import Classifier

    paths = [r["path"] for r in fsdd_run["rows"] if r["fold"] == "0"][:7]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + np.random.default_rng(1).bytes(2048))
    files = paths[:2] + [str(corrupt)] + paths[2:]
    calls = []
    clip_logits = Classifier.clip_logits
    monkeypatch.setattr(Classifier, "clip_logits", lambda self, clips: calls.append(len(clips)) or clip_logits(self, clips))
    monkeypatch.setattr(cli_predict, "PREDICT_CHUNK_FILES", 3)
    assert main(["predict", str(fsdd_run["run"]), *files, "--format", "json", "--top-k", "10"]) == 1  # one failed
    out, err = capsys.readouterr()
    results = json.loads(out)
    assert [r["path"] for r in results] == files and "error" in results[2]
    results = [r for r in results if "predictions" in r]
    assert calls == [2, 3, 2] and [r["path"] for r in results] == paths
    assert str(corrupt) in err
    alone = audioclf.load(fsdd_run["run"])
    for r in results:
        want = {p["label"]: p["score"] for p in alone.predict(r["path"], top_k=10)}
        got = {p["label"]: p["score"] for p in r["predictions"]}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-6)
    calls.clear()
    monkeypatch.setattr(cli_predict, "PREDICT_CHUNK_SECONDS", 0.05)  # a chunk also ends at this much audio
    assert main(["predict", str(fsdd_run["run"]), *paths[:3], "--format", "json"]) == 0
    assert calls == [1, 1, 1]


def test_predict_skips_a_file_whose_decoder_crashes(fsdd_run, tmp_path, monkeypatch):
    """A batch of files where FFmpeg crashes on one (here: a decoder process that kills itself): that file is an
    error line naming it and the signal, the others are answered as usual."""
    from functools import partial

    import audioclf.isolated_decoding as isolated_decoding
    from audioclf.audio import read_audio

    good = [r["path"] for r in fsdd_run["rows"] if r["fold"] == "0"][:2]
    webm = tmp_path / "rec.webm"
    write_with_pyav(webm, "webm", "libopus", 48000, read_audio(good[0], 48000)[0])
    rc, out, err = run_cli("predict", fsdd_run["run"], good[0], webm, good[1], "--format", "json")
    assert rc == 0 and [r["path"] for r in json.loads(out)] == [good[0], str(webm), good[1]]
    rc, out, err = run_cli("predict", fsdd_run["run"], webm, "--window", "0.5", "--format", "json")
    assert rc == 0 and len(json.loads(out)[0]["windows"]) >= 1
    crash = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(isolated_decoding, "DecoderPool", partial(isolated_decoding.DecoderPool, command=crash))
    rc, out, err = run_cli("predict", fsdd_run["run"], good[0], webm, good[1], "--format", "json")
    rows = json.loads(out)
    assert rc == 1 and [r["path"] for r in rows] == [good[0], str(webm), good[1]]
    assert [("error" in r) for r in rows] == [False, True, False]
    assert f"error: {webm}: the decoder process was killed by SIGSEGV" in err
    rc, out, err = run_cli("predict", fsdd_run["run"], webm, good[0], "--window", "0.5", "--format", "json")
    rows = json.loads(out)  # long recordings: the same
    assert rc == 1 and [r["path"] for r in rows] == [str(webm), good[0]] and "error" in rows[0]
    assert f"error: {webm}: the decoder process was killed by SIGSEGV" in err


def test_load_predict_and_reload_are_identical(fsdd_run):
    run = fsdd_run["run"]
    test_rows = [r for r in fsdd_run["rows"] if r["fold"] == "0"]
    paths = [r["path"] for r in test_rows[:20]]
    truth = [r["label"] for r in test_rows[:20]]
    a, b = audioclf.load(run), audioclf.load(run)
    assert a.labels == [str(d) for d in range(10)] and a.sample_rate == 8000 and a.clip_samples == 6000
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 6000)).astype(np.float32) * 0.1)
    with torch.no_grad():
        assert torch.equal(a.model(wave), b.model(wave))
    scores_a, scores_b = a.scores(paths), b.scores(paths)
    np.testing.assert_array_equal(scores_a, scores_b)
    np.testing.assert_allclose(scores_a.sum(1), 1, rtol=1e-6)
    # single path -> a list of dicts; list of paths -> a list of lists
    single = a.predict(paths[0], top_k=1)
    batch = a.predict(paths, top_k=1)
    assert [p["label"] for p in single] == [p["label"] for p in batch[0]]  # scores differ by batching rounding only
    assert single[0]["score"] == pytest.approx(batch[0][0]["score"], rel=1e-5)
    assert single[0]["label"] == a.labels[int(scores_a[0].argmax())]
    accuracy = np.mean([p[0]["label"] == t for p, t in zip(batch, truth)])
    assert accuracy >= MIN_ACCURACY - 0.1
    # arrays with their rate work like files
    audio, sr = sf.read(paths[0], dtype="float32")
    assert sr == 8000
    np.testing.assert_allclose(a.scores([audio], sampling_rate=sr)[0], scores_a[0], atol=1e-6)


def test_amp_runs_inference_in_bf16_with_the_float32_labels(fsdd_run, tmp_path, monkeypatch):
    """``--amp``: whole clips, long recordings (spectrogram windows) and the CLI run under bf16 autocast. The scores
    move (so autocast is on) by bf16 rounding only, and the labels stay; the ONNX back end refuses the flag."""
    from audioclf import inference
    from audioclf.longform import scan

    run = fsdd_run["run"]
    paths = [r["path"] for r in fsdd_run["rows"] if r["fold"] == "0"][:40]
    exact, fast = audioclf.load(run), audioclf.load(run, amp=True)
    assert not exact.amp and fast.amp
    s32, s16 = exact.scores(paths), fast.scores(paths)
    assert not np.array_equal(s32, s16)
    assert np.abs(s32 - s16).max() < 0.03
    margin = np.sort(s32, 1)[:, -1] - np.sort(s32, 1)[:, -2]
    clear = margin > 0.06  # a top-2 gap bf16 cannot close
    assert clear.sum() >= 20 and (s32.argmax(1) == s16.argmax(1))[clear].all()

    long = np.concatenate([sf.read(p, dtype="float32")[0] for p in paths[:8]])
    sf.write(tmp_path / "long.wav", long, 8000)
    (t32, w32), (t16, w16) = scan(exact, tmp_path / "long.wav"), scan(fast, tmp_path / "long.wav")
    np.testing.assert_array_equal(t32, t16)
    assert not np.array_equal(w32, w16) and np.abs(w32 - w16).max() < 0.03

    rc, out, err = run_cli("predict", run, paths[0], "--amp", "--format", "json", "--top-k", "1")
    assert rc == 0, err
    assert json.loads(out)[0]["predictions"][0]["score"] == pytest.approx(s16[0].max(), abs=1e-5)
    rc, out, err = run_cli("predict", run, paths[0], "--amp", "--backend", "onnx")
    assert rc != 0 and "--amp applies to the torch back end" in err

    monkeypatch.setattr(inference, "bf16_is_native", lambda device: False)
    with pytest.warns(UserWarning, match="bf16 is emulated on cpu"):
        audioclf.load(run, amp=True)


# ------------------------------------------------------------------------------------ (b) bad files


def test_training_skips_corrupt_files(tmp_path):
    root = tmp_path / "data"
    write_tones(root)
    (root / "low" / "empty.wav").write_bytes(b"")
    (root / "mid" / "junk.wav").write_bytes(np.random.default_rng(1).bytes(5000))
    trunc = root / "high" / "truncated.wav"
    sf.write(trunc, tone(2500), SR)
    raw = trunc.read_bytes()
    trunc.write_bytes(raw[: len(raw) * 6 // 10])
    run = tmp_path / "run"
    rc, out, err = run_cli("train", root, "--out", run, "--epochs", "2", "--cache-dir", tmp_path / "cache", *TINY)
    assert rc == 0, err
    assert f"skipped 3 file(s) that cannot be used (all listed in {run / 'skipped.csv'}):" in out
    assert f"  {root / 'mid' / 'junk.wav'}: not a recognised audio format" in out
    with open(run / "skipped.csv", newline="") as f:
        skipped = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    assert set(skipped) == {str(root / "low" / "empty.wav"), str(root / "mid" / "junk.wav"), str(trunc)}
    assert "empty file" in skipped[str(root / "low" / "empty.wav")]
    assert "not a recognised audio format" in skipped[str(root / "mid" / "junk.wav")]
    assert "truncated" in skipped[str(trunc)]
    config = json.loads((run / "config.json").read_text())
    assert config["skipped_files"] == 3
    assert sum(config["split_sizes"].values()) == 18  # the good files only
    assert (run / "model.safetensors").is_file()


def test_training_on_only_corrupt_files_fails_clearly(tmp_path):
    root = tmp_path / "data"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for n in range(3):
            (root / label / f"x{n}.wav").write_bytes(np.random.default_rng(n).bytes(2000) if n else b"")
    run = tmp_path / "run"
    rc, out, err = run_cli("train", root, "--out", run, "--epochs", "1", "--cache-dir", tmp_path / "cache", *TINY)
    assert rc != 0
    assert "audioclf train: error: no usable training files" in err
    assert "6 skipped, named above" in err and "skipped 6 file(s) that cannot be used" in out
    assert not run.exists()  # a failed command leaves no half-made run folder
    # and an empty folder is a manifest error, not a traceback
    (tmp_path / "nothing").mkdir()
    rc, _, err = run_cli("train", tmp_path / "nothing", "--out", tmp_path / "run2", "--cache-dir", tmp_path / "cache")
    assert rc == 2 and "no usable audio files" in err


@pytest.mark.parametrize("aug, words", [("rm_rf=1", "expected KEY=VALUE with KEY one of"),
                                         ("gain_db=loud", "'loud' is not a number"), ("gain_db", "KEY=VALUE")])
def test_bad_augmentation_override_fails_before_any_work(tmp_path, aug, words):
    run = tmp_path / "run"
    rc, _, err = run_cli("train", tmp_path / "no-such-data", "--out", run, "--aug", aug)
    assert rc != 0 and "bad augmentation override" in err and words in err
    assert not run.exists()  # refused before the run folder or the data are touched


def test_augmentation_overrides_reach_the_model(tmp_path):
    from audioclf.training.config import TrainConfig
    from audioclf.training.settings import augment_config
    cfg = augment_config(TrainConfig(aug="gain_db=6, mixstyle_prob=0,freq_masks=3"))
    assert (cfg.gain_db, cfg.mixstyle_prob, cfg.freq_masks) == (6.0, 0.0, 3)
    assert augment_config(TrainConfig(augment=False, aug="noise_prob=0.5")).noise_prob == 0.5  # on top of all-off
    assert augment_config(TrainConfig(augment=False, aug="noise_prob=0.5")).gain_db == 0


def test_bf16_autocast_is_on_by_default_only_where_the_hardware_computes_bf16(monkeypatch):
    from audioclf.training.settings import resolve_amp
    cpu = torch.device("cpu")
    for native in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            monkeypatch.setattr(torch.cpu, flag, lambda f=flag: f == native)
        assert resolve_amp(None, cpu) is True
    for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: False)
    assert resolve_amp(None, cpu) is False  # emulated bf16 is slower than float32
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a PyTorch without the check: no crash
    assert resolve_amp(None, cpu) is False
    assert resolve_amp(True, cpu) is True and resolve_amp(False, cpu) is False  # --amp / --no-amp decide
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert resolve_amp(None, torch.device("cuda")) is True  # native bf16 units, not emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_amp(None, torch.device("cuda")) is False
    assert resolve_amp(None, torch.device("meta")) is False


def test_training_stops_with_a_clear_error_when_the_gradients_are_not_finite(tmp_path):
    """A learning rate that blows the weights up makes the second step's gradients NaN: the run stops there with an
    error naming the step, instead of training NaN weights to the end and reporting a chance-level model."""
    root = tmp_path / "tones"
    write_tones(root)
    rc, out, err = run_cli("train", root, "--out", tmp_path / "run", "--epochs", "2", "--lr", "1e30",
                           "--cache-dir", tmp_path / "cache", *TINY)
    assert rc == 2 and re.search(r"epoch \d, step 2: the gradients are not finite \(norm nan", err), err
    assert "test (" not in out and not (tmp_path / "run" / "report.json").exists()


def test_best_epoch_ranks_single_label_runs_by_validation_loss():
    from audioclf.training.validation import selection_score
    # a lucky early epoch (higher accuracy, worse loss) loses to a later one with a lower loss
    early, late = selection_score(0.19, 0.996, False), selection_score(0.08, 0.992, False)
    assert late > early
    assert selection_score(0.1, 0.99, False) > selection_score(0.1, 0.98, False)  # accuracy breaks a tie
    # multi-label: mAP first, the loss breaks a tie
    assert selection_score(0.3, 0.80, True) > selection_score(0.2, 0.79, True)
    assert selection_score(0.2, 0.80, True) > selection_score(0.3, 0.80, True)


def test_ema_averages_the_weights_and_copies_the_batch_norm_statistics_only():
    """The EMA copies the buffers a checkpoint keeps (BN statistics), not the front end's constants: the trainer
    sets the noise bank after making the EMA, so the EMA holds no copy of it and an update does not copy it."""
    from audioclf.features import FrontendConfig
    from audioclf.models import create_model
    from audioclf.training.ema import ModelEma
    torch.manual_seed(0)
    model = create_model("cnn", 3, FrontendConfig(sample_rate=8000)).train()
    ema = ModelEma(model, decay=0.5)
    model.frontend.wave_augment.set_noise(torch.randn(4, 6000))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 6000))  # moves the BN running statistics
    before = [p.clone() for p in ema.module.parameters()]
    ema.update(model)
    d = min(0.5, 2 / 11)  # the warm-up decay at step 1
    for old, new, p in zip(before, ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(new, d * old + (1 - d) * p)
    ours = dict(model.named_buffers())
    stats = [(n, b) for n, b in ema.module.named_buffers() if n.rsplit(".", 1)[-1].startswith(("running_", "num_"))]
    assert stats and all(torch.equal(b, ours[n]) for n, b in stats)
    assert ema.module.frontend.wave_augment.noise_bank.numel() == 0


# ------------------------------------------------------------------------------------ (c) fine-tuning


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


@pytest.mark.parametrize("freeze", [True, False])
def test_pretrained_run_folder_with_a_new_label_set(fsdd_run, tmp_path, freeze):
    root = tmp_path / "tones"
    write_tones(root)
    run = tmp_path / "ft"
    args = ["train", root, "--out", run, "--pretrained", fsdd_run["run"], "--epochs", "1",
            "--cache-dir", tmp_path / "cache"] + (["--freeze-backbone"] if freeze else [])
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    source = load_file(str(fsdd_run["run"] / "model.safetensors"))
    tuned = load_file(str(run / "model.safetensors"))
    n_backbone = len(_backbone(source))
    assert f"init from {fsdd_run['run']}: loaded {n_backbone} tensors, skipped 2, freshly initialised 2" in out
    features = source["classifier.weight"].shape[1]
    assert f"skipped classifier.weight: shape (10, {features}) -> (3, {features}) (new head)" in out
    assert "skipped classifier.bias: shape (10,) -> (3,) (new head)" in out
    config = json.loads((run / "config.json").read_text())
    src_config = json.loads((fsdd_run["run"] / "config.json").read_text())
    assert config["labels"] == ["high", "low", "mid"] and config["num_classes"] == 3
    # the source run's architecture and audio settings are kept
    assert config["model"] == src_config["model"] and config["model_args"] == src_config["model_args"]
    assert config["frontend"] == src_config["frontend"] and config["clip_seconds"] == src_config["clip_seconds"]
    assert config["init"]["run"] == str(fsdd_run["run"]) and config["init"]["name"] == fsdd_run["run"].name
    assert config["init"]["sha256"] == hashlib.sha256((fsdd_run["run"] / "model.safetensors").read_bytes()).hexdigest()
    assert tuned["classifier.weight"].shape == (3, features)
    assert set(tuned) == set(source)
    changed = [k for k, v in _backbone(source).items() if not torch.equal(v, tuned[k])]
    if freeze:
        assert "backbone frozen: training the classifier head only" in out
        # parameters and batch-norm statistics alike
        assert changed == []
    else:
        assert "backbone frozen" not in out
        assert any(k.endswith(".weight") for k in changed)
    assert audioclf.load(run).predict(str(root / "low" / "a_0.wav"), top_k=3)[0]["label"] in config["labels"]


def test_adapt_recovers_accuracy_lost_to_a_new_microphone(fsdd_run, tmp_path):
    """A boomy microphone (the clips plus 4x their 16-sample moving average) costs accuracy; `audioclf adapt` on
    half of its clips, unlabelled, wins part of it back on the other half. Only batch-norm statistics change, the
    source run is untouched, and a bad file is skipped and reported. (Measured: 0.60 -> 0.74 on the scored half;
    0.82 on the clean clips.)"""
    rows = [r for r in fsdd_run["rows"] if r["fold"] == "0"]
    (tmp_path / "adapt").mkdir()
    (tmp_path / "adapt" / "broken.wav").write_bytes(b"RIFF\x00\x00")
    scored = tmp_path / "scored.csv"
    with open(scored, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, r in enumerate(rows):
            x, sr = sf.read(r["path"], dtype="float32")
            boomy = x + 4 * np.convolve(x, np.ones(16) / 16, "same")
            target = tmp_path / ("adapt" if i % 2 == 0 else "scored") / Path(r["path"]).with_suffix(".wav").name
            target.parent.mkdir(exist_ok=True)
            sf.write(target, boomy.astype(np.float32), sr)
            if i % 2:
                w.writerow([target, r["label"]])
    run, adapted = fsdd_run["run"], tmp_path / "adapted"
    source_bytes = (run / "model.safetensors").read_bytes()
    rc, out, err = run_cli("adapt", run, tmp_path / "adapt", "--out", adapted)
    assert rc == 0, err
    assert f"skipped {tmp_path / 'adapt' / 'broken.wav'}: " in out
    assert f"window(s) from 50 file(s) (1 skipped); run folder: {adapted}" in out
    record = json.loads((adapted / "config.json").read_text())["adaptation"]
    assert record["files"] == 50 and record["skipped_files"] == 1 and record["source_run"] == str(run)
    assert record["windows"] >= 50 and f"to {record['windows']} window(s)" in out
    assert (run / "model.safetensors").read_bytes() == source_bytes
    before, after = load_file(str(run / "model.safetensors")), load_file(str(adapted / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert len({k.rsplit(".", 1)[0] for k in changed}) == record["batchnorm_layers"]

    def accuracy(model_run) -> float:
        rc, out, err = run_cli("evaluate", model_run, scored, "--out", tmp_path / "eval" / model_run.name)
        assert rc == 0, err
        return json.loads((tmp_path / "eval" / model_run.name / "report.json").read_text())["accuracy"]
    shifted, recovered = accuracy(run), accuracy(adapted)
    assert shifted < json.loads((run / "report.json").read_text())["accuracy"] - 0.1
    assert recovered >= shifted + 0.06, (shifted, recovered)

    rc, out, err = run_cli("adapt", run, tmp_path / "adapt", "--out", run)
    assert rc == 2 and "is the source run: write the adapted run to another folder" in err
    rc, out, err = run_cli("adapt", run, tmp_path / "adapt" / "broken.wav", "--out", tmp_path / "none")
    assert rc == 2 and "no decodable audio among the 1 file(s) given" in err and not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------------ (d) cross-validation


def test_train_on_speech_commands_uses_its_split_and_background_noise(tmp_path):
    """A Speech Commands folder trains as its files say: the listed test and validation speakers, and the
    ``_background_noise_`` recordings (cut into clip-length pieces) as the noise mixed into training examples."""
    from audioclf.data.cache import AudioCache
    from audioclf.training.setup import load_noise_bank

    root = tmp_path / "speech_commands"
    write_speech_commands(root)
    rc, stdout, err = run_cli("train", root, "--out", tmp_path / "run", "--epochs", "1",
                              "--cache-dir", tmp_path / "cache", *TINY)
    assert rc == 0, err
    assert "noise: background noise for augmentation from the data set's" in stdout
    assert "train 8, validation 4, test 4 usable clips (test = the declared fold 'testing', validation = the declared fold " \
           "'validation')" in stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["labels"] == ["no", "yes"]
    assert config["training"]["noise_dir"] == str((root / "_background_noise_").absolute())
    cache = AudioCache(str(tmp_path / "cache"), SR)
    bank = load_noise_bank(root / "_background_noise_", SR, SR // 4, cache)  # 1 s of noise, 0.25 s clips
    assert bank.shape == (4, SR // 4) and bank.std() > 0.05
    assert load_noise_bank(root / "_background_noise_", SR, SR // 4, cache, max_samples=SR // 2).shape == (2, SR // 4)


def test_group_batches(tmp_path):
    """--group-batches: training batches of one group each; a group smaller than a batch, or a file without a
    group, is refused."""
    root = tmp_path / "tones"
    rows = write_tones(root, groups=("ann", "ben"), per_group=4)
    manifest = tmp_path / "tones.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "fold"])
        w.writerows([*r, "test" if r[2] == "ann" and r[0].endswith("_0.wav") else "train"] for r in rows)
    assert TINY[-2] == "--batch-size"
    args = ("--epochs", "1", "--cache-dir", tmp_path / "cache", "--test-fold", "test", "--group-batches",
            "--val-fraction", "0.1", *TINY[:-2])
    rc, out, err = run_cli("train", manifest, "--out", tmp_path / "run", *args, "--batch-size", "4")
    assert rc == 0, err
    assert "group batches: 4 batches an epoch, each from one of 2 groups" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["group_batches"] is True
    rc, out, err = run_cli("train", manifest, "--out", tmp_path / "run16", *args, "--batch-size", "16")
    assert rc == 2 and "--group-batches: 2 group(s) have fewer than a batch (16) of training clips: ann, ben" in err
    rc, out, err = run_cli("train", root, "--out", tmp_path / "nogroups", "--epochs", "1", "--group-batches",
                           *TINY[:-2], "--batch-size", "4")
    assert rc == 2 and "--group-batches needs a group for every training file" in err


@pytest.mark.slow
def test_cross_validation_on_grouped_tones(tmp_path):
    root = tmp_path / "tones"
    rows = write_tones(root, groups=("ann", "ben", "cat"), per_group=2)
    manifest = tmp_path / "tones.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerows(rows)
    out = tmp_path / "cv"
    rc, stdout, err = run_cli("cv", manifest, "--out", out, "--folds", "3", "--epochs", "1", "--adapt", "2",
                              "--cache-dir", tmp_path / "cache", *TINY)
    assert rc == 0, err
    assert "cross-validation: 3 folds (stratified group-aware 3-fold)" in stdout
    cv = json.loads((out / "cv_report.json").read_text())
    for key in ("folds", "mean_accuracy", "std_accuracy", "mean_macro_f1", "confusion_matrix"):
        assert key in cv, key
    assert len(cv["folds"]) == 3
    accs = [f["accuracy"] for f in cv["folds"]]
    assert cv["mean_accuracy"] == pytest.approx(np.mean(accs))
    assert cv["std_accuracy"] >= 0
    assert cv["mean_macro_f1"] == pytest.approx(np.mean([f["macro_f1"] for f in cv["folds"]]))
    total = np.array(cv["confusion_matrix"])
    np.testing.assert_array_equal(total, np.sum([np.array(f["confusion_matrix"]) for f in cv["folds"]], axis=0))
    assert total.sum() == len(rows)  # every file is tested exactly once
    assert (out / "confusion_matrix.csv").is_file() and (out / "confusion_matrix.png").is_file()
    tested = []
    for fold in cv["folds"]:
        name = fold["fold"]
        fold_run = out / f"fold-{name}"
        assert (fold_run / "model.safetensors").is_file() and (fold_run / "report.json").is_file()
        with open(out / f"fold-{name}.csv", newline="") as f:
            fold_rows = list(csv.DictReader(f))
        test_groups = {r["group"] for r in fold_rows if r["fold"] == "test"}
        train_groups = {r["group"] for r in fold_rows if r["fold"] == "train"}
        assert len(test_groups) == 1 and not test_groups & train_groups
        assert train_groups | test_groups == {"ann", "ben", "cat"}
        test_paths = [r["path"] for r in fold_rows if r["fold"] == "test"]
        tested += test_paths
        assert fold["n"] == len(test_paths) == 6
        config = json.loads((fold_run / "config.json").read_text())
        assert config["split_sizes"]["test"] == 6
        # --adapt 2: two of the held-out group's clips adapt the model, the other four are scored before and after
        adapted = fold["adapted"]
        assert len(set(adapted["adapt_paths"])) == 2 and set(adapted["adapt_paths"]) <= set(test_paths)
        assert adapted["n"] == 4 and adapted["adapt_clips"] == 2
        scored = [p for p in test_paths if p not in adapted["adapt_paths"]]
        truth = [next(r[1] for r in rows if r[0] == p) for p in scored]
        unadapted = [audioclf.load(fold_run).predict(p, top_k=1)[0]["label"] for p in scored]
        assert adapted["accuracy_before"] == pytest.approx(np.mean([a == b for a, b in zip(unadapted, truth)]))
        assert f"fold {name}, adapted to 2 unlabelled test clips: accuracy " in stdout
    assert sorted(tested) == sorted(r[0] for r in rows)
    assert cv["adapted_mean_accuracy"] == pytest.approx(np.mean([f["adapted"]["accuracy"] for f in cv["folds"]]))
    assert cv["adapted_mean_accuracy_before"] == pytest.approx(
        np.mean([f["adapted"]["accuracy_before"] for f in cv["folds"]]))
    assert "adapted to 2 unlabelled clips of each test fold, scored on the others: mean accuracy " in stdout
    rc, stdout, err = run_cli("cv", manifest, "--out", tmp_path / "cv6", "--folds", "3", "--adapt", "6", *TINY)
    assert rc == 2 and "--adapt 6: a test fold has only 6 clip(s)" in err and not (tmp_path / "cv6").exists()
    rc, stdout, err = run_cli("cv", manifest, "--out", tmp_path / "cv7", "--folds", "3", "--adapt", "2",
                              "--model", "cnn,ast_tiny")  # every member of an ensemble is checked
    assert rc == 2 and "'ast_tiny' has no batch norm after its front end" in err and not (tmp_path / "cv7").exists()
    rc, stdout, err = run_cli("cv", manifest, "--out", tmp_path / "cv8", "--folds", "3", "--model", "cnn,nosuch")
    assert rc == 2 and "unknown model(s) 'nosuch'" in err and not (tmp_path / "cv8").exists()


@pytest.mark.slow
def test_cross_validation_folds_in_parallel_match_one_after_another(tmp_path):
    """``--jobs 2`` trains the folds in two worker processes. With one thread everywhere, each fold's weights and
    report are those of the same fold trained in this process; a fold that fails is named with its log."""
    rows = write_tones(tmp_path / "tones", groups=("ann", "ben", "cat"), per_group=2)
    manifest = tmp_path / "tones.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerows(rows)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers of --jobs 2 get one thread each (this process's threads // jobs)
    try:
        results = {}
        for jobs in (1, 2):
            out = tmp_path / f"cv-jobs{jobs}"
            rc, stdout, err = run_cli("cv", manifest, "--out", out, "--folds", "3", "--epochs", "2", "--jobs", jobs,
                                      "--cache-dir", tmp_path / "cache", *TINY)
            assert rc == 0, err
            results[jobs] = out, stdout, json.loads((out / "cv_report.json").read_text())
    finally:
        torch.set_num_threads(threads)
    (one_out, _, one), (par_out, stdout, par) = results[1], results[2]
    assert "2 folds at a time, 1 thread(s) each" in stdout
    assert [f["fold"] for f in par["folds"]] == [f["fold"] for f in one["folds"]] == ["0", "1", "2"]
    for a, b in zip(one["folds"], par["folds"]):
        assert b["confusion_matrix"] == a["confusion_matrix"] and b["accuracy"] == a["accuracy"]
        w1 = load_file(one_out / f"fold-{a['fold']}" / "model.safetensors")
        w2 = load_file(par_out / f"fold-{b['fold']}" / "model.safetensors")
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
        assert f"fold {b['fold']} done: accuracy {b['accuracy']:.4f}" in stdout
        assert "split: train" in (par_out / f"fold-{b['fold']}.log").read_text()  # the worker's output
    assert par["mean_accuracy"] == one["mean_accuracy"] and par["confusion_matrix"] == one["confusion_matrix"]
    # every fold fails in its worker (6 clips a group, fewer than a batch of 16): all three named, each with its log
    rc, stdout, err = run_cli("cv", manifest, "--out", tmp_path / "bad", "--folds", "3", "--jobs", "2",
                              "--group-batches", *TINY[:-2], "--batch-size", "16")
    assert rc == 2 and "3 of 3 folds failed:" in err, err
    for k in range(3):
        log = tmp_path / "bad" / f"fold-{k}.log"
        assert f"fold {k}: ValueError: --group-batches:" in err and str(log) in err
        assert "Traceback" in log.read_text() and "fewer than a batch (16)" in log.read_text()
    rc, stdout, err = run_cli("cv", manifest, "--out", tmp_path / "zero", "--jobs", "0")
    assert rc == 2 and "argument --jobs: 0: must be >= 1" in err
