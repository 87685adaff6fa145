"""Train/validation/test splits that are stratified by label and never put one group on both sides."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .manifest import Manifest


MIN_VALIDATION_GROUPS = 10  # fewer groups in train: validation shares them (see make_split)
TEST_FOLD_NAMES = ("test", "testing", "eval", "evaluation")  # a declared fold so named is the default test set
VAL_FOLD_NAMES = ("validation", "valid", "val", "dev")  # ... and one so named the validation set


def named_fold(manifest: Manifest, names: tuple[str, ...]) -> str | None:
    """The declared fold whose name (any case) is one of ``names``, if there is one."""
    return next((f for f in manifest.folds if f.lower() in names), None)


@dataclass
class Split:
    train: list[int]
    val: list[int]
    test: list[int]
    val_shares_groups: bool = False  # validation was carved within train's groups
    declared: str = ""  # the named folds used by default, e.g. "test = the declared fold 'testing'"
    test_groups_heard: tuple[int, int] = (0, 0)  # a declared test fold's groups that train holds too, and all of them

    def sizes(self) -> str:
        return (f"train {len(self.train)}, validation {len(self.val)}, test {len(self.test)}"
                + (f" ({self.declared})" if self.declared else ""))


def label_matrix(manifest: Manifest, labels: list[str] | None = None) -> np.ndarray:
    """Multi-hot ``(items, classes)`` float32 matrix in the order of ``labels`` (default: ``manifest.labels``)."""
    labels = labels or manifest.labels
    index = {label: i for i, label in enumerate(labels)}
    y = np.zeros((len(manifest.items), len(labels)), dtype=np.float32)
    for row, item in enumerate(manifest.items):
        for label in item.labels:
            y[row, index[label]] = 1
    return y


def stratified_group_folds(y: np.ndarray, groups: list, k: int, seed: int = 0) -> np.ndarray:
    """Assign every item to one of ``k`` folds, keeping groups whole and label counts balanced.

    y: multi-hot ``(items, classes)``; groups: one key per item (``None``: the item is its own group).
    Greedy: groups in decreasing size (random order among equals) go to the fold whose label counts
    overlap least with theirs. Returns fold ids ``(items,)``.
    """
    keys = [g if g is not None else ("__item__", i) for i, g in enumerate(groups)]
    unique = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    gid = np.array([unique[key] for key in keys])
    counts = np.zeros((len(unique), y.shape[1]))
    np.add.at(counts, gid, y)
    sizes = np.bincount(gid, minlength=len(unique))
    rng = np.random.default_rng(seed)
    order = sorted(rng.permutation(len(unique)), key=lambda g: -sizes[g])
    fold_counts, fold_sizes = np.zeros((k, y.shape[1])), np.zeros(k)
    group_fold = np.empty(len(unique), dtype=int)
    for g in order:
        cost = fold_counts @ counts[g] / max(1.0, counts[g].sum()) + 1e-6 * fold_sizes
        f = int(np.argmin(cost))
        group_fold[g] = f
        fold_counts[f] += counts[g]
        fold_sizes[f] += sizes[g]
    return group_fold[gid]


def holdout(indices: list[int], y: np.ndarray, groups: list, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``indices`` into (kept, held out ~``fraction``), stratified and group-aware: one of
    :func:`stratified_group_folds`' ``1 / fraction`` folds, the first that leaves every class in the kept part (or
    the most classes), since a class whose only group is held out could not be learnt at all."""
    if fraction <= 0 or len(indices) < 2:
        return list(indices), []
    k = max(2, int(round(1 / fraction)))
    y_in = y[indices]
    folds = stratified_group_folds(y_in, [groups[i] for i in indices], k, seed)
    held_fold = max(range(k), key=lambda f: int((y_in[folds != f].sum(axis=0) > 0).sum()))  # classes kept
    kept = [i for i, f in zip(indices, folds) if f != held_fold]
    held = [i for i, f in zip(indices, folds) if f == held_fold]
    return (kept, held) if kept else (held, kept)


MIN_VALIDATION_CLIPS, MIN_VALIDATION_PER_CLASS = 100, 10  # what an automatic validation share aims at
VALIDATION_SHARE = (0.1, 0.25)  # ... within these shares of the training clips


def validation_fraction(train_clips: int, classes: int) -> float:
    """The automatic validation share of the training clips: enough clips to tell epochs apart
    (``MIN_VALIDATION_CLIPS``, ``MIN_VALIDATION_PER_CLASS`` a class), within ``VALIDATION_SHARE``."""
    wanted = max(MIN_VALIDATION_CLIPS, MIN_VALIDATION_PER_CLASS * classes) / max(1, train_clips)
    return float(min(VALIDATION_SHARE[1], max(VALIDATION_SHARE[0], wanted)))


def make_split(manifest: Manifest, test_fold: str | None = None, test_fraction: float = 0.2,
               val_fraction: float | None = 0.1, seed: int = 0) -> Split:
    """Test = the declared ``test_fold`` (default: a fold named as in ``TEST_FOLD_NAMES``, e.g. Speech Commands'
    ``testing``) or a stratified, group-aware hold-out; validation = a declared fold named as in ``VAL_FOLD_NAMES``
    (other than the test fold), else carved from train: ``val_fraction`` of it (``None``: :func:`validation_fraction`).

    The test split never shares a group with train unless a declared fold does (FSDD's take-based split).
    Carved validation keeps groups whole too, unless the test split shares groups, or train holds fewer than
    ``MIN_VALIDATION_GROUPS`` groups: holding out one of five speakers for validation would take a fifth of
    the speakers the model learns from, and validation only picks the best epoch (the test stays honest).
    """
    y = label_matrix(manifest)
    groups = [item.group for item in manifest.items]
    everything = list(range(len(manifest.items)))
    declared = []  # the folds used without being asked for (printed with the split sizes)
    if test_fold is None:
        test_fold = named_fold(manifest, TEST_FOLD_NAMES)
        declared = [] if test_fold is None else [f"test = the declared fold {test_fold!r}"]
    if test_fold is not None:
        test = [i for i, item in enumerate(manifest.items) if item.fold == str(test_fold)]
        if not test:
            raise ValueError(f"--test-fold {test_fold!r}: no item has that fold; declared folds: "
                             f"{', '.join(manifest.folds) or 'none'}")
        train = [i for i in everything if manifest.items[i].fold != str(test_fold)]
        test_groups = {groups[i] for i in test} - {None}
        heard = (len(test_groups & {groups[i] for i in train}), len(test_groups))
        shared = heard[0] > 0
    else:
        train, test = holdout(everything, y, groups, test_fraction, seed)
        shared, heard = False, (0, 0)
    val_fold = named_fold(manifest, VAL_FOLD_NAMES)
    if val_fold is not None and val_fold != str(test_fold):
        val = [i for i in train if manifest.items[i].fold == val_fold]
        declared.append(f"validation = the declared fold {val_fold!r}")
        return Split([i for i in train if manifest.items[i].fold != val_fold], val, sorted(test), False,
                     ", ".join(declared), heard)
    if val_fraction is None:
        val_fraction = validation_fraction(len(train), y.shape[1])
    train_groups = {groups[i] for i in train} - {None}
    within = shared or 0 < len(train_groups) < MIN_VALIDATION_GROUPS
    train, val = holdout(train, y, [None] * len(groups) if within else groups, val_fraction, seed + 1)
    return Split(sorted(train), sorted(val), sorted(test), within and bool(train_groups) and bool(val),
                 ", ".join(declared), heard)


SELECTION_SHARE = 0.25  # a selection hold-out takes about this share of the training groups (one at least)
SELECTION_DRAWS = 20  # random draws of the held-out groups tried until one passes the class check


def group_holdout(manifest: Manifest, split: Split, seed: int = 0) -> tuple[list[int], list[int]] | None:
    """``(rest, held)``: the training clips (``split.train + split.val``) with about a quarter of their groups (one at
    least, drawn at random) held out whole, for comparing runs on groups that none of them heard; for a split whose
    validation shares the training groups because train holds too few of them (2 to ``MIN_VALIDATION_GROUPS - 1``)
    while the test split holds its own. None otherwise, and when every draw leaves the held-out clips with a single
    class or with one the rest lacks."""
    items = manifest.items
    train = sorted(split.train + split.val)
    groups = sorted({items[i].group for i in train} - {None})
    if (not split.val_shares_groups or not 2 <= len(groups) < MIN_VALIDATION_GROUPS
            or set(groups) & {items[i].group for i in split.test}):
        return None
    rng = np.random.default_rng(seed)
    for _ in range(SELECTION_DRAWS):
        chosen = set(rng.choice(groups, max(1, int(len(groups) * SELECTION_SHARE + 0.5)), replace=False))
        rest = [i for i in train if items[i].group not in chosen]
        held = [i for i in train if items[i].group in chosen]
        held_labels = {label for i in held for label in items[i].labels}
        if len(held_labels) >= 2 and held_labels <= {label for i in rest for label in items[i].labels}:
            return rest, held
    return None


def declared_cv_folds(manifest: Manifest) -> list[str]:
    """The declared folds cross-validation uses: all of them, unless they are a train/validation/test split
    (e.g. Speech Commands'); then none."""
    return [] if named_fold(manifest, TEST_FOLD_NAMES + VAL_FOLD_NAMES) is not None else manifest.folds


def kfold(manifest: Manifest, k: int, seed: int = 0) -> list[list[int]]:
    """Test indices of each fold: the :func:`declared_cv_folds` when there are any, else stratified group K-fold."""
    declared = declared_cv_folds(manifest)
    if declared:
        return [[i for i, item in enumerate(manifest.items) if item.fold == f] for f in declared]
    folds = stratified_group_folds(label_matrix(manifest), [item.group for item in manifest.items], k, seed)
    return [list(np.flatnonzero(folds == f)) for f in range(k)]
