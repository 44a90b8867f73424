"""A durable local spool: where batches go while the primary store cannot take them.

Layout: a directory of append-only *segment* files ``000000000001.seg``, ``000000000002.seg``, …
Each record is one batch::

    offset  size  field
    0       4     payload length, big-endian
    4       4     CRC32 of the payload, big-endian
    8       ...   payload: :func:`strategylab.market._protocol.encode_ticks` of the batch

:meth:`SpoolStore.write` appends one record and ``fsync``s the segment before returning, so an
acknowledged batch survives a crash; creating a segment also fsyncs the directory, so the file
itself survives. A crash mid-append leaves a torn or corrupt record at the tail: :meth:`open`
finds it by its length or CRC and truncates the segment there (that batch was never acknowledged).

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
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from ._protocol import FrameError, decode_ticks, encode_ticks
from ._store import QuarantinedTick, TickStore
from ._tick import Tick

__all__ = ["SpoolStatistics", "SpoolStore"]

_HEAD = struct.Struct(">II")
_SUFFIX: Final = ".seg"
_QUARANTINE: Final = "quarantine.log"
_PROBE: Final = ".health"
_MAX_RECORD: Final = 1 << 30
_q_encoder = msgspec.msgpack.Encoder()
_q_decoder = msgspec.msgpack.Decoder(list[QuarantinedTick])


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SpoolStatistics:
    """A snapshot of the spool's counters."""

    batches_written: int
    ticks_written: int
    batches_drained: int
    segments: int
    truncated_bytes: int
    """Bytes cut from torn or corrupt segment tails when the spool was opened."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(path: Path) -> tuple[list[bytes], int]:
    """The intact payloads of a segment and the offset where the intact prefix ends."""
    payloads: list[bytes] = []
    data = path.read_bytes()
    offset = 0
    while offset + _HEAD.size <= len(data):
        size, crc = _HEAD.unpack_from(data, offset)
        start = offset + _HEAD.size
        end = start + size
        if size > _MAX_RECORD or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        offset = end
    return payloads, offset


def _records(path: Path) -> list[bytes]:
    return _scan(path)[0]


def _append(file: BinaryIO, payload: bytes) -> None:
    file.write(_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
    file.flush()
    os.fsync(file.fileno())


def _merge_max(into: dict[str, int], ticks: Sequence[Tick]) -> None:
    for tick in ticks:
        if tick.seq > into.get(tick.symbol, 0):
            into[tick.symbol] = tick.seq


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
        self._pending_batches = 0
        self._batches_written = 0
        self._ticks_written = 0
        self._batches_drained = 0
        self._truncated = 0

    @property
    def name(self) -> str:
        """The component name (``"spool"`` unless given)."""
        return self._name

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the directory, truncate torn tails, and index what is pending."""
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
        return self._pending_batches

    def is_empty(self) -> bool:
        """True when no batch is waiting to be drained."""
        return self._pending_batches == 0

    def pending(self) -> Iterator[list[Tick]]:
        """Every spooled batch, oldest first (reads the segment files)."""
        for path in self.segments():
            for payload in _records(path):
                yield decode_ticks(payload)

    def statistics(self) -> SpoolStatistics:
        """A snapshot of the counters."""
        return SpoolStatistics(
            batches_written=self._batches_written,
            ticks_written=self._ticks_written,
            batches_drained=self._batches_drained,
            segments=len(self.segments()),
            truncated_bytes=self._truncated,
        )

    async def drain(self, into: TickStore) -> int:
        """Write every spooled batch into ``into``, in order; returns how many batches.

        Each segment is deleted only after all of its batches were committed to ``into``. If a
        write fails, its exception propagates and the segment stays for the next drain.
        """
        self._require_open()
        async with self._drain_lock:
            async with self._lock:
                # Seal: the segment being appended to is closed; new writes start the next one.
                await asyncio.to_thread(self._close_file)
                sealed = self.segments()
            drained = 0
            for path in sealed:
                payloads = await asyncio.to_thread(_records, path)
                chunk: list[Tick] = []
                for payload in payloads:
                    chunk.extend(decode_ticks(payload))
                    if len(chunk) >= self._drain_batch:
                        await into.write(chunk)
                        chunk = []
                if chunk:
                    await into.write(chunk)
                await asyncio.to_thread(self._remove, path)
                drained += len(payloads)
                self._pending_batches -= len(payloads)
                self._batches_drained += len(payloads)
            await self._drain_quarantine(into)
            return drained

    # ------------------------------------------------------------------ TickStore

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Append ``ticks`` as one record and fsync it; returns ``len(ticks)``."""
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
                    self._pending_batches += 1
                    self._batches_written += 1
                    self._ticks_written += len(ticks)
                    _merge_max(self._last, ticks)
        return len(ticks)

    async def last_seqs(self) -> dict[str, int]:
        """The highest sequence per symbol spooled since the spool was opened (or still pending)."""
        return dict(self._last)

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
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pending_batches = 0
        last_index = 0
        for path in [*self.segments(), self.directory / _QUARANTINE]:
            if not path.exists():
                continue
            payloads, end = _scan(path)
            size = path.stat().st_size
            if end < size:
                # A torn tail: the append never completed, so it was never acknowledged.
                with path.open("r+b") as file:
                    file.truncate(end)
                    os.fsync(file.fileno())
                self._truncated += size - end
            if path.suffix == _SUFFIX:
                last_index = max(last_index, int(path.stem))
                self._pending_batches += len(payloads)
                for payload in payloads:
                    try:
                        _merge_max(self._last, decode_ticks(payload))
                    except FrameError:
                        continue
        self._next_index = last_index + 1

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _append_record(self, payload: bytes) -> None:
        file = self._file
        if file is None or file.tell() >= self._segment_bytes:
            self._close_file()
            path = self.directory / f"{self._next_index:012d}{_SUFFIX}"
            file = self._file = path.open("ab")
            self._file_index = self._next_index
            self._next_index += 1
            _fsync_dir(self.directory)
        try:
            _append(file, payload)
        except OSError:
            # A failed append may have left a partial record: cut it off so the next append
            # does not follow garbage (open() would truncate there and lose the later batches).
            self._close_file()
            self._repair(self.directory / f"{self._file_index:012d}{_SUFFIX}")
            raise

    def _repair(self, path: Path) -> None:
        end = _scan(path)[1]
        if path.stat().st_size > end:
            with path.open("r+b") as file:
                file.truncate(end)
                os.fsync(file.fileno())

    def _append_quarantine(self, payload: bytes) -> None:
        path = self.directory / _QUARANTINE
        created = not path.exists()
        with path.open("ab") as file:
            _append(file, payload)
        if created:
            _fsync_dir(self.directory)

    def _remove(self, path: Path) -> None:
        path.unlink()
        _fsync_dir(self.directory)

    def _probe(self) -> None:
        path = self.directory / _PROBE
        with path.open("wb") as file:
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
