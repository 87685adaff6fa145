"""Fuzzing ``read_audio``: mutated/truncated WAV, FLAC, OGG and MP3 files and random bytes must decode to a
finite float32 array or raise ``AudioDecodeError`` -- no other exception, no hang (5 s per case).

``AUDIOCLF_FUZZ_EXAMPLES`` sets the number of cases (default sized for a ~30 s run on a shared machine)::

    AUDIOCLF_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -q
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audioclf.audio import AudioDecodeError, read_audio

EXAMPLES = int(os.environ.get("AUDIOCLF_FUZZ_EXAMPLES", "4000"))
TIME_LIMIT_S = 5
SR = 8000
# (format, subtype, extension); MP3 only where this libsndfile can write it
FORMATS = [("WAV", "PCM_16", ".wav"), ("WAV", "FLOAT", ".wav"), ("FLAC", "PCM_16", ".flac"),
           ("OGG", "VORBIS", ".ogg"), ("MP3", "MPEG_LAYER_III", ".mp3")]
INTERESTING = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x01\x00\x00\x00",
               b"\x00\x00", b"\xff\xff", b"\x7f"]


class DecodeHang(Exception):
    """A decode ran past TIME_LIMIT_S."""


def _alarm(signum, frame):
    raise DecodeHang(f"decode took longer than {TIME_LIMIT_S} s")


def _make_seeds() -> dict[str, bytes]:
    t = np.arange(int(0.3 * SR)) / SR
    x = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)], 1).astype(np.float32)
    seeds = {}
    for fmt, subtype, ext in FORMATS:
        buf = io.BytesIO()
        try:
            sf.write(buf, x, SR, format=fmt, subtype=subtype)
        except (sf.LibsndfileError, ValueError, TypeError):
            continue  # e.g. no MP3 encoder in this libsndfile
        seeds[f"{fmt}-{subtype}{ext}"] = buf.getvalue()
    return seeds


SEEDS = _make_seeds()
TMP = Path(tempfile.mkdtemp(prefix="audioclf-fuzz-"))


@st.composite
def mutated(draw):
    """(extension, bytes): a valid small file with 1-4 mutations, or random bytes."""
    if draw(st.integers(0, 9)) == 0:  # 10 %: pure random bytes under a random audio extension
        ext = draw(st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff"]))
        return ext, draw(st.binary(min_size=1, max_size=2048))
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "header", "delete", "duplicate"]))
        n = len(data)
        if n == 0:
            break
        pos = draw(st.integers(0, n - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "header":  # clobber a field in the first 64 bytes (sizes, rates, channel counts, ...)
            hpos = draw(st.integers(0, min(63, n - 1)))
            value = draw(st.sampled_from(INTERESTING))
            data[hpos:hpos + len(value)] = value
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 256))]
        else:  # duplicate a slice
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 512))]
    return Path(name).suffix, bytes(data)


@pytest.fixture(autouse=True, scope="module")
def _alarm_handler():
    old = signal.signal(signal.SIGALRM, _alarm)
    yield
    signal.signal(signal.SIGALRM, old)
    shutil.rmtree(TMP, ignore_errors=True)


def test_seed_files_decode():
    assert {"WAV-PCM_16.wav", "FLAC-PCM_16.flac", "OGG-VORBIS.ogg"} <= set(SEEDS)
    for name, data in SEEDS.items():
        path = TMP / f"seed-{name}"
        path.write_bytes(data)
        audio = read_audio(path)
        assert audio.dtype == np.float32 and audio.shape[0] == 1 and audio.shape[1] > 0


counter = {"cases": 0, "decoded": 0, "errors": 0}


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated(), resample=st.booleans(), mono=st.booleans())
def test_read_audio_never_crashes_or_hangs(case, resample, mono):
    ext, data = case
    path = TMP / f"case{ext}"
    path.write_bytes(data)
    counter["cases"] += 1
    signal.alarm(TIME_LIMIT_S)
    try:
        audio = read_audio(path, 16000 if resample else None, mono=mono)
    except AudioDecodeError as e:
        counter["errors"] += 1
        assert str(e).startswith(str(path))
        return
    finally:
        signal.alarm(0)
    counter["decoded"] += 1
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 2
    assert audio.shape[1] > 0 and np.isfinite(audio).all()
    if mono:
        assert audio.shape[0] == 1


WAV_SEEDS = {}
for _subtype, _channels in [("PCM_16", 1), ("PCM_U8", 2), ("PCM_24", 3), ("PCM_32", 1), ("FLOAT", 2), ("DOUBLE", 1)]:
    _buf = io.BytesIO()
    _x = np.random.default_rng(0).uniform(-1, 1, (600, _channels)).astype(np.float32)
    sf.write(_buf, _x, SR, format="WAV", subtype=_subtype)  # three channels: WAVE_FORMAT_EXTENSIBLE
    WAV_SEEDS[f"{_subtype}-{_channels}"] = _buf.getvalue()


@pytest.mark.slow
@settings(max_examples=EXAMPLES // 4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(name=st.sampled_from(sorted(WAV_SEEDS)),
       edits=st.lists(st.tuples(st.integers(0, 99), st.sampled_from(INTERESTING)), max_size=3),
       cut=st.integers(0, 8), mono=st.booleans())
def test_wav_in_memory_decodes_as_libsndfile_reads_the_file(name, edits, cut, mono):
    """WAV bytes held in memory take a parser of their own (no libsndfile open); with its header fields clobbered
    or its end cut off, the bytes decode to exactly what libsndfile reads from the same file, or both are refused."""
    data = bytearray(WAV_SEEDS[name])
    for pos, value in edits:
        data[pos:pos + len(value)] = value
    del data[len(data) - cut * 97:]
    path = TMP / "differential.wav"
    path.write_bytes(data)
    results = []
    for source in (bytes(data), path):
        try:
            results.append(read_audio(source, mono=mono))
        except AudioDecodeError as e:
            results.append(e.reason)
    if isinstance(results[0], str) or isinstance(results[1], str):
        assert isinstance(results[0], str) and isinstance(results[1], str), results
    else:
        np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.slow  # reports the fuzz run above, which is slow
def test_report_counts():
    print(f"fuzz: {counter['cases']} cases, {counter['decoded']} decoded, {counter['errors']} AudioDecodeError")
    assert counter["cases"] > 0 and counter["decoded"] + counter["errors"] == counter["cases"]
