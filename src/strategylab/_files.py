"""Private files and directories that only ever are what they must be, and safe SQLite URIs.

Everything the node, the exchange and the trader create, append to or read back in their data
directories goes through here, so that something planted there is refused with
:class:`UnsafePathError` naming the path instead of being followed, truncated or blocked on:

- a symlink (dangling or not) at ``acks.jsonl``, ``audit.jsonl``, ``ticks.db`` (or its
  ``-wal``/``-shm``/``-journal``), a spool file or the trader's book, pointing outside;
- anything but a regular file there: a FIFO (opening one blocks until a writer or reader comes,
  so a node would hang before it could even take a signal), a socket, a device, a directory;
- a regular file with a second hard link (a link planted to a file outside, whose content an
  append or a truncation would change).

Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block the open), checked with
``fstat`` on the descriptor itself, and only then truncated (``O_TRUNC`` is applied after the
check, so a refused file is never emptied). Files are created ``0600`` and directories, missing
parents included, ``0700``, whatever the umask: an existing file or directory keeps its mode (it
may be the user's own).

Limits, documented rather than pretended: ``O_NOFOLLOW`` protects the last component of a path;
the directories above it are checked with ``lstat`` when :func:`make_private_dir` creates or
accepts them. SQLite opens its own files (and follows symlinks), so :func:`check_sqlite_files`
checks the database path and its siblings with ``lstat`` just before SQLite opens them; someone
who can write to the data directory between that check and the open can still race it.

Bottom layer: imports only the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
    "check_sqlite_files",
    "check_sqlite_readable",
    "create_private_file",
    "make_private_dir",
    "open_private",
    "read_private",
    "refuse_symlinks",
    "refuse_unsafe_dirs",
    "remove_leftover",
    "sqlite_probe_uri",
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
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UnsafePathError(OSError):
    """A data file or directory is a symlink or not what it must be; refused, never followed.

    Constructed as ``UnsafePathError(errno, message, path)``: ``str()`` is the one-line message,
    which names the path (not ``OSError``'s ``[Errno 40] message: 'path'``).
    """

    def __str__(self) -> str:
        return str(self.strerror)


def _refuse(path: str | os.PathLike[str], what: str) -> UnsafePathError:
    shown = os.fspath(path)
    return UnsafePathError(
        errno.ELOOP, f"{shown}: refusing to use {what} (a symlink is never followed)", shown
    )


def _unsafe_file(path: str | os.PathLike[str], info: os.stat_result) -> UnsafePathError | None:
    """Why ``info`` (of ``path``) is not a private regular file, or None when it is."""
    shown = os.fspath(path)
    if stat.S_ISLNK(info.st_mode):
        return _refuse(path, "a symlink")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
        return UnsafePathError(
            errno.EINVAL, f"{shown}: refusing to use {kind} (only a regular file is used)", shown
        )
    if info.st_nlink > 1:
        return UnsafePathError(
            errno.EMLINK,
            f"{shown}: refusing to use a file with {info.st_nlink} hard links "
            "(it may be planted to a file elsewhere)",
            shown,
        )
    return None


def _open_existing_or_new(path: str | os.PathLike[str], flags: int) -> tuple[int, bool]:
    """``os.open`` with ``flags``; also whether this call created the file."""
    if not flags & os.O_CREAT or flags & os.O_EXCL:
        return os.open(path, flags, FILE_MODE), bool(flags & os.O_CREAT)
    # O_EXCL first tells a file created here (made exactly 0600) from one that was there.
    for _ in range(8):
        try:
            return os.open(path, flags | os.O_EXCL, FILE_MODE), True
        except FileExistsError:
            pass
        try:
            return os.open(path, flags & ~os.O_CREAT), False
        except FileNotFoundError:
            continue  # removed in between: create it after all
    return os.open(path, flags, FILE_MODE), False


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags)`` of a private regular file, never through a symlink; new ones 0600.

    ``O_NOFOLLOW``, ``O_CLOEXEC`` and (for the open itself) ``O_NONBLOCK`` are added to ``flags``;
    ``O_TRUNC`` is applied only after the file passed its check. Returns a blocking descriptor.
    Raises :class:`UnsafePathError` naming ``path`` when it is a symlink (dangling or not), not a
    regular file (a FIFO, socket, device or directory) or a file with more than one hard link;
    with ``O_CREAT | O_EXCL``, ``FileExistsError`` when anything is at ``path``; other
    ``OSError`` as ``os.open`` does.
    """
    wanted = (flags & ~os.O_TRUNC) | _NOFOLLOW | _CLOEXEC | _NONBLOCK
    try:
        fd, created = _open_existing_or_new(path, wanted)
    except FileExistsError:
        raise
    except OSError:
        # Linux says ELOOP for a symlink under O_NOFOLLOW (FreeBSD EMLINK); a FIFO without a
        # reader says ENXIO, a directory EISDIR: name what is there rather than the errno.
        try:
            refused = _unsafe_file(path, os.lstat(path))
        except OSError:
            refused = None
        if refused is not None:
            raise refused from None
        raise
    try:
        _settle(fd, path, created=created, truncate=bool(flags & os.O_TRUNC))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _settle(fd: int, path: str | os.PathLike[str], *, created: bool, truncate: bool) -> None:
    """Check the opened file itself, then give it its mode, blocking I/O and truncation."""
    refused = _unsafe_file(path, os.fstat(fd))
    if refused is not None:
        raise refused
    if created:
        os.fchmod(fd, FILE_MODE)  # the umask narrows the mode os.open gives
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
    if truncate:
        os.ftruncate(fd, 0)


def read_private(path: str | os.PathLike[str]) -> bytes:
    """The whole content of the private regular file ``path`` (checked as :func:`open_private`).

    Raises ``FileNotFoundError`` when it is missing and :class:`UnsafePathError` when it is not a
    private regular file: a FIFO planted there is refused, never read (which would block).
    """
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def refuse_symlinks(*paths: str | os.PathLike[str]) -> None:
    """Raise :class:`UnsafePathError` naming the first of ``paths`` that is not a private file.

    Refused: a symlink, anything but a regular file (a FIFO, socket, device or directory) and a
    file with more than one hard link. Paths that do not exist are fine (they will be created,
    privately). Directories are checked by :func:`make_private_dir` instead.
    """
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        refused = _unsafe_file(path, info)
        if refused is not None:
            raise refused


def check_sqlite_files(path: str | os.PathLike[str]) -> None:
    """Refuse the database ``path`` before SQLite opens it, as :func:`refuse_symlinks` does.

    Checks the file and its ``-wal``, ``-shm`` and ``-journal`` (SQLite opens, creates and
    writes those beside it, following symlinks and blocking on a FIFO): each must be missing or a
    private regular file. Raises :class:`UnsafePathError` naming the first one that is not.
    """
    name = os.fspath(path)
    refuse_symlinks(*(name + suffix for suffix in SQLITE_SIBLINGS))


def check_sqlite_readable(path: str | os.PathLike[str]) -> None:
    """Before a read-only open of the database ``path``: it must be a regular file (a symlink
    to one is followed: the reader writes nothing to it), and its ``-wal``, ``-shm`` and
    ``-journal``, which SQLite may create or write even read-only, must be missing or private
    regular files. Raises :class:`UnsafePathError` naming the first that is not, and
    :class:`FileNotFoundError` for a missing database.
    """
    name = os.fspath(path)
    info = Path(name).stat()  # follows a symlink; raises FileNotFoundError
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(name, "something that is not a regular file")
    refuse_symlinks(*(name + suffix for suffix in SQLITE_SIBLINGS[1:]))


def refuse_unsafe_dirs(*paths: str | os.PathLike[str]) -> None:
    """Raise :class:`UnsafePathError` naming the first of ``paths`` that exists as anything but a
    real directory (a symlink included); missing paths are fine (:func:`make_private_dir`
    creates them)."""
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        _check_dir(Path(path), info)


def _check_dir(target: Path, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(target, "a symlinked directory")
    if not stat.S_ISDIR(info.st_mode):
        shown = os.fspath(target)
        raise UnsafePathError(errno.ENOTDIR, f"{shown}: exists and is not a directory", shown)


def _mkdir_private(path: Path) -> None:
    """Create the directory ``path`` with mode exactly 0700 (an existing one is accepted)."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return  # created concurrently, or there all along: checked by the caller
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    try:
        os.fchmod(fd, DIR_MODE)  # the umask narrows the mode os.mkdir gives
    finally:
        os.close(fd)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and every missing parent with mode 0700; accept an existing real directory.

    Returns ``path`` as a :class:`~pathlib.Path`. Raises :class:`UnsafePathError` when ``path``
    or a parent created here is a symlink or exists and is not a directory; other ``OSError`` when
    it cannot be created. An existing directory keeps its mode (it may be the user's own).
    """
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        _mkdir_private(directory)
        _check_dir(directory, os.lstat(directory))
    _check_dir(target, os.lstat(target))
    return target


def remove_leftover(path: str | os.PathLike[str]) -> None:
    """Remove what is left (or planted) at a temporary name this program recreates: a file,
    symlink, FIFO or socket is unlinked (a link itself, never its target); a directory is
    refused with :class:`UnsafePathError`, as anything planted in a data directory is."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "a directory")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # noqa: PTH108 - a str or PathLike, never followed


def create_private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist; never follows a symlink.

    Used before SQLite creates a database, so that it and its ``-wal``/``-shm`` (which SQLite
    creates with the database file's mode) are private. Raises :class:`UnsafePathError` for a
    symlink, a file that is not regular or one with another hard link.
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


def sqlite_probe_uri(path: str | os.PathLike[str]) -> str:
    """A read-only ``file:`` URI for a look at ``path`` that creates nothing beside it.

    ``mode=ro`` alone still creates ``-wal`` and ``-shm`` files beside a WAL-mode database that
    has none; where no ``-wal`` exists there is nothing in one to read, so the file is opened
    ``immutable=1`` (SQLite's URI parameter: no locking, no side files). Where a ``-wal`` exists
    (a writer is running, or one was killed), it is opened ``mode=ro`` to see its content.
    """
    uri = sqlite_uri(path, "ro")
    wal = os.fspath(path) + "-wal"
    return uri if os.path.lexists(wal) else uri + "&immutable=1"
