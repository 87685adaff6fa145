"""``--ensemble K`` and ``--model a,b``: members that differ in their training seed (and architecture), one split,
saved and served as one model."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from conftest import run_cli
from test_cli import write_tones

import audioclf
import audioclf.training.setup as training_setup
from audioclf.augment import AugmentConfig
from audioclf.checkpoint import CheckpointError, load_run, save_run
from audioclf.features import FrontendConfig
from audioclf.models import create_model
from audioclf.models.ensemble import Ensemble
from audioclf.training.finetune import init_source

SR = 8000


def members(n: int = 3, names: tuple[str, ...] = ("cnn",)) -> list[torch.nn.Module]:
    """``n`` small trained-looking members taking ``names`` in turn."""
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = create_model(names[seed % len(names)], 4, FrontendConfig(sample_rate=SR, n_mels=32), AugmentConfig(),
                             width=0.25)
        model.train()
        with torch.no_grad():  # batch-norm statistics of their own
            model(torch.randn(8, SR // 2) * (seed + 1) * 0.1)
        out.append(model.eval())
    return out


@pytest.mark.parametrize("names", [("cnn",), ("cnn", "crnn", "mobilenet")])
def test_ensemble_logits_are_the_members_mean_with_one_spectrogram(names):
    """In eval mode the log-mel is computed once and each member normalises it itself: the logits equal the mean
    of the members' own forward passes, and long-recording inference (forward_spectrogram) agrees."""
    parts = members(3, names)
    ensemble = Ensemble(parts).eval()
    x = torch.randn(3, SR // 2) * 0.2
    with torch.no_grad():
        expected = torch.stack([m(x) for m in parts]).mean(0)
        torch.testing.assert_close(ensemble(x), expected, atol=1e-5, rtol=1e-5)
        spec = ensemble.frontend.spectrogram(x)[:, None]
        torch.testing.assert_close(ensemble.forward_spectrogram(spec), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(parts[0](x), parts[1](x))  # the members really differ
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(parts[:1])
    for other in (create_model("cnn", 4, FrontendConfig(sample_rate=SR, n_mels=40), width=0.25),
                  create_model("cnn", 5, FrontendConfig(sample_rate=SR, n_mels=32), width=0.25)):
        with pytest.raises(ValueError, match="share their front-end settings and classes"):
            Ensemble([parts[0], other])


def test_an_ensemble_run_folder_round_trips_strictly(tmp_path):
    ensemble = Ensemble(members(2))
    save_run(tmp_path / "run", ensemble, {"labels": list("abcd"), "clip_seconds": 0.5, "task": "single_label"})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["ensemble"] == 2 and config["model"] == "cnn"
    assert all(k.startswith(("members.0.", "members.1.")) for k in load_file(tmp_path / "run" / "model.safetensors"))
    model, _ = load_run(tmp_path / "run")
    x = torch.randn(2, SR // 2) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(model(x), ensemble.eval()(x))
    for bad in (1, 65, "3"):  # a config that does not describe the weights is refused, never loaded partly
        (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "ensemble": bad}))
        with pytest.raises(CheckpointError, match="ensemble"):
            load_run(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "ensemble": 3, "member_models": [
        {"model": "cnn", "model_args": {"width": 0.25}}] * 3}))
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_run(tmp_path / "run")
    with pytest.raises(ValueError, match="fine-tune from one of them"):  # its tensors match no single model
        init_source(tmp_path / "run")


def test_a_mixed_ensemble_round_trips_and_its_member_models_are_checked(tmp_path):
    """Members of other architectures are rebuilt from ``member_models``; a run that lists none (one architecture,
    as older versions wrote them) still loads; a bad list is refused with the key named."""
    ensemble = Ensemble(members(3, ("cnn", "crnn")))
    save_run(tmp_path / "run", ensemble, {"labels": list("abcd"), "clip_seconds": 0.5, "task": "single_label"})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [m["model"] for m in config["member_models"]] == ["cnn", "crnn", "cnn"] and config["model"] == "cnn"
    assert all(m["model_args"] == {"width": 0.25} for m in config["member_models"])
    model, _ = load_run(tmp_path / "run")
    assert [type(m).__name__ for m in model.members] == ["ConvNet", "ConvRNN", "ConvNet"]
    x = torch.randn(2, SR // 2) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(model(x), ensemble.eval()(x))
    fastapi = pytest.importorskip("fastapi.testclient")
    from audioclf.serving import create_app
    with fastapi.TestClient(create_app(tmp_path / "run")) as client:  # the service names every member
        assert client.get("/health").json()["model"] == "cnn+crnn+cnn"
        wav = io.BytesIO()
        sf.write(wav, x[0].numpy(), SR, format="WAV")
        answer = client.post("/v1/classify", files={"file": ("x.wav", wav.getvalue())}).json()
        with torch.no_grad():
            best = int(ensemble(x[:1]).argmax())
        assert answer["predictions"][0]["label"] == "abcd"[best]
    write = lambda cfg: (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))  # noqa: E731
    for bad, match in ((config["member_models"][:2], "list of 3 objects"),
                       ([*config["member_models"][:2], {"model": "nope", "model_args": {}}],
                        "member_models\\[2\\].model"),
                       ([*config["member_models"][:2], {"model": "cnn"}], "member_models\\[2\\]' must be an object"),
                       ([*config["member_models"][:2], {"model": "cnn", "model_args": {"name": 1}}],
                        "member_models\\[2\\].model_args.name")):
        write({**config, "member_models": bad})
        with pytest.raises(CheckpointError, match=match):
            load_run(tmp_path / "run")
    write({**config, "member_models": [config["member_models"][i] for i in (1, 0, 1)]})  # crnn where a cnn was
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_run(tmp_path / "run")

    save_run(tmp_path / "same", Ensemble(members(2)), {"labels": list("abcd"), "clip_seconds": 0.5,
                                                       "task": "single_label"})
    config = json.loads((tmp_path / "same" / "config.json").read_text())
    del config["member_models"]
    (tmp_path / "same" / "config.json").write_text(json.dumps(config))
    model, _ = load_run(tmp_path / "same")
    assert [m.model_name for m in model.members] == ["cnn", "cnn"]


def test_train_ensemble_members_share_the_split_and_the_run_serves_their_mean(tmp_path, monkeypatch):
    root = tmp_path / "tones"
    write_tones(root, groups=("a", "b", "c", "d"), per_group=3)
    split_seeds = []
    make_split = training_setup.make_split
    monkeypatch.setattr(training_setup, "make_split", lambda *a: split_seeds.append(a[-1]) or make_split(*a))
    settings = dict(model="cnn", width=0.25, n_mels=32, sample_rate=SR, clip_seconds=0.25, batch_size=8, epochs=2,
                    cache_dir=str(tmp_path / "cache"), seed=5, ensemble=2)
    report = audioclf.train(str(root), str(tmp_path / "run"), **settings)
    run = tmp_path / "run"
    assert split_seeds == [5, 5, 5]  # member 1, member 2, the ensemble's test: one split
    seeds = [json.loads((run / f"member-{i}" / "config.json").read_text())["training"]["seed"] for i in (1, 2)]
    assert seeds == [5, 1005]
    w1, w2 = (load_file(run / f"member-{i}" / "model.safetensors") for i in (1, 2))
    assert not torch.equal(w1["classifier.weight"], w2["classifier.weight"])
    config = json.loads((run / "config.json").read_text())
    assert config["ensemble"] == 2 and [m["seed"] for m in config["ensemble_members"]] == [5, 1005]
    member_seconds = [json.loads((run / f"member-{i}" / "config.json").read_text())["metrics"]["train_seconds"]
                      for i in (1, 2)]
    assert config["metrics"]["train_seconds"] == pytest.approx(sum(member_seconds))
    assert json.loads((run / "report.json").read_text())["accuracy"] == report["accuracy"]
    clf = audioclf.load(run)
    assert isinstance(clf.model, Ensemble)
    clips = [np.asarray(0.3 * np.sin(2 * np.pi * f * np.arange(SR // 2) / SR), np.float32) for f in (300, 2500)]
    mean = np.mean([audioclf.load(run / f"member-{i}").clip_logits(clips) for i in (1, 2)], axis=0)
    np.testing.assert_allclose(clf.clip_logits(clips), mean, atol=1e-5)
    rc, out, err = run_cli("predict", run, root / "high" / "a_0.wav", "--format", "json")
    assert rc == 0, err
    assert json.loads(out)[0]["predictions"][0]["label"] in ("low", "mid", "high")


def test_model_names_make_an_ensemble_whose_members_take_them_in_turn(tmp_path):
    root = tmp_path / "tones"
    write_tones(root, groups=("a", "b", "c", "d"), per_group=3)
    settings = dict(width=0.25, n_mels=32, sample_rate=SR, clip_seconds=0.25, batch_size=8, epochs=1,
                    cache_dir=str(tmp_path / "cache"), seed=2)
    for model, ensemble, match in (("cnn,nope", 2, "unknown model"), ("cnn,crnn,cnn", 2, "trains fewer members")):
        with pytest.raises(ValueError, match=match):  # before any work
            audioclf.train(str(root), str(tmp_path / "bad"), **settings, model=model, ensemble=ensemble)
    assert not (tmp_path / "bad").exists()
    audioclf.train(str(root), str(tmp_path / "run"), **settings, model="cnn, crnn", ensemble=3)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [m["model"] for m in config["member_models"]] == ["cnn", "crnn", "cnn"]
    assert [(m["model"], m["seed"]) for m in config["ensemble_members"]] == [("cnn", 2), ("crnn", 1002), ("cnn", 2002)]
    assert config["training"]["model"] == "cnn, crnn" and config["training"]["ensemble"] == 3
    audioclf.train(str(root), str(tmp_path / "pair"), **settings, model="crnn,cnn")  # one member a name
    config = json.loads((tmp_path / "pair" / "config.json").read_text())
    assert [m["model"] for m in config["member_models"]] == ["crnn", "cnn"]
    assert isinstance(audioclf.load(tmp_path / "pair").model, Ensemble)


def test_each_member_gets_the_automatic_epochs_of_its_own_model(tmp_path, monkeypatch):
    from audioclf.training import autoconfig

    root = tmp_path / "tones"
    write_tones(root, groups=("a", "b", "c", "d"), per_group=3)
    monkeypatch.setattr(autoconfig, "choose_epochs", lambda files, batch, model, *args: {"crnn": 2}.get(model, 1))
    audioclf.train(str(root), str(tmp_path / "run"), width=0.25, n_mels=32, sample_rate=SR, clip_seconds=0.25,
                   batch_size=8, cache_dir=str(tmp_path / "cache"), model="cnn,crnn")
    for member, (model, epochs) in zip(("member-1", "member-2"), (("cnn", 1), ("crnn", 2))):
        config = json.loads((tmp_path / "run" / member / "config.json").read_text())
        assert (config["model"], config["training"]["epochs"]) == (model, epochs)
        assert "epochs" in config["training"]["auto"]
        assert len((tmp_path / "run" / member / "metrics.csv").read_text().splitlines()) == 1 + epochs
    members = json.loads((tmp_path / "run" / "config.json").read_text())["ensemble_members"]
    assert [(m["model"], m["epochs"]) for m in members] == [("cnn", 1), ("crnn", 2)]


@pytest.mark.parametrize("names", [("cnn",), ("cnn", "crnn")])
def test_an_ensemble_exports_to_onnx_with_parity(tmp_path, names):
    pytest.importorskip("onnxruntime")
    from audioclf.export import export_onnx
    from audioclf.onnx_predictor import OnnxClassifier

    save_run(tmp_path / "run", Ensemble(members(2, names)), {"labels": list("abcd"), "clip_seconds": 0.5,
                                                              "task": "single_label"})
    export_onnx(tmp_path / "run", tmp_path / "model.onnx")  # verifies parity itself; raises past the tolerance
    onnx_clf = OnnxClassifier(tmp_path / "model.onnx")
    x = (np.random.default_rng(0).standard_normal((2, SR // 2)) * 0.2).astype(np.float32)
    model, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_clf.logits(x), expected, atol=1e-4)


def test_members_with_different_front_ends_are_refused(tmp_path):
    """One log-mel feeds every member in eval mode: an EfficientAT member (Kaldi front end) cannot join a cnn."""
    with pytest.raises(ValueError, match="one kind of front end"):
        Ensemble([create_model("cnn", 3, FrontendConfig(sample_rate=8000)),
                  create_model("mn01", 3, FrontendConfig(sample_rate=8000))])
    rc, _, err = run_cli("train", tmp_path, "--out", tmp_path / "run", "--model", "cnn,mn04")
    assert rc == 2 and "these differ (cnn: Frontend, mn04: KaldiFrontend)" in err and not (tmp_path / "run").exists()
