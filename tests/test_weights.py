"""Pretrained AudioSet weights: the EfficientAT port loads the official release strictly and tags real recordings;
the catalogue fetches, verifies and converts release files (offline: a mirror folder and file:// URLs, never the
network) and refuses wrong hashes, truncated downloads and unsafe pickles with nothing left half-written; the bundled
mn04_as; fine-tuning from it with a new head; embeddings; ONNX parity of the tagger."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import audioclf
from audioclf.models import create_model
from audioclf.weights import CATALOGUE, MIRROR_ENV, PretrainedError, audioset_labels, pretrained
from audioclf.weights import fetch
from audioclf.weights.catalogue import EFFICIENTAT_FRONTEND
from conftest import REPO, run_cli

SHARED = REPO.parent / "shared" / "pretrained" / "efficientat-mn04"
RELEASE = SHARED / "mn04_as_mAP_432.pt"
SAMPLES = SHARED / "sample_audio"
MN04 = CATALOGUE["mn04_as"]
needs_release = pytest.mark.skipif(not RELEASE.is_file(), reason="../shared/pretrained/efficientat-mn04 is missing")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache, and no mirror unless it sets one."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("AUDIOCLF_CACHE", str(root))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return root


@pytest.fixture
def no_bundle(monkeypatch, tmp_path):
    """As if the package had no bundled copy: the mirror or a download must provide the weights."""
    monkeypatch.setattr(fetch, "BUNDLED", tmp_path / "no-bundle")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOCLF_CACHE", str(tmp_path_factory.mktemp("tagger-cache")))
        return audioclf.load("mn04_as")


def cached_files(cache: Path) -> list[Path]:
    """Every file under the cache's pretrained folder (temporaries included)."""
    return [p for p in (cache / "pretrained").rglob("*") if p.is_file()]


def tensors_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ the port


@needs_release
def test_the_release_file_loads_strictly_into_mn04():
    state = torch.load(RELEASE, map_location="cpu", weights_only=True)
    model = create_model("mn04", 527, frontend=EFFICIENTAT_FRONTEND)
    assert model.load_state_dict(state, strict=True)  # no missing or unexpected tensor
    assert set(model.state_dict()) == set(state)  # the front end holds no state of its own
    assert sum(p.numel() for p in model.parameters()) == 983_599  # EfficientAT's 0.98 M


@needs_release
def test_the_bundled_run_is_the_release_converted_and_carries_audiosets_labels():
    bundled = fetch.BUNDLED / "mn04_as"
    config = json.loads((bundled / "config.json").read_text())
    with open(SHARED / "class_labels_indices.csv", newline="") as f:
        names = [row["display_name"] for row in csv.DictReader(f)]
    assert config["labels"] == names == audioset_labels() and len(names) == 527
    assert config["task"] == "multi_label" and config["model"] == "mn04"
    assert config["frontend"] == EFFICIENTAT_FRONTEND
    assert config["pretrained"]["sha256"] == MN04.sha256 == hashlib.sha256(RELEASE.read_bytes()).hexdigest()
    assert (bundled / "LICENSE-EfficientAT").read_text() == (SHARED / "LICENSE-EfficientAT").read_text()
    release = torch.load(RELEASE, map_location="cpu", weights_only=True)
    assert tensors_equal(load_file(str(bundled / "model.safetensors")), release)


@needs_release
def test_the_sample_clips_are_tagged_music_speech_and_typing(tagger):
    clips = [str(SAMPLES / f"{name}.wav") for name in ("music", "speech", "typing")]
    top3 = [[p["label"] for p in row[:3]] for row in tagger.predict(clips, top_k=3)]
    assert "Music" in top3[0] and "Speech" in top3[1] and "Typing" in top3[2]
    assert tagger.multilabel and len(tagger.labels) == 527


def test_fsdd_clips_are_tagged_speech(tagger):
    clips = sorted((REPO / "datasets/fsdd/recordings").glob("*.flac"))[::27][:100]
    assert len(clips) == 100
    scores = tagger.scores([str(p) for p in clips])
    speech = tagger.labels.index("Speech")
    ranks = (scores > scores[:, [speech]]).sum(axis=1)  # labels scoring above "Speech"
    assert ranks.max() <= 2, f"clips with Speech below the top 3: {[str(clips[i]) for i in np.flatnonzero(ranks > 2)]}"


def test_multilabel_predictions_give_the_top_k_and_every_label_over_its_threshold(tagger):
    row = np.zeros(527)
    row[[5, 7, 9]] = [0.9, 0.6, 0.2]
    assert [p["label"] for p in tagger.ranked(row, top_k=1)] == [tagger.labels[5], tagger.labels[7]]
    assert [p["label"] for p in tagger.ranked(row, top_k=3)] == [tagger.labels[i] for i in (5, 7, 9)]


# ---------------------------------------------------------------------------------------------- the catalogue


def test_a_catalogue_name_resolves_to_a_run_folder_in_the_cache(cache):
    run = pretrained("mn04_as")
    assert run == cache / "pretrained" / "mn04_as" and (run / "config.json").is_file()
    assert tensors_equal(load_file(str(run / "model.safetensors")),
                         load_file(str(fetch.BUNDLED / "mn04_as" / "model.safetensors")))
    assert pretrained("mn04_as") == run  # the second use reads the cache
    assert sorted(p.name for p in cached_files(cache)) == ["LICENSE-EfficientAT", "config.json", "model.safetensors"]


def test_unknown_names_and_missing_paths_are_refused_with_the_catalogue_listed():
    with pytest.raises(PretrainedError, match=r"not a catalogue name \(mn01_as, .*mn04_as"):
        pretrained("mn99_as")
    rc, _, err = run_cli("train", "x", "--out", "y", "--pretrained", "nope")
    assert rc == 2 and "--pretrained nope: not a catalogue name" in err and len(err.strip().splitlines()) == 1


@needs_release
def test_the_offline_mirror_folder_is_read_and_converted(cache, no_bundle, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(SHARED))
    run = pretrained("mn04_as")
    assert run == cache / "pretrained" / "mn04_as"
    assert tensors_equal(load_file(str(run / "model.safetensors")),
                         torch.load(RELEASE, map_location="cpu", weights_only=True))
    assert json.loads((run / "config.json").read_text())["pretrained"]["sha256"] == MN04.sha256


@needs_release
def test_a_local_release_file_is_recognised_by_its_hash(cache, tmp_path):
    copy = tmp_path / "weights.pt"  # any name: the sha256 says which release it is
    copy.write_bytes(RELEASE.read_bytes())
    run = pretrained(copy)
    assert run == cache / "pretrained" / "mn04_as"
    assert audioclf.load(run).labels == audioset_labels()


@needs_release
def test_a_wrong_hash_is_refused_and_nothing_is_cached(cache, no_bundle, monkeypatch, tmp_path):
    data = bytearray(RELEASE.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / MN04.file).write_bytes(bytes(data))
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    with pytest.raises(PretrainedError, match=f"is not the catalogue's {MN04.sha256}"):
        pretrained("mn04_as")
    with pytest.raises(PretrainedError, match="is not the catalogue's"):
        pretrained(mirror / MN04.file)  # the same file named directly
    assert cached_files(cache) == []


@needs_release
def test_download_from_a_url_checks_the_hash_and_removes_the_download(cache, no_bundle, monkeypatch):
    monkeypatch.setitem(CATALOGUE, "mn04_as", fetch.PretrainedWeights(**{**MN04.__dict__, "url": RELEASE.as_uri()}))
    run = pretrained("mn04_as")
    assert audioclf.load(run).labels == audioset_labels()
    assert not [p for p in cached_files(cache) if "downloads" in p.parts]  # converted, then the release file is gone


@needs_release
def test_download_refuses_a_wrong_hash_and_a_truncated_transfer(tmp_path, monkeypatch):
    dest = tmp_path / "x.pt"
    assert fetch.download(RELEASE.as_uri(), dest, MN04.sha256) == MN04.sha256 and dest.stat().st_size > 0
    dest.unlink()
    with pytest.raises(PretrainedError, match="is not the catalogue's 0000"):
        fetch.download(RELEASE.as_uri(), dest, "0" * 64)
    assert not dest.exists() and not list(tmp_path.iterdir())

    class Truncated(io.BytesIO):  # a server that announces more bytes than it sends
        headers = {"Content-Length": str(RELEASE.stat().st_size)}

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Truncated(RELEASE.read_bytes()[:100_000]))
    with pytest.raises(PretrainedError, match=f"ended after 100000 of {RELEASE.stat().st_size} bytes"):
        fetch.download("https://example.invalid/mn04_as_mAP_432.pt", dest, MN04.sha256)
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_no_network_is_one_clear_error(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(PretrainedError, match=f"cannot download https://x/y.pt: .*name resolution; offline, put y.pt "
                                              f"in a folder named by \\${MIRROR_ENV}"):
        fetch.download("https://x/y.pt", tmp_path / "y.pt", None)
    assert not list(tmp_path.iterdir())


class Payload:  # a class that weights_only unpickling does not allow
    def __init__(self):
        self.x = 1


def test_a_pickle_that_weights_only_refuses_is_not_opened(cache, tmp_path):
    path = tmp_path / CATALOGUE["mn01_as"].file  # an entry with no pinned hash: it reaches the reader
    torch.save({"features.0.0.weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(PretrainedError, match=r"weights_only=True\) refuses it"):
        pretrained(path)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PretrainedError, match="not a readable PyTorch weights file"):
        fetch.read_release(truncated)
    assert cached_files(cache) == []


# --------------------------------------------------------------------------------- fine-tuning, embeddings, ONNX


def write_two_sounds(root: Path, sr: int = 16000) -> None:
    """Two classes of 0.5 s clips (noise bursts and tones) in class folders, four of each."""
    rng = np.random.default_rng(0)
    t = np.arange(sr // 2) / sr
    for label in ("noise", "tone"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            x = rng.normal(0, 0.1, t.size) if label == "noise" else 0.3 * np.sin(2 * np.pi * (400 + 100 * i) * t)
            sf.write(root / label / f"{i}.wav", x.astype(np.float32), sr)


@pytest.mark.parametrize("freeze", [True, False])
def test_fine_tuning_from_mn04_as_replaces_the_head(tmp_path, freeze):
    write_two_sounds(tmp_path / "data")
    run = tmp_path / "run"
    rc, out, err = run_cli("train", tmp_path / "data", "--out", run, "--pretrained", "mn04_as", "--epochs", "1",
                           "--test-fraction", "0.25", "--cache-dir", tmp_path / "audio",
                           *(["--freeze-backbone"] if freeze else []))
    assert rc == 0, err
    assert "fine-tune: from mn04_as (mn04, 32000 Hz)" in out
    assert "loaded 310 tensors, skipped 2, freshly initialised 2" in out
    assert "skipped classifier.5.weight: shape (527, 512) -> (2, 512) (new head)" in out
    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == ["noise", "tone"] and config["frontend"] == EFFICIENTAT_FRONTEND
    assert config["init"]["name"] == "mn04_as" and config["init"]["release_sha256"] == MN04.sha256
    assert config["training"]["sample_rate"] == 32000 and config["training"]["lr"] == 1e-3
    source = load_file(str(fetch.BUNDLED / "mn04_as" / "model.safetensors"))
    tuned = load_file(str(run / "model.safetensors"))
    assert tuned["classifier.5.weight"].shape == (2, 512)
    changed = [k for k in source if not k.startswith("classifier.5.") and not torch.equal(source[k], tuned[k])]
    assert (changed == []) if freeze else any(k.startswith("features.") for k in changed)
    assert [p["label"] for p in audioclf.load(run).predict(str(tmp_path / "data/tone/0.wav"), top_k=2)] \
        in (["noise", "tone"], ["tone", "noise"])


def test_freeze_backbone_needs_pretrained(tmp_path):
    rc, _, err = run_cli("train", tmp_path, "--out", tmp_path / "r", "--freeze-backbone")
    assert rc == 2 and "--freeze-backbone needs --pretrained" in err


@needs_release
def test_embed_writes_the_clip_embeddings(tagger, tmp_path):
    clips = [SAMPLES / "speech.wav", SAMPLES / "typing.wav"]
    rc, out, err = run_cli("embed", "mn04_as", *clips, tmp_path / "missing.wav", "--out", tmp_path / "e.npy")
    assert rc == 1 and "missing.wav" in err  # the failed file is named and the exit code says so
    emb = np.load(tmp_path / "e.npy")
    meta = json.loads((tmp_path / "e.npy.json").read_text())
    assert emb.shape == (2, 512) and meta["paths"] == [str(c) for c in clips] and meta["dim"] == 512
    want = tagger.embeddings([sf.read(c, dtype="float32")[0] for c in clips])
    np.testing.assert_allclose(emb, want, atol=1e-5)
    head = tagger.model.get_classifier()  # the embedding is what the head takes
    logits = head(torch.from_numpy(want).float()).detach().numpy()
    np.testing.assert_allclose(logits, tagger.clip_logits([sf.read(c, dtype="float32")[0] for c in clips]),
                               atol=1e-4)


@needs_release
def test_the_exported_tagger_matches_pytorch(tagger, tmp_path):
    pytest.importorskip("onnxruntime")
    from audioclf.export import export_onnx
    from audioclf.onnx_predictor import OnnxClassifier

    path = export_onnx("mn04_as", tmp_path / "mn04_as.onnx")
    onnx_clf = OnnxClassifier(path)
    assert onnx_clf.labels == audioset_labels() and onnx_clf.sample_rate == 32000 and onnx_clf.multilabel
    clips = [str(SAMPLES / f"{name}.wav") for name in ("music", "speech", "typing")]
    np.testing.assert_allclose(onnx_clf.scores(clips), tagger.scores(clips), atol=1e-4)


@needs_release
def test_the_service_tags_with_the_pretrained_model_by_name():
    pytest.importorskip("fastapi")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from fastapi.testclient import TestClient
    from audioclf.serving import create_app

    with TestClient(create_app("mn04_as", top_k=3)) as client:
        answer = client.post("/v1/classify", content=(SAMPLES / "typing.wav").read_bytes(),
                             headers={"Content-Type": "audio/wav"})
    assert answer.status_code == 200, answer.text
    labels = [p["label"] for p in answer.json()["predictions"]]
    assert len(labels) >= 3 and "Typing" in labels[:3]


def test_settings_that_contradict_the_pretrained_model_are_refused(tmp_path):
    for flags, message in [(["--model", "cnn"], "--model cnn: --pretrained mn04_as is a mn04 model"),
                           (["--sample-rate", "16000"], "--sample-rate 16000: --pretrained mn04_as takes audio at "
                                                        "32000 Hz")]:
        rc, _, err = run_cli("train", tmp_path, "--out", tmp_path / "run", "--pretrained", "mn04_as", *flags)
        assert rc == 2 and message in err and not (tmp_path / "run").exists()
