"""The spool's file format: framing a record, scanning a file back (resynchronising after
damage, telling a torn tail from corruption), surveying a segment's sequence bounds, and the
small file operations the spool performs (append, truncate, open without following a link).

The record layout is drawn in :mod:`strategylab.market._spool`."""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final, cast

import msgspec

from strategylab._files import open_private, read_private

from ._protocol import FrameError, decode_ticks
from ._store import QuarantinedTick
from ._tick import Tick

_MAGIC: Final = b"SLsp"
_HEAD = struct.Struct(">4sIII")
_LEGACY_HEAD = struct.Struct(">II")
_SUFFIX: Final = ".seg"
_QUARANTINE: Final = "quarantine.log"
_HOLES: Final = "holes.json"
_PROBE: Final = ".health"
_MAX_RECORD: Final = 1 << 30
_q_encoder = msgspec.msgpack.Encoder()
_q_decoder = msgspec.msgpack.Decoder(list[QuarantinedTick])

Span = tuple[int, int]
"""A byte range ``[start, end)`` of a file."""


# ---------------------------------------------------------------------------- record format


def _frame(payload: bytes) -> bytes:
    head = _MAGIC + struct.pack(">II", len(payload), zlib.crc32(payload))
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def _record_at(data: bytes, offset: int) -> int | None:
    """The end of the intact record starting at ``offset``, or None."""
    if offset + _HEAD.size > len(data):
        return None
    magic, size, crc, head_crc = _HEAD.unpack_from(data, offset)
    if magic != _MAGIC or zlib.crc32(data[offset : offset + 12]) != head_crc:
        return None
    start = offset + _HEAD.size
    end: int = start + size
    if size > _MAX_RECORD or end > len(data):
        return None
    if zlib.crc32(memoryview(data)[start:end]) != crc:
        return None
    return end


def _resync(data: bytes, offset: int) -> int:
    """The first offset after ``offset`` where an intact record starts (``len(data)`` if none)."""
    position = offset
    while True:
        position = data.find(_MAGIC, position + 1)
        if position < 0:
            return len(data)
        if _record_at(data, position) is not None:
            return position


@dataclasses.dataclass(slots=True)
class _Scan:
    records: list[tuple[int, int, bytes]]
    """``(offset, end, payload)`` of every intact record, in file order."""
    damaged: list[Span]
    size: int
    legacy: bool = False


def _scan_legacy(data: bytes) -> _Scan | None:
    records: list[tuple[int, int, bytes]] = []
    offset = 0
    while offset + _LEGACY_HEAD.size <= len(data):
        size, crc = _LEGACY_HEAD.unpack_from(data, offset)
        start = offset + _LEGACY_HEAD.size
        end = start + size
        if size > _MAX_RECORD or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        records.append((offset, end, data[start:end]))
        offset = end
    if not records:
        return None
    damaged = [(offset, len(data))] if offset < len(data) else []
    return _Scan(records, damaged, len(data), legacy=True)


def _scan_bytes(data: bytes) -> _Scan:
    if data and not data.startswith(_MAGIC) and (legacy := _scan_legacy(data)) is not None:
        return legacy
    records: list[tuple[int, int, bytes]] = []
    damaged: list[Span] = []
    offset = 0
    while offset < len(data):
        end = _record_at(data, offset)
        if end is None:
            following = _resync(data, offset)
            damaged.append((offset, following))
            offset = following
        else:
            records.append((offset, end, data[offset + _HEAD.size : end]))
            offset = end
    return _Scan(records, damaged, len(data))


def _torn_tail(data: bytes, start: int, *, legacy: bool) -> bool:
    """True when the damage from ``start`` to the end looks like an append a crash interrupted.

    That is a record header cut short, a header whose length runs past the end of the file, or
    zeros (space a filesystem allocated before the data reached it). A complete record with a bad
    CRC is NOT a torn append: it was fsynced, and so acknowledged, before anything followed it.
    """
    rest = data[start:]
    head = _LEGACY_HEAD if legacy else _HEAD
    if len(rest) < head.size or not rest.strip(b"\0"):
        return True
    if legacy:
        size, _crc = _LEGACY_HEAD.unpack_from(rest)
        return bool(head.size + size > len(rest))
    magic, size, _crc, head_crc = _HEAD.unpack_from(rest)
    intact_head = magic == _MAGIC and zlib.crc32(rest[:12]) == head_crc
    return bool(intact_head and head.size + size > len(rest))


def _add_span(spans: list[Span], span: Span) -> None:
    """Insert ``span``, keeping ``spans`` sorted and merging neighbours."""
    spans.append(span)
    spans.sort()
    merged: list[Span] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    spans[:] = merged


def _bounds(ticks: Sequence[Tick]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for tick in ticks:
        low, high = out.get(tick.symbol, (tick.seq, tick.seq))
        out[tick.symbol] = (min(low, tick.seq), max(high, tick.seq))
    return out


@dataclasses.dataclass(slots=True)
class _Survey:
    """A segment read back: the per-symbol sequence bounds of each intact record, and damage."""

    path: Path
    records: list[tuple[int, dict[str, tuple[int, int]]]]
    """``(offset, {symbol: (lowest, highest seq)})`` per intact record, in file order."""
    damaged: list[Span]
    size: int
    batches: int
    torn: Span | None = None
    """A torn tail (only looked for in the last segment, see :func:`_survey`)."""


def _survey(path: Path, *, tail: bool = False, quarantine: bool = False) -> _Survey:
    """Read ``path`` back; with ``tail``, a torn tail is told apart from other damage."""
    data = read_private(path)
    scan = _scan_bytes(data)
    records: list[tuple[int, dict[str, tuple[int, int]]]] = []
    for offset, end, payload in scan.records:
        try:
            if quarantine:
                _q_decoder.decode(payload)
                records.append((offset, {}))
            else:
                records.append((offset, _bounds(decode_ticks(payload))))
        except (FrameError, msgspec.DecodeError):
            # Intact framing around a payload that is not a batch: as unreadable as a bad CRC.
            _add_span(scan.damaged, (offset, end))
    torn = None
    if tail and scan.damaged and scan.damaged[-1][1] == scan.size:
        start = scan.damaged[-1][0]
        if _torn_tail(data, start, legacy=scan.legacy):
            torn = scan.damaged.pop()
    return _Survey(path, records, scan.damaged, scan.size, len(records), torn)


def _records(path: Path) -> list[bytes]:
    """The payloads of the intact records of a file, in order."""
    return [payload for _, _, payload in _scan_bytes(read_private(path)).records]


# ---------------------------------------------------------------------------- small file helpers


_APPEND: Final = os.O_WRONLY | os.O_CREAT | os.O_APPEND
_REPLACE: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _open_private(path: Path, flags: int, mode: str) -> BinaryIO:
    """A spool file opened without following a symlink (UnsafePathError); created 0600."""
    return cast("BinaryIO", os.fdopen(open_private(path, flags), mode))


def _append(file: BinaryIO, payload: bytes) -> None:
    file.write(_frame(payload))
    file.flush()
    os.fsync(file.fileno())


def _intact(data: bytes, spans: Sequence[Span]) -> bytes:
    """The intact records of ``data`` outside ``spans``, framed anew."""
    return b"".join(
        _frame(payload)
        for offset, _end, payload in _scan_bytes(data).records
        if not any(start <= offset < end for start, end in spans)
    )


def _truncate(path: Path, size: int) -> None:
    with _open_private(path, os.O_RDWR, "r+b") as file:
        file.truncate(size)
        os.fsync(file.fileno())


def _merge_max(into: dict[str, int], ticks: Sequence[Tick]) -> None:
    for tick in ticks:
        if tick.seq > into.get(tick.symbol, 0):
            into[tick.symbol] = tick.seq
