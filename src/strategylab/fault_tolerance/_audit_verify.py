"""Verifying an audit log: every line checked against its predecessor, its key and the anchors.

:func:`_scan` streams the file once, in constant memory, and raises
:class:`~strategylab.errors.AuditIntegrityError` naming the first broken line and why (altered,
inserted, removed, reordered, forged, truncated). It serves ``AuditLog.verify(path)``
(:func:`_verify_path`), ``log.verify()`` and the check an :class:`AuditLog` makes when it opens.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from strategylab.errors import AuditIntegrityError

from ._audit_anchor import _check_max_line, read_anchors
from ._audit_lines import (
    MAX_LINE_BYTES,
    _line_record,
    _LineError,
    _lines,
    _open_path,
    _Opener,
    _too_deep,
)
from ._audit_record import (
    GENESIS_HASH,
    AuditRecord,
    _check_hash_field,
    _check_key,
    _check_seq,
    _record_mac,
)

__all__ = ["AuditVerification"]


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
