"""ONNX export: parity with PyTorch for every registered model on real FSDD clips (two lengths, two batch sizes),
metadata, clear errors, the conv1d STFT, the torch-free ONNX predictor and the CLI."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from audioclf.audio import read_audio, resample  # noqa: E402
from audioclf.augment import AugmentConfig  # noqa: E402
from audioclf.checkpoint import load_run, save_run  # noqa: E402
from audioclf.data.windows import fit_length  # noqa: E402
from audioclf.export import ExportError, export_model, export_onnx  # noqa: E402
from audioclf.features import FrontendConfig, LogMel  # noqa: E402
from audioclf.models import create_model, list_models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECORDINGS = sorted((REPO / "datasets" / "fsdd" / "recordings").glob("*.flac"))
SR = 8000
CLIP_SECONDS = 0.5
LABELS = [str(d) for d in range(10)]
# small but complete versions of each model (every layer type the full-size one has)
SMALL_ARGS = {"ast_tiny": {"dim": 64, "depth": 1, "heads": 2}}
PARITY_TOL = 1e-4



@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Real spoken digits, one per digit (different speakers), at 8 kHz."""
    picked = [next(p for p in RECORDINGS[i::7] if p.name.startswith(f"{d}_")) for i, d in enumerate(range(10))]
    return [read_audio(p, SR)[0] for p in picked]


def make_run(folder: Path, name: str, clips: list[np.ndarray], task: str = "single_label") -> Path:
    """A freshly created model made to look trained, saved as a run folder: batch-norm statistics set on real
    clips (activations in a realistic range) and the head scaled so that the largest logit magnitude on them is 5
    (a trained model's range with label smoothing 0.1; a random head on a deep random net gives 15-50, and float32
    rounding differences grow with the logits' scale)."""
    torch.manual_seed(0)
    kwargs = SMALL_ARGS.get(name, {} if name.startswith("mn") else {"width": 0.25})  # mnXX: the width is the name
    model = create_model(name, len(LABELS), frontend=FrontendConfig(sample_rate=SR, n_mels=32),
                         augment=AugmentConfig.off(), **kwargs)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    batch = torch.from_numpy(np.stack([fit_length(c, int(CLIP_SECONDS * SR)) for c in clips]))
    model.train()
    with torch.no_grad():
        model(batch)
        model(batch * 0.5)
    for m in norms:
        m.momentum = 0.1
    model.eval()
    with torch.no_grad():
        scale = 5.0 / float(model(batch).abs().max())
        model.get_classifier().weight.mul_(scale)
        model.get_classifier().bias.mul_(scale)
    run = folder / name
    save_run(run, model, {"labels": LABELS, "clip_seconds": CLIP_SECONDS, "task": task})
    return run


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, clips) -> Path:
    run = make_run(tmp_path_factory.mktemp("cnn"), "cnn", clips)
    export_onnx(run)
    return run


def _batch(clips, indices, length) -> np.ndarray:
    return np.stack([fit_length(clips[i], length) for i in indices])


# mn20 / mn30 / mn40 are mn10's class at a larger width (graphs of 70-260 MB): mn10 stands for them
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("mn20", "mn30", "mn40")])
def test_onnx_matches_pytorch_for_every_model(name, tmp_path, clips):
    run = make_run(tmp_path, name, clips)
    model, config = load_run(run)
    if not model.supports_onnx:
        with pytest.raises(ExportError, match=f"model {name} cannot be exported to ONNX: "):
            export_onnx(run)
        return
    path = export_onnx(run)
    assert path == run / "model.onnx" and path.is_file()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform"]
    exact = copy.deepcopy(model).double()  # PyTorch's own float32 rounding error, for scale
    # two batch sizes x two lengths: the dynamic axes really are dynamic
    worst = fp32_error = 0.0
    for indices, seconds in [((0,), CLIP_SECONDS), ((1, 2, 3), 0.8), ((4, 5, 6, 7, 8), CLIP_SECONDS),
                             ((9, 0), 1.13)]:
        x = _batch(clips, indices, int(seconds * SR))
        got = session.run(["logits"], {"waveform": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
            want64 = exact(torch.from_numpy(x).double()).numpy()
        assert got.shape == want.shape == (len(indices), len(LABELS))
        worst = max(worst, float(np.abs(got - want).max()))
        fp32_error = max(fp32_error, float(np.abs(want - want64).max()))
    print(f"\n{name}: max abs logit difference ONNX vs PyTorch {worst:.2e} "
          f"(PyTorch float32 vs float64: {fp32_error:.2e})")
    # Within 1e-4, unless PyTorch's own float32 result is not that accurate (the random-weight mobilenet's
    # deep stack of depthwise convs and squeeze-excitation amplifies rounding ~30x): then within 3x of that.
    tol = max(PARITY_TOL, 3 * fp32_error)
    assert worst < tol, f"{name}: ONNX logits differ from PyTorch by {worst:.2e} (tolerance {tol:.2e})"


def test_metadata_and_sidecar(cnn_run):
    import onnx

    path = cnn_run / "model.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["audioclf"])
    sidecar = json.loads((cnn_run / "model.onnx.json").read_text())
    for m in (meta, sidecar):
        assert m["labels"] == LABELS
        assert m["sample_rate"] == SR and m["clip_seconds"] == CLIP_SECONDS
        assert m["task"] == "single_label" and m["thresholds"] == [0.5] * 10
        assert m["model"] == "cnn"
    assert sidecar["verified_max_abs_diff"] < PARITY_TOL
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "samples"]


def test_out_path_and_opset(cnn_run, tmp_path):
    out = export_onnx(cnn_run, tmp_path / "sub" / "digits.onnx", opset=18, verify=False)
    assert out == tmp_path / "sub" / "digits.onnx" and out.is_file()
    assert (tmp_path / "sub" / "digits.onnx.json").is_file()
    assert json.loads((tmp_path / "sub" / "digits.onnx.json").read_text())["opset"] == 18


def test_model_declaring_no_onnx_support_raises_clear_error(tmp_path, monkeypatch):
    model = create_model("cnn", 3, frontend=FrontendConfig(sample_rate=SR, n_mels=32), width=0.25).eval()
    monkeypatch.setattr(type(model), "supports_onnx", False)
    config = {"labels": ["a", "b", "c"], "frontend": model.frontend.config.to_dict(), "clip_seconds": 0.5,
              "task": "single_label"}
    with pytest.raises(ExportError, match="^model cnn cannot be exported to ONNX: .*supports_onnx = False"):
        export_model(model, config, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_failure_is_an_export_error(tmp_path, monkeypatch):
    import audioclf.export as export

    def boom(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(export, "_export_bytes", boom)
    model = create_model("cnn", 3, frontend=FrontendConfig(sample_rate=SR, n_mels=32), width=0.25).eval()
    config = {"labels": ["a", "b", "c"], "frontend": model.frontend.config.to_dict(), "clip_seconds": 0.5,
              "task": "single_label"}
    with pytest.raises(ExportError, match="^model cnn cannot be exported to ONNX: torchscript exporter: "
                                          "RuntimeError: unsupported operator aten::frobnicate; dynamo exporter"):
        export_model(model, config, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_conv_stft_matches_torch_stft(sample_rate, clips):
    """The export-friendly STFT (conv1d with a windowed-DFT basis) against torch.stft on real speech: both are
    float32, so they differ by rounding, most in near-silent bins (log of a tiny power)."""
    logmel = LogMel(FrontendConfig(sample_rate=sample_rate))
    diffs = []
    for clip in clips:
        x = torch.from_numpy(resample(clip, SR, sample_rate))[None]
        a = logmel(x)
        logmel.export_friendly = True
        b = logmel(x)
        logmel.export_friendly = False
        assert a.shape == b.shape
        diffs.append(float((a - b).abs().max()))
    assert max(diffs) < 1e-4 and float(np.median(diffs)) < 3e-5, diffs


_CHILD = r"""
import json, sys
import numpy as np
from audioclf.onnx_predictor import OnnxClassifier
from audioclf.longform import scan, events
clf = OnnxClassifier(sys.argv[1])
single = clf.predict(sys.argv[2], top_k=3)
scores = clf.scores(sys.argv[2:]).tolist()
times, window_scores = scan(clf, sys.argv[2], window_s=0.25, hop_s=0.1)
events(times, window_scores, clf.labels)
print(json.dumps({"single": single, "scores": scores, "labels": clf.labels, "rate": clf.sample_rate,
                  "windows": len(times), "torch": "torch" in sys.modules,
                  "audioclf": sorted(m for m in sys.modules if m.startswith("audioclf"))}))
"""


def test_onnx_predictor_runs_without_torch(cnn_run):
    from audioclf.inference import load

    files = [str(p) for p in RECORDINGS[3:6]]
    out = subprocess.run([sys.executable, "-c", _CHILD, str(cnn_run / "model.onnx"), *files],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False, result["audioclf"]
    assert result["labels"] == LABELS and result["rate"] == SR and result["windows"] > 1
    torch_scores = load(cnn_run).scores(files)
    np.testing.assert_allclose(np.array(result["scores"]), torch_scores, atol=1e-5)
    single = result["single"]
    assert len(single) == 3 and single[0]["label"] == LABELS[int(torch_scores[0].argmax())]
    assert single[0]["score"] == pytest.approx(float(torch_scores[0].max()), abs=1e-5)


def test_onnx_predictor_matches_classifier_on_arrays_and_multilabel(tmp_path, clips):
    from audioclf.inference import load
    from audioclf.onnx_predictor import OnnxClassifier

    run = make_run(tmp_path, "cnn", clips, task="multi_label")
    export_onnx(run, verify=False)
    onnx_clf, torch_clf = OnnxClassifier(run), load(run)
    assert onnx_clf.multilabel and onnx_clf.labels == torch_clf.labels
    audio = [clips[0], clips[1][:1000], np.concatenate(clips[2:5])]  # normal, short, long (several windows)
    sr = torch_clf.sample_rate
    np.testing.assert_allclose(onnx_clf.scores(audio, sampling_rate=sr), torch_clf.scores(audio, sampling_rate=sr),
                               atol=1e-5)
    got, want = onnx_clf.predict(audio, sampling_rate=sr), torch_clf.predict(audio, sampling_rate=sr)
    assert [[p["label"] for p in r] for r in got] == [[p["label"] for p in r] for r in want]


def test_cli_export_and_onnx_backend(tmp_path, clips):
    from conftest import run_cli as cli

    run = make_run(tmp_path, "cnn", clips)
    wav = RECORDINGS[0]
    rc, out, err = cli("predict", run, wav, "--backend", "onnx", "--format", "json")  # exports first
    assert rc == 0, err
    assert "exporting it first" in err and (run / "model.onnx").is_file()
    onnx_preds = json.loads(out)[0]["predictions"]
    rc, out, _ = cli("predict", run, wav, "--format", "json")
    torch_preds = json.loads(out)[0]["predictions"]
    assert [p["label"] for p in onnx_preds] == [p["label"] for p in torch_preds]
    rc, out, err = cli("export", run, "--format", "onnx", "--out", tmp_path / "x.onnx")
    assert rc == 0, err
    assert "x.onnx" in out and (tmp_path / "x.onnx").is_file()
    rc, out, err = cli("predict", tmp_path / "x.onnx", wav, "--format", "csv")  # .onnx path: ONNX back end
    assert rc == 0, err
    assert out.startswith("path,rank,label,score")
    rc, _, err = cli("predict", tmp_path / "x.onnx", wav, "--backend", "torch")
    assert rc == 2 and "use --backend onnx" in err
