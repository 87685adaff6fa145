"""Tar shards in the WebDataset layout, for data sets that do not fit in memory (or live on another machine).

``audioclf pack DATA --out SHARDS/`` decodes and resamples every clip once and writes ``SHARDS/shard-000000.tar``,
``shard-000001.tar``, ... Each sample is two consecutive tar members with the same key: ``<key>.npy`` (float32
mono at the pack's sample rate) and ``<key>.json`` (``{"labels", "group", "fold", "path", "sample_rate"}``).
``SHARDS/dataset.json`` holds the labels, sample rate and the sample count of each shard.

Training from shards (``audioclf train SHARDS/`` or ``SHARDS/shard-{000000..000003}.tar`` or an ``http(s)://`` URL):

* a first, metadata-only pass reads every ``.json`` member: it gives a :class:`Manifest` whose item paths are the
  sample keys, so the usual split rules apply (``--test-fold`` on the packed fold, else a stratified hold-out;
  validation carved from train);
* validation and test clips are read into memory;
* the training clips are streamed by :class:`StreamingClipDataset`, never all in memory.
"""
from __future__ import annotations

import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..settings import CACHE_HELP, PATTERN_HELP, check_fields, option
from .clips import fit_length
from .manifest import Item, Manifest, ManifestError

FORMAT = "audioclf-shards/1"


# ---------------------------------------------------------------- writing

@dataclass
class PackConfig:
    """``audioclf pack`` / :func:`pack` settings."""

    shard_size: int = option(1000, "clips per shard", min=1)
    sample_rate: int = option(16000, "sample rate of the decoded audio in Hz", min=1000, max=384000)
    pattern: str | None = option(None, PATTERN_HELP)
    cache_dir: str | None = option(None, CACHE_HELP)
    overwrite: bool = option(False, "replace the shards already in --out")


def pack(data, out, **settings) -> dict:
    """Decode every clip of ``data`` (any :func:`load_manifest` source) at ``sample_rate`` into tar shards under ``out``
    (new or empty; shards packed before are replaced with ``overwrite``). ``settings``: :class:`PackConfig` fields."""
    cfg = PackConfig(**settings)
    check_fields(cfg)
    shard_size, sample_rate, pattern, cache_dir, overwrite = (cfg.shard_size, cfg.sample_rate, cfg.pattern,
                                                              cfg.cache_dir, cfg.overwrite)
    from ..run_folder import claimed
    from .cache import AudioCache
    from .manifest import load_manifest
    manifest = load_manifest(data, pattern)
    with claimed(out, overwrite=overwrite) as out:
        clips, bad = AudioCache(cache_dir, sample_rate).load([it.path for it in manifest.items])
        items = [it for it in manifest.items if it.path in clips]
        shards, durations = [], []
        for s, start in enumerate(range(0, len(items), shard_size)):
            name = f"shard-{s:06d}.tar"
            chunk = items[start:start + shard_size]
            with tarfile.open(out / (name + ".tmp"), "w") as tar:
                for n, item in enumerate(chunk, start=start):
                    key = f"{n:09d}"
                    audio = np.ascontiguousarray(clips[item.path], dtype=np.float32)
                    durations.append(len(audio) / sample_rate)
                    buf = io.BytesIO()
                    np.save(buf, audio, allow_pickle=False)
                    meta = {"labels": list(item.labels), "group": item.group, "fold": item.fold, "path": item.path,
                            "sample_rate": sample_rate}
                    _add(tar, f"{key}.npy", buf.getvalue())
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
            (out / (name + ".tmp")).replace(out / name)
            shards.append({"name": name, "count": len(chunk)})
        info = {"format": FORMAT, "labels": manifest.labels, "sample_rate": sample_rate, "samples": len(items),
                "shards": shards, "skipped": len(manifest.skipped) + len(bad),
                "duration_p50": float(np.median(durations)) if durations else 0.0,
                "duration_p90": float(np.percentile(durations, 90)) if durations else 0.0}
        (out / "dataset.json").write_text(json.dumps(info, indent=2))
        return info


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    tar.addfile(member, io.BytesIO(payload))


# ---------------------------------------------------------------- reading

def is_shard_source(data) -> bool:
    text = str(data)
    if text.startswith(REMOTE) or ".tar" in text:
        return True
    return Path(text).is_dir() and (Path(text) / "dataset.json").is_file()


REMOTE = ("http://", "https://", "pipe:", "s3://", "gs://")  # read through urllib or webdataset's gopen


def expand_urls(spec) -> list[str]:
    """A folder (its ``*.tar``, sorted), or shard URLs as webdataset expands them: brace patterns
    (``shard-{000000..000009}.tar``), ``::``-separated lists, ``pipe:`` commands, URLs, single files."""
    from webdataset.shardlists import expand_urls as expand

    spec = str(spec)
    if not spec.startswith(REMOTE) and Path(spec).is_dir():
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
        if not urls:
            raise ManifestError(f"{spec}: no .tar shards")
        return urls
    return list(expand(spec))


def open_url(url: str):
    """A binary stream of a shard: a local file, http(s) through urllib (no external tool), anything else
    (``pipe:CMD``, ``s3://`` and the other schemes webdataset knows) through webdataset's ``gopen``."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url)  # noqa: S310 - the user's own data URL
    if url.startswith(REMOTE) or "://" in url:
        from webdataset import gopen
        return gopen(url, "rb")
    return open(url, "rb")


def iter_samples(url: str, want: tuple[str, ...] = ("npy", "json")) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of one shard, read sequentially by webdataset's tar iterator;
    members whose extension is not in ``want`` are skipped unread."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    wanted = lambda name: name.rpartition("/")[2].partition(".")[2] in want  # noqa: E731
    with open_url(url) as f:
        files = ({**member, "__url__": url} for member in tar_file_iterator(f, select_files=wanted))
        for sample in group_by_keys(files):
            key = sample.pop("__key__").rpartition("/")[2]
            yield key, {ext: data for ext, data in sample.items() if not ext.startswith("__")}


def _dataset_info(spec, urls: list[str]) -> dict:
    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        candidates = [urls[0].rsplit("/", 1)[0] + "/dataset.json"]
    else:
        candidates = [str(Path(spec) / "dataset.json")] if Path(spec).is_dir() else []
        candidates.append(str(Path(urls[0]).parent / "dataset.json"))
    for c in candidates:
        try:
            with open_url(c) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            continue
    return {}


class ShardSource:
    """The shards of one data set: their metadata as a :class:`Manifest`, in-memory clips by key, a training stream."""

    def __init__(self, spec):
        self.spec, self.urls = str(spec), expand_urls(spec)
        self.info = _dataset_info(spec, self.urls)
        self._meta: dict[str, dict] = {}

    def manifest(self) -> Manifest:
        """Metadata-only pass over every shard: one :class:`Item` per sample, ``path`` = the sample key."""
        items = []
        for url in self.urls:
            for key, parts in iter_samples(url, want=("json",)):
                if "json" not in parts:
                    continue
                meta = json.loads(parts["json"])
                self._meta[key] = meta
                items.append(Item(key, tuple(meta["labels"]), meta.get("group"), meta.get("fold")))
        if not items:
            raise ManifestError(f"{self.spec}: no samples in {len(self.urls)} shard(s)")
        root = Path(self.urls[0]).parent if not self.urls[0].startswith("http") else Path(".")
        return Manifest(items, root, [], "shards")

    @property
    def sample_rate(self) -> int | None:
        if self.info.get("sample_rate"):
            return int(self.info["sample_rate"])
        return next((int(m["sample_rate"]) for m in self._meta.values()), None)

    @property
    def clip_seconds(self) -> float | None:
        p90 = self.info.get("duration_p90")
        return float(min(10.0, max(0.5, np.ceil(p90 * 4 - 1e-6) / 4))) if p90 else None

    def load(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The clips of ``keys``, read into memory (one sequential pass over the shards)."""
        wanted, clips = set(keys), {}
        if not wanted:
            return clips
        for url in self.urls:
            for key, parts in iter_samples(url, want=("npy",)):
                if key in wanted and "npy" in parts:
                    clips[key] = np.load(io.BytesIO(parts["npy"]), allow_pickle=False)
        return clips

    def training_loader(self, keys: list[str], targets: np.ndarray, clip_samples: int, batch_size: int,
                        rank: int, world_size: int, workers: int, shuffle_buffer: int, seed: int):
        """``(dataset, sampler, loader)`` for the trainer: every rank runs ``len(train) // global batch`` steps an epoch
        (equal on all ranks, as DDP needs). ``sampler`` is a no-op stand-in for the map-style path's sampler."""
        rank_batch = max(1, batch_size // world_size)
        steps = max(1, len(keys) // (rank_batch * world_size))
        dataset = StreamingClipDataset(self.urls, dict(zip(keys, targets)), clip_samples, rank=rank,
                                       world_size=world_size, shuffle_buffer=shuffle_buffer, seed=seed,
                                       samples_per_rank=steps * rank_batch, batch_size=rank_batch)
        loader = DataLoader(dataset, batch_size=rank_batch, num_workers=workers)
        return dataset, _NoSampler(), loader


class _NoSampler:
    def set_epoch(self, epoch: int, start: int = 0) -> None:
        pass


class StreamingClipDataset(IterableDataset):
    """``(waveform (clip_samples,), target)`` streamed from tar shards, shuffled within a buffer.

    Consumers are the (rank, DataLoader worker) pairs. With at least as many shards as consumers, each consumer reads
    its own shards (assigned round-robin after a per-epoch shuffle of the shard list); with fewer, every consumer reads
    all shards and keeps the samples whose running index (over the wanted samples) is its id modulo the consumer
    count. Either way, one pass yields every wanted sample exactly once over all consumers.

    ``targets``: ``{key: target vector}``, the samples to use (others are skipped). ``samples_per_rank``: when set,
    each rank yields exactly that many (its consumers' streams cycle or stop early), in whole ``batch_size`` batches
    per worker, so all ranks run the same number of steps.
    """

    def __init__(self, urls: list[str], targets: dict[str, np.ndarray], clip_samples: int, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 1000, seed: int = 0, train: bool = True,
                 samples_per_rank: int | None = None, batch_size: int = 1, return_keys: bool = False):
        self.return_keys = return_keys
        self.urls, self.targets, self.clip_samples = list(urls), targets, clip_samples
        self.rank, self.world_size, self.shuffle_buffer, self.seed, self.train = rank, world_size, shuffle_buffer, seed, train
        self.samples_per_rank, self.batch_size, self.epoch = samples_per_rank, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.samples_per_rank is not None:
            return self.samples_per_rank
        return -(-len(self.targets) // self.world_size)  # an estimate: about this rank's share

    def _consumer(self) -> tuple[int, int, int, int]:
        worker = get_worker_info()
        wid, n_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        return self.rank * n_workers + wid, self.world_size * n_workers, wid, n_workers

    def _one_pass(self, consumer: int, consumers: int, round_: int) -> Iterator[tuple[str, np.ndarray]]:
        order = np.random.default_rng((self.seed, self.epoch, round_)).permutation(len(self.urls)) if self.train \
            else np.arange(len(self.urls))
        urls = [self.urls[i] for i in order]
        by_shard = len(urls) >= consumers
        mine = urls[consumer::consumers] if by_shard else urls
        index = 0
        for url in mine:
            for key, parts in iter_samples(url, want=("npy",)):
                if key not in self.targets or "npy" not in parts:
                    continue
                if by_shard or index % consumers == consumer:
                    yield key, np.load(io.BytesIO(parts["npy"]), allow_pickle=False)
                index += 1

    def _shuffled(self, stream, rng: np.random.Generator):
        if not self.train or self.shuffle_buffer <= 1:
            yield from stream
            return
        buffer = []
        for sample in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            j = rng.integers(len(buffer))
            yield buffer[j]
            buffer[j] = sample
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        consumer, consumers, wid, n_workers = self._consumer()
        rng = np.random.default_rng((self.seed, self.epoch, consumer, 1))
        quota = None
        if self.samples_per_rank is not None:
            steps = self.samples_per_rank // self.batch_size
            quota = (steps // n_workers + (wid < steps % n_workers)) * self.batch_size
        done, round_ = 0, 0
        while quota is None or done < quota:
            yielded = 0
            for key, audio in self._shuffled(self._one_pass(consumer, consumers, round_), rng):
                if quota is not None and done >= quota:
                    return
                crop = fit_length(audio, self.clip_samples, rng if self.train else None)
                sample = torch.from_numpy(crop), torch.from_numpy(np.asarray(self.targets[key], dtype=np.float32))
                yield (*sample, key) if self.return_keys else sample
                done, yielded = done + 1, yielded + 1
            if quota is None:
                return
            if yielded == 0:
                raise RuntimeError(f"shard stream for consumer {consumer}/{consumers} is empty: use fewer "
                                   f"workers/processes or more, smaller shards")
            round_ += 1

    def keys(self) -> Iterator[str]:
        """The keys this consumer yields in one pass, in order (for tests and inspection; no audio decoded)."""
        consumer, consumers, _, _ = self._consumer()
        rng = np.random.default_rng((self.seed, self.epoch, consumer, 1))
        for key, _ in self._shuffled(self._one_pass(consumer, consumers, 0), rng):
            yield key
