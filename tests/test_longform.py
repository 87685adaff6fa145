"""Long recordings: streaming window scores (block-size invariance, windows straddling block edges, the end-aligned
last window, short files), the tone-burst event, and events merging / min-duration / median smoothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audioclf.augment import AugmentConfig
from audioclf.data.windows import windows
from audioclf.features import FrontendConfig
from audioclf.longform import events, median_smooth, scan
from audioclf.models.base import AudioClassifier
from audioclf.onnx_predictor import scores_from_logits

SR = 8000
TONE_HZ = 1000.0
BURST = (23.0, 26.0)  # seconds
DURATION = 41.3  # not a whole number of hops: the last window is end-aligned
LABELS = ["background", "tone"]



class ToneDetector(AudioClassifier):
    """Hand-built 2-class model: 'tone' logit grows with the share of frames in which the mel bins around
    ``TONE_HZ`` stand far above the frame's mean bin. Uses the real front end (log-mel + norm)."""

    def __init__(self):
        super().__init__(2, FrontendConfig(sample_rate=SR, n_mels=32), AugmentConfig.off(), dropout=0.0)
        from audioclf.features import mel_filterbank
        fb = mel_filterbank(SR, self.frontend.config.n_fft, 32)
        peak_bin = int(round(TONE_HZ / (SR / 2) * (fb.shape[1] - 1)))
        self.band = int(np.argmax(fb[:, peak_bin]))
        self.init_head(1)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[0.0], [12.0]]))
            self.classifier.bias.copy_(torch.tensor([0.0, -6.0]))  # 50 % at half the frames

    def forward_features(self, waveform):
        spec = self.frontend(waveform)[:, 0]  # (batch, mels, frames)
        lift = spec[:, self.band - 1:self.band + 2].mean(dim=1) - spec.mean(dim=1)
        return torch.sigmoid(2.0 * (lift - 4.0))  # (batch, frames): ~1 where the tone is

    def pool(self, features):
        return features.mean(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal(int(DURATION * SR))).astype(np.float32)
    a, b = (int(t * SR) for t in BURST)
    x[a:b] += 0.3 * np.sin(2 * np.pi * TONE_HZ * np.arange(b - a) / SR).astype(np.float32)
    path = tmp_path_factory.mktemp("longform") / "burst.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    return path, x


@pytest.fixture(scope="module")
def detector() -> ToneDetector:
    torch.manual_seed(0)
    return ToneDetector().eval()


@pytest.fixture(scope="module")
def onnx_detector(detector, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from audioclf.export import export_model
    from audioclf.onnx_predictor import OnnxClassifier

    config = {"labels": LABELS, "frontend": detector.frontend.config.to_dict(), "clip_seconds": 1.0,
              "task": "single_label"}
    return OnnxClassifier(export_model(detector, config, tmp_path_factory.mktemp("onnx") / "tone.onnx"))


def test_tone_burst_gives_an_event_at_its_time(recording, detector):
    path, _ = recording
    times, scores = scan(detector, path, window_s=1.0, hop_s=0.25, block_s=10.0)
    assert scores.shape == (len(times), 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)  # softmax for a bare model
    found = [e for e in events(times, scores, LABELS, median_filter=3) if e["label"] == "tone"]
    assert len(found) == 1, found
    assert found[0]["start"] == pytest.approx(BURST[0], abs=0.3)
    assert found[0]["end"] == pytest.approx(BURST[1], abs=0.3)
    assert found[0]["peak"] > 0.99


@pytest.mark.parametrize("block_s", [0.9, 3.7])
def test_small_blocks_give_the_same_windows_as_one_block(recording, detector, block_s):
    path, _ = recording
    for reuse in (True, False):
        t1, s1 = scan(detector, path, window_s=1.0, hop_s=0.5, block_s=1000.0, reuse_spectrogram=reuse)
        t2, s2 = scan(detector, path, window_s=1.0, hop_s=0.5, block_s=block_s, reuse_spectrogram=reuse)
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_allclose(s2, s1, atol=1e-6)


def test_waveform_windows_are_exactly_the_clip_windows(recording, detector):
    """Without spectrogram reuse, scan scores exactly ``windows(whole file)`` (end-aligned last window included)."""
    path, x = recording
    times, scores = scan(detector, path, window_s=1.0, hop_s=0.5, block_s=2.3, reuse_spectrogram=False)
    expected = windows(x, SR, SR // 2)
    assert len(times) == len(expected)
    assert times[-1].tolist() == pytest.approx([DURATION - 1.0, DURATION])
    with torch.no_grad():
        want = scores_from_logits(detector(torch.from_numpy(expected)).numpy(), False)
    np.testing.assert_allclose(scores, want, atol=1e-5)


def test_spectrogram_reuse_is_close_to_per_window(recording, detector):
    """Slicing one spectrogram differs from per-window spectrograms only in each window's edge frames."""
    path, _ = recording
    t1, s1 = scan(detector, path, window_s=1.0, hop_s=0.5, reuse_spectrogram=True)
    t2, s2 = scan(detector, path, window_s=1.0, hop_s=0.5, reuse_spectrogram=False)
    assert np.abs(t1 - t2).max() <= 1 / 100  # the end-aligned window snaps to a 10 ms frame
    assert np.abs(s1 - s2).max() < 0.1
    assert (s1.argmax(1) == s2.argmax(1)).mean() >= 0.95


def test_onnx_scan_matches_torch_waveform_scan(recording, detector, onnx_detector):
    path, _ = recording
    t1, s1 = scan(onnx_detector, path, window_s=1.0, hop_s=0.5, block_s=3.1)
    t2, s2 = scan(detector, path, window_s=1.0, hop_s=0.5, reuse_spectrogram=False)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    found = [e for e in events(t1, s1, LABELS) if e["label"] == "tone"]
    assert len(found) == 1 and found[0]["start"] == pytest.approx(BURST[0], abs=0.3)


def test_file_shorter_than_a_window(tmp_path, detector):
    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(3000, np.float32) + 0.01, SR)
    for reuse in (True, False):
        times, scores = scan(detector, path, window_s=1.0, reuse_spectrogram=reuse)
        assert times.tolist() == [[0.0, 3000 / SR]] and scores.shape == (1, 2)


def test_scan_rejects_bad_settings(recording, detector):
    path, _ = recording
    with pytest.raises(ValueError, match="window_s is required"):
        scan(detector, path)
    with pytest.raises(ValueError, match="positive"):
        scan(detector, path, window_s=1.0, hop_s=0)
    with pytest.raises(TypeError):
        scan(object(), path, window_s=1.0)


# ------------------------------------------------------------------ events on hand-made score tracks


def track(*values) -> tuple[np.ndarray, np.ndarray]:
    """One-second, non-overlapping windows; scores (n, 2) with the given 'tone' track."""
    v = np.asarray(values, dtype=np.float64)
    times = np.stack([np.arange(len(v)), np.arange(len(v)) + 1.0], axis=1)
    return times, np.stack([1 - v, v], axis=1)


def tone_events(times, scores, **kw):
    return [(e["start"], e["end"]) for e in events(times, scores, LABELS, **kw) if e["label"] == "tone"]


def test_events_merge_consecutive_windows():
    times, scores = track(0.1, 0.9, 0.8, 0.2, 0.7, 0.1, 0.6)
    assert tone_events(times, scores) == [(1.0, 3.0), (4.0, 5.0), (6.0, 7.0)]  # an event can end the file
    found = events(times, scores, LABELS)
    first = next(e for e in found if e["label"] == "tone")
    assert first == {"label": "tone", "start": 1.0, "end": 3.0, "peak": pytest.approx(0.9)}
    assert [e["start"] for e in found] == sorted(e["start"] for e in found)
    assert tone_events(times, scores, threshold=0.85) == [(1.0, 2.0)]
    assert tone_events(times, scores, threshold=[1.1, 0.75]) == [(1.0, 3.0)]  # per-class thresholds
    assert not [e for e in events(times, scores, LABELS, threshold=[1.1, 0.75]) if e["label"] == "background"]


def test_events_min_duration():
    times, scores = track(0.9, 0.9, 0.9, 0.1, 0.9, 0.1, 0.9, 0.9)
    assert tone_events(times, scores, min_duration=2.0) == [(0.0, 3.0), (6.0, 8.0)]
    assert tone_events(times, scores, min_duration=2.5) == [(0.0, 3.0)]


def test_events_median_filter_removes_spikes_and_fills_gaps():
    times, scores = track(0.1, 0.1, 0.9, 0.1, 0.1, 0.9, 0.9, 0.2, 0.9, 0.9, 0.1)
    assert tone_events(times, scores) == [(2.0, 3.0), (5.0, 7.0), (8.0, 10.0)]
    # kernel 3: the isolated spike goes, the one-window gap is filled
    assert tone_events(times, scores, median_filter=3) == [(5.0, 10.0)]
    peak = next(e for e in events(times, scores, LABELS, median_filter=3) if e["label"] == "tone")["peak"]
    assert peak == pytest.approx(0.9)  # peak of the raw scores
    with pytest.raises(ValueError, match="odd"):
        events(times, scores, LABELS, median_filter=2)


def test_median_smooth_edges_and_columns():
    np.testing.assert_array_equal(median_smooth(np.array([5.0, 0, 0, 1, 1]), 3), [5.0, 0, 0, 1, 1])
    np.testing.assert_array_equal(median_smooth(np.array([0.0, 9, 0, 0]), 3), [0.0, 0, 0, 0])
    two = np.array([[0.0, 1], [9, 1], [0, 0], [0, 1]])
    np.testing.assert_array_equal(median_smooth(two, 3), [[0.0, 1], [0, 1], [0, 1], [0, 1]])
    np.testing.assert_array_equal(median_smooth(np.array([1.0, 2]), 5), [1.0, 2])


def test_events_with_overlapping_windows_use_each_windows_share():
    """1 s windows every 0.5 s: a window owns the half second around its centre, so events are not inflated."""
    starts = np.arange(0, 8.0, 0.5)
    times = np.stack([starts, starts + 1.0], axis=1)
    v = np.zeros(len(starts))
    v[6:9] = 0.9  # windows starting at 3.0, 3.5, 4.0: centres 3.5-4.5
    scores = np.stack([1 - v, v], axis=1)
    assert tone_events(times, scores) == [(3.25, 4.75)]
    assert tone_events(starts, scores) == [(3.0, 4.5)]  # 1-D times: window starts, each lasting one hop
    assert events(times[:0], scores[:0], LABELS) == []


def test_cli_predict_windows(tmp_path, recording):
    """``audioclf predict RUN FILE --window``: json (windows + events) and csv, PyTorch and ONNX back ends."""
    import csv
    import io
    import json

    from conftest import run_cli as cli

    from audioclf.checkpoint import save_run
    from audioclf.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn", 2, frontend=FrontendConfig(sample_rate=SR, n_mels=32), width=0.25).eval()
    run = tmp_path / "run"
    save_run(run, model, {"labels": LABELS, "clip_seconds": 1.0, "task": "single_label"})
    path = tmp_path / "part.wav"
    sf.write(path, recording[1][: int(6.3 * SR)], SR)
    rc, out, err = cli("predict", run, path, "--window", 1, "--hop", 0.5, "--threshold", 0.0, "--format", "json")
    assert rc == 0, err
    (result,) = json.loads(out)
    assert result["path"] == str(path) and len(result["windows"]) == 12  # 0, 0.5, ..., 5.0 and 5.3 (end-aligned)
    first = result["windows"][0]
    assert first["start"] == 0.0 and first["end"] == 1.0 and set(first["scores"]) == set(LABELS)
    assert sum(first["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert {e["label"] for e in result["events"]} <= set(LABELS) and result["events"]  # threshold 0: everything
    assert all(set(e) == {"label", "start", "end", "peak"} for e in result["events"])
    rc, out, err = cli("predict", run, path, "--window", 1, "--backend", "onnx", "--format", "csv", "--median", 3)
    assert rc == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "start", "end", *LABELS, "error"] and len(rows) == 1 + 12
    assert [float(r[1]) for r in rows[1:3]] == [0.0, 0.5]
    rc, out, err = cli("predict", run, path, "--window", 1, "--median", 2)
    assert rc == 2 and "--median" in err
