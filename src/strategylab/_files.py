"""Private files and directories that never follow a planted symlink, and safe SQLite URIs.

Everything the node creates or appends to in its data directory goes through here, so that a
symlink planted at ``acks.jsonl``, ``audit.jsonl``, ``ticks.db`` (or its ``-wal``/``-shm``) or a
spool file, pointing outside the directory, is refused with :class:`UnsafePathError` naming the
path instead of truncating, appending to or writing into its target. Files are created ``0600``,
directories ``0700`` (both further narrowed by the umask, never widened).

Limits, documented rather than pretended: ``O_NOFOLLOW`` protects the last component of a path;
the directories above it are checked with ``lstat`` when :func:`make_private_dir` creates or
accepts them. SQLite opens its own files (and follows symlinks), so :func:`refuse_symlinks` checks
the database path and its siblings just before SQLite opens them; someone who can write to the
data directory between that check and the open can still race it.

Bottom layer: imports only the standard library.
"""

from __future__ import annotations

import errno
import os
import stat
import urllib.parse
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "SQLITE_SIBLINGS",
    "UnsafePathError",
    "create_private_file",
    "make_private_dir",
    "open_private",
    "refuse_symlinks",
    "sqlite_uri",
]

FILE_MODE: Final = 0o600
"""Mode of every file the node creates."""
DIR_MODE: Final = 0o700
"""Mode of every directory the node creates."""
SQLITE_SIBLINGS: Final = ("", "-wal", "-shm", "-journal")
"""Suffixes of the files SQLite opens for a database path."""

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


class UnsafePathError(OSError):
    """A data file or directory is a symlink (or not what it must be); refused, never followed.

    Constructed as ``UnsafePathError(errno.ELOOP, message, path)``: ``str()`` is the one-line
    message, which names the path.
    """


def _refuse(path: str | os.PathLike[str], what: str) -> UnsafePathError:
    shown = os.fspath(path)
    return UnsafePathError(
        errno.ELOOP, f"{shown}: refusing to use {what} (a symlink is never followed)", shown
    )


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags)`` that never follows a symlink at ``path``; new files are 0600.

    ``O_NOFOLLOW`` and ``O_CLOEXEC`` are added to ``flags``. Returns the descriptor. Raises
    :class:`UnsafePathError` when ``path`` is a symlink (dangling or not), other ``OSError`` as
    ``os.open`` does.
    """
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, FILE_MODE)
    except OSError as exc:
        # Linux says ELOOP for a symlink under O_NOFOLLOW; FreeBSD says EMLINK.
        if exc.errno in {errno.ELOOP, errno.EMLINK} and Path(path).is_symlink():
            raise _refuse(path, "a symlink") from None
        raise


def refuse_symlinks(*paths: str | os.PathLike[str]) -> None:
    """Raise :class:`UnsafePathError` naming the first of ``paths`` that is a symlink.

    Paths that do not exist are fine (they will be created, privately).
    """
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise _refuse(path, "a symlink")


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; accept an existing real directory.

    Returns ``path`` as a :class:`~pathlib.Path`. Raises :class:`UnsafePathError` when ``path``
    is a symlink or exists and is not a directory; other ``OSError`` when it cannot be created.
    An existing directory keeps its mode (it may be the user's own).
    """
    target = Path(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        target.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        info = os.lstat(target)
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(target, "a symlinked directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(
            errno.ENOTDIR, f"{os.fspath(target)}: exists and is not a directory", os.fspath(target)
        )
    return target


def create_private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist; never follows a symlink.

    Used before SQLite creates a database, so that it and its ``-wal``/``-shm`` (which SQLite
    creates with the database file's mode) are private. Raises :class:`UnsafePathError` for a
    symlink.
    """
    os.close(open_private(path, os.O_RDWR | os.O_CREAT))


def sqlite_uri(path: str | os.PathLike[str], mode: Literal["ro", "rw", "rwc"]) -> str:
    """An SQLite ``file:`` URI that names exactly ``path`` (for ``sqlite3.connect(uri=True)``).

    The absolute path is percent-quoted, so ``#``, ``?`` and ``%`` in a file name are part of the
    name, not a fragment, a query or an escape: ``dir/real.db#`` and ``dir/%41.db`` open exactly
    those files. ``mode`` is SQLite's ``mode=`` (``ro``, ``rw`` or ``rwc``); anything else raises
    ``ValueError``.
    """
    if mode not in {"ro", "rw", "rwc"}:
        raise ValueError(f"mode={mode!r}: must be 'ro', 'rw' or 'rwc'")
    absolute = os.path.abspath(os.fspath(path))  # noqa: PTH100 - a string, not a Path, is quoted
    return f"file://{urllib.parse.quote(absolute, safe='/')}?mode={mode}"
