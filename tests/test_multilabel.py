"""Multi-label runs: a ';' in a label cell switches to sigmoid outputs, BCE, mAP and tuned thresholds."""
from __future__ import annotations

import json

import numpy as np
import soundfile as sf

import audioclf

SR = 8000
TONES = {"low": 300.0, "mid": 900.0, "high": 2500.0}



def make_mixtures(root, n=120, seed=0):
    """Clips holding a random non-empty subset of three tones; manifest labels joined by ';'."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.5 * SR)) / SR
    rows = ["path,label"]
    for i in range(n):
        names = [k for k in TONES if rng.random() < 0.5] or [str(rng.choice(list(TONES)))]
        audio = sum(0.3 * np.sin(2 * np.pi * TONES[k] * t + rng.uniform(0, 6)) for k in names)
        audio = audio + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"clip{i}.wav", audio.astype(np.float32), SR)
        rows.append(f"clip{i}.wav,{';'.join(names)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_multilabel_run_end_to_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    csv_path = make_mixtures(data)
    run = tmp_path / "run"
    report = audioclf.train(csv_path, run, model="cnn", width=0.5, n_mels=32, epochs=8, batch_size=16,
                            cache_dir=str(tmp_path / "cache"), seed=0)
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "multi_label"
    assert len(config["thresholds"]) == 3 and all(0 <= t <= 1 for t in config["thresholds"])
    assert set(report) >= {"mAP", "macro_f1", "micro_f1", "per_class"}
    assert report["mAP"] > 0.8, report["mAP"]  # chance is about 0.5 here
    clf = audioclf.load(run)
    t = np.arange(int(0.5 * SR)) / SR
    both = (0.3 * np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * 2500 * t)).astype(np.float32)
    scores = clf.scores([both], sampling_rate=SR)[0]
    assert np.all((scores >= 0) & (scores <= 1)) and scores.sum() > 1.0  # sigmoids, not a softmax
    labels = {p["label"] for p in clf.predict(both, sampling_rate=SR)}
    assert {"low", "high"} <= labels, labels  # every label above its threshold is returned
