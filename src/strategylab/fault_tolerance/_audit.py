"""The append-only, hash-chained audit log: every recovery, as one JSON line, provably in order.

File format (one record per line, UTF-8, ``\\n``-terminated)::

    {"data":{..},"hash":"<hex>","kind":"recovery","prev_hash":"<hex>","seq":1,"timestamp":".."}

Each line is the *canonical* JSON encoding of the record (sorted keys, ``,``/``:`` separators,
``ensure_ascii=False``, no NaN or infinity, UTF-8). ``hash`` is the hex SHA-256 of the canonical
encoding of every other field; ``prev_hash`` is the previous record's ``hash`` (64 zeros for
record 1); ``seq`` counts from 1 without gaps. So deleting, altering, inserting or reordering a
record breaks the chain at a line that :meth:`AuditLog.verify` names.

What a chain alone cannot detect, and is therefore documented rather than pretended:

- Removing records from the *end* of the log (the remaining prefix is a valid chain). Anchor
  :attr:`AuditLog.head` somewhere else (a database, a ticket, another host) and pass it to
  ``verify(expected_head=...)``.
- Someone who rewrites a record *and every record after it* (the hash is unkeyed, so anyone can
  recompute it). The same anchor detects it.

Both are closed by the two defences the log offers:

- A **keyed chain**: ``AuditLog(path, key=...)`` adds to each record a ``mac`` field, the hex
  HMAC-SHA256 (with the key) of the record's ``hash``. Without the key nobody can forge a record or
  re-hash an edited one; ``verify(path, key=...)`` checks every ``mac``, and a keyed log verified
  without its key fails (it is never reported as a plain, valid chain). :func:`load_audit_key`
  reads the key from a file (mode 0600 or narrower, as every secret:
  :func:`strategylab._secrets.read_secret_file`) or from the environment variable
  ``STRATEGYLAB_AUDIT_KEY``; either is UTF-8 text, surrounding whitespace stripped.
- **Anchors**: ``AuditLog(path, anchor=anchor_path, anchor_every=N)`` appends the head
  (``seq``, ``hash``, ``timestamp``, and a ``mac`` when keyed) to a separate append-only file every
  ``N`` records and on close, fsynced, 0600, never through a symlink; ``on_anchor`` also hands each
  anchor to the caller (the node prints it on stdout). ``verify(path, anchor=anchor_path)`` checks
  that every anchored head is in the log at its ``seq`` with the same ``hash`` and that the log is
  not shorter than the last anchor (on open too: the log refuses to reopen shorter than its
  anchor file). An insider who can shorten *both* files by the same amount is caught only by a
  copy of the anchors kept elsewhere (the node's stdout, another host): ``anchor`` also accepts a
  saved stdout (its lines ``{"event":"audit_anchor","seq":..,"hash":..}``; every other line of it
  is ignored), and several anchor sources at once. Stdout anchors carry no ``mac``: an anchor only
  adds a constraint (this record must be there, with this hash), so an unauthenticated one can
  make a verification fail, never pass.

Crash semantics: an append is one ``write`` of the whole line on an unbuffered descriptor, followed
by ``fsync`` when ``fsync=True``, and :meth:`AuditLog.append` returns only after both. A crash in
between can leave a *torn* last line (no trailing newline). That record was never acknowledged, so
opening the log truncates it away, logs a warning, and reports it in :class:`AuditVerification`
(``repaired_tear``, ``discarded_bytes``). :meth:`AuditLog.verify` on a path never repairs anything:
there a torn line is an error.

Full disk: by default an append that fails (``ENOSPC`` included) raises and leaves the log as it
was. With ``hold_when_full=N`` a record whose write fails with ``ENOSPC`` or ``EDQUOT`` is instead
*held* in memory (at most ``N`` of them), already sealed into the chain, and written, in order,
before the next record once space returns (or by :meth:`AuditLog.flush_held`). ``held`` counts
them. A held record is not durable: a crash while the disk is full loses the held records (the
file is still a valid chain, a prefix of the full one). When ``N`` records are held, appends raise
the ``OSError`` again.

Opening the log verifies the whole chain, as :meth:`AuditLog.verify` does (with the log's key,
against its anchor file), because appending to a log damaged anywhere would vouch for it. The file
is read once, streamed, in constant memory: measured 0.12-0.15 s per MB (some 50 us per record of
350-400 bytes), so 100,000 records take about 5 s at start. A line longer than ``max_line`` (default
:data:`MAX_LINE_BYTES`, 1 MiB; no record the node writes comes close) is a damaged record: it is
skipped in chunks, never held in memory whole, and named in the AuditIntegrityError; ``append``
refuses a record whose line would be longer.

This module holds the writer, :class:`AuditLog`. The record and its hashing and keying are in
:mod:`._audit_record`, reading and parsing lines in :mod:`._audit_lines`, anchors in
:mod:`._audit_anchor`, and chain verification in :mod:`._audit_verify`; the public names are
re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, Self, overload

from strategylab._durable import fsync_dir
from strategylab._files import make_private_dir, open_private
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import AuditIntegrityError

from ._audit_anchor import _check_max_line, _read_anchor_source, read_anchors
from ._audit_lines import _TAIL_CHUNK, MAX_LINE_BYTES, _fd_opener
from ._audit_record import (
    GENESIS_HASH,
    KEY_ENV,
    MAX_DEPTH,
    MIN_KEY_BYTES,
    AuditRecord,
    JSONInput,
    JSONValue,
    _anchor_mac,
    _canonical,
    _check_key,
    _normalize_data,
    _record_mac,
    load_audit_key,
)
from ._audit_verify import AuditVerification, _check_anchor, _scan, _verify_path

if TYPE_CHECKING:
    from types import TracebackType

if sys.platform != "win32":
    import fcntl

__all__ = [
    "GENESIS_HASH",
    "KEY_ENV",
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "MIN_KEY_BYTES",
    "AuditLog",
    "AuditRecord",
    "AuditVerification",
    "JSONInput",
    "JSONValue",
    "load_audit_key",
    "read_anchors",
]

_log = logging.getLogger(__name__)

_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


class _VerifyPath(Protocol):
    def __call__(
        self,
        path: str | os.PathLike[str],
        /,
        *,
        expected_head: tuple[int, str] | None = None,
        key: bytes | None = None,
        anchor: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        max_line: int = MAX_LINE_BYTES,
    ) -> AuditVerification: ...


class _VerifyOpen(Protocol):
    def __call__(self, *, expected_head: tuple[int, str] | None = None) -> AuditVerification: ...


class _Verify:
    """``AuditLog.verify(path)`` on the class; ``log.verify()`` on an open log."""

    @overload
    def __get__(self, instance: None, owner: type[AuditLog]) -> _VerifyPath: ...
    @overload
    def __get__(self, instance: AuditLog, owner: type[AuditLog]) -> _VerifyOpen: ...
    def __get__(
        self, instance: AuditLog | None, owner: type[AuditLog]
    ) -> _VerifyPath | _VerifyOpen:
        if instance is None:
            return _verify_path
        return instance._verify_open  # noqa: SLF001 - the descriptor is part of the class


class AuditLog:
    """An append-only JSONL audit log whose records are hash-chained (see the module docstring).

    One writer per file: the file is locked (``flock``) while open, so a second ``AuditLog`` on the
    same path, in this process or another, fails instead of forking the chain. ``append`` is
    thread-safe. ``verify`` is ``AuditLog.verify(path, expected_head=..., key=..., anchor=...)``
    on the class and ``log.verify()`` on an open log, which by default checks the file against the
    log's own head (and key).

    ``key`` (bytes, at least 16) makes the chain keyed; ``anchor`` (a path) receives the head every
    ``anchor_every`` records and on close, and ``on_anchor(seq, hash)`` is called with each anchor
    written. Opening verifies the whole file (see the module doc): a damaged line anywhere, a
    line longer than ``max_line`` bytes, a log shorter than its anchor file, a keyed log opened
    without its key or with the wrong one, or an unkeyed log opened with a key raises
    AuditIntegrityError naming the file and line, and nothing is appended.
    """

    verify = _Verify()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        fsync: bool = True,
        hold_when_full: int = 0,
        key: bytes | None = None,
        anchor: str | os.PathLike[str] | None = None,
        anchor_every: int = 100,
        on_anchor: Callable[[int, str], object] | None = None,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        if isinstance(hold_when_full, bool) or not isinstance(hold_when_full, int):
            raise TypeError(f"hold_when_full={hold_when_full!r}: must be an int >= 0")
        if hold_when_full < 0:
            raise ValueError(f"hold_when_full={hold_when_full!r}: must be an int >= 0")
        if isinstance(anchor_every, bool) or not isinstance(anchor_every, int) or anchor_every < 1:
            raise ValueError(f"anchor_every={anchor_every!r}: must be an int >= 1")
        self._key = _check_key(key)
        self._max_line = _check_max_line(max_line)
        self._anchor_every = anchor_every
        self._on_anchor = on_anchor
        self._anchored = 0
        self._anchor_fd: int | None = None
        self._path = Path(path)
        self._clock = clock
        self._fsync = fsync
        self._hold_limit = hold_when_full
        self._held: list[bytes] = []
        self._lock = threading.Lock()
        self._broken: str | None = None
        make_private_dir(self._path.parent)
        created = not self._path.exists()
        # Never through a planted symlink (UnsafePathError names it); created 0600.
        self._fd: int | None = open_private(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        try:
            self._lock_file()
            if created and fsync:
                # A new file's name is durable only once its directory is fsynced.
                fsync_dir(self._path.parent)
            self._discarded = self._repair_tear(self._fd, self._path, "line")
            self._size = os.fstat(self._fd).st_size
            anchors: dict[int, str] = {}
            if anchor is not None:
                # Read and written: the heads already anchored are checked against the log, and
                # a reopened log does not anchor its head a second time.
                anchor_created = not Path(anchor).exists()
                self._anchor_fd = open_private(anchor, os.O_RDWR | os.O_CREAT | os.O_APPEND)
                if anchor_created and fsync:
                    fsync_dir(Path(anchor).parent)
                self._repair_tear(self._anchor_fd, Path(anchor), "anchor")
                found: dict[int, tuple[str, str]] = {}
                _read_anchor_source(
                    _fd_opener(self._anchor_fd),
                    os.fspath(anchor),
                    key=self._key,
                    max_line=self._max_line,
                    into=found,
                )
                anchors = {seq: digest for seq, (digest, _) in found.items()}
                self._anchored = max(anchors, default=0)
            self._head = self._check_chain(anchors)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            if self._anchor_fd is not None:
                os.close(self._anchor_fd)
                self._anchor_fd = None
            raise

    @property
    def path(self) -> Path:
        """Where the log lives."""
        return self._path

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record (0 and 64 zeros when empty); anchor it elsewhere."""
        return self._head

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._fd is None

    @property
    def held(self) -> int:
        """Records sealed but held in memory because the disk was full (see the module doc)."""
        return len(self._held)

    def flush_held(self) -> int:
        """Write the held records now; returns how many are still held (the disk still full).

        Raises ``ValueError`` when the log is closed.
        """
        with self._lock:
            self._write_held(self._writable_fd())
            return len(self._held)

    def append(self, kind: str, data: Mapping[str, JSONInput]) -> AuditRecord:
        """Write one record and return it once it is written (and fsynced when ``fsync=True``).

        Data that JSON cannot represent raises TypeError (or ValueError for NaN, infinity, lone
        surrogates, cycles) naming the key, and nothing is written.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind={kind!r}: must be a non-empty str")
        normalized = _normalize_data(data)
        with self._lock:
            fd = self._writable_fd()
            seq, prev_hash = self._head
            timestamp = dt.datetime.fromtimestamp(self._clock.time(), tz=dt.UTC).isoformat(
                timespec="microseconds"
            )
            record = AuditRecord.seal(
                seq=seq + 1, timestamp=timestamp, kind=kind, data=normalized, prev_hash=prev_hash
            )
            record, line = self._keyed_line(record)
            if self._held and not self._write_held(fd):
                # Behind records still held: this one must wait its turn, in order.
                if len(self._held) >= self._hold_limit:
                    raise OSError(errno.ENOSPC, f"{os.fspath(self._path)}: disk full")
                self._held.append(line)
                self._head = (record.seq, record.hash)
                return record
            start = self._size
            try:
                _write_all(fd, line)
                if self._fsync:
                    os.fsync(fd)
            except OSError as exc:
                self._roll_back(fd, start)
                if exc.errno not in _FULL or len(self._held) >= self._hold_limit:
                    raise
                _log.warning(
                    "audit log %s: disk full; holding records in memory until space returns",
                    os.fspath(self._path),
                )
                self._held.append(line)
            except BaseException:
                self._roll_back(fd, start)
                raise
            else:
                self._size = start + len(line)
            self._head = (record.seq, record.hash)
            self._maybe_anchor(timestamp)
            return record

    def _keyed_line(self, record: AuditRecord) -> tuple[AuditRecord, bytes]:
        """``record`` with its ``mac`` when keyed, and its line, no longer than ``max_line``."""
        if self._key is not None:
            record = dataclasses.replace(record, mac=_record_mac(self._key, record.hash))
        line = record.to_line()
        if len(line) > self._max_line:
            # The log would refuse to reopen with that line in it.
            raise ValueError(
                f"data: the record would be a {len(line)}-byte line, longer than "
                f"max_line={self._max_line}; nothing was written"
            )
        return record, line

    def _maybe_anchor(self, timestamp: str) -> None:
        if not self._held and self._head[0] % self._anchor_every == 0:
            self._write_anchor(timestamp)

    def _write_anchor(self, timestamp: str) -> None:
        """Append the head to the anchor file (caller holds the lock, nothing is held)."""
        seq, digest = self._head
        if self._anchor_fd is None or seq <= self._anchored:
            return
        entry: dict[str, JSONValue] = {"seq": seq, "hash": digest, "timestamp": timestamp}
        if self._key is not None:
            entry["mac"] = _anchor_mac(self._key, seq, digest, timestamp)
        try:
            _write_all(self._anchor_fd, _canonical(entry) + b"\n")
            if self._fsync:
                os.fsync(self._anchor_fd)
        except OSError as exc:
            # The record itself is durable; a missed anchor only weakens the next verify.
            _log.error("audit log %s: could not write anchor %d: %s", self._path, seq, exc)
            return
        self._anchored = seq
        if self._on_anchor is not None:
            self._on_anchor(seq, digest)

    def _write_held(self, fd: int) -> bool:
        """Write held records in order (caller holds the lock); True once none is held."""
        while self._held:
            line = self._held[0]
            start = self._size
            try:
                _write_all(fd, line)
                if self._fsync:
                    os.fsync(fd)
            except OSError as exc:
                self._roll_back(fd, start)
                if exc.errno in _FULL:
                    return False
                raise
            self._size = start + len(line)
            del self._held[0]
        return True

    async def aappend(self, kind: str, data: Mapping[str, JSONInput]) -> AuditRecord:
        """:meth:`append` for the event loop: with ``fsync=True`` the write runs in a thread.

        Cancelling the awaiting task does not stop a write already handed to the thread; the record
        may still be appended.
        """
        if self._fsync:
            return await asyncio.to_thread(self.append, kind, data)
        return self.append(kind, data)

    @staticmethod
    def read(path: str | os.PathLike[str]) -> Iterator[AuditRecord]:
        """Yield the records of ``path`` in order, each checked as by :meth:`verify`.

        A broken line raises AuditIntegrityError when the reader reaches it; records before it
        have already been yielded.
        """
        return _scan(Path(path))

    def close(self) -> None:
        """Release the file and its lock; idempotent."""
        with self._lock:
            if self._fd is not None:
                if self._held and self._broken is None:
                    with contextlib.suppress(OSError):
                        self._write_held(self._fd)
                    if self._held:
                        _log.error(
                            "audit log %s: closed with %d record(s) held (disk full); "
                            "they are not in the file",
                            os.fspath(self._path),
                            len(self._held),
                        )
                if not self._held and self._broken is None:
                    self._write_anchor(
                        dt.datetime.fromtimestamp(self._clock.time(), tz=dt.UTC).isoformat(
                            timespec="microseconds"
                        )
                    )
                fd, self._fd = self._fd, None
                os.close(fd)
                if self._anchor_fd is not None:
                    anchor_fd, self._anchor_fd = self._anchor_fd, None
                    os.close(anchor_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"head={self._head[0]}"
        return f"AuditLog({os.fspath(self._path)!r}, {state})"

    def _verify_open(self, *, expected_head: tuple[int, str] | None = None) -> AuditVerification:
        """Check the file up to what this log has written, against ``expected_head`` or its head."""
        _check_anchor(expected_head)
        with self._lock:
            anchor = expected_head if expected_head is not None else self._head
            limit = self._size
        count, head = 0, (0, GENESIS_HASH)
        assert self._fd is not None  # noqa: S101 - _verify_open is only reached on an open log
        scan = _scan(
            self._path,
            opener=_fd_opener(self._fd),
            expected_head=anchor,
            limit=limit,
            key=self._key,
            max_line=self._max_line,
        )
        for record in scan:
            count, head = count + 1, (record.seq, record.hash)
        return AuditVerification(
            path=os.fspath(self._path),
            records=count,
            head_seq=head[0],
            head_hash=head[1],
            repaired_tear=self._discarded > 0,
            discarded_bytes=self._discarded,
            keyed=self._key is not None,
        )

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{os.fspath(self._path)}: the audit log is closed")
        if self._broken is not None:
            raise AuditIntegrityError(os.fspath(self._path), self._head[0] + 1, self._broken)
        return self._fd

    def _roll_back(self, fd: int, size: int) -> None:
        # A failed write may have left part of a line; chaining the next record after it would
        # put garbage in the middle of the log, so cut it off or stop appending.
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            self._broken = (
                f"an append failed and its partial line could not be removed ({exc}); "
                "reopen the log to repair the tail"
            )

    def _lock_file(self) -> None:
        if sys.platform == "win32":  # pragma: no cover - no flock; one writer is the caller's job
            return
        assert self._fd is not None  # noqa: S101
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BlockingIOError(
                exc.errno,
                f"{os.fspath(self._path)} is already open for append by another AuditLog",
            ) from exc

    def _repair_tear(self, fd: int, path: Path, what: str) -> int:
        """Truncate a last line that has no newline (an unacknowledged, interrupted append)."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        keep = _line_start(fd, size)
        os.ftruncate(fd, keep)
        if self._fsync:
            os.fsync(fd)
        discarded = size - keep
        _log.warning(
            "audit log %s: truncated a torn last %s (%d bytes, an append interrupted by a "
            "crash; it was never acknowledged)",
            os.fspath(path),
            what,
            discarded,
        )
        return discarded

    def _check_chain(self, anchors: Mapping[int, str]) -> tuple[int, str]:
        """The last record's (seq, hash), after verifying the whole file (once, streamed)."""
        assert self._fd is not None  # noqa: S101
        head = (0, GENESIS_HASH)
        scan = _scan(
            self._path,
            opener=_fd_opener(self._fd),
            limit=self._size,
            key=self._key,
            anchors=anchors,
            max_line=self._max_line,
        )
        try:
            for record in scan:
                head = (record.seq, record.hash)
        except AuditIntegrityError as exc:
            raise AuditIntegrityError(
                exc.path, exc.line, f"{exc.reason}; refusing to append to a damaged log"
            ) from None
        return head


def _line_start(fd: int, end: int) -> int:
    """The offset just after the last newline before ``end`` (0 if there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        index = os.pread(fd, pos - start, start).rfind(b"\n")
        if index >= 0:
            return start + index + 1
        pos = start
    return 0


def _write_all(fd: int, data: bytes) -> None:
    # One write() for a line of a few hundred bytes; the loop only matters on a short write.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
