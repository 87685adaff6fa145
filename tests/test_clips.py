"""Tests for audioclf.data.clips and windows: fitting, placing and windowing clips."""


import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from audioclf.data.clips import ClipDataset, fit_length, windows


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


