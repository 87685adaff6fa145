"""Crash-safe file writes: a reader sees either the old file or the new one, never a torn one.

Every writer goes through :func:`write_atomic`: write a temporary file in the target's folder, flush and
fsync it, ``os.replace`` it over the target, then fsync the folder so the rename itself is durable.
On any failure the temporary file is removed and the target is left untouched. ``OSError``\\ s are
re-raised (same class, same errno) with a message that names the target path and, for the usual
causes (disk full, read-only file system, permission denied), says so plainly.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from pathlib import Path

__all__ = ["AtomicFile", "file_sha256", "write_atomic", "write_json_atomic", "write_text_atomic"]

_HINTS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# Folders on some file systems cannot be fsynced; the rename has happened, so this is not an error.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR}


def _open_tmp(target: Path) -> tuple[int, Path]:
    """Create a fresh, exclusive temporary file next to ``target``; mode 0o666 minus the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"cannot create a temporary file next to {target}")


def _fsync_dir(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: folders cannot be opened for fsync
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        if e.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _explain(e: OSError, path: Path) -> OSError:
    """The same kind of error (class and errno), with a message naming ``path``."""
    reason = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno)
    if hint and hint.lower() not in reason.lower():
        reason = f"{reason} ({hint})"
    try:
        new = type(e)(e.errno, f"cannot write {path}: {reason}")
    except Exception:  # an exotic subclass with another constructor
        new = OSError(e.errno, f"cannot write {path}: {reason}")
    new.filename = str(path)
    return new


class AtomicFile:
    """A file written in pieces that replaces ``path`` atomically and durably on :meth:`commit` (see the module
    docstring); until then it is a temporary file next to ``path``, removed by :meth:`discard`. Used as a context
    manager, it commits when the block ends normally and discards on an exception. ``OSError`` s name ``path``."""

    def __init__(self, path):
        self.target = Path(path)
        self._tmp = self._file = None
        try:
            fd, self._tmp = _open_tmp(self.target)
            try:
                self._file = os.fdopen(fd, "wb")
            except BaseException:
                os.close(fd)
                raise
        except BaseException as e:
            self._fail(e)

    def write(self, data) -> None:
        """Append ``data`` (bytes or any buffer)."""
        try:
            self._file.write(data)
        except BaseException as e:
            self._fail(e)

    def commit(self) -> None:
        """Flush, fsync, rename over ``path``, fsync the folder."""
        try:
            with self._file:
                self._file.flush()
                os.fsync(self._file.fileno())
            os.replace(self._tmp, self.target)
            self._tmp = None
            _fsync_dir(self.target.parent)
        except BaseException as e:
            self._fail(e)

    def discard(self) -> None:
        """Remove the temporary file; ``path`` is left as it was."""
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None

    def _fail(self, e: BaseException):
        self.discard()
        if isinstance(e, OSError):
            raise _explain(e, self.target) from e
        raise e

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_atomic(path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    with AtomicFile(path) as f:
        f.write(data)


def write_text_atomic(path, text: str) -> None:
    """:func:`write_atomic` for text, encoded as UTF-8."""
    write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    """:func:`write_atomic` for ``obj`` as indented JSON (key order kept) plus a final newline."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
