"""Pretrained run folders: :func:`pretrained` turns a catalogue name, a release file or a run folder into a run folder
(``model.safetensors`` + ``config.json``) that every command loads like a trained run.

For a catalogue name, in order: the converted copy in the cache (``CACHE/pretrained/NAME``), the copy bundled with the
package, the release file in the offline mirror folder ``$AUDIOCLF_PRETRAINED_MIRROR``, else a download of the release
URL (with a progress bar). A release file is read once, with ``torch.load(weights_only=True)`` (never a full unpickle),
checked against the catalogue's sha256, loaded strictly into its model and saved as a run folder; the download itself
is then removed. Nothing is left half-written: files go through temporaries and a run folder is renamed into place
whole.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..checkpoint import CONFIG_NAME, CheckpointError, read_config, save_run
from ..io_utils import AtomicFile, file_sha256
from .catalogue import CATALOGUE, PretrainedWeights, audioset_labels

__all__ = ["PretrainedError", "pretrained", "resolve_run", "download", "read_release", "convert_release",
           "MIRROR_ENV", "BUNDLED"]

MIRROR_ENV = "AUDIOCLF_PRETRAINED_MIRROR"
BUNDLED = Path(__file__).with_name("bundled")
LICENSE = Path(__file__).with_name("LICENSE-EfficientAT")


class PretrainedError(RuntimeError):
    """Pretrained weights that cannot be had: unknown name, no network, a wrong hash, a truncated or unsafe file."""


def cache_root(cache_dir=None) -> Path:
    from ..data.cache import default_cache_dir
    return Path(cache_dir or default_cache_dir()) / "pretrained"


def resolve_run(run, cache_dir=None) -> Path:
    """``run`` as a run folder: an existing path as it is, a catalogue name (``mn04_as``) as its pretrained run."""
    path = Path(run)
    if not path.exists() and str(run) in CATALOGUE:
        return pretrained(str(run), cache_dir)
    return path


def pretrained(source, cache_dir=None) -> Path:
    """The run folder of ``source``: a catalogue name, a release ``.pt`` file (matched to the catalogue by its
    sha256, else by its file name) or a run folder. Raises :class:`PretrainedError` naming the cause."""
    source = str(source)
    if source in CATALOGUE:
        return _named(CATALOGUE[source], cache_root(cache_dir))
    path = Path(source)
    if path.is_dir():
        try:
            read_config(path)
        except CheckpointError as e:
            raise PretrainedError(f"--pretrained {source}: {e}") from None
        return path
    if path.is_file():
        return _local_release(path, cache_root(cache_dir))
    raise PretrainedError(f"--pretrained {source}: not a catalogue name ({', '.join(CATALOGUE)}) nor an existing "
                          "release file or run folder")


def _named(entry: PretrainedWeights, root: Path) -> Path:
    target = root / entry.name
    if (target / CONFIG_NAME).is_file():
        return target
    if (BUNDLED / entry.name / CONFIG_NAME).is_file():
        return _publish_copy(BUNDLED / entry.name, target)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        release = Path(mirror) / entry.file
        if not release.is_file():
            raise PretrainedError(f"{entry.name}: no {entry.file} in the mirror folder {mirror} (${MIRROR_ENV})")
        return convert_release(release, entry, _checked_hash(release, entry), target)
    download_dir = root / "downloads"
    download_dir.mkdir(parents=True, exist_ok=True)
    release = download_dir / entry.file
    digest = download(entry.url, release, entry.sha256)
    try:
        return convert_release(release, entry, digest, target)
    finally:
        release.unlink(missing_ok=True)


def _local_release(path: Path, root: Path) -> Path:
    digest = file_sha256(path)
    entry = next((w for w in CATALOGUE.values() if w.sha256 == digest), None)
    if entry is not None:
        target = root / entry.name
    else:
        entry = next((w for w in CATALOGUE.values() if w.file == path.name), None)
        if entry is None:
            raise PretrainedError(f"--pretrained {path}: neither its sha256 ({digest[:12]}...) nor its name matches a "
                                  f"release file of the catalogue ({', '.join(w.file for w in CATALOGUE.values())})")
        _checked_hash(path, entry, digest)
        target = root / f"{entry.name}-{digest[:12]}"
    if (target / CONFIG_NAME).is_file():
        return target
    return convert_release(path, entry, digest, target)


def _checked_hash(path: Path, entry: PretrainedWeights, digest: str | None = None) -> str:
    """``path``'s sha256, refused when the catalogue pins another; an unpinned entry's hash is printed."""
    digest = digest or file_sha256(path)
    if entry.sha256 and digest != entry.sha256:
        raise PretrainedError(f"{path}: sha256 {digest} is not the catalogue's {entry.sha256} for {entry.name} "
                              "(a corrupt, truncated or different file)")
    if not entry.sha256:
        print(f"{entry.name}: the catalogue pins no sha256; {path.name} has {digest} (recorded in the run)",
              file=sys.stderr)
    return digest


def download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> str:
    """Download ``url`` into ``dest`` (atomically, with a progress bar on a terminal); returns its sha256. Refused,
    with nothing left at ``dest``, when the transfer fails, ends before its announced length, or the hash is not
    ``sha256`` (when given)."""
    from tqdm import tqdm

    hint = (f"; offline, put {dest.name} in a folder named by ${MIRROR_ENV}, or pass --pretrained PATH to the "
            "release file or a run folder")
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PretrainedError(f"cannot download {url}: {getattr(e, 'reason', e)}{hint}") from None
    total = int(response.headers.get("Content-Length") or 0)
    h, received = hashlib.sha256(), 0
    with response, AtomicFile(dest) as out, tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name,
                                                 disable=None, file=sys.stderr) as bar:
        while True:
            try:
                chunk = response.read(1 << 20)
            except OSError as e:
                raise PretrainedError(f"cannot download {url}: {e} after {received} bytes{hint}") from None
            if not chunk:
                break
            out.write(chunk)
            h.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        if total and received != total:
            raise PretrainedError(f"cannot download {url}: the transfer ended after {received} of {total} bytes{hint}")
        digest = h.hexdigest()
        if sha256 and digest != sha256:
            raise PretrainedError(f"{url}: sha256 {digest} is not the catalogue's {sha256}; nothing kept")
    return digest


def read_release(path: Path) -> dict:
    """A release file's flat state dict, read with ``torch.load(weights_only=True)``: tensors only, no code run."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedError(f"{path}: torch.load(weights_only=True) refuses it (unpickling it would run code): "
                              f"{first}") from None
    except Exception as e:  # a truncated or foreign file: zip and EOF errors of many kinds
        raise PretrainedError(f"{path}: not a readable PyTorch weights file: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise PretrainedError(f"{path}: not a flat state dict (name -> tensor), got {type(state).__name__}")
    return state


def convert_release(path: Path, entry: PretrainedWeights, sha256: str, target: Path) -> Path:
    """Load the release file strictly into ``entry.model`` and save it as the run folder ``target``."""
    from ..models import create_model

    model = create_model(entry.model, len(audioset_labels()), frontend=entry.frontend)
    try:
        model.load_state_dict(read_release(path), strict=True)
    except RuntimeError as e:
        raise PretrainedError(f"{path}: does not load strictly into {entry.model}: "
                              f"{str(e).splitlines()[0]} {' '.join(str(e).split()[-12:])}") from None
    tmp = _temporary(target)
    try:
        save_run(tmp, model.eval(), entry.run_config(sha256))
        shutil.copyfile(LICENSE, tmp / LICENSE.name)
        return _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temporary(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def _publish_copy(source: Path, target: Path) -> Path:
    tmp = _temporary(target)
    try:
        shutil.copytree(source, tmp)
        return _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> Path:
    """Rename the finished folder ``tmp`` to ``target``; when another process got there first, keep its copy."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / CONFIG_NAME).is_file():
            raise
    return target
