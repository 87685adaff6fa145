"""Decode once: mono audio at one sample rate, stored on disk as packs (one float32 file + a JSON index).

A file is keyed by its absolute path, size and modification time, so a changed file is decoded again
and an unchanged one never is. New decodes go into a new pack; every run reads all packs of its
sample rate through memory maps. A pack whose data fails its integrity check is ignored and rebuilt.
"""
from __future__ import annotations

import itertools
import json
import os
import uuid
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..audio import AudioDecodeError
from ..isolated_decoding import DecoderPool
from ..io_utils import AtomicFile, write_json_atomic

FORMAT = 1
PACK_BYTES = 256 << 20  # decoded audio per pack (a new pack after that); memory holds a few clips, not a pack
ISOLATED_DECODE_SECONDS = 300.0  # a file only FFmpeg reads whose decoding takes longer is skipped (a hang)


def default_cache_dir() -> Path:
    """``$AUDIOCLF_CACHE``, else ``$XDG_CACHE_HOME/audioclf``, else ``~/.cache/audioclf``."""
    if os.environ.get("AUDIOCLF_CACHE"):
        return Path(os.environ["AUDIOCLF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audioclf"


def file_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def _map(data_file: Path, samples: int) -> np.ndarray:
    """A pack's samples as a read-only memory map (an empty file cannot be mapped)."""
    return np.memmap(data_file, dtype=np.float32, mode="r") if samples else np.zeros(0, np.float32)


class AudioCache:
    """Decoded mono float32 clips at ``sample_rate`` under ``root/<sample_rate>hz/``."""

    def __init__(self, root: Path | str | None, sample_rate: int):
        self.dir = Path(root or default_cache_dir()) / f"{sample_rate}hz"
        self.sample_rate = sample_rate
        self._index: dict[str, tuple[Path, int, int]] = {}  # key -> (data file, offset, length)
        self._maps: dict[Path, np.ndarray] = {}
        self._crc: dict[Path, int] = {}  # data files whose crc32 is not checked yet -> the crc32 their index states
        self.rejected_packs: list[str] = []

    def _read_packs(self) -> None:
        """Index every pack whose JSON index is readable and whose data file has the stated size; the crc32 of a
        pack's data is checked when a load first needs it (:meth:`_verify`), so a load reads only the packs it uses."""
        self._index.clear()
        for index_file in sorted(self.dir.glob("pack-*.json")):
            data_file = index_file.with_suffix(".f32")
            try:
                meta = json.loads(index_file.read_text())
                known = data_file in self._maps  # packs never change once written: keep the map
                data = self._maps[data_file] if known else _map(data_file, meta["samples"])
                ok = (meta["format"] == FORMAT and meta["sample_rate"] == self.sample_rate
                      and len(data) == meta["samples"])
                entries = {key: (data_file, int(off), int(length)) for key, (off, length) in meta["entries"].items()}
                crc = int(meta["crc32"])
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                self._reject(data_file)
                continue
            if not known:
                self._crc[data_file] = crc
                self._maps[data_file] = data
            self._index.update(entries)

    def _verify(self, data_file: Path) -> None:
        """Check a pack's data against its index's crc32 once; a damaged pack is deleted and its clips unindexed."""
        crc = self._crc.pop(data_file, None)
        if crc is None or zlib.crc32(memoryview(self._maps[data_file]).cast("B")) == crc:
            return
        del self._maps[data_file]
        self._index = {key: entry for key, entry in self._index.items() if entry[0] != data_file}
        self._reject(data_file)

    def _reject(self, data_file: Path) -> None:
        index_file = data_file.with_suffix(".json")
        self.rejected_packs.append(str(index_file))
        for f in (index_file, data_file):
            f.unlink(missing_ok=True)

    def load(self, paths: Iterable[str], progress: Callable[[int, int], None] | None = None,
             workers: int | None = None) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        """Decoded clips for ``paths`` as ``{path: float32 (samples,)}`` views, and ``[(path, reason)]`` for bad files.

        Files not yet cached are decoded in parallel and streamed into new packs (:meth:`_decode_into_packs`).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._read_packs()
        keys, bad = {}, []
        for path in dict.fromkeys(paths):
            try:
                keys[path] = file_key(path)
            except OSError as e:
                bad.append((path, f"cannot read: {e.strerror}"))
        for data_file in sorted({self._index[key][0] for key in keys.values() if key in self._index}):
            self._verify(data_file)
        todo = [(path, key) for path, key in keys.items() if key not in self._index]
        if todo:
            self._decode_into_packs(todo, bad, progress, workers)
        return {path: self._view(key) for path, key in keys.items() if key in self._index}, bad

    def _view(self, key: str) -> np.ndarray:
        data_file, offset, length = self._index[key]
        return self._maps[data_file][offset:offset + length]

    def _decode_into_packs(self, todo, bad, progress, workers) -> None:
        """Decode ``todo`` (``[(path, key)]``) and stream the audio into new packs of about ``PACK_BYTES`` each, so
        memory holds a few clips rather than the data set, and an interrupted decode keeps the packs it finished."""
        pack = None
        try:
            for (path, key), audio in self._decode(todo, bad, progress, workers):
                pack = pack or _PackWriter(self.dir, self.sample_rate)
                pack.add(key, audio)
                if pack.nbytes >= PACK_BYTES:
                    self._commit(pack)
                    pack = None
            if pack is not None:
                self._commit(pack)
                pack = None
        finally:
            if pack is not None:
                pack.discard()

    def _commit(self, pack: "_PackWriter") -> None:
        data_file, entries = pack.commit()
        self._maps[data_file] = _map(data_file, pack.samples)
        for key, (offset, length) in entries.items():
            self._index[key] = (data_file, offset, length)

    def _decode(self, todo, bad, progress, workers):
        """Yield ``((path, key), audio)`` in ``todo``'s order, decoding in ``workers`` threads with at most
        ``2 * workers`` files in flight. Files libsndfile does not read go to PyAV in decoder processes
        (:mod:`audioclf.isolated_decoding`), so a crash or hang in FFmpeg skips that file instead of ending the run."""
        workers = workers or os.cpu_count() or 1
        with DecoderPool(workers=workers, timeout=ISOLATED_DECODE_SECONDS) as decoders, \
                ThreadPoolExecutor(workers) as pool:
            def one(job):
                try:
                    return decoders.read_mono(job[0], self.sample_rate)
                except AudioDecodeError as e:
                    return e
            jobs = iter(todo)
            pending = deque((job, pool.submit(one, job)) for job in itertools.islice(jobs, 2 * workers))
            try:
                for n in range(1, len(todo) + 1):
                    job, future = pending.popleft()
                    result = future.result()
                    following = next(jobs, None)
                    if following is not None:
                        pending.append((following, pool.submit(one, following)))
                    if isinstance(result, AudioDecodeError):
                        bad.append((job[0], result.reason))
                    else:
                        yield job, result
                    if progress:
                        progress(n, len(todo))
            finally:
                for _, future in pending:
                    future.cancel()


class _PackWriter:
    """One new pack: float32 samples appended to a temporary data file, the crc32 computed on the way; on
    :meth:`commit` the data file is renamed into place, then its JSON index is written (the pack exists from then)."""

    def __init__(self, folder: Path, sample_rate: int):
        name = f"pack-{uuid.uuid4().hex[:12]}"
        self.data_file, self.index_file = folder / f"{name}.f32", folder / f"{name}.json"
        self.sample_rate = sample_rate
        self.entries: dict[str, tuple[int, int]] = {}
        self.samples, self.crc = 0, 0
        self._file = AtomicFile(self.data_file)

    @property
    def nbytes(self) -> int:
        return 4 * self.samples

    def add(self, key: str, audio: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(audio, dtype=np.float32)).cast("B")
        self._file.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.entries[key] = (self.samples, len(audio))
        self.samples += len(audio)

    def commit(self) -> tuple[Path, dict[str, tuple[int, int]]]:
        self._file.commit()
        try:
            write_json_atomic(self.index_file, {"format": FORMAT, "sample_rate": self.sample_rate,
                                                "samples": self.samples, "crc32": self.crc, "entries": self.entries})
        except BaseException:
            self.data_file.unlink(missing_ok=True)  # no index: not a pack
            raise
        return self.data_file, self.entries

    def discard(self) -> None:
        self._file.discard()
