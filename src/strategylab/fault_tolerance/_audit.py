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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import errno
import functools
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, Self, TypeAlias, overload

from strategylab._durable import fsync_dir
from strategylab._files import make_private_dir, open_private
from strategylab._secrets import AUDIT_KEY, read_secret_file, secret_from
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import AuditIntegrityError, ConfigurationError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from types import TracebackType

    from _typeshed import WriteableBuffer

if sys.platform != "win32":
    import fcntl

__all__ = [
    "GENESIS_HASH",
    "MAX_LINE_BYTES",
    "AuditLog",
    "AuditRecord",
    "AuditVerification",
    "JSONInput",
    "JSONValue",
    "load_audit_key",
    "read_anchors",
]

_log = logging.getLogger(__name__)

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
"""A JSON value as read back from the log."""
JSONInput: TypeAlias = (
    "bool | int | float | str | Sequence[JSONInput] | Mapping[str, JSONInput] | None"
)
"""What :meth:`AuditLog.append` accepts; tuples become lists."""

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of record 1."""

_FIELDS: Final = frozenset({"seq", "timestamp", "kind", "data", "prev_hash", "hash"})
_KEYED_FIELDS: Final = _FIELDS | {"mac"}
_ANCHOR_FIELDS: Final = frozenset({"seq", "hash", "timestamp"})
_STDOUT_ANCHOR: Final = "audit_anchor"
_STDOUT_FIELDS: Final = frozenset({"event", "seq", "hash"})
_ANCHOR_LINE: Final = 1024
KEY_ENV: Final = AUDIT_KEY.env
"""The environment variable :func:`load_audit_key` reads when no key file is given."""
MIN_KEY_BYTES: Final = 16
"""The shortest key accepted, in bytes."""
_MAC_DOMAIN: Final = b"strategylab-audit-record-v1:"
_ANCHOR_DOMAIN: Final = b"strategylab-audit-anchor-v1:"
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK: Final = 64 * 1024
MAX_LINE_BYTES: Final = 1024 * 1024
"""The longest line (newline included) the log appends or reads by default, in bytes."""
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
MAX_DEPTH: Final = 200
"""How deeply ``data`` may nest lists and objects; deeper data is refused on append and a deeper
line is a damaged record on read (a hostile line nested 100,000 deep must not crash the reader)."""
_LINE_DEPTH: Final = MAX_DEPTH + 2  # the record object and its "data" object around the data
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET: Final = re.compile(rb"[\[\]{}]")


class _HashMismatchError(ValueError):
    """A record's ``hash`` is not the digest of its contents."""


class _LineError(Exception):
    """One line of the log is bad; the caller knows which line and raises AuditIntegrityError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _canonical(obj: Mapping[str, JSONValue]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _digest(
    *, seq: int, timestamp: str, kind: str, data: Mapping[str, JSONValue], prev_hash: str
) -> str:
    body: dict[str, JSONValue] = {
        "seq": seq,
        "timestamp": timestamp,
        "kind": kind,
        "data": dict(data),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(_canonical(body)).hexdigest()


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _record_mac(key: bytes, digest: str) -> str:
    return _mac(key, _MAC_DOMAIN + digest.encode("ascii"))


def _anchor_mac(key: bytes, seq: int, digest: str, timestamp: str) -> str:
    return _mac(key, _ANCHOR_DOMAIN + f"{seq}:{digest}:{timestamp}".encode())


def load_audit_key(
    key_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    option: str = AUDIT_KEY.file_flag,
) -> bytes | None:
    """The audit key: the text of ``key_file``, else the value of ``STRATEGYLAB_AUDIT_KEY``, else
    ``None`` (an unkeyed chain); UTF-8, surrounding whitespace stripped.

    The file is read as every secret is (:func:`strategylab._secrets.read_secret_file`): a regular
    file, mode 0600 or narrower, at most 64 KiB. Raises :class:`ConfigurationError` (a
    ``ValueError``) naming ``option`` (the command's flag) and the path, or the variable, never the
    key, when the file is refused or the key is shorter than 16 bytes.
    """
    if key_file is not None:
        text: str | None = read_secret_file(Path(key_file), option=option)
    else:
        text = secret_from(None, AUDIT_KEY, environ=environ)
    if text is None:
        return None
    key = text.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        name, shown = (KEY_ENV, "<hidden>") if key_file is None else (option, os.fspath(key_file))
        raise ConfigurationError(
            name, shown, f"the audit key must be at least {MIN_KEY_BYTES} bytes"
        )
    return key


def _check_key(key: object) -> bytes | None:
    if key is None:
        return None
    if not isinstance(key, bytes):
        raise TypeError(f"key: must be bytes or None, not {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key: must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def _check_text(text: str, where: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: string is not valid Unicode (lone surrogate)") from None


def _normalize(value: object, where: str, seen: set[int], depth: int = 0) -> JSONValue:  # noqa: C901 - one branch per JSON type
    """A plain-JSON deep copy of ``value``; an error names the offending key path."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum becomes the int that JSON stores
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}={value!r}: JSON has no NaN or infinity")
        return float(value)
    if isinstance(value, str):
        _check_text(value, where)
        return str.__str__(value)  # a str-based enum becomes its plain value
    if isinstance(value, Mapping | list | tuple):
        if id(value) in seen:
            raise ValueError(f"{where}: circular reference")
        if depth >= MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                out: dict[str, JSONValue] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise TypeError(
                            f"{where}[{key!r}]: keys must be str, not {type(key).__name__}"
                        )
                    _check_text(key, f"{where}[{key!r}]")
                    out[str.__str__(key)] = _normalize(item, f"{where}[{key!r}]", seen, depth + 1)
                return out
            return [
                _normalize(item, f"{where}[{i}]", seen, depth + 1) for i, item in enumerate(value)
            ]
        finally:
            seen.discard(id(value))
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-serialisable")


def _normalize_data(data: object) -> dict[str, JSONValue]:
    if not isinstance(data, Mapping):
        raise TypeError(f"data: must be a JSON object (a Mapping), not {type(data).__name__}")
    normalized = _normalize(data, "data", set())
    assert isinstance(normalized, dict)  # noqa: S101 - a Mapping normalises to a dict
    return normalized


def _check_hash_field(name: str, value: object) -> None:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{name}={value!r}: must be 64 lowercase hex digits (a sha256)")


def _check_seq(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be an int >= {minimum}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One entry of the audit log; construction checks that ``hash`` matches the contents.

    ``timestamp`` is kept as the aware-UTC ISO-8601 *string* that was hashed (the log writes
    ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``), so a record read back hashes to exactly what was written;
    :attr:`at` parses it. Build new records with :meth:`seal`, which computes the hash.
    """

    seq: int
    timestamp: str
    kind: str
    data: Mapping[str, JSONValue]
    prev_hash: str
    hash: str
    mac: str | None = None
    """Hex HMAC-SHA256 of ``hash`` with the log's key; ``None`` in an unkeyed log."""

    def __post_init__(self) -> None:
        _check_seq("seq", self.seq, 1)
        if not isinstance(self.timestamp, str):
            raise TypeError(f"timestamp={self.timestamp!r}: must be an ISO-8601 string")
        try:
            at = dt.datetime.fromisoformat(self.timestamp)
        except ValueError:
            raise ValueError(f"timestamp={self.timestamp!r}: not ISO-8601") from None
        if at.tzinfo is None or at.utcoffset() != dt.timedelta(0):
            raise ValueError(f"timestamp={self.timestamp!r}: must be timezone-aware UTC")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"kind={self.kind!r}: must be a non-empty str")
        _check_text(self.kind, "kind")
        # A deep copy: the caller's dict must not change a frozen, hashed record behind its back.
        object.__setattr__(self, "data", _normalize_data(self.data))
        _check_hash_field("prev_hash", self.prev_hash)
        _check_hash_field("hash", self.hash)
        if self.mac is not None:
            _check_hash_field("mac", self.mac)
        if (self.seq == 1) != (self.prev_hash == GENESIS_HASH):
            raise ValueError(
                f"prev_hash={self.prev_hash!r}: record 1, and only record 1, has the genesis hash"
            )
        expected = _digest(
            seq=self.seq,
            timestamp=self.timestamp,
            kind=self.kind,
            data=self.data,
            prev_hash=self.prev_hash,
        )
        if self.hash != expected:
            raise _HashMismatchError(
                f"hash={self.hash!r}: does not match the record's contents ({expected})"
            )

    @classmethod
    def seal(
        cls,
        *,
        seq: int,
        timestamp: str,
        kind: str,
        data: Mapping[str, JSONInput],
        prev_hash: str,
    ) -> Self:
        """A record with its ``hash`` computed over the other fields."""
        normalized = _normalize_data(data)
        digest = _digest(
            seq=seq, timestamp=timestamp, kind=kind, data=normalized, prev_hash=prev_hash
        )
        return cls(
            seq=seq,
            timestamp=timestamp,
            kind=kind,
            data=normalized,
            prev_hash=prev_hash,
            hash=digest,
        )

    @property
    def at(self) -> dt.datetime:
        """:attr:`timestamp` as an aware UTC datetime."""
        return dt.datetime.fromisoformat(self.timestamp)

    def to_dict(self) -> dict[str, JSONValue]:
        """All fields as a JSON-ready dictionary (a deep copy); ``mac`` only when keyed."""
        out: dict[str, JSONValue] = {
            "seq": self.seq,
            "timestamp": self.timestamp,
            "kind": self.kind,
            "data": _normalize_data(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }
        if self.mac is not None:
            out["mac"] = self.mac
        return out

    def to_line(self) -> bytes:
        """The record exactly as the log stores it: canonical JSON, UTF-8, newline-terminated."""
        return _canonical(self.to_dict()) + b"\n"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditVerification:
    """The result of a successful :meth:`AuditLog.verify`."""

    path: str
    records: int
    head_seq: int
    """``seq`` of the last record; 0 for an empty log."""
    head_hash: str
    """``hash`` of the last record; :data:`GENESIS_HASH` for an empty log."""
    repaired_tear: bool = False
    """Opening the log truncated a torn (never acknowledged) last line."""
    discarded_bytes: int = 0
    """How many bytes that repair removed."""
    keyed: bool = False
    """Every record's HMAC was checked with the key."""
    anchors: int = 0
    """How many anchored heads were checked against the log."""

    def __post_init__(self) -> None:
        _check_seq("records", self.records, 0)
        _check_seq("anchors", self.anchors, 0)
        _check_seq("head_seq", self.head_seq, 0)
        _check_hash_field("head_hash", self.head_hash)
        _check_seq("discarded_bytes", self.discarded_bytes, 0)
        if self.repaired_tear != (self.discarded_bytes > 0):
            raise ValueError(
                f"repaired_tear={self.repaired_tear!r}: must be true exactly when bytes were "
                f"discarded (discarded_bytes={self.discarded_bytes})"
            )

    @property
    def head(self) -> tuple[int, str]:
        """``(head_seq, head_hash)``, the anchor to pass as ``expected_head`` later."""
        return (self.head_seq, self.head_hash)


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


def _find_seq(
    opener: _Opener, seq: int, *, after_line: int, limit: int | None, max_line: int
) -> int | None:
    """The line number, after ``after_line``, of a line that claims ``seq``; for diagnostics."""
    with opener() as file:
        for number, raw in enumerate(_lines(file, limit, max_line), start=1):
            if number <= after_line or raw is None or _too_deep(raw):
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and obj.get("seq") == seq:
                return number
    return None


def _seq_reason(
    opener: _Opener, line: int, seq: int, prev: int, *, limit: int | None, max_line: int
) -> str:
    expected = prev + 1
    if seq == prev:
        return (
            f"record {seq} appears twice (lines {line - 1} and {line}): "
            "a record was inserted or duplicated"
        )
    if seq < prev:
        return f"records out of order: record {seq} follows record {prev}"
    where = _find_seq(opener, expected, after_line=line, limit=limit, max_line=max_line)
    if where is not None:
        return f"records out of order: record {expected} is at line {where}, after record {seq}"
    if expected == 1:
        return f"record 1 is missing: the log starts at record {seq}"
    if seq == expected + 1:
        return f"record {expected} is missing: seq jumps from {prev} to {seq}"
    return f"records {expected}..{seq - 1} are missing: seq jumps from {prev} to {seq}"


def _check_mac(record: AuditRecord, key: bytes | None) -> str | None:
    """Why ``record``'s keying is wrong for ``key`` (``None`` when it is right)."""
    if key is None:
        if record.mac is not None:
            return (
                f"record {record.seq} is keyed (HMAC-SHA256): this log can only be verified "
                "with its key"
            )
        return None
    if record.mac is None:
        return (
            f"record {record.seq} has no HMAC: it was not written with the key "
            "(forged with a recomputed hash, or the log is unkeyed)"
        )
    if not hmac.compare_digest(record.mac, _record_mac(key, record.hash)):
        return (
            f"record {record.seq} HMAC does not match: the wrong key, or the record was "
            "forged or altered"
        )
    return None


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


def _scan(
    path: Path,
    *,
    opener: _Opener | None = None,
    expected_head: tuple[int, str] | None = None,
    limit: int | None = None,
    key: bytes | None = None,
    anchors: Mapping[int, str] | None = None,
    max_line: int = MAX_LINE_BYTES,
) -> Iterator[AuditRecord]:
    """Yield each record once it has been checked against its line and its predecessor.

    ``opener`` reads the log (default: ``path``, which then only names it in errors).
    """
    shown = os.fspath(path)
    read: _Opener = opener if opener is not None else lambda: _open_path(path)
    prev_seq, prev_hash = 0, GENESIS_HASH
    anchored = dict(anchors or {})
    if expected_head is not None and expected_head[0] > 0:
        anchored[expected_head[0]] = expected_head[1]
    anchor_seq = max(anchored, default=0)
    with read() as file:
        for line, raw in enumerate(_lines(file, limit, max_line), start=1):
            try:
                record = _line_record(raw, line, max_line)
            except _LineError as exc:
                raise AuditIntegrityError(shown, line, exc.reason) from None
            if record.seq != prev_seq + 1:
                reason = _seq_reason(
                    read, line, record.seq, prev_seq, limit=limit, max_line=max_line
                )
                raise AuditIntegrityError(shown, line, reason)
            if record.prev_hash != prev_hash:
                raise AuditIntegrityError(
                    shown,
                    line,
                    f"record {record.seq} does not chain onto record {prev_seq}: prev_hash "
                    f"mismatch (record {prev_seq} was altered and re-hashed, or replaced)",
                )
            if (mac_problem := _check_mac(record, key)) is not None:
                raise AuditIntegrityError(shown, line, mac_problem)
            if record.seq in anchored and record.hash != anchored[record.seq]:
                raise AuditIntegrityError(
                    shown,
                    line,
                    f"record {record.seq} does not match the anchored head hash: "
                    "the log was rewritten at or before this record",
                )
            yield record
            prev_seq, prev_hash = record.seq, record.hash
    if prev_seq < anchor_seq:
        raise AuditIntegrityError(
            shown,
            prev_seq + 1,
            f"the log was truncated: it ends at record {prev_seq} but record {anchor_seq} was "
            f"anchored (records {prev_seq + 1}..{anchor_seq} were removed)",
        )


def _check_anchor(expected_head: tuple[int, str] | None) -> None:
    if expected_head is None:
        return
    if not isinstance(expected_head, tuple) or len(expected_head) != 2:
        raise TypeError(f"expected_head={expected_head!r}: must be a (seq, hash) tuple")
    seq, digest = expected_head
    _check_seq("expected_head[0]", seq, 0)
    _check_hash_field("expected_head[1]", digest)
    if (seq == 0) != (digest == GENESIS_HASH):
        raise ValueError(f"expected_head={expected_head!r}: seq 0 goes with the genesis hash only")


def _check_max_line(max_line: object) -> int:
    if isinstance(max_line, bool) or not isinstance(max_line, int) or max_line < _ANCHOR_LINE:
        raise ValueError(f"max_line={max_line!r}: must be an int >= {_ANCHOR_LINE} (bytes)")
    return max_line


def _load_object(raw: bytes) -> dict[str, JSONValue]:
    """One line as a JSON object; raises _LineError (never RecursionError)."""
    if _too_deep(raw):
        raise _LineError("the anchor line nests too deeply to be an anchor")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _LineError(f"the anchor line is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _LineError("the anchor line is not an object with seq, hash, timestamp (and mac)")
    return obj


def _anchor_head(obj: Mapping[str, JSONValue]) -> tuple[int, str]:
    seq, digest = obj["seq"], obj["hash"]
    try:
        _check_seq("seq", seq, 1)
        _check_hash_field("hash", digest)
    except ValueError as exc:
        raise _LineError(f"the anchor is malformed: {exc}") from None
    assert isinstance(seq, int)  # noqa: S101 - checked just above
    assert isinstance(digest, str)  # noqa: S101
    return seq, digest


def _file_anchor(obj: Mapping[str, JSONValue], key: bytes | None) -> tuple[int, str]:
    """An anchor-file entry's (seq, hash), its HMAC checked when ``key`` is given."""
    if set(obj) not in (_ANCHOR_FIELDS, _ANCHOR_FIELDS | {"mac"}):
        raise _LineError("the anchor line is not an object with seq, hash, timestamp (and mac)")
    seq, digest = _anchor_head(obj)
    timestamp = obj["timestamp"]
    if not isinstance(timestamp, str):
        raise _LineError(f"the anchor is malformed: timestamp={timestamp!r}: must be a string")
    mac = obj.get("mac")
    if key is not None:
        if not isinstance(mac, str) or not hmac.compare_digest(
            mac, _anchor_mac(key, seq, digest, timestamp)
        ):
            raise _LineError(
                f"the anchor of record {seq} has no valid HMAC: the wrong key, or it was forged"
            )
    elif mac is not None:
        raise _LineError("the anchors are keyed (HMAC-SHA256): verify them with the key")
    return seq, digest


def _stdout_anchor(obj: Mapping[str, JSONValue], key: bytes | None) -> tuple[int, str]:
    """A saved ``{"event":"audit_anchor",...}`` stdout line's (seq, hash)."""
    fields = {name: value for name, value in obj.items() if name != "event"}
    if set(fields) == {"seq", "hash"}:
        return _anchor_head(fields)  # unauthenticated: it can only add a constraint
    if set(fields) in (_ANCHOR_FIELDS, _ANCHOR_FIELDS | {"mac"}):
        return _file_anchor(fields, key)
    raise _LineError(
        f'the "{_STDOUT_ANCHOR}" line is not an object with event, seq, hash (and timestamp, mac)'
    )


def _anchor_line(
    raw: bytes | None, key: bytes | None, *, stdout: bool
) -> tuple[tuple[int, str] | None, bool]:
    """One line of an anchor source: its ``(seq, hash)`` or ``None`` (a line to skip), and whether
    the source has shown itself to be a saved stdout (any line with an ``"event"``).

    In an anchor file every line must be an anchor; in a saved stdout only ``audit_anchor`` events
    and anchor-file lines count, everything else (status lines, stray text) is skipped.
    """
    if raw is None or not raw.endswith(b"\n") or (not stdout and len(raw) > _ANCHOR_LINE):
        if stdout:
            return None, stdout
        if raw is None or len(raw) > _ANCHOR_LINE:
            raise _LineError("the anchor line is too long to be an anchor")
        raise _LineError("the anchor line is torn (no trailing newline)")
    try:
        obj = _load_object(raw)
    except _LineError:
        if stdout:
            return None, stdout
        raise
    if "event" in obj:
        if obj["event"] != _STDOUT_ANCHOR:
            return None, True
        return _stdout_anchor(obj, key), True
    if len(raw) > _ANCHOR_LINE:
        raise _LineError("the anchor line is too long to be an anchor")
    return _file_anchor(obj, key), stdout


def _read_anchor_source(
    opener: _Opener,
    shown: str,
    *,
    key: bytes | None,
    max_line: int,
    into: dict[int, tuple[str, str]],
) -> None:
    """Add the anchors of one source to ``into`` (``{seq: (hash, "file:line")}``)."""
    stdout, last = False, 0
    with opener() as file:
        for line, raw in enumerate(_lines(file, None, max_line), start=1):
            try:
                head, stdout = _anchor_line(raw, key, stdout=stdout)
            except _LineError as exc:
                raise AuditIntegrityError(shown, line, exc.reason) from None
            if head is None:
                continue
            seq, digest = head
            known = into.get(seq)
            # A saved stdout may repeat a head (a node restarted on a lost anchor file re-anchors
            # it); an anchor file never does.
            repeat = stdout and seq == last and known is not None and known[0] == digest
            if seq <= last and not repeat:
                raise AuditIntegrityError(
                    shown, line, f"anchors out of order: record {seq} is anchored after {last}"
                )
            if known is not None and known[0] != digest:
                raise AuditIntegrityError(
                    shown,
                    line,
                    f"the anchor of record {seq} disagrees with the one at {known[1]}: the "
                    "sources anchor different logs, or one of them was forged",
                )
            into.setdefault(seq, (digest, f"{shown}:{line}"))
            last = seq


def _anchor_paths(
    anchor: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[str | os.PathLike[str]]:
    if isinstance(anchor, str | os.PathLike):
        return [anchor]
    return list(anchor)


def read_anchors(
    anchor: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    key: bytes | None = None,
    max_line: int = MAX_LINE_BYTES,
) -> dict[int, str]:
    """The anchored heads in ``anchor`` (one source or several), ``{seq: hash}``, checked line by
    line.

    A source is an anchor file or a saved stdout of the node or the trader (its
    ``{"event":"audit_anchor",...}`` lines; other lines are skipped). Raises AuditIntegrityError
    naming the source and line when a line is damaged, forged (a bad HMAC when ``key`` is given),
    out of order (``seq`` must increase) or contradicts another source; ``OSError`` when a source
    cannot be read.
    """
    key = _check_key(key)
    max_line = _check_max_line(max_line)
    found: dict[int, tuple[str, str]] = {}
    for source in _anchor_paths(anchor):
        path = Path(source)
        _read_anchor_source(
            functools.partial(_open_path, path),
            os.fspath(source),
            key=key,
            max_line=max_line,
            into=found,
        )
    return {seq: digest for seq, (digest, _) in sorted(found.items())}


def _verify_path(
    path: str | os.PathLike[str],
    *,
    expected_head: tuple[int, str] | None = None,
    key: bytes | None = None,
    anchor: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_line: int = MAX_LINE_BYTES,
) -> AuditVerification:
    """Check the whole chain in ``path``; raise AuditIntegrityError at the first broken line."""
    _check_anchor(expected_head)
    key = _check_key(key)
    max_line = _check_max_line(max_line)
    anchors = read_anchors(anchor, key=key, max_line=max_line) if anchor is not None else {}
    count, head = 0, (0, GENESIS_HASH)
    scan = _scan(
        Path(path), expected_head=expected_head, key=key, anchors=anchors, max_line=max_line
    )
    for record in scan:
        count, head = count + 1, (record.seq, record.hash)
    return AuditVerification(
        path=os.fspath(path),
        records=count,
        head_seq=head[0],
        head_hash=head[1],
        keyed=key is not None,
        anchors=len(anchors),
    )


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
