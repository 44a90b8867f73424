"""An audit record: its canonical JSON form, its SHA-256 hash and HMAC, and the audit key.

A record's line is the canonical JSON encoding of its fields (sorted keys, ``,``/``:`` separators,
``ensure_ascii=False``, no NaN or infinity, UTF-8). ``hash`` is the hex SHA-256 of the canonical
encoding of every other field; ``mac``, in a keyed log, is the hex HMAC-SHA256 of ``hash`` under a
domain prefix. The file format, and what the chain does and does not prove, are described in
:mod:`._audit`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Self, TypeAlias

from strategylab._secrets import AUDIT_KEY, read_secret_file, secret_from
from strategylab.errors import ConfigurationError

__all__ = [
    "GENESIS_HASH",
    "KEY_ENV",
    "MAX_DEPTH",
    "MIN_KEY_BYTES",
    "AuditRecord",
    "JSONInput",
    "JSONValue",
    "load_audit_key",
]

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
KEY_ENV: Final = AUDIT_KEY.env
"""The environment variable :func:`load_audit_key` reads when no key file is given."""
MIN_KEY_BYTES: Final = 16
"""The shortest key accepted, in bytes."""
_MAC_DOMAIN: Final = b"strategylab-audit-record-v1:"
_ANCHOR_DOMAIN: Final = b"strategylab-audit-anchor-v1:"
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
MAX_DEPTH: Final = 200
"""How deeply ``data`` may nest lists and objects; deeper data is refused on append and a deeper
line is a damaged record on read (a hostile line nested 100,000 deep must not crash the reader)."""


class _HashMismatchError(ValueError):
    """A record's ``hash`` is not the digest of its contents."""


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
