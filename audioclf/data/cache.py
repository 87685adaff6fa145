"""Decode once: mono audio at one sample rate, stored on disk as packs (one float32 file + a JSON index).

A file is keyed by its absolute path, size and modification time, so a changed file is decoded again
and an unchanged one never is. New decodes go into a new pack; every run reads all packs of its
sample rate through memory maps. A pack whose data fails its integrity check is ignored and rebuilt.
"""
from __future__ import annotations

import json
import os
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..audio import AudioDecodeError
from ..isolated_decoding import DecoderPool
from ..io_utils import write_atomic, write_json_atomic

FORMAT = 1
ISOLATED_DECODE_SECONDS = 300.0  # a file only FFmpeg reads whose decoding takes longer is skipped (a hang)


def default_cache_dir() -> Path:
    """``$AUDIOCLF_CACHE``, else ``$XDG_CACHE_HOME/audioclf``, else ``~/.cache/audioclf``."""
    if os.environ.get("AUDIOCLF_CACHE"):
        return Path(os.environ["AUDIOCLF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audioclf"


def file_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


class AudioCache:
    """Decoded mono float32 clips at ``sample_rate`` under ``root/<sample_rate>hz/``."""

    def __init__(self, root: Path | str | None, sample_rate: int):
        self.dir = Path(root or default_cache_dir()) / f"{sample_rate}hz"
        self.sample_rate = sample_rate
        self._index: dict[str, tuple[Path, int, int]] = {}  # key -> (data file, offset, length)
        self._maps: dict[Path, np.ndarray] = {}
        self.rejected_packs: list[str] = []

    def _read_packs(self) -> None:
        self._index.clear()
        for index_file in sorted(self.dir.glob("pack-*.json")):
            data_file = index_file.with_suffix(".f32")
            try:
                meta = json.loads(index_file.read_text())
                data = np.memmap(data_file, dtype=np.float32, mode="r") if meta["samples"] else np.zeros(0, np.float32)
                ok = (meta["format"] == FORMAT and meta["sample_rate"] == self.sample_rate and len(data) == meta["samples"]
                      and zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B")) == meta["crc32"])
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                self.rejected_packs.append(str(index_file))
                for f in (index_file, data_file):
                    f.unlink(missing_ok=True)
                continue
            self._maps[data_file] = data
            for key, (offset, length) in meta["entries"].items():
                self._index[key] = (data_file, offset, length)

    def load(self, paths: Iterable[str], progress: Callable[[int, int], None] | None = None,
             workers: int | None = None) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        """Decoded clips for ``paths`` as ``{path: float32 (samples,)}`` views, and ``[(path, reason)]`` for bad files.

        Files not yet cached are decoded in parallel and appended as one new pack.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._read_packs()
        clips, bad, todo = {}, [], []
        for path in dict.fromkeys(paths):
            try:
                key = file_key(path)
            except OSError as e:
                bad.append((path, f"cannot read: {e.strerror}"))
                continue
            if key in self._index:
                clips[path] = self._view(key)
            else:
                todo.append((path, key))
        if todo:
            decoded = self._decode(todo, bad, progress, workers)
            if decoded:
                self._write_pack(decoded)
                for (path, key), _ in decoded:
                    clips[path] = self._view(key)
        return clips, bad

    def _view(self, key: str) -> np.ndarray:
        data_file, offset, length = self._index[key]
        return self._maps[data_file][offset:offset + length]

    def _decode(self, todo, bad, progress, workers) -> list[tuple[tuple[str, str], np.ndarray]]:
        """Decode in ``workers`` threads; files libsndfile does not read go to PyAV in decoder processes
        (:mod:`audioclf.isolated_decoding`), so a crash or hang in FFmpeg skips that file instead of ending the run."""
        workers = workers or os.cpu_count() or 1
        decoded = []
        with DecoderPool(workers=workers, timeout=ISOLATED_DECODE_SECONDS) as decoders, \
                ThreadPoolExecutor(workers) as pool:
            def one(job):
                try:
                    return decoders.read_mono(job[0], self.sample_rate)
                except AudioDecodeError as e:
                    return e
            for n, (job, result) in enumerate(zip(todo, pool.map(one, todo)), start=1):
                if isinstance(result, AudioDecodeError):
                    bad.append((job[0], result.reason))
                else:
                    decoded.append((job, result))
                if progress:
                    progress(n, len(todo))
        return decoded

    def _write_pack(self, decoded) -> None:
        name = f"pack-{uuid.uuid4().hex[:12]}"
        data_file, index_file = self.dir / f"{name}.f32", self.dir / f"{name}.json"
        data = np.concatenate([audio for _, audio in decoded]).astype(np.float32, copy=False)
        entries, offset = {}, 0
        for (_, key), audio in decoded:
            entries[key] = (offset, len(audio))
            offset += len(audio)
        write_atomic(data_file, data.tobytes())
        write_json_atomic(index_file, {"format": FORMAT, "sample_rate": self.sample_rate, "samples": int(len(data)),
                                       "crc32": zlib.crc32(data.tobytes()), "entries": entries})
        self._maps[data_file] = np.memmap(data_file, dtype=np.float32, mode="r") if len(data) else data
        for key, (off, length) in entries.items():
            self._index[key] = (data_file, off, length)
