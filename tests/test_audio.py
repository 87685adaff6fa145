"""Tests for audioclf.audio: decoding across formats, resampling, streaming and bad files."""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_with_pyav

import audioclf.audio as audio_module
from audioclf.audio import (
    SUPPORTED_EXTENSIONS, AudioDecodeError, AudioInfo, AudioTooLong, NeedsFFmpeg, audio_info, iter_blocks,
    load_audio, read_audio, read_mono_limited, resample,
)

SR = 16000


def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stereo(sr: int = SR, seconds: float = 0.5) -> np.ndarray:
    """(samples, 2) test signal with distinct channels, as soundfile writes it."""
    return np.stack([tone(440, sr, seconds), tone(660, sr, seconds, amp=-0.25)], axis=1)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return spectrum.argmax() * sr / len(x)


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt,subtype,ext,tol", [
    ("WAV", "PCM_U8", ".wav", 1 / 128),
    ("WAV", "PCM_16", ".wav", 1 / 2**15),
    ("WAV", "PCM_24", ".wav", 1e-6),
    ("WAV", "PCM_32", ".wav", 1e-6),
    ("WAV", "FLOAT", ".wav", 1e-7),
    ("WAV", "DOUBLE", ".wav", 1e-7),
    ("FLAC", "PCM_16", ".flac", 1 / 2**15),
    ("FLAC", "PCM_24", ".flac", 1e-6),
    ("AIFF", "PCM_24", ".aiff", 1e-6),
])
def test_lossless_round_trip(tmp_path, fmt, subtype, ext, tol):
    x = stereo()
    path = tmp_path / f"x{ext}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    out = read_audio(path, mono=False)
    assert out.dtype == np.float32 and out.shape == (2, len(x))
    np.testing.assert_allclose(out, x.T, rtol=0, atol=tol)
    mono = read_audio(path)
    assert mono.shape == (1, len(x))
    np.testing.assert_allclose(mono[0], out.mean(axis=0), atol=1e-7)
    assert np.abs(out).max() <= 1.0


@pytest.mark.parametrize("fmt,subtype,ext", [
    ("OGG", "VORBIS", ".ogg"), ("OGG", "OPUS", ".opus"), ("MP3", "MPEG_LAYER_III", ".mp3"),
])
def test_lossy_round_trip(tmp_path, fmt, subtype, ext):
    x = tone(1000, SR, 1.0)
    path = tmp_path / f"x{ext}"
    try:
        sf.write(path, x, SR, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as e:
        pytest.skip(f"libsndfile cannot write {fmt}/{subtype}: {e}")
    out = read_audio(path)
    assert out.shape == (1, len(x))  # gapless: encoder delay and padding are trimmed
    assert abs(peak_hz(out[0], SR) - 1000) <= 1
    core = slice(2000, -2000)
    assert np.corrcoef(out[0, core], x[core])[0, 1] > 0.99
    assert audio_info(path) == AudioInfo(SR, 1, len(x), 1.0)


@pytest.mark.parametrize("container_format,codec,ext,sr", [
    ("ipod", "aac", ".m4a", 44100), ("webm", "libopus", ".webm", 48000),
])
def test_pyav_only_container(tmp_path, container_format, codec, ext, sr):
    x = tone(1000, sr, 1.0)
    path = tmp_path / f"x{ext}"
    write_with_pyav(path, container_format, codec, sr, x)
    with pytest.raises(sf.LibsndfileError):
        sf.info(path)  # really needs the fallback
    out = read_audio(path)
    assert out.dtype == np.float32 and out.shape[0] == 1
    assert abs(out.shape[1] / sr - 1.0) < 0.05
    assert abs(peak_hz(out[0], sr) - 1000) <= 2
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (sr, 1) and abs(info.duration - 1.0) < 0.05
    resampled = read_audio(path, SR)
    assert abs(resampled.shape[1] - out.shape[1] * SR / sr) <= 1
    assert abs(peak_hz(resampled[0], SR) - 1000) <= 2
    blocks = list(iter_blocks(path, None, 4096))
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), out)


def test_multichannel_downmix(tmp_path):
    x = np.random.default_rng(0).uniform(-0.9, 0.9, size=(3000, 6)).astype(np.float32)
    path = tmp_path / "six.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    mono = read_audio(path)
    assert mono.shape == (1, 3000)
    np.testing.assert_allclose(mono[0], x.mean(axis=1), atol=1e-6)
    full = read_audio(path, mono=False)
    assert full.shape == (6, 3000)
    np.testing.assert_array_equal(full, x.T)
    assert audio_info(path) == AudioInfo(SR, 6, 3000, 3000 / SR)


def test_load_audio_is_float_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "x.wav"
    sf.write(path, stereo(), SR)
    t = load_audio(path, sample_rate=8000, mono=False)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (2, 4000)
    np.testing.assert_array_equal(t.numpy(), read_audio(path, 8000, mono=False))


def test_module_does_not_import_torch():
    code = "import sys, audioclf.audio; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_supported_extensions():
    assert {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"} <= SUPPORTED_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in SUPPORTED_EXTENSIONS)


# ----------------------------------------------------------------------------- resampling

def test_resample_keeps_frequency_and_length():
    x = tone(1000, 44100, 1.0)
    y = resample(x[None], 44100, 16000)
    assert y.dtype == np.float32 and y.shape == (1, 16000)
    spectrum = np.abs(np.fft.rfft(y[0] * np.hanning(16000)))
    assert abs(int(spectrum.argmax()) - 1000) <= 1  # 1 Hz bins
    assert abs(np.sqrt(np.mean(y[0, 500:-500] ** 2)) - 0.5 / np.sqrt(2)) < 0.01
    np.testing.assert_array_equal(resample(x, 44100, 16000), y[0])  # 1-D works the same
    two = resample(np.stack([x, -x]), 44100, 16000)
    assert two.shape == (2, 16000) and two.flags.c_contiguous
    np.testing.assert_allclose(two[1], -y[0], atol=1e-6)
    assert resample(x, 44100, 44100) is x
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


def test_read_audio_resamples_when_rate_differs(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, tone(1000, 44100, 1.0), 44100)
    out = read_audio(path, 16000)
    assert out.shape == (1, 16000)
    assert abs(peak_hz(out[0], 16000) - 1000) <= 1
    np.testing.assert_array_equal(read_audio(path, 44100), read_audio(path))


# ----------------------------------------------------------------------------- streaming

@pytest.fixture
def long_flac(tmp_path):
    """2 s stereo 44.1 kHz: more frames than one libsndfile read (65536)."""
    path = tmp_path / "long.flac"
    sf.write(path, stereo(44100, 2.0), 44100, subtype="PCM_24")
    return path


@pytest.mark.parametrize("mono", [True, False])
def test_iter_blocks_exact_without_resampling(long_flac, mono):
    blocks = list(iter_blocks(long_flac, 44100, 4000, mono=mono))
    assert all(b.shape == (1 if mono else 2, 4000) for b in blocks[:-1])
    assert blocks[-1].shape[1] == 88200 % 4000
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), read_audio(long_flac, mono=mono))


def test_iter_blocks_streams_resampling(long_flac):
    blocks = list(iter_blocks(long_flac, 16000, 5000, mono=False))
    assert [b.shape[1] for b in blocks] == [5000] * 6 + [2000]
    np.testing.assert_allclose(np.concatenate(blocks, axis=1),
                               read_audio(long_flac, 16000, mono=False), atol=1e-5)


def test_iter_blocks_rejects_bad_arguments(long_flac, tmp_path):
    with pytest.raises(ValueError):
        iter_blocks(long_flac, 16000, 0)
    with pytest.raises(AudioDecodeError):  # reported at call time, not at first next()
        iter_blocks(tmp_path / "missing.wav", 16000, 100)


def test_audio_info(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros((12345, 3), np.float32), 22050, subtype="PCM_16")
    assert audio_info(path) == AudioInfo(22050, 3, 12345, 12345 / 22050)
    flac = tmp_path / "x.flac"
    sf.write(flac, np.zeros(8000, np.float32), 8000)
    assert audio_info(flac) == AudioInfo(8000, 1, 8000, 1.0)


class _CountingSoundFile(sf.SoundFile):
    opened = reads = closes = 0

    def __init__(self, *args, **kwargs):
        type(self).opened += 1
        super().__init__(*args, **kwargs)

    def close(self):
        if not self.closed:
            type(self).closes += 1
        super().close()

    def read(self, *args, **kwargs):
        type(self).reads += 1
        return super().read(*args, **kwargs)


def test_read_mono_limited_opens_once_and_refuses_at_the_header(tmp_path, monkeypatch):
    """The length limit is checked on the header the decoder itself opened: one libsndfile open, and an over-long
    file is refused before a single block is read, and its file closed; within the limit it returns read_audio's
    samples."""
    path = tmp_path / "long.flac"
    sf.write(path, tone(440, 8000, 40.0), 8000)
    expected = read_audio(path, 16000)[0]
    monkeypatch.setattr(audio_module.sf, "SoundFile", _CountingSoundFile)  # soundfile's own: sf.write counts too
    _CountingSoundFile.opened = _CountingSoundFile.reads = _CountingSoundFile.closes = 0
    with pytest.raises(AudioTooLong, match="audio of 40.0 s exceeds the limit of 30 s"):
        read_mono_limited(path, 16000, 30)
    assert (_CountingSoundFile.opened, _CountingSoundFile.reads, _CountingSoundFile.closes) == (1, 0, 1)
    _CountingSoundFile.opened = 0
    got = read_mono_limited(path.read_bytes(), 16000, 40)
    assert _CountingSoundFile.opened == 1
    np.testing.assert_array_equal(got, expected)
    assert read_mono_limited(path, 16000, None).shape == got.shape  # no limit


def test_read_mono_limited_without_ffmpeg_names_the_need(tmp_path):
    path = tmp_path / "x.webm"
    write_with_pyav(path, "webm", "libopus", 48000, tone(440, 48000, 0.5))
    with pytest.raises(NeedsFFmpeg):
        read_mono_limited(path.read_bytes(), 16000, 60, ffmpeg=False)
    assert read_mono_limited(path.read_bytes(), 16000, 60).shape[0] > 0  # PyAV decodes it when allowed


# ----------------------------------------------------------------------------- bad files

def _valid_wav(path, subtype="PCM_16", data=None):
    sf.write(path, tone(440, SR, 0.5) if data is None else data, SR, subtype=subtype)
    return path


def _bad(kind: str, tmp_path: Path) -> Path:
    if kind == "missing":
        return tmp_path / "missing.wav"
    if kind == "directory":
        path = tmp_path / "x.wav"
        path.mkdir()
        return path
    if kind == "empty":
        path = tmp_path / "x.wav"
        path.touch()
        return path
    if kind == "random bytes":
        path = tmp_path / "x.wav"
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
        return path
    if kind == "text as mp3":
        path = tmp_path / "x.mp3"
        path.write_text("this is not audio\n" * 100)
        return path
    if kind == "no samples":
        return _valid_wav(tmp_path / "x.wav", data=np.zeros(0, np.float32))
    if kind in ("NaN", "Inf"):
        data = tone(440, SR, 0.5)
        data[100] = np.nan if kind == "NaN" else np.inf
        return _valid_wav(tmp_path / "x.wav", "FLOAT", data)
    if kind == "Inf in stereo":  # +Inf and -Inf in one frame: their channel mean is NaN
        data = np.stack([tone(440, SR, 0.5)] * 2, axis=1)
        data[100] = [np.inf, -np.inf]
        return _valid_wav(tmp_path / "x.wav", "FLOAT", data)
    sources = {"truncated wav header": ("x.wav", 30), "truncated wav data": ("x.wav", 0.5),
               "truncated flac": ("x.flac", 0.5), "truncated ogg": ("x.ogg", 0.8)}
    name, cut = sources[kind]
    path = tmp_path / name
    sf.write(path, tone(440, SR, 1.0), SR)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if isinstance(cut, int) else data[:int(len(data) * cut)])
    return path


BAD = {  # kind -> expected words in the reason (None: any reason)
    "missing": "does not exist",
    "directory": "is a directory",
    "empty": "empty file",
    "random bytes": "not a recognised audio format",
    "text as mp3": "not a recognised audio format",
    "no samples": "no audio samples",
    "NaN": "NaN/Inf",
    "Inf": "NaN/Inf",
    "Inf in stereo": "NaN/Inf",
    "truncated wav header": None,
    "truncated wav data": "truncated: header says 16000 frames",
    "truncated flac": "truncated or corrupt",
    "truncated ogg": "truncated or corrupt",
}


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a clear error, and no numpy warnings on the way
@pytest.mark.parametrize("kind", list(BAD))
def test_bad_file_raises_audio_decode_error(tmp_path, kind):
    path = _bad(kind, tmp_path)
    with pytest.raises(AudioDecodeError) as info:
        read_audio(path, 8000)
    err = info.value
    assert err.path == str(path) and str(err) == f"{path}: {err.reason}"
    if BAD[kind]:
        assert BAD[kind] in err.reason
    with pytest.raises(AudioDecodeError):
        list(iter_blocks(path, 8000, 1000))


@pytest.mark.parametrize("kind", ["no samples", "truncated ogg", "truncated flac", "random bytes"])
def test_bad_file_without_pyav_says_what_it_may_be(tmp_path, monkeypatch, kind):
    """Without PyAV, a file libsndfile finds no frames in (an empty WAV, an Ogg missing its last page) is refused
    with a reason that names both causes and the missing decoder, not just "no audio samples"."""
    monkeypatch.setitem(sys.modules, "av", None)
    path = _bad(kind, tmp_path)
    with pytest.raises(AudioDecodeError) as info:
        read_audio(path, 8000)
    assert BAD[kind] in info.value.reason
    if kind in ("no samples", "truncated ogg"):
        assert "PyAV" in info.value.reason


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "random bytes", "text as mp3"])
def test_audio_info_bad_file(tmp_path, kind):
    with pytest.raises(AudioDecodeError, match=BAD[kind]):
        audio_info(_bad(kind, tmp_path))


def test_audio_decode_error_pickles():
    err = pickle.loads(pickle.dumps(AudioDecodeError("a.wav", "file does not exist")))
    assert (err.path, err.reason, str(err)) == ("a.wav", "file does not exist",
                                                "a.wav: file does not exist")


# ------------------------------------------------------------------------------------ audio held in memory


@pytest.mark.parametrize("kind", ["flac", "wav", "webm"])
def test_bytes_decode_like_the_file(tmp_path, kind):
    """An upload kept in memory decodes exactly as the same bytes on disk, through libsndfile or PyAV."""
    if kind == "webm":
        path = tmp_path / "x.webm"
        write_with_pyav(path, "webm", "libopus", 48000, tone(1000, 48000, 1.0))
    else:
        path = tmp_path / f"x.{kind}"
        sf.write(path, stereo(), SR)
    data = path.read_bytes()
    for source in (data, bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(read_audio(source, SR, mono=False), read_audio(path, SR, mono=False))
        assert audio_info(source) == audio_info(path)
        np.testing.assert_array_equal(np.concatenate(list(iter_blocks(source, SR, 1000)), axis=1),
                                      read_audio(path, SR))


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("channels", [1, 2, 6])  # six: WAVE_FORMAT_EXTENSIBLE
def test_wav_bytes_are_read_without_libsndfile_as_libsndfile_reads_them(monkeypatch, subtype, channels):
    """A WAV upload held in memory is parsed in place (no libsndfile open): the same float32 values libsndfile
    gives, bit for bit, across sample formats, channel counts and a length over one read block; read_mono_limited
    still refuses it past the limit."""
    x = np.random.default_rng(channels).uniform(-1, 1, (70001, channels)).astype(np.float32)
    x[0] = 1.0
    x[1] = -1.0
    buf = io.BytesIO()
    sf.write(buf, x, 11025, format="WAV", subtype=subtype)
    data = buf.getvalue()
    expected = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0].T
    monkeypatch.setattr(audio_module.sf, "SoundFile", _CountingSoundFile)
    _CountingSoundFile.opened = 0
    np.testing.assert_array_equal(read_audio(data, mono=False), expected)
    np.testing.assert_array_equal(read_audio(data), expected.mean(axis=0, keepdims=True, dtype=np.float32))
    np.testing.assert_array_equal(read_mono_limited(data, 16000, 7.0), read_audio(data, 16000)[0])
    with pytest.raises(AudioTooLong, match="exceeds the limit of 6 s"):
        read_mono_limited(data, 16000, 6.0)
    assert _CountingSoundFile.opened == 0


@pytest.mark.parametrize("kind", [k for k in BAD if k not in ("missing", "directory")])
def test_bad_bytes_raise_the_same_reason(tmp_path, kind):
    path = _bad(kind, tmp_path)
    data = path.read_bytes()
    with pytest.raises(AudioDecodeError) as from_file:
        read_audio(path, 8000)
    with pytest.raises(AudioDecodeError) as from_bytes:
        read_audio(data, 8000)
    if BAD[kind]:  # libsndfile words "format not recognised" differently for memory and files
        assert BAD[kind] in from_bytes.value.reason and BAD[kind] in from_file.value.reason
    assert from_bytes.value.path == f"<{len(data)} bytes>"  # never the bytes themselves in the message


def test_audio_that_resamples_to_nothing_is_refused(tmp_path):
    """Found by the decoder fuzz test: a header claiming ~2.1 GHz makes 100 samples resample to none at 16 kHz,
    which must be a clear AudioDecodeError, not an empty array (nor an empty stream)."""
    path = tmp_path / "huge-rate.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 100).astype(np.float32), 8000, subtype="FLOAT")
    data = bytearray(path.read_bytes())
    assert data[24:28] == (8000).to_bytes(4, "little")  # the fmt chunk's sample rate
    data[24:28] = (0x7F001F40).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert read_audio(path).shape == (1, 100)  # at its native rate it still decodes
    for decode in (lambda: read_audio(path, 16000), lambda: list(iter_blocks(path, 16000, 4000))):
        with pytest.raises(AudioDecodeError, match=r"100 samples at 2130714432 Hz resample to none at 16000 Hz") as e:
            decode()
        assert str(e.value).startswith(str(path))


def test_pyav_frame_with_bogus_planes_does_not_crash():
    """Found by the decoder fuzz test: a mutated 10-channel float WAV that libsndfile refuses and PyAV decodes into
    a frame listing 18 planes; PyAV's ``to_ndarray`` read the extra ones and segfaulted. Run in a subprocess so a
    crash fails this test instead of killing the session."""
    path = Path(__file__).parent / "data" / "fuzz-pyav-18-planes.wav"
    script = ("import sys; from audioclf.audio import read_audio\n"
              "for rate in (None, 16000):\n"
              "    for mono in (True, False):\n"
              "        print(read_audio(sys.argv[1], rate, mono=mono).shape)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:4] == ["(1, 479)", "(10, 479)", "(1, 958)", "(10, 958)"]
