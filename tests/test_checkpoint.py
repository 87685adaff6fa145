"""Run folders: safetensors round trip, atomic writes, config validation, no pickle, strict loading."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from audioclf import io_utils
from audioclf.augment import AugmentConfig
from audioclf.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_run, model_config,
                                 read_config, save_run)
from audioclf.features import FrontendConfig
from audioclf.models import create_model

FRONTEND = FrontendConfig(sample_rate=8000, n_mels=32)
SMALL_ARGS = {"cnn": {"width": 0.25}, "crnn": {"width": 0.25, "hidden": 16}}
SAMPLES = 4000  # 0.5 s at 8 kHz


def make_model(name="cnn", num_classes=3, augment=None, seed=0):
    torch.manual_seed(seed)
    model = create_model(name, num_classes, frontend=FRONTEND, augment=augment or AugmentConfig.off(),
                         **SMALL_ARGS[name])
    model.train()
    with torch.no_grad():  # non-trivial BN running statistics
        model(torch.randn(4, SAMPLES))
    model.eval()
    return model


def run_config(num_classes=3, **extra):
    return {"labels": [f"class_{i}" for i in range(num_classes)], "clip_seconds": 0.5,
            "task": "single_label", **extra}


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    model = make_model("cnn")
    save_run(run, model, run_config(epochs=3, metrics={"accuracy": 0.5}))
    return run, model


def copy_run(saved_run, tmp_path):
    src, model = saved_run
    dst = tmp_path / "run"
    dst.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst, model


def rewrite_config(run, **changes):
    cfg = json.loads((run / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if value is _DELETE:
            cfg.pop(key)
        else:
            cfg[key] = value
    (run / CONFIG_NAME).write_text(json.dumps(cfg))


_DELETE = object()


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "crnn"])
def test_round_trip_gives_identical_logits(tmp_path, name):
    model = make_model(name, num_classes=4, augment=AugmentConfig())  # default augment: tuple snr_db too
    wave = torch.randn(2, SAMPLES)
    with torch.no_grad():
        expected = model(wave)
    save_run(tmp_path, model, run_config(4, lr=1e-3))
    assert listing(tmp_path) == sorted([CONFIG_NAME, WEIGHTS_NAME])

    loaded, config = load_run(tmp_path)
    assert not loaded.training
    with torch.no_grad():
        got = loaded(wave)
    assert torch.equal(got, expected)
    assert loaded.model_name == name and loaded.model_args == SMALL_ARGS[name]
    assert loaded.frontend.config == FRONTEND
    assert loaded.frontend.augment_config == AugmentConfig()
    assert config["lr"] == 1e-3 and config["format_version"] == 1 and config["num_classes"] == 4
    bn = loaded.frontend.norm
    assert bn.num_batches_tracked.item() == 1 and not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_model_config_overrides_caller_keys(tmp_path):
    model = make_model("cnn")
    save_run(tmp_path, model, run_config(model="resnet", format_version=7))
    cfg = read_config(tmp_path)
    assert cfg["model"] == "cnn" and cfg["format_version"] == 1
    assert {k: cfg[k] for k in model_config(model)} == model_config(model)


def test_tied_weights_are_saved(tmp_path):
    model = make_model("cnn", num_classes=3)
    model.extra = torch.nn.Linear(model.num_features, 3)
    model.extra.weight = model.classifier.weight  # shared storage: safetensors refuses it unless cloned
    save_run(tmp_path, model, run_config())
    state = load_file(tmp_path / WEIGHTS_NAME)
    assert torch.equal(state["extra.weight"], state["classifier.weight"])


def test_save_rejects_invalid_config_before_writing(tmp_path):
    model = make_model("cnn", num_classes=3)
    with pytest.raises(CheckpointError, match="labels"):
        save_run(tmp_path / "run", model, run_config(2))
    assert not (tmp_path / "run").exists()


# --- atomic writes ------------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch, broken):
    target = tmp_path / "file.bin"
    io_utils.write_atomic(target, b"old content")

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_utils.os, broken, fail)
    with pytest.raises(OSError, match="file.bin") as info:
        io_utils.write_atomic(target, b"new content")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and "disk full" in str(info.value)
    assert target.read_bytes() == b"old content"
    assert listing(tmp_path) == ["file.bin"]  # no temporary file left behind


def test_atomic_file_written_in_pieces(tmp_path):
    target = tmp_path / "file.bin"
    io_utils.write_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with io_utils.AtomicFile(target) as f:
            f.write(b"new ")
            raise RuntimeError("the producer failed")
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["file.bin"]  # discarded, nothing left behind
    with io_utils.AtomicFile(target) as f:
        f.write(b"new ")
        assert target.read_bytes() == b"old"  # not visible before the commit
        f.write(memoryview(b"content"))
    assert target.read_bytes() == b"new content" and listing(tmp_path) == ["file.bin"]


def test_atomic_write_helpers(tmp_path):
    io_utils.write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "a.json").read_text()
    assert text.endswith("\n") and text.index('"b"') < text.index('"a"')
    assert json.loads(text) == {"b": 1, "a": [1, 2]}
    io_utils.write_text_atomic(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert listing(tmp_path) == ["a.json", "t.txt"]


def test_failed_save_keeps_previous_run_loadable(saved_run, tmp_path, monkeypatch):
    run, model = copy_run(saved_run, tmp_path)
    old_weights = (run / WEIGHTS_NAME).read_bytes()

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_utils.os, "replace", fail)
    with pytest.raises(OSError, match=WEIGHTS_NAME):
        save_run(run, make_model("cnn", seed=1), run_config())
    monkeypatch.undo()
    assert (run / WEIGHTS_NAME).read_bytes() == old_weights
    assert listing(run) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    loaded, _ = load_run(run)
    wave = torch.randn(1, SAMPLES)
    with torch.no_grad():
        assert torch.equal(loaded(wave), model(wave))


@pytest.mark.parametrize("code, cls", [(errno.EROFS, OSError), (errno.EACCES, PermissionError)])
def test_read_only_run_folder_names_path(saved_run, tmp_path, monkeypatch, code, cls):
    """Simulated read-only folder (works as root too): creating the temporary file fails."""
    run, _ = copy_run(saved_run, tmp_path)
    old_weights = (run / WEIGHTS_NAME).read_bytes()
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(io_utils.os, "open", read_only_open)
    with pytest.raises(cls) as info:
        save_run(run, make_model("cnn", seed=1), run_config())
    monkeypatch.undo()
    assert info.value.errno == code
    assert str(run / WEIGHTS_NAME) in str(info.value)
    assert (run / WEIGHTS_NAME).read_bytes() == old_weights
    assert listing(run) == sorted([CONFIG_NAME, WEIGHTS_NAME])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores chmod")
def test_read_only_run_folder_real_chmod(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    old_weights = (run / WEIGHTS_NAME).read_bytes()
    run.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="model.safetensors"):
            save_run(run, make_model("cnn", seed=1), run_config())
    finally:
        run.chmod(0o700)
    assert (run / WEIGHTS_NAME).read_bytes() == old_weights
    assert listing(run) == sorted([CONFIG_NAME, WEIGHTS_NAME])


# --- config validation --------------------------------------------------------------------------


def test_unknown_top_level_keys_are_kept(saved_run):
    cfg = read_config(saved_run[0])
    assert cfg["epochs"] == 3 and cfg["metrics"] == {"accuracy": 0.5}


@pytest.mark.parametrize("changes, key", [
    ({"model": "no_such_model"}, "model"),
    ({"model": 3}, "model"),
    ({"num_classes": "3"}, "num_classes"),
    ({"num_classes": 3.0}, "num_classes"),
    ({"num_classes": True}, "num_classes"),
    ({"num_classes": 10**9}, "num_classes"),
    ({"num_classes": 0}, "num_classes"),
    ({"labels": ["a", "b"]}, "labels"),
    ({"labels": ["a", "a", "b"]}, "labels"),
    ({"labels": ["a", "b", 3]}, "labels"),
    ({"format_version": 2}, "format_version"),
    ({"format_version": "1"}, "format_version"),
    ({"frontend": {**FRONTEND.to_dict(), "evil": 1}}, "frontend.evil"),
    ({"frontend": {**FRONTEND.to_dict(), "sample_rate": 10}}, "frontend.sample_rate"),
    ({"frontend": {**FRONTEND.to_dict(), "n_mels": 100000}}, "frontend.n_mels"),
    ({"frontend": {**FRONTEND.to_dict(), "hop_ms": "10"}}, "frontend.hop_ms"),
    ({"frontend": {**FRONTEND.to_dict(), "f_max": 1e9}}, "frontend.f_max"),
    ({"frontend": {**FRONTEND.to_dict(), "level_norm": "yes"}}, "frontend.level_norm"),
    ({"frontend": [8000, 32]}, "frontend"),
    ({"model_args": {"width": 1e9}}, "model_args.width"),
    ({"model_args": {"channels": [8, {"x": 1}]}}, "model_args.channels[1]"),
    ({"model_args": {"num_classes": 4}}, "model_args.num_classes"),
    ({"model_args": []}, "model_args"),
    ({"augment": {"rm_rf": 1}}, "augment.rm_rf"),
    ({"clip_seconds": 0}, "clip_seconds"),
    ({"clip_seconds": 1e7}, "clip_seconds"),
    ({"task": "regression"}, "task"),
    ({"thresholds": [0.5, 0.5]}, "thresholds"),
    ({"thresholds": ["0.5", 0.5, 0.5]}, "thresholds"),
    ({"labels": _DELETE}, "labels"),
    ({"frontend": _DELETE}, "frontend"),
])
def test_config_validation_rejects(saved_run, tmp_path, changes, key):
    run, _ = copy_run(saved_run, tmp_path)
    rewrite_config(run, **changes)
    with pytest.raises(CheckpointError, match=re.escape(f"'{key}'")) as info:
        read_config(run)
    assert str(run) in str(info.value)
    with pytest.raises(CheckpointError):
        load_run(run)


def test_config_accepts_thresholds_and_null_f_max(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    rewrite_config(run, thresholds=[0.5, 0.25, 1], task="multi_label")
    cfg = read_config(run)
    assert cfg["thresholds"] == [0.5, 0.25, 1] and cfg["frontend"]["f_max"] is None


def test_run_saved_before_level_norm_loads_without_it(tmp_path):
    """A config.json written before the level normalisation existed has no frontend.level_norm: it loads with
    the normalisation off, as the run was trained, and gives that model's logits."""
    torch.manual_seed(0)
    model = create_model("cnn", 3, frontend=FrontendConfig(sample_rate=8000, n_mels=32, level_norm=False),
                         augment=AugmentConfig.off(), width=0.25).eval()
    save_run(tmp_path, model, run_config())
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    del cfg["frontend"]["level_norm"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(cfg))
    assert read_config(tmp_path)["frontend"]["level_norm"] is False
    loaded, _ = load_run(tmp_path)
    assert loaded.frontend.config.level_norm is False
    x = torch.randn(2, SAMPLES)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unparseable_config(saved_run, tmp_path, content):
    run, _ = copy_run(saved_run, tmp_path)
    (run / CONFIG_NAME).write_text(content)
    with pytest.raises(CheckpointError, match="run "):
        read_config(run)


def test_missing_files(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    (run / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"no model.safetensors in {run}"):
        load_run(run)
    (run / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_run(run)
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_run(tmp_path / "nowhere")


# --- never unpickle -----------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` -- stands in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_never_loaded(saved_run, tmp_path, monkeypatch):
    # The payload is live: unpickling it really does create the file.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()

    run, model = copy_run(saved_run, tmp_path)
    marker = tmp_path / "pwned"
    for name in ("model.pt", "pytorch_model.bin", "weights.pkl"):
        (run / name).write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded, _ = load_run(run)
    wave = torch.randn(1, SAMPLES)
    with torch.no_grad():
        assert torch.equal(loaded(wave), model(wave))
    assert not marker.exists()

    (run / WEIGHTS_NAME).unlink()  # only the pickles left: refused, still not opened
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_run(run)
    assert not marker.exists()


# --- strict loading -----------------------------------------------------------------------------


def _edit_weights(run, edit):
    state = load_file(run / WEIGHTS_NAME)
    edit(state)
    save_file(state, run / WEIGHTS_NAME)


def test_missing_tensor_is_named(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    _edit_weights(run, lambda s: s.pop("classifier.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: classifier\.weight"):
        load_run(run)


def test_unexpected_tensor_is_named(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    _edit_weights(run, lambda s: s.update({"backdoor.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: backdoor\.weight"):
        load_run(run)


def test_shape_mismatch_is_named(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    _edit_weights(run, lambda s: s.update({"classifier.bias": torch.zeros(5)}))
    with pytest.raises(CheckpointError, match=r"classifier\.bias: checkpoint \(5,\) vs model \(3,\)"):
        load_run(run)


def test_corrupt_weights(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    (run / WEIGHTS_NAME).write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="cannot read model.safetensors"):
        load_run(run)


def test_bad_model_args_are_a_checkpoint_error(saved_run, tmp_path):
    run, _ = copy_run(saved_run, tmp_path)
    rewrite_config(run, model_args={"width": 0.25, "no_such_arg": 1})
    with pytest.raises(CheckpointError, match="cannot build model"):
        load_run(run)
