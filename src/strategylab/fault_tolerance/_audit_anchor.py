"""Audit anchors: the log's head, kept outside the log, so that a truncated or rewritten log fails
verification.

A source of anchors is an anchor file (one canonical JSON object per line: ``seq``, ``hash``,
``timestamp``, and ``mac`` when keyed) or a saved stdout of the node or the trader, whose
``{"event":"audit_anchor","seq":..,"hash":..}`` lines count and whose other lines are skipped. A
stdout anchor carries no ``mac``: it only adds a constraint, so an unauthenticated one can make a
verification fail, never pass.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from strategylab.errors import AuditIntegrityError

from ._audit_lines import (
    MAX_LINE_BYTES,
    _LineError,
    _lines,
    _open_path,
    _Opener,
    _reject_constant,
    _too_deep,
)
from ._audit_record import JSONValue, _anchor_mac, _check_hash_field, _check_key, _check_seq

__all__ = ["read_anchors"]

_ANCHOR_FIELDS: Final = frozenset({"seq", "hash", "timestamp"})
_STDOUT_ANCHOR: Final = "audit_anchor"
_ANCHOR_LINE: Final = 1024


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
