"""audioclf.evaluation.metrics against scikit-learn, and the evaluation plots."""
import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from audioclf.evaluation import metrics as M


def _single_label(seed, n=200, c=6, skew=True):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c - 1 if skew else c, n)  # last class often without support
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, c, n))
    return y_true, y_pred, c


@pytest.mark.parametrize("seed", range(5))
def test_classification_report_matches_sklearn(seed):
    y_true, y_pred, c = _single_label(seed, skew=seed % 2 == 0)
    labels = [f"class_{i}" for i in range(c)]
    r = M.classification_report(y_true, y_pred, labels)
    json.dumps(r, allow_nan=False)
    assert set(r) == {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "labels", "n"}
    assert r["n"] == len(y_true) and r["labels"] == labels
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # sklearn warns about classes predicted but absent
        warnings.simplefilter("ignore")
        bal = skm.balanced_accuracy_score(y_true, y_pred)
    assert r["balanced_accuracy"] == pytest.approx(bal)
    assert r["macro_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", labels=range(c), zero_division=0)
    )
    p, rec, f1, sup = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(c), zero_division=0)
    for i, label in enumerate(labels):
        pc = r["per_class"][label]
        assert pc["precision"] == pytest.approx(p[i])
        assert pc["recall"] == pytest.approx(rec[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["support"] == sup[i] and isinstance(pc["support"], int)
    np.testing.assert_array_equal(r["confusion_matrix"], skm.confusion_matrix(y_true, y_pred, labels=range(c)))


def test_confusion_matrix_shape_dtype_and_range():
    cm = M.confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 4)
    assert cm.shape == (4, 4) and cm.dtype == np.int64
    assert cm.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError):
        M.confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4)


@pytest.mark.parametrize("seed", range(8))
def test_average_precision_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    y[0] = 1
    scores = rng.random(n)
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    assert M.average_precision(y, scores) == pytest.approx(skm.average_precision_score(y, scores))


def test_average_precision_edge_cases():
    assert np.isnan(M.average_precision(np.zeros(5), np.arange(5.0)))
    assert M.average_precision(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1])) == pytest.approx(1.0)
    assert M.average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def _multilabel(seed, n=150, c=5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(int)
    y[:, -1] = 0  # a class without positives
    scores = np.clip(0.35 * y + rng.random((n, c)) * 0.7, 0, 1)
    scores[:, 1] = np.round(scores[:, 1], 1)  # ties
    return y, scores, c


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_report_matches_sklearn(seed):
    y, scores, c = _multilabel(seed)
    labels = [f"tag{i}" for i in range(c)]
    thr = np.full(c, 0.5)
    r = M.multilabel_report(y, scores, labels, thr)
    json.dumps(r, allow_nan=False)
    has_pos = y.sum(axis=0) > 0
    assert r["mAP"] == pytest.approx(skm.average_precision_score(y[:, has_pos], scores[:, has_pos], average="macro"))
    pred = (scores >= 0.5).astype(int)
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert r["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))  # subset accuracy
    p, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    assert r["balanced_accuracy"] == pytest.approx(rec[has_pos].mean())
    mcm = skm.multilabel_confusion_matrix(y, pred)
    for i, label in enumerate(labels):
        pc = r["per_class"][label]
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx((p[i], rec[i], f1[i]))
        assert pc["support"] == sup[i] and pc["threshold"] == 0.5
        assert r["confusion_matrix"][i] == mcm[i].ravel().tolist()  # [tn, fp, fn, tp]
    assert r["per_class"][labels[-1]]["ap"] is None
    assert r["per_class"][labels[0]]["ap"] == pytest.approx(skm.average_precision_score(y[:, 0], scores[:, 0]))


@pytest.mark.parametrize("seed", range(4))
def test_tuned_thresholds_beat_half(seed):
    y, scores, c = _multilabel(seed)
    thr = M.tune_thresholds(y, scores)
    assert thr.shape == (c,)
    assert thr[-1] == 0.5  # no positives
    tuned = skm.f1_score(y, scores >= thr, average=None, zero_division=0)
    half = skm.f1_score(y, scores >= 0.5, average=None, zero_division=0)
    assert np.all(tuned >= half - 1e-12)
    # the chosen threshold is optimal among all cut points on these data
    for k in range(c - 1):
        pred = scores[:, k][None, :] >= np.unique(scores[:, k])[:, None]  # every cut point at once
        tp = (pred & (y[:, k] == 1)).sum(1)
        best = np.max(2 * tp / (pred.sum(1) + y[:, k].sum()))
        assert tuned[k] == pytest.approx(best)


def test_summarise_folds():
    reports = [
        {"accuracy": 0.5, "macro_f1": 0.4},
        {"accuracy": 0.7, "macro_f1": 0.6},
        {"accuracy": 0.9, "macro_f1": 0.5},
    ]
    s = M.summarise_folds(reports)
    json.dumps(s, allow_nan=False)
    assert s["mean_accuracy"] == pytest.approx(0.7)
    assert s["std_accuracy"] == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert s["mean_macro_f1"] == pytest.approx(0.5)
    assert s["std_macro_f1"] == pytest.approx(np.std([0.4, 0.6, 0.5]))
    assert "mean_mAP" not in s
    s = M.summarise_folds([dict(r, mAP=m) for r, m in zip(reports, (0.2, 0.4, 0.6))])
    assert s["mean_mAP"] == pytest.approx(0.4)
    assert s["std_mAP"] == pytest.approx(np.std([0.2, 0.4, 0.6]))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def _colour_pixels(path) -> dict:
    """Pixels of each line colour ``plot_curves`` uses (train loss blue, val loss orange, val accuracy green, val
    mAP purple, lr gray), matched within 0.02 per channel."""
    import matplotlib.image as mpimg
    from matplotlib.colors import to_rgb

    img = mpimg.imread(path)[..., :3]
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:gray")
    return {c: int((np.abs(img - np.array(to_rgb(c))).max(-1) < 0.02).sum()) for c in colours}


def test_plot_confusion_and_csv(tmp_path):
    from audioclf.evaluation.plots import plot_confusion, write_confusion_csv

    y_true, y_pred, c = _single_label(0)
    labels = [f"a rather long label {i}" for i in range(c)]
    cm = M.confusion_matrix(y_true, y_pred, c)
    plot_confusion(cm, labels, tmp_path / "confusion.png")
    _check_png(tmp_path / "confusion.png")
    write_confusion_csv(cm, labels, tmp_path / "confusion.csv")
    lines = (tmp_path / "confusion.csv").read_text().splitlines()
    assert lines[0] == "true\\pred," + ",".join(labels)
    assert len(lines) == c + 1
    assert lines[1] == ",".join([labels[0], *map(str, cm[0])])


def test_plot_curves(tmp_path):
    from audioclf.evaluation.plots import plot_curves

    single = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 1 - 0.5 / e, "lr": 1e-3 * 0.5**e}
        for e in range(1, 6)
    ]
    plot_curves(single, tmp_path / "curves.png")
    _check_png(tmp_path / "curves.png")
    drawn = _colour_pixels(tmp_path / "curves.png")
    # train loss, val loss, val accuracy and the lr are drawn; there is no mAP curve
    assert min(drawn["tab:blue"], drawn["tab:orange"], drawn["tab:green"], drawn["tab:gray"]) > 200, drawn
    assert drawn["tab:purple"] == 0, drawn
    # multi-label rows as read back from metrics.csv: strings, val_accuracy empty/None
    multi = [
        {"epoch": str(e), "train_loss": str(1 / e), "val_loss": "", "val_accuracy": None, "val_mAP": str(0.1 * e), "lr": "0.001"}
        for e in range(1, 4)
    ]
    plot_curves(multi, tmp_path / "curves_ml.png")
    _check_png(tmp_path / "curves_ml.png")
    drawn = _colour_pixels(tmp_path / "curves_ml.png")
    # train loss, mAP and lr are drawn; the empty val loss and val accuracy columns draw nothing
    assert min(drawn["tab:blue"], drawn["tab:purple"], drawn["tab:gray"]) > 200, drawn
    assert drawn["tab:orange"] == 0 and drawn["tab:green"] == 0, drawn


def test_plots_module_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, audioclf.evaluation.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
