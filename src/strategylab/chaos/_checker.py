"""The Jepsen-style integrity checker: what the exchange emitted against what the store holds.

Inputs: the exchange's emitted log (:func:`strategylab.market._ledger.read_emitted` format), a
:class:`TickSource` (any :class:`~strategylab.market._store.TickStore`, or an SQLite store's file
or a PostgreSQL store, opened read-only by :func:`check_store`), and optionally the node's ack
log. Per symbol:

- *lost* = acknowledged − stored, where acknowledged is every seq ≤ the ack watermark (and an
  invalid tick that sits in the quarantine counts as accounted for);
- *missing* = emitted − stored − quarantined (informational unless ``require_complete``);
- *duplicated* = rows per (symbol, seq) beyond the first;
- *unexpected* = stored − emitted;
- *corrupted* = stored payload (ts, bid, ask, sizes, symbol) differing from the emitted one, bit
  for bit;
- *quarantined* = ticks emitted invalid that are in the quarantine with a reason, not stored;
- *invalid_stored* = ticks emitted invalid that are in the store nonetheless;
- *gaps* = ranges of sequence numbers below the highest stored one that are neither stored nor
  accounted for by the quarantine.

How it stays fast without a set of all ticks: the emitted log is kept per symbol as the
concatenated msgpack encodings of its ticks plus an offset array (one ``bytearray`` and one
``array('Q')`` per symbol, ~60 bytes a tick, no Python object per tick). The store is read per
symbol in sequence order, in windows; a window of consecutive sequences is checked with one
``encode`` of the rows and one byte comparison against the emitted bytes of that range (msgpack is
self-delimiting and keeps float64 bits, so equal bytes mean equal ticks). Only a window that fails
that comparison is walked tick by tick. Stored and emitted sequences are kept as sorted lists of
inclusive ranges, so lost, missing and gaps are range arithmetic.

A checker only reads. :func:`check_store` opens the store through
:func:`~strategylab.market.open_tick_reader`: an SQLite file with SQLite's ``mode=ro`` (never
creating the schema, switching the journal mode or moving a damaged file aside; a WAL file that no
connection has open is read ``immutable=1`` and compared before and after, so a file that changed
meanwhile fails the check instead of being trusted), a PostgreSQL store in read-only transactions.
Inputs that cannot be used (missing, empty, not SQLite, not a tick store, a server that cannot be
reached, an ack log that is not JSON lines) raise :class:`CheckInputError`; a damaged file raises
:class:`~strategylab.market.StoreCorruptedError`. Both say which file and what is wrong, in one
line.

This module holds the comparison (:func:`check`, :func:`check_store`) and the store side; the
report is in :mod:`._checker_report`, the inputs (emitted log, acks, quarantine) in
:mod:`._checker_inputs` and the range arithmetic in :mod:`._checker_ranges`. The public names are
re-exported here.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.market import (
    QuarantinedTick,
    SQLiteTickReader,
    StoreUnreachableError,
    StoreUnusableError,
    Tick,
    open_tick_reader,
)

from ._checker_inputs import (
    AckSource,
    CheckInputError,
    EmittedLogError,
    _acks,
    _Emitted,
    _encoder,
    _load_emitted,
    _quarantine,
)
from ._checker_ranges import (
    Range,
    _contains,
    _count,
    _from_points,
    _points,
    _RangeBuilder,
    _subtract,
)
from ._checker_report import Corruption, Gap, IntegrityReport, SymbolIntegrity, TickSet

__all__ = [
    "CheckInputError",
    "Corruption",
    "EmittedLogError",
    "Gap",
    "IntegrityReport",
    "SymbolIntegrity",
    "TickSet",
    "TickSource",
    "check",
    "check_sqlite",
    "check_store",
]

_tick_decoder = msgspec.msgpack.Decoder(Tick)
_LOWEST_SEQ = -(2**63)
_WINDOW = 65_536
_FIELDS = ("symbol", "seq", "ts", "bid", "ask", "bid_size", "ask_size")


class TickSource(Protocol):
    """What the check reads from a store: every :class:`~strategylab.market.TickStore` is one."""

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` in sequence order, ``from_seq``..``to_seq`` inclusive."""
        ...

    async def symbols(self) -> list[str]:
        """Every symbol with at least one stored tick."""
        ...

    async def duplicates(self) -> int:
        """Rows beyond the first per (symbol, seq)."""
        ...

    async def quarantined(self) -> list[QuarantinedTick]:
        """Everything quarantined."""
        ...


@dataclass(slots=True)
class _Stored:
    seqs: _RangeBuilder = field(default_factory=_RangeBuilder)
    rows: int = 0
    unexpected: _RangeBuilder = field(default_factory=_RangeBuilder)
    corrupted: dict[int, tuple[str, ...]] = field(default_factory=dict)


def _differing_fields(stored: Tick, raw: bytes | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    emitted = _tick_decoder.decode(raw)
    out: list[str] = []
    for name in _FIELDS:
        a, b = getattr(stored, name), getattr(emitted, name)
        if isinstance(a, float) and isinstance(b, float):
            if struct.pack("<d", a) != struct.pack("<d", b):
                out.append(name)
        elif type(a) is not type(b) or a != b:
            out.append(name)
    return tuple(out) or ("encoding",)


def _array_header(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65_536 else 5


def _window(rows: list[Tick], e: _Emitted | None, out: _Stored) -> None:
    """Check one window of rows read from the store."""
    out.rows += len(rows)
    if e is not None and rows:
        a, b = rows[0].seq, rows[-1].seq
        if b - a + 1 == len(rows) and e.first <= a and b < e.next:
            expected = memoryview(e.buf)[e.offs[a - e.first] : e.offs[b - e.first + 1]]
            encoded = _encoder.encode(rows)
            if len(encoded) - len(expected) == _array_header(len(rows)) and (
                memoryview(encoded)[len(encoded) - len(expected) :] == expected
            ):
                out.seqs.add_range(a, b)
                return
    for row in rows:
        seq = row.seq
        out.seqs.add(seq)
        raw = e.raw(seq) if e is not None else None
        if raw is None:
            out.unexpected.add(seq)
        elif _encoder.encode(row) != raw:
            out.corrupted.setdefault(seq, _differing_fields(row, raw))


async def _scan(store: TickSource, symbol: str, e: _Emitted | None, window: int) -> _Stored:
    """Read ``symbol`` from the store in sequence windows up to the last emitted seq, then the
    rest in one read (everything past the emitted end is unexpected anyway)."""
    out = _Stored()
    end = e.next - 1 if e is not None else 0
    if end < 1:
        _window(await store.read(symbol, _LOWEST_SEQ, None), e, out)
        return out
    lo, hi = _LOWEST_SEQ, min(end, window)
    while True:
        _window(await store.read(symbol, lo, hi), e, out)
        if hi >= end:
            break
        lo, hi = hi + 1, min(end, hi + window)
    _window(await store.read(symbol, end + 1, None), e, out)
    return out


@dataclass(slots=True)
class _Totals:
    limit: int
    counts: dict[str, int] = field(default_factory=dict)
    items: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def add(self, name: str, symbol: str, ranges: list[Range], count: int | None = None) -> int:
        n = _count(ranges) if count is None else count
        self.counts[name] = self.counts.get(name, 0) + n
        bucket = self.items.setdefault(name, [])
        room = self.limit - len(bucket)
        if room > 0:
            bucket.extend((symbol, p) for p in _points(ranges, room))
        return n

    def tickset(self, name: str, count: int | None = None) -> TickSet:
        items = self.items.get(name, [])
        return TickSet(
            count=self.counts.get(name, 0) if count is None else count, items=tuple(items)
        )


async def check(
    emitted_log: str | os.PathLike[str] | Iterable[Tick],
    store: TickSource,
    acks: AckSource = None,
    *,
    require_complete: bool = False,
    limit: int = 1000,
    window: int = _WINDOW,
    clock: Clock = SYSTEM_CLOCK,
) -> IntegrityReport:
    """Check ``store`` against the exchange's emitted log and, when given, the node's acks.

    ``emitted_log`` is a path to an emitted log (or any iterable of ticks, for tests); ``acks`` a
    path to an ack log, a list of them (a cluster's nodes: the highest acknowledged seq per symbol
    over all) or a ``{symbol: watermark}`` mapping; ``limit`` caps the items kept per
    finding (counts stay exact); ``window`` is how many sequences are read from the store at once.
    The store must be open; the check only reads it. The emitted log is read in a worker thread.
    An unreadable emitted log or ack log raises :class:`CheckInputError` naming it.
    """
    if limit < 0:
        raise ValueError(f"limit={limit!r}: must be >= 0")
    if window < 1:
        raise ValueError(f"window={window!r}: must be >= 1")
    started = clock.monotonic()
    acked = _acks(acks)  # the cheap input first: a bad ack log fails before the long read
    emitted = await asyncio.to_thread(_load_emitted, emitted_log)
    quarantine, quarantine_unusable = _quarantine(await store.quarantined())
    store_duplicates = await store.duplicates()
    symbols = sorted(set(emitted) | set(await store.symbols()) | set(acked or ()))

    totals = _Totals(limit=limit)
    per_symbol: list[SymbolIntegrity] = []
    gaps: list[Gap] = []
    corruptions: list[Corruption] = []
    gap_count = accounted_quarantine = 0
    n_emitted = n_stored = n_rows = n_acked = repeats = seen_dups = 0
    for symbol in sorted(symbols):
        e = emitted.get(symbol)
        scanned = await _scan(store, symbol, e, window)
        stored = scanned.seqs.finish()
        stored_starts = [a for a, _ in stored]
        emitted_ranges = e.ranges() if e is not None else []
        invalid = e.invalid if e is not None else {}
        in_quarantine = quarantine.get(symbol, set())
        invalid_stored = {s for s in invalid if _contains(stored, stored_starts, s)}
        accounted = [s for s in invalid if s in in_quarantine and s not in invalid_stored]
        accounted_quarantine += len(accounted)
        covered = _from_points(accounted)
        watermark = (acked or {}).get(symbol, 0)
        last_stored = stored[-1][1] if stored else 0

        lost = _subtract(_subtract([(1, watermark)] if watermark > 0 else [], stored), covered)
        missing = _subtract(_subtract(emitted_ranges, stored), covered)
        holes = _subtract(_subtract([(1, last_stored)] if last_stored > 0 else [], stored), covered)
        dups = _from_points(scanned.seqs.repeated)
        unexpected = scanned.unexpected.finish()
        corrupted = sorted(scanned.corrupted)

        counts = {
            "lost": totals.add("lost", symbol, lost),
            "missing": totals.add("missing", symbol, missing),
            "duplicated": totals.add("duplicated", symbol, dups, len(scanned.seqs.repeated)),
            "unexpected": totals.add("unexpected", symbol, unexpected),
            "corrupted": totals.add("corrupted", symbol, _from_points(corrupted)),
            "quarantined": totals.add("quarantined", symbol, covered),
            "invalid_stored": totals.add("invalid_stored", symbol, _from_points(invalid_stored)),
        }
        seen_dups += len(scanned.seqs.repeated)
        corruptions.extend(
            Corruption(symbol=symbol, seq=seq, fields=scanned.corrupted[seq])
            for seq in corrupted[: max(0, limit - len(corruptions))]
        )
        gaps.extend(
            Gap(symbol=symbol, first=a, last=b) for a, b in holes[: max(0, limit - len(gaps))]
        )
        gap_count += len(holes)
        n_emitted += e.count() if e is not None else 0
        n_stored += _count(stored)
        n_rows += scanned.rows
        n_acked += max(watermark, 0)
        repeats += e.repeats if e is not None else 0
        per_symbol.append(
            SymbolIntegrity(
                symbol=symbol,
                emitted=e.count() if e is not None else 0,
                stored=_count(stored),
                rows=scanned.rows,
                acknowledged=watermark,
                last_emitted=e.last() if e is not None else 0,
                last_stored=last_stored,
                gaps=tuple(holes[:limit]),
                gap_count=len(holes),
                **counts,
            )
        )
    quarantine_total = sum(len(v) for v in quarantine.values())
    return IntegrityReport(
        emitted=n_emitted,
        stored=n_stored,
        rows=n_rows,
        acknowledged=n_acked,
        lost=totals.tickset("lost"),
        missing=totals.tickset("missing"),
        duplicated=totals.tickset("duplicated", max(store_duplicates, seen_dups)),
        unexpected=totals.tickset("unexpected"),
        corrupted=totals.tickset("corrupted"),
        quarantined=totals.tickset("quarantined"),
        invalid_stored=totals.tickset("invalid_stored"),
        gaps=tuple(gaps),
        gap_count=gap_count,
        corruptions=tuple(corruptions),
        symbols=tuple(per_symbol),
        require_complete=require_complete,
        acks_checked=acked is not None,
        emitted_repeats=repeats,
        quarantine_unmatched=quarantine_unusable + quarantine_total - accounted_quarantine,
        elapsed_s=clock.monotonic() - started,
    )


# ------------------------------------------------------------------- a store, read-only


async def check_store(
    emitted_log: str | os.PathLike[str],
    db: str | os.PathLike[str],
    acks: AckSource = None,
    *,
    require_complete: bool = False,
    limit: int = 1000,
    clock: Clock = SYSTEM_CLOCK,
    table: str = "ticks",
    schema: str | None = None,
) -> IntegrityReport:
    """:func:`check` against a tick store opened read-only by
    :func:`~strategylab.market.open_tick_reader`: an SQLite file (a path, or a string that is not
    a URL), whose bytes and modification time stay as they were, or a ``postgresql://`` URL,
    read in read-only transactions: the store of one node or of a whole cluster sharing it.
    ``table``/``schema`` (PostgreSQL only) name its tick table as the
    :class:`~strategylab.market.PostgresTickStore` that writes it was given (``schema`` None: the
    URL's ``search_path``).

    Raises :class:`CheckInputError` for an input that cannot be used (missing, empty, not SQLite,
    not a tick store, a server that cannot be reached; an unreadable emitted log or ack log) and
    :class:`~strategylab.market.StoreCorruptedError` for a damaged database, each naming the file;
    ``ValueError`` for a ``table``/``schema`` that is empty or given with an SQLite file.
    """
    try:
        source = open_tick_reader(db, table=table, schema=schema)
        await source.open()
    except (StoreUnusableError, StoreUnreachableError) as exc:
        # Chained: a caller can tell the store's failure (``__cause__``) from the logs'.
        raise CheckInputError(str(exc)) from exc
    try:
        report = await check(
            emitted_log, source, acks, require_complete=require_complete, limit=limit, clock=clock
        )
        if isinstance(source, SQLiteTickReader):
            await asyncio.to_thread(source.verify_unchanged)
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(str(exc)) from exc
    finally:
        await source.aclose()
    return report


check_sqlite = check_store
"""The historical name of :func:`check_store` (which reads a ``postgresql://`` URL as well)."""
