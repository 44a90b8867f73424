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

Modules: the record format and file operations in :mod:`._spool_format`, damage and resume
limits in :mod:`._spool_damage`, the store's state and its file side (worker threads) in
:mod:`._spool_files`, and the store's API here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence

from ._protocol import decode_ticks, encode_ticks
from ._spool_damage import SpoolCorruption, SpoolCorruptionError, _Hole
from ._spool_files import _SpoolFiles
from ._spool_format import _QUARANTINE, _merge_max, _q_decoder, _q_encoder, _records, _survey
from ._store import QuarantinedTick, TickStore
from ._tick import Tick

__all__ = ["SpoolCorruption", "SpoolCorruptionError", "SpoolStatistics", "SpoolStore"]

_log = logging.getLogger(__name__)


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


class SpoolStore(_SpoolFiles):
    """Durable, append-only local spool of tick batches (a ``TickStore`` and a ``Component``).

    Writes are not deduplicated here (the spool keeps batches as acknowledged); :meth:`read`
    and :meth:`duplicates` look at the pending batches.
    """

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

    async def _drain_quarantine(self, into: TickStore) -> None:
        path = self.directory / _QUARANTINE
        if not path.exists():
            return
        async with self._lock:
            entries = await self.quarantined()
            if entries:
                await into.quarantine(entries)
            await asyncio.to_thread(self._remove, path)
