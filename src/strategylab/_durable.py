"""Durable file writes: one place for ``fsync`` of a directory and for atomic replacement.

A file's content is durable once the file is fsynced; a *new name* (a created or renamed file) is
durable only once its directory is fsynced as well (POSIX ``fsync(2)``; the pattern of SQLite's
and PostgreSQL's own writers). :func:`write_atomic` is the temporary-file, fsync, ``rename(2)``,
fsync-directory sequence: after a crash at any point the path holds either the old bytes or the
new ones, never a mixture.

Bottom layer: imports only the standard library and :mod:`strategylab._files`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from strategylab._files import open_private

__all__ = ["fsync_dir", "fsync_file", "write_atomic"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync ``directory`` so that the names created, renamed or removed in it survive a crash.

    Raises ``OSError`` as ``os.open``/``os.fsync`` do (``FileNotFoundError`` when it is missing).
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync the regular file at ``path`` (what any descriptor wrote to it becomes durable); a
    missing file is nothing to do; a symlink there is refused (``OSError`` ELOOP), never followed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` atomically and durably.

    The bytes go to a temporary file beside ``path`` (``.NAME.PID.tmp``, created exclusively,
    mode 0600, never through a symlink: whatever was left or planted at that name is removed
    first, a link itself and never its target), which is fsynced, renamed over ``path``, and the
    directory fsynced. On any failure the temporary file is removed and ``path`` is untouched.
    The directory must exist. Raises ``OSError`` (``UnsafePathError`` for a planted link).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
