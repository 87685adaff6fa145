"""Tests for audioclf.data.cache: the decoded-audio cache (packs, checks, re-decoding, bad files)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_with_pyav

import audioclf.data.cache as cache_mod
import audioclf.isolated_decoding as isolated_decoding
from audioclf.audio import read_mono_limited
from audioclf.data.cache import AudioCache, default_cache_dir
from tones import SR, tone


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


