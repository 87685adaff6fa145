"""Edge cases with known answers (the README's edge-case table lists them): each input decodes to the right array, or
fails with a clear ``AudioDecodeError`` / ``ManifestError`` / ``CheckpointError``, or is skipped with a warning
-- never a silent wrong result."""
from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from audioclf.audio import AudioDecodeError, audio_info, read_audio
from audioclf.data.manifest import ManifestError, from_csv, from_folders, load_manifest

SR = 8000


def tone(n, f=440.0, sr=SR, amp=0.3):
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


# --- audio -------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty file"):
        read_audio(tmp_path / "a.wav")


def test_header_only_wav_has_no_samples(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        read_audio(tmp_path / "a.wav")


def test_one_sample(tmp_path):
    sf.write(tmp_path / "a.wav", np.array([0.5], np.float32), SR, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(tmp_path / "a.wav"), [[0.5]])
    assert read_audio(tmp_path / "a.wav", 16000).shape == (1, 2)


def test_all_silent(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(SR, np.int16), SR, subtype="PCM_16")
    out = read_audio(tmp_path / "a.wav", 16000)
    assert out.shape == (1, 16000) and not out.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_float_wav(tmp_path, bad):
    x = tone(1000)
    x[500] = bad
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="NaN/Inf"):
        read_audio(tmp_path / "a.wav")


def test_huge_float_samples_do_not_resample_to_nan(tmp_path):
    """Found by tests/test_fuzz.py: finite 1e38 samples overflowed in the resampler."""
    x = np.full(2000, 3e38, np.float32)
    x[::2] = -3e38
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="too large"):
        read_audio(tmp_path / "a.wav", 16000)


def test_1_hz_file(tmp_path):
    sf.write(tmp_path / "a.wav", np.linspace(-0.5, 0.5, 10, dtype=np.float32), 1, subtype="FLOAT")
    assert audio_info(tmp_path / "a.wav").sample_rate == 1
    out = read_audio(tmp_path / "a.wav", 16000)
    assert out.shape == (1, 160_000) and np.isfinite(out).all()


def test_384_khz_file(tmp_path):
    sf.write(tmp_path / "a.wav", tone(384_000, 1000.0, 384_000), 384_000, subtype="PCM_24")
    out = read_audio(tmp_path / "a.wav", 16000)
    assert out.shape == (1, 16000)
    spectrum = np.abs(np.fft.rfft(out[0]))
    assert abs(int(spectrum.argmax()) - 1000) <= 1  # 1 s at 16 kHz: bin k is k Hz


def test_32_channels_mono_downmix(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (300, 32)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "a.wav")[0], x.mean(1), atol=1e-6)
    assert read_audio(tmp_path / "a.wav", mono=False).shape == (32, 300)


def test_two_hour_file(tmp_path):
    """2 h at 8 kHz, 16 bit: a 115 MB sparse file written in milliseconds."""
    frames = 2 * 3600 * SR
    path = tmp_path / "long.wav"
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + 2 * frames) + b"WAVE")
        f.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, 2 * SR, 2, 16))
        f.write(b"data" + struct.pack("<I", 2 * frames))
        f.truncate(44 + 2 * frames)
    assert audio_info(path).duration == 7200.0
    out = read_audio(path)
    assert out.shape == (1, frames) and out.dtype == np.float32


def test_truncated_wav_is_an_error(tmp_path):
    sf.write(tmp_path / "a.wav", tone(4000), SR, subtype="PCM_16")
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "a.wav").write_bytes(data[:-1000])
    with pytest.raises(AudioDecodeError, match="truncated"):
        read_audio(tmp_path / "a.wav")


def test_directory_named_like_a_file(tmp_path):
    (tmp_path / "x.wav").mkdir()
    with pytest.raises(AudioDecodeError, match="is a directory"):
        read_audio(tmp_path / "x.wav")


def test_unreadable_file(tmp_path, monkeypatch):
    sf.write(tmp_path / "a.wav", tone(100), SR)
    if os.geteuid() != 0:
        os.chmod(tmp_path / "a.wav", 0)
    else:  # root reads anything: pretend the permission check fails
        monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(AudioDecodeError, match="permission denied"):
        read_audio(tmp_path / "a.wav")


@pytest.mark.parametrize("pyav", ["installed", "missing"])
def test_non_utf8_file_name(tmp_path, monkeypatch, pyav):
    """libsndfile opens the name's raw bytes, so this needs no PyAV (without it, the name used to fail)."""
    if pyav == "missing":
        monkeypatch.setitem(sys.modules, "av", None)
    folder = tmp_path / "data" / "beep"
    folder.mkdir(parents=True)
    sf.write(folder / "tmp.wav", tone(800), SR)
    name = os.fsdecode(b"\xff\xfe.wav")  # surrogate-escaped on Linux
    os.rename(folder / "tmp.wav", os.fsencode(folder) + b"/\xff\xfe.wav")
    path = folder / name
    assert read_audio(path).shape == (1, 800)
    assert audio_info(path).frames == 800
    manifest = from_folders(tmp_path / "data")
    assert [os.fsencode(it.path) for it in manifest.items] == [os.fsencode(path.absolute())]


# --- manifests ---------------------------------------------------------------------------------


def _folder_data(root, classes=("low", "mid", "high"), n=3):
    freqs = {"low": 300.0, "mid": 900.0, "high": 2500.0}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sf.write(root / c / f"{i}.wav", tone(2000, freqs[c]), SR)
    return root


def test_csv_missing_columns(tmp_path):
    (tmp_path / "m.csv").write_text("blob,tag\na.wav,x\n")
    with pytest.raises(ManifestError, match="missing column"):
        from_csv(tmp_path / "m.csv")


def test_csv_duplicates_and_escapes_are_skipped_with_reasons(tmp_path):
    data = _folder_data(tmp_path / "d", ("low",))
    (tmp_path / "outside.wav").write_bytes((data / "low" / "0.wav").read_bytes())
    (data / "m.csv").write_text("path,label\nlow/0.wav,low\nlow/0.wav,low\n../outside.wav,low\nlow/1.wav,low\n"
                                "nope.wav,low\n")
    m = from_csv(data / "m.csv")
    assert [it.path for it in m.items] == [str(data / "low" / "0.wav"), str(data / "low" / "1.wav")]
    reasons = [r.split(": ", 1)[1] for _, r in m.skipped]
    assert reasons == ["duplicate path (first row kept)", "path escapes the manifest's folder", "file not found"]


def test_empty_class_folder_warns(tmp_path, capsys):
    data = _folder_data(tmp_path / "d", ("low", "mid"))
    (data / "empty").mkdir()
    (data / "notes").mkdir()
    (data / "notes" / "readme.txt").write_text("x")
    m = load_manifest(data)
    assert m.labels == ["low", "mid"]
    err = capsys.readouterr().err
    assert "class folder" in err and str(data / "empty") in err and str(data / "notes") in err


def test_no_audio_at_all(tmp_path):
    (tmp_path / "d" / "x").mkdir(parents=True)
    with pytest.raises(ManifestError, match="no usable audio files"):
        load_manifest(tmp_path / "d")


def test_unknown_labels_at_evaluation_are_skipped_with_a_warning(tmp_path, capsys):
    from audioclf.augment import AugmentConfig
    from audioclf.checkpoint import save_run
    from audioclf.evaluation.evaluate import evaluate
    from audioclf.features import FrontendConfig
    from audioclf.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn", 2, FrontendConfig(sample_rate=SR, n_mels=32), AugmentConfig.off(), width=0.25).eval()
    run = tmp_path / "run"
    save_run(run, model, {"labels": ["low", "mid"], "clip_seconds": 0.25, "task": "single_label"})
    data = _folder_data(tmp_path / "d")
    report = evaluate(run, data, cache_dir=tmp_path / "cache", out=tmp_path / "eval")
    out = capsys.readouterr().out
    assert "warning: skipping 3 file(s) with labels the model was not trained on: high" in out
    assert report["n"] == 6 and report["skipped"] == 3
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["n"] == 6


# --- loading a run never executes code or allocates absurd models ---------------------------------


@pytest.mark.parametrize("args, match", [({"width": 1e5}, "parameters"), ({"width": 1e9}, "model_args.width"),
                                         ({"width": "__import__('os')"}, "cannot build")])
def test_absurd_model_args_refused_before_allocation(tmp_path, args, match):
    from audioclf.augment import AugmentConfig
    from audioclf.checkpoint import CheckpointError, load_run, save_run
    from audioclf.features import FrontendConfig
    from audioclf.models import create_model

    model = create_model("cnn", 2, FrontendConfig(sample_rate=SR, n_mels=32), AugmentConfig.off(), width=0.25)
    run = tmp_path / "run"
    save_run(run, model, {"labels": ["a", "b"], "clip_seconds": 0.25, "task": "single_label"})
    cfg = json.loads((run / "config.json").read_text())
    cfg["model_args"] = args
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        load_run(run)
