"""A durable local spool: where batches go while the primary store cannot take them.

Layout: a directory of append-only *segment* files ``000000000001.seg``, ``000000000002.seg``, …
Each record is one batch::

    offset  size  field
    0       4     magic b"SLsp"
    4       4     payload length, big-endian
    8       4     CRC32 of the payload, big-endian
    12      4     CRC32 of bytes 0..12 (the header so far), big-endian
    16      ...   payload: :func:`strategylab.market._protocol.encode_ticks` of the batch

The magic and the header's own CRC let a reader *resynchronise*: after a damaged record it finds
the next intact one, so damage costs only the records it touched. (Segments written before the
magic existed, ``length | CRC | payload``, are still read.)

:meth:`SpoolStore.write` appends one record and ``fsync``s the segment before returning, so an
acknowledged batch survives a crash; creating a segment also fsyncs the directory.

Damage is told apart by where it is. A crash mid-append can only leave a torn record at the very
end of the LAST segment: :meth:`SpoolStore.open` cuts it off silently (that batch was never
acknowledged). Anything else that does not read back (a damaged record in an earlier segment, in
the middle of the last one, in a segment being drained) held acknowledged ticks, so it is
CORRUPTION:

- the intact records before and after it are kept;
- the unreadable bytes are moved aside into ``<segment>.<offset>.corrupt`` (never deleted), and the
  segment is rewritten with its intact records only;
- a :class:`SpoolCorruption` (segment, byte offset and length, the sequence range per symbol that
  the neighbouring intact records bound) is logged as a WARNING and listed by
  :meth:`SpoolStore.corruptions` (the :class:`~strategylab.market.FailoverStore` reports each one to
  the recovery manager);
- a *resume limit* is recorded durably in ``holes.json``: per symbol, the last sequence stored
  before the damage (in the spool, or in the primary store, see :meth:`SpoolStore.settle`).
  :meth:`SpoolStore.last_seqs` (and the failover store's) never reports a symbol past its limit,
  so a feed resuming from there fetches the damaged range again from the exchange; the limit
  advances as ticks right after it are stored again (:meth:`SpoolStore.record_stored`) and is
  lifted once the symbol is contiguous up to what was stored when the damage was found.

:meth:`SpoolStore.drain` seals the segment being appended to (later writes start a new one), writes
each sealed segment's batches into another store IN ORDER, and deletes a segment only after every
batch in it was committed there. A crash during a drain leaves the segment in place, so the next
drain writes it again; the target is idempotent on ``(symbol, seq)``, so nothing is duplicated.

Quarantined entries are spooled the same way in ``quarantine.log`` (msgpack lists of
:class:`QuarantinedTick`) and drained after the ticks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final, cast

import msgspec

from strategylab._files import (
    make_private_dir,
    open_private,
    read_private,
    refuse_symlinks,
    remove_leftover,
)
from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import ErrorType

from ._protocol import FrameError, decode_ticks, encode_ticks
from ._store import QuarantinedTick, TickStore
from ._tick import Tick

__all__ = ["SpoolCorruption", "SpoolCorruptionError", "SpoolStatistics", "SpoolStore"]

_log = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SpoolStatistics:
    """A snapshot of the spool's counters."""

    batches_written: int
    ticks_written: int
    batches_drained: int
    segments: int
    truncated_bytes: int
    """Bytes cut from torn tails of the last segment (never-acknowledged appends)."""
    corruptions: int
    """Damaged ranges found since the spool was opened (see :class:`SpoolCorruption`)."""
    corrupt_bytes: int
    """Bytes moved aside into ``.corrupt`` files since the spool was opened."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SpoolCorruption:
    """One damaged range of a spool file: acknowledged batches that could not be read back."""

    path: Path
    """The damaged file (a segment, or ``quarantine.log``)."""
    offset: int
    """Byte offset of the damage in the file as it was found."""
    length: int
    """Length of the unreadable range, bytes."""
    moved_to: Path
    """Where the unreadable bytes were moved (kept, never deleted)."""
    ranges: Mapping[str, tuple[int, int | None]]
    """Per symbol, the first and last sequence the damage may have held, as bounded by the intact
    records around it (``None``: no later intact record of that symbol). Empty for the quarantine
    log."""

    def describe(self) -> str:
        """One line for logs: file, offset, length and the sequence ranges."""
        ranges = ", ".join(
            f"{symbol} {first}..{'?' if last is None else last}"
            for symbol, (first, last) in sorted(self.ranges.items())
        )
        return (
            f"{self.path.name} bytes {self.offset}..{self.offset + self.length} "
            f"({self.length} bytes, moved to {self.moved_to.name}); "
            f"sequences {ranges or 'unknown'}"
        )


class SpoolCorruptionError(StrategyLabError):
    """Acknowledged batches in the spool could not be read back (reported, not raised).

    ``corruptions`` (one or more, found in one pass) say where and which sequences; the ranges
    are fetched again from the source through the resume limits.
    """

    error_type = ErrorType.DATA_INGESTION_FAILURE

    def __init__(self, corruptions: Sequence[SpoolCorruption]) -> None:
        shown = "; ".join(c.describe() for c in corruptions[:3])
        more = f"; and {len(corruptions) - 3} more" if len(corruptions) > 3 else ""
        super().__init__(f"spool corruption: {shown}{more}")
        self.corruptions = tuple(corruptions)


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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename, fsync dir)."""
    tmp = path.with_name(path.name + ".tmp")
    # A fresh file, created here: whatever was left or planted at the name is removed (a link
    # itself, never its target), so nothing outside is truncated or written.
    remove_leftover(tmp)
    with _open_private(tmp, _CREATE, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _truncate(path: Path, size: int) -> None:
    with _open_private(path, os.O_RDWR, "r+b") as file:
        file.truncate(size)
        os.fsync(file.fileno())


def _merge_max(into: dict[str, int], ticks: Sequence[Tick]) -> None:
    for tick in ticks:
        if tick.seq > into.get(tick.symbol, 0):
            into[tick.symbol] = tick.seq


def _sequence_ranges(
    before: Mapping[str, int], after: Mapping[str, int]
) -> dict[str, tuple[int, int | None]]:
    """Per symbol, the sequences between the last intact one before and the first one after."""
    out: dict[str, tuple[int, int | None]] = {}
    for symbol in sorted({*before, *after}):
        first = before.get(symbol, 0) + 1
        following = after.get(symbol)
        if following is None:
            out[symbol] = (first, None)
        elif following - 1 >= first:
            out[symbol] = (first, following - 1)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class _Found:
    """A damaged span of a file and the sequence ranges its intact neighbours bound."""

    path: Path
    span: Span
    ranges: dict[str, tuple[int, int | None]]


@dataclasses.dataclass(slots=True, kw_only=True)
class _Hole:
    """A resume limit left by one corruption (see the module docstring)."""

    found: str
    limits: dict[str, int]
    """Per symbol, the highest sequence that may be reported as stored."""
    high: dict[str, int]
    """Per symbol, the highest sequence stored when the damage was found: the limit is lifted once
    the symbol is contiguous up to here."""
    settled: bool
    """True once the primary store's own positions were merged into ``limits``."""

    def to_json(self) -> dict[str, object]:
        return {
            "found": self.found,
            "limits": self.limits,
            "high": self.high,
            "settled": self.settled,
        }

    @classmethod
    def from_json(cls, raw: object) -> _Hole:
        if not isinstance(raw, dict):
            raise TypeError(f"expected an object, got {type(raw).__name__}")
        return cls(
            found=str(raw["found"]),
            limits={str(k): int(v) for k, v in dict(raw["limits"]).items()},
            high={str(k): int(v) for k, v in dict(raw["high"]).items()},
            settled=bool(raw["settled"]),
        )

    def prune(self) -> None:
        for symbol in [s for s, limit in self.limits.items() if limit >= self.high.get(s, 0)]:
            del self.limits[symbol]


class SpoolStore:
    """Durable, append-only local spool of tick batches (a ``TickStore`` and a ``Component``).

    Writes are not deduplicated here (the spool keeps batches as acknowledged); :meth:`read`
    and :meth:`duplicates` look at the pending batches.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        drain_batch: int = 10_000,
        name: str = "spool",
    ) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes={segment_bytes!r}: must be >= 1")
        if drain_batch < 1:
            raise ValueError(f"drain_batch={drain_batch!r}: must be >= 1")
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._drain_batch = drain_batch
        self._name = name
        self._lock = asyncio.Lock()
        self._drain_lock = asyncio.Lock()
        self._file: BinaryIO | None = None
        self._file_index = 0
        self._next_index = 1
        self._opened = False
        self._last: dict[str, int] = {}
        self._first: dict[str, int] = {}
        """Per symbol, the lowest sequence in a segment found at open (a lower bound later)."""
        self._holes: list[_Hole] = []
        self._corruptions: list[SpoolCorruption] = []
        self._pending: dict[Path, int] = {}
        """Intact batches per segment file, for the segments not yet drained."""
        self._file_path: Path | None = None
        self._holes_lock = asyncio.Lock()
        self._batches_written = 0
        self._ticks_written = 0
        self._batches_drained = 0
        self._truncated = 0
        self._corrupt_bytes = 0

    @property
    def name(self) -> str:
        """The component name (``"spool"`` unless given)."""
        return self._name

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the directory, repair torn tails and corruption, and index what is pending.

        Corruption found here is logged, listed by :meth:`corruptions` and leaves a resume limit;
        it does not raise. Raises :class:`OSError` when the directory cannot be read or written.
        """
        if not self._opened:
            await asyncio.to_thread(self._open)
            self._opened = True

    async def aclose(self) -> None:
        """Close the segment being appended to; safe to call twice."""
        async with self._lock:
            await asyncio.to_thread(self._close_file)
            self._opened = False

    async def start(self) -> None:
        """``Component.start``: :meth:`open`."""
        await self.open()

    async def stop(self) -> None:
        """``Component.stop``: :meth:`aclose`."""
        await self.aclose()

    async def health(self) -> bool:
        """True when a probe file could just be written, fsynced and removed in the directory."""
        if not self._opened:
            return False
        try:
            await asyncio.to_thread(self._probe)
        except OSError:
            return False
        return True

    # ------------------------------------------------------------------ spool API

    def segments(self) -> list[Path]:
        """The segment files, oldest first."""
        return sorted(self.directory.glob(f"*{_SUFFIX}"))

    @property
    def pending_batches(self) -> int:
        """How many spooled batches are waiting to be drained."""
        return sum(self._pending.values())

    def is_empty(self) -> bool:
        """True when no batch is waiting to be drained."""
        return not any(self._pending.values())

    def pending(self) -> Iterator[list[Tick]]:
        """Every readable spooled batch, oldest first (reads the segment files)."""
        for path in self.segments():
            for payload in _records(path):
                yield decode_ticks(payload)

    def corruptions(self) -> tuple[SpoolCorruption, ...]:
        """Every damaged range found since the spool was opened, oldest first."""
        return tuple(self._corruptions)

    @property
    def needs_settle(self) -> bool:
        """True while a resume limit waits for the primary's positions (see :meth:`settle`)."""
        return any(not hole.settled for hole in self._holes)

    @property
    def has_resume_limits(self) -> bool:
        """True while a corruption's resume limit is in force (cheap; for hot paths)."""
        return bool(self._holes)

    def resume_limits(self) -> dict[str, int]:
        """Per symbol, the highest sequence that may be reported as stored (see the module doc)."""
        out: dict[str, int] = {}
        for hole in self._holes:
            for symbol, limit in hole.limits.items():
                out[symbol] = min(limit, out.get(symbol, limit))
        return out

    def apply_resume_limits(self, last_seqs: dict[str, int]) -> dict[str, int]:
        """``last_seqs`` with every symbol held at its resume limit (a symbol at 0 is dropped)."""
        for symbol, limit in self.resume_limits().items():
            if limit <= 0:
                last_seqs.pop(symbol, None)
            elif last_seqs.get(symbol, 0) > limit:
                last_seqs[symbol] = limit
        return last_seqs

    async def settle(self, primary: TickStore) -> None:
        """Merge ``primary``'s positions into the resume limits not yet settled.

        Call it while ``primary`` holds nothing from past the damage (before the first drain, or
        before the first direct write after :meth:`open`): what it has then was stored before the
        damage. Raises whatever ``primary.last_seqs()`` raises; the limits stay unsettled.
        """
        unsettled = [hole for hole in self._holes if not hole.settled]
        if not unsettled:
            return
        stored = await primary.last_seqs()
        for hole in unsettled:
            for symbol in hole.limits:
                hole.limits[symbol] = max(hole.limits[symbol], stored.get(symbol, 0))
            hole.settled = True
            hole.prune()
        await self._save_holes()

    async def hold_behind(self, stored: Mapping[str, int]) -> dict[str, int]:
        """Hold the resume point of every symbol whose pending ticks do not continue ``stored``.

        ``stored`` is the primary's positions when it is opened, before anything is drained into
        it. A symbol whose first pending sequence is past ``stored + 1`` has a range that neither
        store holds: the primary lost it (a damaged file moved aside and rebuilt, a database
        restored from an older backup) after it had been acknowledged. Its resume limit is held at
        ``stored[symbol]`` until the feed has fetched the range again, exactly like a hole left by
        spool corruption; the pending ticks still drain. Returns the held symbols and limits.
        """
        held: dict[str, int] = {}
        high: dict[str, int] = {}
        for symbol, first in self._first.items():
            base = stored.get(symbol, 0)
            if first > base + 1:
                held[symbol] = base
                high[symbol] = self._last.get(symbol, first)
        if held:
            hole = _Hole(found="primary behind the spool", limits=held, high=high, settled=True)
            hole.prune()
            if hole.limits:
                self._holes.append(hole)
                await self._save_holes()
                _log.warning(
                    "%s: the primary store ends before the spool begins for %s: holding the "
                    "resume point there so the missing range is fetched again",
                    self._name,
                    ", ".join(f"{s} (stored {held[s]}, spool from {self._first[s]})" for s in held),
                )
        return held

    async def record_stored(self, ticks: Sequence[Tick]) -> None:
        """Advance the resume limits over ``ticks``, durably stored (here or in the primary).

        A limit moves only over consecutive sequences; it is lifted once it reaches what was
        stored when the damage was found.
        """
        if not self._holes:
            return
        lifted = False
        for hole in self._holes:
            limits = hole.limits
            for tick in ticks:
                limit = limits.get(tick.symbol)
                if limit is not None and tick.seq == limit + 1:
                    limits[tick.symbol] = tick.seq
            before = len(limits)
            hole.prune()
            lifted = lifted or len(limits) < before
        if lifted:
            await self._save_holes()

    def statistics(self) -> SpoolStatistics:
        """A snapshot of the counters."""
        return SpoolStatistics(
            batches_written=self._batches_written,
            ticks_written=self._ticks_written,
            batches_drained=self._batches_drained,
            segments=len(self.segments()),
            truncated_bytes=self._truncated,
            corruptions=len(self._corruptions),
            corrupt_bytes=self._corrupt_bytes,
        )

    async def drain(self, into: TickStore) -> int:
        """Write every spooled batch into ``into``, in order; returns how many batches.

        Each segment is deleted only after all of its batches were committed to ``into``. If a
        write fails, its exception propagates and the segment stays for the next drain. A damaged
        record found here is handled as corruption (see the module docstring), never skipped
        silently and never a reason to stop draining.
        """
        self._require_open()
        async with self._drain_lock:
            await self.settle(into)
            async with self._lock:
                # Seal: the segment being appended to is closed; new writes start the next one.
                await asyncio.to_thread(self._close_file)
                sealed = self.segments()
            drained = 0
            for path in sealed:
                # Sealed, nothing is appended to it any more: a damaged tail held acked batches.
                survey = await asyncio.to_thread(_survey, path)
                if survey.damaged:
                    await self._repair_sealed(survey, into)
                payloads = await asyncio.to_thread(_records, path)
                chunk: list[Tick] = []
                batch = self._drain_batch
                for payload in payloads:
                    chunk.extend(decode_ticks(payload))
                    # One record may hold more than a batch: write it in slices, so that no
                    # write outgrows the primary's stall timeout and the drain can converge.
                    while len(chunk) >= batch:
                        head, chunk = chunk[:batch], chunk[batch:]
                        await into.write(head)
                        await self.record_stored(head)
                if chunk:
                    await into.write(chunk)
                    await self.record_stored(chunk)
                await asyncio.to_thread(self._remove, path)
                drained += len(payloads)
                self._pending.pop(path, None)
                self._batches_drained += len(payloads)
            await self._drain_quarantine(into)
            return drained

    # ------------------------------------------------------------------ TickStore

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Append ``ticks`` as one record and fsync it; returns ``len(ticks)``.

        Raises :class:`RuntimeError` when the spool is not open and :class:`OSError` when the
        append failed (nothing of it stays in the segment).
        """
        self._require_open()
        if not ticks:
            return 0
        payload = encode_ticks(list(ticks))
        async with self._lock:
            appended = asyncio.ensure_future(asyncio.to_thread(self._append_record, payload))
            try:
                await asyncio.shield(appended)
            finally:
                if not appended.done():
                    # Cancelled mid-append: the thread still writes the record. Keep the lock
                    # until it is done (one fsync) so no other append or a drain's seal runs on
                    # the file concurrently, and count the record if it landed, so
                    # pending_batches matches the segments; then the cancellation propagates.
                    await asyncio.wait([appended])
                if appended.done() and not appended.cancelled() and appended.exception() is None:
                    if self._file_path is not None:
                        self._pending[self._file_path] = self._pending.get(self._file_path, 0) + 1
                    self._batches_written += 1
                    self._ticks_written += len(ticks)
                    _merge_max(self._last, ticks)
        await self.record_stored(ticks)
        return len(ticks)

    async def last_seqs(self) -> dict[str, int]:
        """The highest sequence per symbol spooled since the spool was opened (or still pending),
        held at the resume limits that corruption left."""
        return self.apply_resume_limits(dict(self._last))

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Pending ticks of ``symbol`` in the range, by sequence, first copy of each."""
        upper = to_seq if to_seq is not None else (1 << 63) - 1
        found: dict[int, Tick] = {}
        for batch in await asyncio.to_thread(lambda: list(self.pending())):
            for tick in batch:
                if tick.symbol == symbol and from_seq <= tick.seq <= upper:
                    found.setdefault(tick.seq, tick)
        return [found[seq] for seq in sorted(found)]

    async def symbols(self) -> list[str]:
        """Every symbol with a pending tick, sorted."""
        batches = await asyncio.to_thread(lambda: list(self.pending()))
        return sorted({tick.symbol for batch in batches for tick in batch})

    async def duplicates(self) -> int:
        """Pending ticks beyond the first per (symbol, seq)."""
        batches = await asyncio.to_thread(lambda: list(self.pending()))
        keys = [(tick.symbol, tick.seq) for batch in batches for tick in batch]
        return len(keys) - len(set(keys))

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        """Spool refused input (fsynced) until it is drained into a store."""
        self._require_open()
        if entries:
            payload = _q_encoder.encode(list(entries))
            async with self._lock:
                await asyncio.to_thread(self._append_quarantine, payload)

    async def quarantined(self) -> list[QuarantinedTick]:
        """The quarantined entries not yet drained."""
        path = self.directory / _QUARANTINE
        if not path.exists():
            return []
        payloads = await asyncio.to_thread(_records, path)
        return [entry for payload in payloads for entry in _q_decoder.decode(payload)]

    # ------------------------------------------------------------------ file side (threads)

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError(f"{self._name}: spool is not open (call open() first)")

    def _open(self) -> None:
        make_private_dir(self.directory)
        for leftover in self.directory.glob("*.tmp"):
            remove_leftover(leftover)  # an interrupted rewrite; the file it replaced is intact
        holes, holes_lost = self._load_holes()
        segments = self.segments()
        # A planted symlink is never read as spooled data nor written through.
        refuse_symlinks(*segments, self.directory / _QUARANTINE)
        surveys = [
            _survey(path, tail=index == len(segments) - 1) for index, path in enumerate(segments)
        ]
        found = self._corruptions_of(surveys)
        if found or holes_lost:
            # Durable before the damaged bytes are moved: a crash in between finds them again.
            holes.append(self._hole_of(surveys, found))
        self._holes = holes
        self._store_holes(self._holes_body())
        for survey in surveys:
            if survey.damaged or survey.torn is not None:
                self._rewrite(survey, found)
        self._open_quarantine()
        self._pending = {survey.path: survey.batches for survey in surveys}
        for survey in surveys:
            for _, bounds in survey.records:
                for symbol, (low, high) in bounds.items():
                    if high > self._last.get(symbol, 0):
                        self._last[symbol] = high
                    if low < self._first.get(symbol, low + 1):
                        self._first[symbol] = low
        self._next_index = max((int(path.stem) for path in segments), default=0) + 1

    @staticmethod
    def _corruptions_of(surveys: list[_Survey]) -> list[_Found]:
        """Every damaged span, in spool order, with the sequences its intact neighbours bound."""
        items: list[tuple[Path, int, Span | dict[str, tuple[int, int]]]] = []
        for survey in surveys:
            items.extend((survey.path, offset, bounds) for offset, bounds in survey.records)
            items.extend((survey.path, span[0], span) for span in survey.damaged)
        items.sort(key=lambda item: (item[0], item[1]))
        before: list[dict[str, int]] = []
        seen: dict[str, int] = {}
        for _, _, what in items:
            if isinstance(what, tuple):
                before.append(dict(seen))
            else:
                for symbol, (_low, high) in what.items():
                    seen[symbol] = max(high, seen.get(symbol, 0))
        after: list[dict[str, int]] = []
        following: dict[str, int] = {}
        for _, _, what in reversed(items):
            if isinstance(what, tuple):
                after.append(dict(following))
            else:
                for symbol, (low, _high) in what.items():
                    following[symbol] = min(low, following.get(symbol, low))
        after.reverse()
        spans = [(path, what) for path, _, what in items if isinstance(what, tuple)]
        return [
            _Found(path, span, _sequence_ranges(b, a))
            for (path, span), b, a in zip(spans, before, after, strict=True)
        ]

    @staticmethod
    def _hole_of(surveys: list[_Survey], found: list[_Found]) -> _Hole:
        """The resume limit for damage found at open: what the spool holds before the first."""
        first = (found[0].path, found[0].span[0]) if found else None
        limits: dict[str, int] = {}
        high: dict[str, int] = {}
        for survey in surveys:
            for offset, bounds in survey.records:
                ahead = first is not None and (survey.path, offset) < first
                for symbol, (_low, top) in bounds.items():
                    high[symbol] = max(top, high.get(symbol, 0))
                    if ahead:
                        limits[symbol] = max(top, limits.get(symbol, 0))
        hole = _Hole(
            found=f"{first[0].name}@{first[1]}" if first is not None else f"{_HOLES} unreadable",
            limits={symbol: limits.get(symbol, 0) for symbol in high},
            high=high,
            settled=False,
        )
        hole.prune()
        return hole

    def _rewrite(self, survey: _Survey, found: list[_Found]) -> None:
        """Move the damaged spans of a file aside, cut a torn tail, keep the intact records."""
        path = survey.path
        data = read_private(path)
        for each in found:
            if each.path == path:
                self._set_aside(data, each)
        if survey.torn is not None:
            self._truncated += survey.torn[1] - survey.torn[0]
            if not survey.damaged:
                _truncate(path, survey.torn[0])
                return
            data = data[: survey.torn[0]]
        _write_durably(path, _intact(data, survey.damaged))

    def _set_aside(self, data: bytes, found: _Found) -> None:
        start, end = found.span
        aside = found.path.with_name(f"{found.path.stem}.{start:012d}.corrupt")
        _write_durably(aside, data[start:end])
        corruption = SpoolCorruption(
            path=found.path, offset=start, length=end - start, moved_to=aside, ranges=found.ranges
        )
        self._corruptions.append(corruption)
        self._corrupt_bytes += end - start
        _log.warning("%s: CORRUPTION %s", self._name, corruption.describe())

    def _open_quarantine(self) -> None:
        path = self.directory / _QUARANTINE
        if path.exists():
            survey = _survey(path, tail=True, quarantine=True)
            if survey.damaged or survey.torn is not None:
                self._rewrite(survey, [_Found(path, span, {}) for span in survey.damaged])

    async def _repair_sealed(self, survey: _Survey, into: TickStore) -> None:
        """Damage in a segment being drained: every damaged span held acknowledged batches."""
        found = self._corruptions_of([survey])
        first = found[0].span[0]
        limits: dict[str, int] = {}
        high = dict(self._last)
        for offset, bounds in survey.records:
            for symbol, (_low, top) in bounds.items():
                high[symbol] = max(top, high.get(symbol, 0))
                if offset < first:
                    limits[symbol] = max(top, limits.get(symbol, 0))
        # Earlier segments are in ``into`` already (drained in order) and nothing later is, so
        # its positions are what was stored before the damage.
        stored = await into.last_seqs()
        hole = _Hole(
            found=f"{survey.path.name}@{first}",
            limits={s: max(limits.get(s, 0), stored.get(s, 0)) for s in high},
            high=high,
            settled=True,
        )
        hole.prune()
        self._holes.append(hole)
        await self._save_holes()
        await asyncio.to_thread(self._rewrite, survey, found)

    # ------------------------------------------------------------------ resume limits on disk

    def _holes_body(self) -> bytes | None:
        self._holes = [hole for hole in self._holes if hole.limits]
        if not self._holes:
            return None
        return json.dumps({"holes": [hole.to_json() for hole in self._holes]}, indent=1).encode()

    async def _save_holes(self) -> None:
        async with self._holes_lock:
            await asyncio.to_thread(self._store_holes, self._holes_body())

    def _store_holes(self, body: bytes | None) -> None:
        path = self.directory / _HOLES
        if body is not None:
            _write_durably(path, body)
        elif path.exists():
            path.unlink()
            _fsync_dir(self.directory)

    def _load_holes(self) -> tuple[list[_Hole], bool]:
        """The stored resume limits, and True if the file was there but unreadable."""
        path = self.directory / _HOLES
        refuse_symlinks(path)
        if not path.exists():
            return [], False
        try:
            raw = json.loads(read_private(path))
            return [_Hole.from_json(item) for item in raw["holes"]], False
        except (ValueError, TypeError, KeyError) as exc:
            # The limits are lost: hold every spooled symbol at what the primary has (settle).
            aside = path.with_name(f"{_HOLES}.corrupt")
            path.replace(aside)
            _log.warning(
                "%s: CORRUPTION %s unreadable (%s), moved to %s: every spooled symbol resumes "
                "from what the primary store holds",
                self._name,
                path,
                exc,
                aside.name,
            )
            return [], True

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _append_record(self, payload: bytes) -> None:
        file = self._file
        if file is None or file.tell() >= self._segment_bytes:
            self._close_file()
            path = self.directory / f"{self._next_index:012d}{_SUFFIX}"
            file = self._file = _open_private(path, _APPEND, "ab")
            self._file_path = path
            self._file_index = self._next_index
            self._next_index += 1
            _fsync_dir(self.directory)
        try:
            _append(file, payload)
        except OSError:
            # A failed append may have left a partial record: cut it off so the next append
            # does not follow garbage.
            self._close_file()
            self._repair(self.directory / f"{self._file_index:012d}{_SUFFIX}")
            raise

    def _repair(self, path: Path) -> None:
        scan = _scan_bytes(read_private(path))
        if scan.damaged and scan.damaged[-1][1] == scan.size:
            _truncate(path, scan.damaged[-1][0])

    def _append_quarantine(self, payload: bytes) -> None:
        path = self.directory / _QUARANTINE
        created = not path.exists()
        with _open_private(path, _APPEND, "ab") as file:
            _append(file, payload)
        if created:
            _fsync_dir(self.directory)

    def _remove(self, path: Path) -> None:
        path.unlink()
        _fsync_dir(self.directory)

    def _probe(self) -> None:
        path = self.directory / _PROBE
        with _open_private(path, _REPLACE, "wb") as file:
            file.write(time.time_ns().to_bytes(8, "big"))
            file.flush()
            os.fsync(file.fileno())
        path.unlink()

    async def _drain_quarantine(self, into: TickStore) -> None:
        path = self.directory / _QUARANTINE
        if not path.exists():
            return
        async with self._lock:
            entries = await self.quarantined()
            if entries:
                await into.quarantine(entries)
            await asyncio.to_thread(self._remove, path)
