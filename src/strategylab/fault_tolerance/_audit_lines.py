"""Reading the audit log's lines: in constant memory, one line at a time, each parsed and checked
on its own (its place in the chain is :mod:`._audit_verify`'s business).

A line longer than ``max_line`` is never held whole: it is skipped in chunks and reported as
``None``. A line is refused before it is parsed when it nests deeper than a record may, so that a
hostile line cannot exhaust the parser's recursion.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

from ._audit_record import (
    _FIELDS,
    _KEYED_FIELDS,
    MAX_DEPTH,
    AuditRecord,
    JSONValue,
    _canonical,
    _HashMismatchError,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from _typeshed import WriteableBuffer

__all__ = ["MAX_LINE_BYTES"]

_TAIL_CHUNK: Final = 64 * 1024
MAX_LINE_BYTES: Final = 1024 * 1024
"""The longest line (newline included) the log appends or reads by default, in bytes."""
_LINE_DEPTH: Final = MAX_DEPTH + 2  # the record object and its "data" object around the data
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET: Final = re.compile(rb"[\[\]{}]")


class _LineError(Exception):
    """One line of the log is bad; the caller knows which line and raises AuditIntegrityError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> JSONValue:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _too_deep(raw: bytes) -> bool:
    """Whether ``raw`` nests lists/objects deeper than a record may (brackets in strings aside)."""
    if raw.count(b"[") + raw.count(b"{") <= _LINE_DEPTH:
        return False  # the common case: too few brackets to be too deep
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", raw)):
        if match.group() in {b"[", b"{"}:
            depth += 1
            if depth > _LINE_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _parse_line(raw: bytes) -> AuditRecord:
    """Check one newline-terminated line on its own (not its place in the chain)."""
    if _too_deep(raw):
        raise _LineError(f"line nests lists/objects deeper than {_LINE_DEPTH} levels")
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _LineError(f"line is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:  # a backstop: _too_deep should have refused the line already
        raise _LineError("line nests lists/objects too deeply to parse") from None
    if not isinstance(obj, dict):
        raise _LineError(f"line is a JSON {type(obj).__name__}, not a record object")
    keys = set(obj)
    if keys not in (_FIELDS, _KEYED_FIELDS):
        missing = ", ".join(sorted(_FIELDS - keys)) or "none"
        extra = ", ".join(sorted(keys - _KEYED_FIELDS)) or "none"
        raise _LineError(f"record has the wrong fields (missing: {missing}; unexpected: {extra})")
    seq = obj["seq"]
    label = f"record {seq}" if isinstance(seq, int) and not isinstance(seq, bool) else "record"
    try:
        record = AuditRecord(**obj)
    except _HashMismatchError:
        raise _LineError(f"{label} was altered: hash mismatch") from None
    except (TypeError, ValueError) as exc:
        raise _LineError(f"{label} is malformed: {exc}") from None
    # ``obj`` holds exactly the record's plain-JSON values once the record is built, so its
    # encoding is the record's line (one encoding fewer per line than ``to_line``; a
    # ``"mac":null`` that ``to_line`` would drop is caught separately).
    if ("mac" in obj and record.mac is None) or _canonical(obj) + b"\n" != raw:
        # Same values, different bytes (e.g. 1E+16 for 1e+16): still an edit of the file.
        raise _LineError(f"{label} was altered: the line is not in canonical encoding")
    return record


class _Readable(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


_Opener: TypeAlias = "Callable[[], AbstractContextManager[_Readable]]"


class _PreadRaw(io.RawIOBase):
    """A descriptor read from offset 0 with ``pread``: its own position, the descriptor's offset
    and its open state untouched (the log's descriptor stays the writer's)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = os.pread(self._fd, len(view), self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _fd_opener(fd: int) -> _Opener:
    return lambda: io.BufferedReader(_PreadRaw(fd), buffer_size=_TAIL_CHUNK)


def _open_path(path: Path) -> io.BufferedReader:
    """``path`` opened for reading; a FIFO, device or directory there is refused, not read."""
    # O_NONBLOCK: opening a FIFO must not hang the reader; it is refused below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
    return io.BufferedReader(io.FileIO(fd, "rb"), buffer_size=_TAIL_CHUNK)


def _lines(file: _Readable, limit: int | None, max_line: int) -> Iterator[bytes | None]:
    """The lines of ``file`` up to byte ``limit``; a line longer than ``max_line`` bytes (its
    newline included) is consumed in chunks, never held whole, and yielded as ``None``."""
    offset = 0
    while limit is None or offset < limit:
        raw = file.readline(max_line + 1 if limit is None else min(max_line + 1, limit - offset))
        if not raw:
            return
        offset += len(raw)
        if len(raw) <= max_line:
            yield raw
            continue
        while not raw.endswith(b"\n") and (limit is None or offset < limit):
            raw = file.readline(_TAIL_CHUNK if limit is None else min(_TAIL_CHUNK, limit - offset))
            if not raw:
                break
            offset += len(raw)
        yield None


def _line_record(raw: bytes | None, line: int, max_line: int) -> AuditRecord:
    """The record of line number ``line`` on its own; raises _LineError."""
    if raw is None:
        raise _LineError(
            f"line {line} is longer than {max_line} bytes, the limit of a record line "
            "(a damaged or hostile line; not read into memory)"
        )
    if not raw.endswith(b"\n"):
        raise _LineError(
            f"line {line} is torn (no trailing newline): an append was interrupted; "
            "opening the log for append truncates it"
        )
    return _parse_line(raw)
