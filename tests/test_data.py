"""Tests for audioclf.data: the three manifest descriptions, splits, the decoded-audio cache and clips."""
from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from conftest import write_speech_commands, write_with_pyav

import audioclf.data.cache as cache_mod
import audioclf.isolated_decoding as isolated_decoding
from audioclf.audio import read_mono_limited
from audioclf.data.cache import AudioCache, default_cache_dir
from audioclf.data.clips import ClipDataset, fit_length, windows
from audioclf.data.manifest import (Item, Manifest, ManifestError, from_csv, from_folders, from_pattern,
                                    load_manifest)
from audioclf.data.splits import MIN_VALIDATION_GROUPS, kfold, label_matrix, make_split, stratified_group_folds

SR = 8000
FREQS = {"low": 300.0, "mid": 900.0, "high": 2500.0}
SPEAKERS = ["alice", "bob", "carol", "dave"]
TAKES = 3
GROUP_PATTERN = r"(?P<label>[^/]+)/(?P<group>[a-z]+)_\d+\.wav"
FSDD = Path(__file__).resolve().parents[1] / "datasets" / "fsdd" / "manifest.csv"


def tone(freq: float, seconds: float = 0.25, amp: float = 0.3, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_tone_set(root: Path) -> list[tuple[str, str, str]]:
    """``root/<label>/<speaker>_<n>.wav``; returns [(relative path, label, speaker)]."""
    rows = []
    for label, freq in FREQS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for s, speaker in enumerate(SPEAKERS):
            for n in range(TAKES):
                rel = f"{label}/{speaker}_{n}.wav"
                sf.write(root / rel, tone(freq * (1 + 0.02 * s), phase=n), SR)
                rows.append((rel, label, speaker))
    return rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def tone_set(tmp_path):
    root = tmp_path / "tones"
    rows = write_tone_set(root)
    return root, rows


# ------------------------------------------------------------------------------------ manifests


def test_three_descriptions_agree(tone_set, tmp_path):
    root, rows = tone_set
    folder = from_folders(root)
    csv_path = write_csv(root / "manifest.csv", ["path", "label", "group"], [list(r) for r in rows])
    table = from_csv(csv_path)
    pattern = from_pattern(root, GROUP_PATTERN)
    as_pairs = lambda m: {(it.path, it.labels) for it in m.items}  # noqa: E731
    as_triples = lambda m: {(it.path, it.labels, it.group) for it in m.items}  # noqa: E731
    expected = {(str(root.absolute() / rel), (label,)) for rel, label, _ in rows}
    assert as_pairs(folder) == as_pairs(table) == as_pairs(pattern) == expected
    assert as_triples(table) == as_triples(pattern)
    assert len(folder.items) == len(table.items) == len(pattern.items) == len(rows)
    for m in (folder, table, pattern):
        assert m.labels == ["high", "low", "mid"]
        assert not m.multilabel and not m.skipped
        assert m.class_counts() == Counter({"low": 12, "mid": 12, "high": 12})
    assert not folder.has_groups and table.has_groups and pattern.has_groups
    assert (folder.source, table.source, pattern.source) == ("folder", "csv", "pattern")
    # load_manifest dispatch: a folder holding manifest.csv uses it; --pattern wins over it
    assert load_manifest(root).source == "csv"
    assert load_manifest(csv_path).source == "csv"
    assert load_manifest(root, GROUP_PATTERN).source == "pattern"
    os.remove(csv_path)
    assert load_manifest(root).source == "folder"


def test_descriptions_agree_through_symlinks(tmp_path):
    """Data sets often live behind symlinks (a linked class folder, a linked root)."""
    real = tmp_path / "real"
    rows = write_tone_set(real)
    linked = tmp_path / "linked"
    linked.mkdir()
    for label in FREQS:
        os.symlink(real / label, linked / label, target_is_directory=True)
    csv_path = write_csv(linked / "manifest.csv", ["path", "label", "group"], [list(r) for r in rows])
    table = from_csv(csv_path)
    assert not table.skipped, table.skipped[:3]
    folder, pattern = from_folders(linked), from_pattern(linked, GROUP_PATTERN)
    pairs = lambda m: {(it.path, it.labels) for it in m.items}  # noqa: E731
    assert pairs(table) == pairs(folder) == pairs(pattern)
    assert len(table.items) == len(rows)


def test_pattern_skips_and_reports_non_matching_files(tone_set):
    root, rows = tone_set
    sf.write(root / "low" / "Alice-9.wav", tone(300), SR)
    sf.write(root / "mid" / "notes_x.wav", tone(900), SR)
    sf.write(root / "stray.wav", tone(900), SR)
    (root / "low" / "readme.txt").write_text("not audio")
    m = from_pattern(root, GROUP_PATTERN)
    assert len(m.items) == len(rows)
    skipped = dict(m.skipped)
    assert set(skipped) == {str(root / "low" / "Alice-9.wav"), str(root / "mid" / "notes_x.wav"),
                            str(root / "stray.wav")}
    assert all("does not match" in reason for reason in skipped.values())
    assert {it.group for it in m.items} == set(SPEAKERS)
    # class folders: the stray file is skipped, the others are items
    folder = from_folders(root)
    assert dict(folder.skipped) == {str(root / "stray.wav"): "not inside a class folder"}
    assert len(folder.items) == len(rows) + 2


def test_pattern_errors(tone_set):
    root, _ = tone_set
    with pytest.raises(ManifestError, match="label"):
        from_pattern(root, r"(?P<group>[a-z]+)_\d+")
    with pytest.raises(ManifestError, match="bad --pattern"):
        from_pattern(root, r"(?P<label>[")
    with pytest.raises(ManifestError, match="no usable audio files"):
        from_pattern(root, r"(?P<label>nothing_matches_this)")


def test_fold_pattern(tmp_path):
    root = tmp_path / "esc"
    expected = set()
    for label, freq in FREQS.items():
        (root / label).mkdir(parents=True)
        for fold in (1, 2, 3):
            for n in range(2):
                name = f"{label}/{fold}-{n}{label[0]}.wav"
                sf.write(root / name, tone(freq), SR)
                expected.add((str(root.absolute() / name), label, str(fold)))
    m = from_pattern(root, r"(?P<label>[^/]+)/(?P<fold>\d+)-")
    assert {(it.path, it.labels[0], it.fold) for it in m.items} == expected
    assert m.folds == ["1", "2", "3"]
    split = make_split(m, test_fold="2")
    assert {m.items[i].fold for i in split.test} == {"2"}
    assert len(split.test) == 6
    assert "2" not in {m.items[i].fold for i in split.train + split.val}
    folds = kfold(m, k=5)
    assert len(folds) == 3  # declared folds win over k
    assert [{m.items[i].fold for i in f} for f in folds] == [{"1"}, {"2"}, {"3"}]


def test_multilabel_csv(tone_set):
    root, rows = tone_set
    table = [[rows[0][0], "low;noise"], [rows[1][0], " low ; low "], [rows[2][0], "mid"]]
    m = from_csv(write_csv(root / "ml.csv", ["path", "label"], table))
    assert [it.labels for it in m.items] == [("low", "noise"), ("low",), ("mid",)]
    assert m.multilabel and m.labels == ["low", "mid", "noise"]
    y = label_matrix(m)
    np.testing.assert_array_equal(y, [[1, 0, 1], [1, 0, 0], [0, 1, 0]])


def test_csv_missing_column_names_the_columns(tone_set):
    root, rows = tone_set
    path = write_csv(root / "bad.csv", ["blob", "label"], [[rows[0][0], "low"]])
    with pytest.raises(ManifestError) as info:
        from_csv(path)
    msg = str(info.value)
    assert "missing column(s) path" in msg and "path,label" in msg and "blob,label" in msg and "file_name" in msg
    path = write_csv(root / "bad2.csv", ["path", "tag"], [[rows[0][0], "low"]])
    with pytest.raises(ManifestError, match="missing column.*label"):
        from_csv(path)
    empty = root / "empty.csv"
    empty.write_text("")
    with pytest.raises(ManifestError, match="no header"):
        from_csv(empty)


def test_csv_skips_bad_rows_with_reasons(tone_set, tmp_path):
    root, rows = tone_set
    outside = tmp_path / "outside.wav"
    sf.write(outside, tone(300), SR)
    table = [
        [rows[0][0], "low"],
        ["../outside.wav", "low"],                 # escapes the manifest's folder
        ["low/../../outside.wav", "low"],          # escapes too, less obviously
        [rows[0][0], "low"],                       # duplicate
        ["./" + rows[0][0], "mid"],                # the same file again, spelled differently
        ["low/missing.wav", "low"],                # not there
        [rows[1][0], ""],                          # no label
        ["", "low"],                               # no path
        [str(outside), "mid"],                     # absolute paths are taken as they are
        ["low/../" + rows[2][0], "low"],           # ../ that stays inside is fine
    ]
    m = from_csv(write_csv(root / "m.csv", ["path", "label"], table))
    assert [it.path for it in m.items] == [str(root / rows[0][0]), str(outside), str(root / rows[2][0])]
    reasons = [reason for _, reason in m.skipped]
    assert len(m.skipped) == 7
    assert sum("escapes the manifest's folder" in r for r in reasons) == 2
    assert sum("duplicate path" in r for r in reasons) == 2
    assert sum("file not found" in r for r in reasons) == 1
    assert sum("empty label" in r for r in reasons) == 1
    assert sum("empty path" in r for r in reasons) == 1
    # reasons say where: file and line
    assert any(r.startswith(f"{root / 'm.csv'}:3") for r in reasons)
    skipped = dict(m.skipped)
    assert skipped["../outside.wav"].endswith("path escapes the manifest's folder")


def test_csv_rows_with_extra_or_missing_cells(tone_set):
    root, rows = tone_set
    path = root / "ragged.csv"
    path.write_text(f"path,label,group\n{rows[0][0]},low,alice,unexpected,cells\n{rows[1][0]},low\n")
    m = from_csv(path)
    assert [(it.labels, it.group) for it in m.items] == [(("low",), "alice"), (("low",), None)]


def test_csv_relative_to_its_folder_and_groups_folds(tone_set, monkeypatch, tmp_path):
    root, rows = tone_set
    write_csv(root / "m.csv", ["path", "label", "group", "fold"],
              [[rel, label, speaker, str(SPEAKERS.index(speaker))] for rel, label, speaker in rows])
    monkeypatch.chdir(tmp_path)
    m = from_csv(Path("tones") / "m.csv")
    assert all(os.path.isabs(it.path) and os.path.isfile(it.path) for it in m.items)
    assert m.folds == ["0", "1", "2", "3"]
    assert {it.group for it in m.items} == set(SPEAKERS)


def test_all_rows_bad_is_a_manifest_error(tone_set):
    root, _ = tone_set
    path = write_csv(root / "m.csv", ["path", "label"], [["nope.wav", "low"], ["nope2.wav", "mid"]])
    with pytest.raises(ManifestError, match="no usable audio files.*2 x file not found"):
        from_csv(path)
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(root / "absent")
    (root / "x.txt").write_text("")
    with pytest.raises(ManifestError, match="expected a folder or a .csv"):
        load_manifest(root / "x.txt")


# ------------------------------------------------------------------------------------ splits


def synthetic_manifest(groups: list[str | None], labels: list[str], folds: list[str | None] | None = None) -> Manifest:
    folds = folds or [None] * len(groups)
    items = [Item(f"/data/{i}.wav", (label,), g, f) for i, (g, label, f) in enumerate(zip(groups, labels, folds))]
    return Manifest(items, Path("/data"), [], "csv")


def check_partition(split, n):
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert len(train) == len(split.train) and len(val) == len(split.val) and len(test) == len(split.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(n))


@pytest.mark.parametrize("seed", range(8))
def test_holdout_split_keeps_groups_whole_on_the_tone_set(tone_set, seed):
    root, rows = tone_set
    m = from_pattern(root, GROUP_PATTERN)
    split = make_split(m, seed=seed, test_fraction=0.25, val_fraction=0.25)
    check_partition(split, len(m.items))
    groups = lambda idx: {m.items[i].group for i in idx}  # noqa: E731
    assert split.test and split.val and split.train
    assert not groups(split.train) & groups(split.test)
    # fewer than MIN_VALIDATION_GROUPS speakers in train: validation is carved within them
    assert len(groups(split.train)) < MIN_VALIDATION_GROUPS and split.val_shares_groups
    assert groups(split.val) <= groups(split.train)
    assert not groups(split.val) & groups(split.test)
    # every class is in every group, so stratification keeps every class in train (and test)
    assert {m.items[i].labels[0] for i in split.train} == set(FREQS)
    assert {m.items[i].labels[0] for i in split.test} == set(FREQS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_holdout_split_never_shares_a_group(data):
    n_groups = data.draw(st.integers(1, 30), label="groups")
    n_classes = data.draw(st.integers(1, 5), label="classes")
    n = data.draw(st.integers(1, 120), label="items")
    groups = data.draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n), label="group of item")
    labels = data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n), label="label of item")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    test_fraction = data.draw(st.sampled_from([0.1, 0.2, 0.3, 0.5]))
    val_fraction = data.draw(st.sampled_from([0.0, 0.1, 0.2]))
    m = synthetic_manifest([f"g{g}" for g in groups], [f"c{c}" for c in labels])
    split = make_split(m, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    check_partition(split, n)
    g = lambda idx: {groups[i] for i in idx}  # noqa: E731
    assert not g(split.train) & g(split.test)
    assert not g(split.val) & g(split.test)
    if len(g(split.train) | g(split.val)) >= MIN_VALIDATION_GROUPS:  # enough groups: validation holds whole ones
        assert not g(split.train) & g(split.val) and not split.val_shares_groups
    if g(split.train) & g(split.val):
        assert split.val_shares_groups  # shared only by that rule, and said so
    assert split.train  # never an empty training set
    if val_fraction == 0:
        assert not split.val


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_stratification_keeps_every_class_in_train(data):
    """Ungrouped items, at least 3 per class: every class is in train whatever the seed."""
    counts = data.draw(st.lists(st.integers(3, 15), min_size=2, max_size=6), label="items per class")
    labels = [f"c{c}" for c, k in enumerate(counts) for _ in range(k)]
    order = data.draw(st.permutations(range(len(labels))))
    labels = [labels[i] for i in order]
    seed = data.draw(st.integers(0, 1000))
    m = synthetic_manifest([None] * len(labels), labels)
    split = make_split(m, seed=seed)
    check_partition(split, len(labels))
    assert {labels[i] for i in split.train} == set(labels)
    # and the test set holds roughly a fifth of every class
    test_counts = Counter(labels[i] for i in split.test)
    for c, k in Counter(labels).items():
        assert test_counts[c] <= -(-k // 5) + 1


def test_stratified_group_folds_balances_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    y = np.eye(4, dtype=np.float32)[labels]
    groups = list(rng.integers(0, 40, 400))
    folds = stratified_group_folds(y, groups, 5, seed=3)
    assert set(folds) == set(range(5))
    per_fold = np.array([y[folds == f].sum(0) for f in range(5)])
    share = per_fold / per_fold.sum(0)
    assert np.abs(share - 0.2).max() < 0.1


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_kfold_groups_disjoint_and_cover_everything_once(data):
    n = data.draw(st.integers(5, 100))
    k = data.draw(st.integers(2, 6))
    with_groups = data.draw(st.booleans())
    groups = data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)) if with_groups else [None] * n
    labels = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    m = synthetic_manifest([None if g is None else f"g{g}" for g in groups], [f"c{c}" for c in labels])
    folds = kfold(m, k, seed=data.draw(st.integers(0, 100)))
    assert len(folds) == k
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(n))
    if with_groups:
        owners = [{groups[i] for i in f} for f in folds]
        for a in range(k):
            for b in range(a + 1, k):
                assert not owners[a] & owners[b]
    else:  # every item its own group: folds are near-equal in size
        sizes = [len(f) for f in folds]
        assert max(sizes) - min(sizes) <= 4


def test_declared_test_fold_is_exactly_that_fold():
    m = load_manifest(FSDD)
    assert len(m.items) == 3000 and m.folds == [str(f) for f in range(10)]
    split = make_split(m, test_fold="0")
    check_partition(split, len(m.items))
    assert split.test == [i for i, it in enumerate(m.items) if it.fold == "0"]
    assert len(split.test) == 300
    # FSDD's official split shares speakers between train and test; validation may share them too
    assert {m.items[i].group for i in split.test} == {m.items[i].group for i in split.train}
    assert 0.05 < len(split.val) / (len(split.train) + len(split.val)) < 0.15
    assert {m.items[i].labels for i in split.train} == {m.items[i].labels for i in split.test}
    # an integer fold works like its string, an unknown one is an error naming the declared folds
    assert make_split(m, test_fold=0).test == split.test
    with pytest.raises(ValueError, match="declared folds: 0, 1, 2"):
        make_split(m, test_fold="42")


def test_speech_commands_layout(tmp_path, capsys):
    """``_background_noise_`` is the run's noise, not a class; speakers are groups; the split lists are the folds,
    and the folds named testing / validation are the test and validation sets by default."""
    root = tmp_path / "speech_commands"
    write_speech_commands(root)
    m = load_manifest(root)
    assert m.labels == ["no", "yes"] and len(m.items) == 16 and not m.skipped
    assert m.noise_dir == str((root / "_background_noise_").absolute())
    assert "_background_noise_ is not a class" in capsys.readouterr().err
    assert {it.group for it in m.items} == {"0a1b2c3d", "4e5f6a7b", "8c9d0e1f", "a2b3c4d5"}
    assert all(it.group == Path(it.path).name.split("_nohash_")[0] for it in m.items)
    assert Counter(it.fold for it in m.items) == {"training": 8, "validation": 4, "testing": 4}
    split = make_split(m)
    check_partition(split, len(m.items))
    by = lambda idx: {m.items[i].group for i in idx}  # noqa: E731
    assert (by(split.train), by(split.val), by(split.test)) == ({"0a1b2c3d", "4e5f6a7b"}, {"8c9d0e1f"}, {"a2b3c4d5"})
    assert "test = the declared fold 'testing'" in split.sizes() and "validation = the declared fold" in split.sizes()
    assert make_split(m, test_fold="validation").val  # a named test fold of the user's: validation carved
    # a split is not a set of CV folds: cross-validation makes group-aware folds instead
    folds = kfold(m, 2)
    assert len(folds) == 2 and sorted(i for f in folds for i in f) == list(range(16))
    assert not by(folds[0]) & by(folds[1])


def test_csv_split_column_names_the_test_and_validation_sets(tone_set):
    root, rows = tone_set
    split_of = {"bob": "val", "carol": "test"}  # by speaker; the rest train
    csv_path = write_csv(root / "meta.csv", ["path", "label", "split"],
                         [[rel, label, split_of.get(spk, "train")] for rel, label, spk in rows])
    m = load_manifest(csv_path)
    split = make_split(m)
    check_partition(split, len(m.items))
    assert [m.items[i].fold for i in split.test] == ["test"] * len(split.test) and split.test
    assert {m.items[i].fold for i in split.val} == {"val"} and {m.items[i].fold for i in split.train} == {"train"}


@pytest.mark.parametrize("speakers", [4, MIN_VALIDATION_GROUPS + 2])
def test_declared_fold_without_shared_groups_validation_by_group_count(speakers):
    """A held-out speaker as the test fold: validation holds whole speakers out when train has enough of them,
    and is carved within train's speakers (flagged) when it has too few."""
    names = [f"s{k}" for k in range(speakers)]
    groups = [names[k % speakers] for k in range(speakers * 20)]
    labels = [f"c{k % 4}" for k in range(speakers * 20)]
    m = synthetic_manifest(groups, labels, ["test" if g == "s0" else "train" for g in groups])
    for seed in range(5):
        split = make_split(m, test_fold="test", val_fraction=0.2, seed=seed)
        check_partition(split, len(groups))
        by = lambda idx: {groups[i] for i in idx}  # noqa: E731
        assert by(split.test) == {"s0"} and split.val
        assert not (by(split.train) | by(split.val)) & by(split.test)
        if speakers >= MIN_VALIDATION_GROUPS:
            assert not by(split.val) & by(split.train) and not split.val_shares_groups
        else:
            assert by(split.val) <= by(split.train) and split.val_shares_groups
            assert by(split.train) == set(names[1:])  # every remaining speaker is learned from


# ------------------------------------------------------------------------------------ cache


@pytest.fixture
def clip_files(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    paths = []
    for i, freq in enumerate([200, 400, 800, 1600]):
        p = folder / f"c{i}.wav"
        sf.write(p, tone(freq, seconds=0.1 + 0.05 * i), SR)
        paths.append(str(p))
    return paths


def forbid_decoding(monkeypatch):
    calls = []

    def fail(path, *a, **k):
        calls.append(path)
        raise AssertionError(f"decoded {path} although it is cached")

    monkeypatch.setattr(isolated_decoding, "read_audio", fail)  # every decode starts here
    return calls


def count_decoding(monkeypatch):
    calls = []
    real = isolated_decoding.read_audio

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(isolated_decoding, "read_audio", counting)  # every decode starts here
    return calls


def test_cache_second_load_reads_from_disk(tmp_path, clip_files, monkeypatch):
    first, bad = AudioCache(tmp_path / "cache", SR).load(clip_files)
    assert not bad and list(first) == clip_files
    for p in clip_files:
        np.testing.assert_allclose(first[p], sf.read(p, dtype="float32")[0], atol=1e-6)
    assert len(list((tmp_path / "cache" / f"{SR}hz").glob("pack-*.json"))) == 1
    forbid_decoding(monkeypatch)
    second, bad = AudioCache(tmp_path / "cache", SR).load(clip_files + clip_files[:1])  # duplicates are fine
    assert not bad and list(second) == clip_files
    for p in clip_files:
        np.testing.assert_array_equal(second[p], first[p])
        assert second[p].dtype == np.float32 and second[p].ndim == 1


def pack_of(cache_dir: Path, path: str) -> Path:
    """The data file of the pack that holds ``path``."""
    for index_file in (cache_dir / f"{SR}hz").glob("pack-*.json"):
        if any(key.startswith(os.path.abspath(path) + "|") for key in json.loads(index_file.read_text())["entries"]):
            return index_file.with_suffix(".f32")
    raise AssertionError(f"{path} is in no pack")


@pytest.mark.parametrize("pack_bytes", [1, 10**9])
def test_cache_streams_into_packs_and_an_interrupted_decode_keeps_finished_packs(tmp_path, clip_files, monkeypatch,
                                                                                 pack_bytes):
    """Decoded audio goes to packs of about PACK_BYTES as it comes; stopping after two files keeps the packs already
    written (each clip its own pack: two) or none (one pack still open), never a half-written file."""
    reference, _ = AudioCache(tmp_path / "reference", SR).load(clip_files)
    monkeypatch.setattr(cache_mod, "PACK_BYTES", pack_bytes)
    cache_dir = tmp_path / "cache"

    def stop_after_two(n, total):
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        AudioCache(cache_dir, SR).load(clip_files, progress=stop_after_two, workers=1)
    files = sorted(p.name for p in (cache_dir / f"{SR}hz").iterdir())
    kept = 2 if pack_bytes == 1 else 0
    assert len(files) == 2 * kept and all(f.startswith("pack-") and f.endswith((".json", ".f32")) for f in files)
    calls = count_decoding(monkeypatch)
    clips, bad = AudioCache(cache_dir, SR).load(clip_files)
    assert not bad and sorted(calls) == sorted(clip_files[kept:])  # the finished packs are not decoded again
    for p in clip_files:
        np.testing.assert_array_equal(clips[p], reference[p])
    assert len(list((cache_dir / f"{SR}hz").glob("pack-*.json"))) == (len(clip_files) if pack_bytes == 1 else 1)


def test_cache_checks_only_the_packs_a_load_uses(tmp_path, clip_files, monkeypatch):
    """A damaged pack is found when a load needs its clips (and decoded again), not by loads of other packs."""
    monkeypatch.setattr(cache_mod, "PACK_BYTES", 1)  # one pack per clip
    cache_dir = tmp_path / "cache"
    reference, _ = AudioCache(cache_dir, SR).load(clip_files)
    reference = {p: np.array(a) for p, a in reference.items()}
    damaged = pack_of(cache_dir, clip_files[-1])
    raw = bytearray(damaged.read_bytes())
    raw[8] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    forbid_decoding(monkeypatch)
    cache = AudioCache(cache_dir, SR)
    clips, bad = cache.load(clip_files[:-1])
    assert not bad and cache.rejected_packs == [] and damaged.exists()
    monkeypatch.undo()
    monkeypatch.setattr(cache_mod, "PACK_BYTES", 1)
    calls = count_decoding(monkeypatch)
    clips, bad = cache.load(clip_files)
    assert not bad and cache.rejected_packs == [str(damaged.with_suffix(".json"))] and not damaged.exists()
    assert calls == [clip_files[-1]]
    for p in clip_files:
        np.testing.assert_array_equal(clips[p], reference[p])


def test_cache_resamples_per_rate(tmp_path, clip_files):
    clips, _ = AudioCache(tmp_path / "cache", 16000).load(clip_files[:1])
    assert abs(len(clips[clip_files[0]]) - 2 * 800) <= 2
    assert (tmp_path / "cache" / "16000hz").is_dir()


def test_cache_redecodes_a_modified_file(tmp_path, clip_files, monkeypatch):
    cache_dir = tmp_path / "cache"
    AudioCache(cache_dir, SR).load(clip_files)
    target = clip_files[1]
    new_audio = tone(3000, seconds=0.2)
    sf.write(target, new_audio, SR)
    st_ = os.stat(target)
    os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))
    calls = count_decoding(monkeypatch)
    clips, bad = AudioCache(cache_dir, SR).load(clip_files)
    assert not bad
    assert calls == [target]
    np.testing.assert_allclose(clips[target], new_audio, atol=1e-4)
    # and the others still come from the cache, now in two packs
    assert len(list((cache_dir / f"{SR}hz").glob("pack-*.json"))) == 2
    calls.clear()
    AudioCache(cache_dir, SR).load(clip_files)
    assert calls == []


def test_cache_same_size_same_content_new_mtime_is_redecoded(tmp_path, clip_files, monkeypatch):
    cache_dir = tmp_path / "cache"
    AudioCache(cache_dir, SR).load(clip_files)
    target = clip_files[0]
    data, _ = sf.read(target, dtype="float32")
    sf.write(target, -data, SR)  # same size, other content
    st_ = os.stat(target)
    os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))
    calls = count_decoding(monkeypatch)
    clips, _ = AudioCache(cache_dir, SR).load([target])
    assert calls == [target]
    np.testing.assert_allclose(clips[target], -data, atol=1e-6)


@pytest.mark.parametrize("damage", ["flip", "truncate", "index"])
def test_cache_rejects_and_rebuilds_a_corrupted_pack(tmp_path, clip_files, monkeypatch, damage):
    cache_dir = tmp_path / "cache"
    first, _ = AudioCache(cache_dir, SR).load(clip_files)
    expected = {p: np.array(a) for p, a in first.items()}
    del first
    (data_file,) = (cache_dir / f"{SR}hz").glob("pack-*.f32")
    index_file = data_file.with_suffix(".json")
    raw = bytearray(data_file.read_bytes())
    if damage == "flip":
        for i in range(100, 140):
            raw[i] ^= 0xFF
        data_file.write_bytes(bytes(raw))
    elif damage == "truncate":
        data_file.write_bytes(bytes(raw[:-4]))
    else:
        index_file.write_text(index_file.read_text()[:-20])
    calls = count_decoding(monkeypatch)
    cache = AudioCache(cache_dir, SR)
    clips, bad = cache.load(clip_files)
    assert not bad
    assert cache.rejected_packs == [str(index_file)]
    assert not index_file.exists() and not data_file.exists()
    assert sorted(calls) == sorted(clip_files)
    for p in clip_files:
        np.testing.assert_array_equal(clips[p], expected[p])
    # the rebuilt pack is valid: a third load decodes nothing
    calls.clear()
    again = AudioCache(cache_dir, SR)
    again.load(clip_files)
    assert calls == [] and again.rejected_packs == []
    meta = json.loads(next((cache_dir / f"{SR}hz").glob("pack-*.json")).read_text())
    assert meta["samples"] == sum(len(v) for v in expected.values())


def test_cache_reports_bad_files_and_does_not_cache_them(tmp_path, clip_files, monkeypatch):
    folder = Path(clip_files[0]).parent
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    junk = folder / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    missing = str(folder / "missing.wav")
    paths = clip_files + [str(empty), str(junk), missing]
    clips, bad = AudioCache(tmp_path / "cache", SR).load(paths)
    assert set(clips) == set(clip_files)
    reasons = dict(bad)
    assert set(reasons) == {str(empty), str(junk), missing}
    assert "empty" in reasons[str(empty)]
    assert "cannot read" in reasons[missing]
    assert reasons[str(junk)]
    calls = count_decoding(monkeypatch)
    _, bad2 = AudioCache(tmp_path / "cache", SR).load(paths)
    assert sorted(calls) == sorted([str(empty), str(junk)])  # bad files are retried, good ones are cached
    assert dict(bad2).keys() == reasons.keys()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIOCLF_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("AUDIOCLF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "audioclf"


# ------------------------------------------------------------------------------------ clips


def test_fit_length_centres_in_eval():
    a = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(a, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(a, 10), a)
    np.testing.assert_array_equal(fit_length(np.arange(1, 4, dtype=np.float32), 7), [0, 0, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_length(np.arange(1, 3, dtype=np.float32), 5), [0, 1, 2, 0, 0])
    out = fit_length(np.zeros(0, np.float32), 3)
    np.testing.assert_array_equal(out, [0, 0, 0])


def test_fit_length_returns_a_writable_copy():
    src = np.arange(10, dtype=np.float32)
    src.setflags(write=False)  # like a memory-mapped cache view
    out = fit_length(src, 10)
    out[0] = 99
    assert src[0] == 0 and out.flags.writeable and out.dtype == np.float32


@given(n=st.integers(1, 300), length=st.integers(1, 300), seed=st.integers(0, 10**6))
@settings(max_examples=150, deadline=None)
def test_fit_length_random_placement(n, length, seed):
    a = np.arange(1, n + 1, dtype=np.float32)
    out = fit_length(a, length, np.random.default_rng(seed))
    assert out.shape == (length,)
    np.testing.assert_array_equal(out, fit_length(a, length, np.random.default_rng(seed)))
    nz = out[out != 0]
    if n >= length:  # a contiguous crop
        assert nz[0] >= 1 and nz[-1] <= n
        np.testing.assert_array_equal(nz, np.arange(nz[0], nz[0] + length))
    else:  # the whole clip, contiguous, somewhere inside the zeros
        np.testing.assert_array_equal(nz, a)
        start = int(np.flatnonzero(out)[0])
        np.testing.assert_array_equal(out[start:start + n], a)


@given(n=st.integers(1, 400), length=st.integers(1, 100), hop=st.one_of(st.none(), st.integers(1, 120)))
@settings(max_examples=200, deadline=None)
def test_windows_cover_the_whole_clip(n, length, hop):
    assume(hop is None or hop <= length)  # a hop longer than the window leaves gaps by construction
    a = np.arange(1, n + 1, dtype=np.float32)
    w = windows(a, length, hop)
    assert w.ndim == 2 and w.shape[1] == length and w.dtype == np.float32
    if n <= length:
        assert w.shape[0] == 1
        np.testing.assert_array_equal(w[0], fit_length(a, length))
        return
    step = hop or max(1, length // 2)
    starts = [int(row[0]) - 1 for row in w]
    for s, row in zip(starts, w):
        np.testing.assert_array_equal(row, a[s:s + length])
    assert starts[0] == 0
    assert starts[-1] == n - length  # last window aligned to the end
    assert starts == sorted(set(starts))
    assert all(b - a_ == step for a_, b in zip(starts[:-2], starts[1:-1]))
    assert 0 < starts[-1] - starts[-2] <= step if len(starts) > 1 else True
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s:s + length] = True
    assert covered.all()


def test_windows_default_hop_is_half_a_window():
    w = windows(np.arange(10, dtype=np.float32), 4)
    np.testing.assert_array_equal(w[:, 0], [0, 2, 4, 6])
    w = windows(np.arange(11, dtype=np.float32), 4)
    np.testing.assert_array_equal(w[:, 0], [0, 2, 4, 6, 7])


def test_clip_dataset_train_vs_eval():
    clips = [np.arange(1, 101, dtype=np.float32), np.arange(1, 11, dtype=np.float32)]
    targets = np.eye(2, dtype=np.float32)
    eval_ds = ClipDataset(clips, targets, 40, train=False)
    assert len(eval_ds) == 2
    x, y = eval_ds[0]
    np.testing.assert_array_equal(x.numpy(), np.arange(31, 71))
    np.testing.assert_array_equal(y.numpy(), [1, 0])
    np.testing.assert_array_equal(eval_ds[1][0].numpy(), fit_length(clips[1], 40))
    train_ds = ClipDataset(clips, targets, 40, train=True, seed=3)
    starts = set()
    for epoch in range(20):
        train_ds.set_epoch(epoch)
        a, b = train_ds[0][0], train_ds[0][0]
        assert np.array_equal(a.numpy(), b.numpy())  # same epoch and item: same crop
        starts.add(int(a[0]))
    assert len(starts) > 5  # different crops across epochs


# ------------------------------------------------------------------------------------ common data sets' metadata


def _write(path: Path, freq: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(freq), SR)


def test_esc50_layout_reads_its_metadata_csv(tmp_path, capsys):
    """ESC-50: ``audio/*.wav`` and ``meta/esc50.csv`` (filename,fold,target,category,esc10,src_file,take): labels
    from ``category`` (not the numeric ``target``), groups from ``src_file``, folds from ``fold``; the folder
    itself resolves to that CSV."""
    root = tmp_path / "ESC-50-master"
    rows = []
    for i, (category, freq) in enumerate([("dog", 300.0), ("rain", 900.0)]):
        for src in range(3):
            for take in "AB":
                name = f"{src + 1}-{100 + 10 * i + src}-{take}-{i}.wav"
                _write(root / "audio" / name, freq * (1 + 0.01 * src))
                rows.append([name, str(src + 1), str(i), category, "False", str(100 + 10 * i + src), take])
    write_csv(root / "meta" / "esc50.csv" if (root / "meta").mkdir() is None else None,
              ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    m = from_csv(root / "meta" / "esc50.csv")
    assert m.labels == ["dog", "rain"] and len(m.items) == 12 and not m.skipped
    assert all(Path(it.path).parent == root / "audio" for it in m.items)
    assert m.folds == ["1", "2", "3"] and m.items[0].group == "100" and m.items[1].group == "100"
    err = capsys.readouterr().err
    assert "label from column 'category'" in err and "12 file(s) found by name under" in err
    assert [it.path for it in load_manifest(root).items] == [it.path for it in m.items]
    assert "using the metadata file" in capsys.readouterr().err


def test_urbansound8k_layout_and_fold_folders(tmp_path):
    """UrbanSound8K: ``audio/fold1..N/`` and ``metadata/UrbanSound8K.csv``; ``class`` wins over ``classID``,
    ``fsID`` is the group. Pointed at ``audio/`` alone, whose sub-folders are folds, it refuses to take the folds
    for classes."""
    root = tmp_path / "UrbanSound8K"
    rows = []
    for fold in (1, 2):
        for cls, (name, freq) in enumerate([("siren", 300.0), ("drilling", 900.0)]):
            fname = f"{1000 + fold}-{cls}-0-0.wav"
            _write(root / "audio" / f"fold{fold}" / fname, freq)
            rows.append([fname, str(1000 + fold), "0", "4", "1", str(fold), str(cls), name])
    (root / "metadata").mkdir()
    write_csv(root / "metadata" / "UrbanSound8K.csv",
              ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    m = load_manifest(root)
    assert m.labels == ["drilling", "siren"] and m.folds == ["1", "2"]
    assert {(Path(it.path).parent.name, it.fold, it.group) for it in m.items} == {
        ("fold1", "1", "1001"), ("fold2", "2", "1002")}
    with pytest.raises(ManifestError, match="look like folds, not classes"):
        load_manifest(root / "audio")


def test_fsd50k_style_labels_and_extensionless_names(tmp_path):
    """``fname,labels``: names without an extension match by stem; a ``labels`` cell separates with commas."""
    root = tmp_path / "fsd"
    _write(root / "dev_audio" / "64760.wav", 300.0)
    _write(root / "dev_audio" / "16399.wav", 900.0)
    (root / "ground_truth").mkdir()
    write_csv(root / "ground_truth" / "dev.csv", ["fname", "labels", "mids", "split"],
              [["64760", "Electric_guitar,Guitar,Music", "/m/a,/m/b,/m/c", "train"],
               ["16399", "Music", "/m/c", "val"]])
    m = from_csv(root / "ground_truth" / "dev.csv")
    assert [it.labels for it in m.items] == [("Electric_guitar", "Guitar", "Music"), ("Music",)]
    assert m.multilabel and Path(m.items[0].path).name == "64760.wav"


def test_name_lookup_skips_ambiguous_names_and_stays_in_the_data_set(tmp_path):
    root = tmp_path / "set"
    for sub in ("a", "b"):
        _write(root / "audio" / sub / "same.wav", 300.0)
    _write(root / "audio" / "a" / "one.wav", 300.0)
    (root / "meta").mkdir()
    m = from_csv(write_csv(root / "meta" / "m.csv", ["file_name", "label"],
                           [["same.wav", "x"], ["one.wav", "y"], ["none.wav", "y"]]))
    assert [Path(it.path).name for it in m.items] == ["one.wav"]
    reasons = sorted(reason.split(": ", 1)[1] for _, reason in m.skipped)
    assert reasons == ["2 files named 'same.wav' under " + str(root), "file not found"]
    # a CSV beside its audio only looks below itself: a file of that name one level up is not taken
    _write(tmp_path / "outside.wav", 300.0)
    m = from_csv(write_csv(root / "audio" / "m.csv", ["path", "label"], [["outside.wav", "x"], ["one.wav", "y"]]))
    assert [Path(it.path).name for it in m.items] == ["one.wav"] and "file not found" in m.skipped[0][1]


def test_name_lookup_gives_up_after_a_bounded_walk(tmp_path, monkeypatch):
    from audioclf.data import manifest

    monkeypatch.setattr(manifest._NameIndex, "MAX_FOLDERS", 3)
    root = tmp_path / "set"
    for i in range(6):
        _write(root / "audio" / f"d{i}" / f"{i}.wav", 300.0)
    (root / "meta").mkdir()
    with pytest.raises(ManifestError, match="the search by name stopped after 3 folders"):
        from_csv(write_csv(root / "meta" / "m.csv", ["file_name", "label"], [["5.wav", "x"]]))


def test_cache_decodes_ffmpeg_only_files_in_worker_processes_and_skips_a_crash(tmp_path, clip_files, monkeypatch):
    """WebM/Opus goes to a decoder process and decodes as it would here; a decoder that crashes costs that file
    (skipped with the signal as the reason), not the run."""
    from functools import partial

    webm = tmp_path / "rec.webm"
    write_with_pyav(webm, "webm", "libopus", 48000, tone(440, seconds=0.5))
    clips, bad = AudioCache(tmp_path / "cache", SR).load(clip_files[:2] + [str(webm)])
    assert not bad and set(clips) == set(clip_files[:2] + [str(webm)])
    np.testing.assert_allclose(clips[str(webm)], read_mono_limited(webm, SR, None), atol=1e-6)

    crash = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(cache_mod, "DecoderPool", partial(cache_mod.DecoderPool, command=crash))
    clips, bad = AudioCache(tmp_path / "cache2", SR).load(clip_files[:2] + [str(webm)])
    assert set(clips) == set(clip_files[:2])
    assert bad == [(str(webm), "the decoder process was killed by SIGSEGV")]


def test_one_class_is_refused_for_training_and_a_lone_audio_folder_is_entered(tmp_path):
    """A folder whose only audio folder holds the class folders (GTZAN's ``Data/genres_original/<genre>/``) is
    read from there; one class alone cannot train."""
    root = tmp_path / "Data"
    for genre, freq in (("blues", 300.0), ("jazz", 900.0)):
        _write(root / "genres_original" / genre / f"{genre}.00000.wav", freq)
    (root / "images_original").mkdir()
    m = load_manifest(root)
    assert m.labels == ["blues", "jazz"] and m.require_classes() is m
    one = load_manifest(root / "genres_original" / "blues" / "..", pattern=r"(?P<label>blues)/")
    with pytest.raises(ManifestError, match="only the class 'blues' in 1 files; a classifier needs two or more"):
        one.require_classes()


def test_csv_saved_by_excel_with_a_byte_order_mark(tone_set):
    root, rows = tone_set
    path = root / "bom.csv"
    path.write_text("path,label\n" + "".join(f"{rel},{label}\n" for rel, label, _ in rows[:3]), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [it.labels for it in from_csv(path).items] == [("low",)] * 3


@pytest.mark.parametrize("sep", [";", "\t"])
def test_csv_with_semicolons_or_tabs(tone_set, sep):
    """A European Excel export (``;``) or a TSV: the header line tells the delimiter."""
    root, rows = tone_set
    path = root / "m.csv"
    path.write_text(f"path{sep}label{sep}group\n" + "".join(f"{rel}{sep}{label}{sep}{g}\n" for rel, label, g in rows[:3]))
    m = from_csv(path)
    assert [(it.labels, it.group) for it in m.items] == [(("low",), g) for _, _, g in rows[:3]]


def test_folder_manifests_list_files_in_sorted_order(tmp_path):
    """Splits follow the manifest's order, so it must not depend on the file system's directory order."""
    names = [f"{i:02d}.wav" for i in range(12)]
    for name in reversed(names):  # created last to first
        _write(tmp_path / "a" / name, 300.0)
        _write(tmp_path / "b" / name, 900.0)
    m = from_folders(tmp_path)
    assert [Path(it.path).name for it in m.items] == names * 2
