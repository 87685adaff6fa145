"""Tar shards: pack, stream as (rank, worker) consumers, train from them."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
from torch.utils.data import DataLoader

from audioclf.data.shards import ShardSource, StreamingClipDataset, expand_urls, is_shard_source, iter_samples, pack

SR = 8000


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    data = root / "data"
    rng = np.random.default_rng(0)
    for c, freq in enumerate((300, 900, 2000)):
        (data / f"class{c}").mkdir(parents=True)
        for i in range(20):
            t = np.arange(int(SR * rng.uniform(0.3, 0.6))) / SR
            audio = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.05 * rng.standard_normal()) * t) + 0.05 * rng.standard_normal(len(t))
            sf.write(data / f"class{c}" / f"{i}.wav", audio.astype(np.float32), SR)
    out = root / "packed"
    info = pack(data, out, shard_size=12, sample_rate=SR, cache_dir=str(root / "cache"))
    return out, info


def test_pack_layout(shards):
    out, info = shards
    assert info["samples"] == 60 and [s["count"] for s in info["shards"]] == [12] * 5
    assert json.loads((out / "dataset.json").read_text())["labels"] == ["class0", "class1", "class2"]
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[:2] == ["000000000.npy", "000000000.json"]
        meta = json.loads(tar.extractfile(names[1]).read())
    assert set(meta) == {"labels", "group", "fold", "path", "sample_rate"} and meta["sample_rate"] == SR
    assert expand_urls(str(out / "shard-{000001..000003}.tar")) == [str(out / f"shard-00000{i}.tar") for i in (1, 2, 3)]
    assert len(expand_urls(out)) == 5


def test_a_pipe_source_reads_the_same_samples_as_the_files(shards):
    """Shard URLs go through webdataset: a ``pipe:`` command streams the same samples as the local files."""
    out, _ = shards
    local = [(k, sorted(parts)) for u in expand_urls(str(out / "shard-{000000..000001}.tar")) for k, parts in
             iter_samples(u)]
    piped = [(k, sorted(parts)) for u in expand_urls(f"pipe:cat {out}/shard-{{000000..000001}}.tar")
             for k, parts in iter_samples(u)]
    assert piped == local and len(local) == 24 and local[0] == ("000000000", ["json", "npy"])
    assert is_shard_source(f"pipe:cat {out}/shard-000000.tar")


def epoch_keys(urls, targets, epoch, shuffle_buffer=8):
    seen = []
    for rank in range(2):
        ds = StreamingClipDataset(urls, targets, 2000, rank=rank, world_size=2, shuffle_buffer=shuffle_buffer,
                                  seed=0, return_keys=True)
        ds.set_epoch(epoch)
        for wave, target, keys in DataLoader(ds, batch_size=4, num_workers=2):
            assert wave.shape[1] == 2000 and target.shape[1] == 3
            seen += list(keys)
    return seen


@pytest.mark.parametrize("n_shards", [5, 3])  # >= 4 consumers: split by shard; fewer: split by sample index
def test_every_key_once_per_epoch(shards, n_shards):
    out, _ = shards
    source = ShardSource(out)
    manifest = source.manifest()
    urls = source.urls[:n_shards]
    keys = [it.path for it in manifest.items][:12 * n_shards]
    targets = {k: np.eye(3, dtype=np.float32)[int(it.labels[0][-1])] for k, it in zip(keys, manifest.items)}
    first, second = epoch_keys(urls, targets, 1), epoch_keys(urls, targets, 2)
    assert sorted(first) == sorted(keys) and len(first) == len(set(first))
    assert sorted(second) == sorted(keys)
    assert first != second  # reshuffled between epochs


def test_train_from_shards(shards, tmp_path):
    from audioclf.cli import main
    import audioclf
    out, _ = shards
    run = tmp_path / "run"
    rc = main(["train", str(out / "shard-{000000..000004}.tar"), "--out", str(run), "--epochs", "3", "--model", "cnn",
               "--width", "0.25", "--batch-size", "16", "--shuffle-buffer", "16", "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    report = json.loads((run / "report.json").read_text())
    assert report["n"] == 12 and 0 <= report["accuracy"] <= 1  # a valid run (3 epochs x 2 steps: too short to judge)
    assert (run / "metrics.csv").read_text().count("\n") == 4
    clf = audioclf.load(run)
    assert clf is not None
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["sample_rate"] == SR and sum(config["split_sizes"].values()) == 60
