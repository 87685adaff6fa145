"""Tests for audioclf.data.splits: hold-outs and folds keep groups whole, stratification, declared folds."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import write_speech_commands

from audioclf.data.manifest import (Item, Manifest, from_pattern,
                                    load_manifest)
from audioclf.data.splits import MIN_VALIDATION_GROUPS, group_holdout, kfold, make_split, stratified_group_folds
from tones import FREQS, FSDD, GROUP_PATTERN, write_csv


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




def speakers_manifest(speakers: int, per_speaker: int = 20, classes: int = 4, test: bool = True) -> Manifest:
    names = [f"s{k}" for k in range(speakers)]
    groups = [names[k % speakers] for k in range(speakers * per_speaker)]
    labels = [f"c{(k // speakers) % classes}" for k in range(speakers * per_speaker)]
    return synthetic_manifest(groups, labels, ["test" if g == "s0" and test else "train" for g in groups])


@pytest.mark.parametrize("speakers", [3, 5, 9])
def test_group_holdout_holds_whole_training_groups_out_when_validation_shares_them(speakers):
    """Too few training speakers for validation to hold any out: about a quarter of them (one at least) are held
    out whole from the training clips, every class on both sides; the test speaker on neither."""
    m = speakers_manifest(speakers)
    for seed in range(4):
        split = make_split(m, test_fold="test", val_fraction=0.2, seed=seed)
        rest, held = group_holdout(m, split, seed)
        by = lambda idx: {m.items[i].group for i in idx}  # noqa: E731
        assert sorted(rest + held) == sorted(split.train + split.val)  # the training clips, each once
        assert not by(rest) & by(held) and "s0" not in by(rest) | by(held)
        assert len(by(held)) == max(1, round((speakers - 1) / 4 + 1e-9))  # a quarter of the training speakers
        labels = lambda idx: {m.items[i].labels[0] for i in idx}  # noqa: E731
        assert labels(held) == labels(rest) == {"c0", "c1", "c2", "c3"}


def test_group_holdout_none_where_validation_already_holds_groups_out_or_cannot():
    """None with enough speakers (validation holds them out), without groups, with a test split that shares the
    training speakers, with a declared validation fold, and when the held-out speaker has a class no other has."""
    split = lambda m, **kw: make_split(m, val_fraction=0.2, seed=0, **kw)  # noqa: E731
    many = speakers_manifest(MIN_VALIDATION_GROUPS + 1)
    assert group_holdout(many, split(many, test_fold="test")) is None
    ungrouped = synthetic_manifest([None] * 80, [f"c{k % 4}" for k in range(80)])
    assert group_holdout(ungrouped, split(ungrouped)) is None
    takes = synthetic_manifest([f"s{k % 4}" for k in range(80)], [f"c{k % 4}" for k in range(80)],
                               ["test" if k % 5 == 0 else "train" for k in range(80)])  # FSDD's take-based split
    assert group_holdout(takes, split(takes, test_fold="test")) is None
    few = speakers_manifest(4)
    declared = synthetic_manifest([it.group for it in few.items], [it.labels[0] for it in few.items],
                                  ["validation" if it.group == "s1" else it.fold for it in few.items])
    assert group_holdout(few, split(few, test_fold="test")) is not None
    assert group_holdout(declared, split(declared, test_fold="test")) is None
    own = synthetic_manifest([it.group for it in few.items],  # every speaker speaks one class of its own
                             [f"c{int(it.group[1:])}" for it in few.items], [it.fold for it in few.items])
    assert group_holdout(own, split(own, test_fold="test")) is None


def test_holdout_never_holds_out_the_only_group_of_a_class():
    """A class with a single group (class 7) must stay in the kept part, or training could not learn it; the first
    stratified fold is held out whenever it leaves every class kept."""
    from audioclf.data.splits import holdout
    labels = [c for c in range(7) for _ in range(6) for _ in range(4)] + [7] * 4  # 6 groups a class, 1 for class 7
    groups = [i // 4 for i in range(len(labels))]
    y = np.eye(8)[labels]
    moved = 0
    for seed in range(12):
        folds = stratified_group_folds(y, groups, 4, seed)
        first = [i for i in range(len(labels)) if folds[i] == 0]
        kept, held = holdout(list(range(len(labels))), y, groups, 0.25, seed)
        assert y[kept].sum(axis=0).min() > 0 and not {groups[i] for i in kept} & {groups[i] for i in held}
        assert sorted(kept + held) == list(range(len(labels)))
        moved += held != first
        assert (held == first) == (7 not in [labels[i] for i in first])
    assert 0 < moved < 12  # both cases were met
