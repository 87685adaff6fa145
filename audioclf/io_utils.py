"""Crash-safe file writes: a reader sees either the old file or the new one, never a torn one.

Every writer goes through :func:`write_atomic`: write a temporary file in the target's folder, flush and
fsync it, ``os.replace`` it over the target, then fsync the folder so the rename itself is durable.
On any failure the temporary file is removed and the target is left untouched. ``OSError``\\ s are
re-raised (same class, same errno) with a message that names the target path and, for the usual
causes (disk full, read-only file system, permission denied), says so plainly.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path

__all__ = ["write_atomic", "write_json_atomic", "write_text_atomic"]

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


def write_atomic(path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    target = Path(path)
    folder = target.parent
    tmp = None
    try:
        fd, tmp = _open_tmp(target)
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
        _fsync_dir(folder)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise _explain(e, target) from e
        raise


def write_text_atomic(path, text: str) -> None:
    """:func:`write_atomic` for text, encoded as UTF-8."""
    write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    """:func:`write_atomic` for ``obj`` as indented JSON (key order kept) plus a final newline."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
