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
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import StrategyLabError
from strategylab.market import (
    QuarantinedTick,
    SQLiteTickReader,
    StoreUnreachableError,
    StoreUnusableError,
    Tick,
    open_tick_reader,
    read_acks,
    read_emitted_payloads,
    validate_tick,
)

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

_encoder = msgspec.msgpack.Encoder()
_ticks_decoder = msgspec.msgpack.Decoder(list[Tick])
_raw_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_tick_decoder = msgspec.msgpack.Decoder(Tick)
_INF = math.inf
_LOWEST_SEQ = -(2**63)
_WINDOW = 65_536
_FIELDS = ("symbol", "seq", "ts", "bid", "ask", "bid_size", "ask_size")

Range = tuple[int, int]
"""An inclusive range of sequence numbers."""


class CheckInputError(StrategyLabError):
    """An input of the check cannot be used: a missing, empty or foreign file, or an ack log that
    is not JSON lines. The message names the file and what is wrong, in one line."""


class EmittedLogError(CheckInputError):
    """The emitted log has a record that is not a torn tail and does not decode."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: undecodable record at byte {offset}: {reason}")
        self.path = path
        self.offset = offset


# --------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class TickSet:
    """A set of (symbol, seq): the exact ``count`` and the first ``items`` in sorted order."""

    count: int
    items: tuple[tuple[str, int], ...] = ()

    @property
    def truncated(self) -> bool:
        """True when ``items`` holds fewer than ``count`` entries (capped for printing)."""
        return self.count > len(self.items)

    def __bool__(self) -> bool:
        return self.count > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "count": self.count,
            "items": [[s, n] for s, n in self.items],
            "truncated": self.truncated,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Sequences ``first``..``last`` of ``symbol`` are neither stored nor quarantined."""

    symbol: str
    first: int
    last: int

    @property
    def size(self) -> int:
        """How many sequence numbers the gap spans."""
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Corruption:
    """A stored tick whose payload differs from the emitted one, and which fields differ."""

    symbol: str
    seq: int
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SymbolIntegrity:
    """The counts for one symbol."""

    symbol: str
    emitted: int
    stored: int
    """Distinct sequences in the store."""
    rows: int
    """Rows read from the store (``stored`` plus duplicates)."""
    acknowledged: int
    """The ack watermark (0 when nothing was acknowledged or no ack log was given)."""
    last_emitted: int
    last_stored: int
    lost: int
    missing: int
    duplicated: int
    unexpected: int
    corrupted: int
    quarantined: int
    invalid_stored: int
    gaps: tuple[Range, ...]
    gap_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrityReport:
    """The checker's verdict: exact counts, capped samples, per-symbol detail."""

    emitted: int
    stored: int
    rows: int
    acknowledged: int
    """Ticks covered by ack watermarks (sum of the watermarks)."""
    lost: TickSet
    missing: TickSet
    duplicated: TickSet
    """``count`` is the larger of the store's ``duplicates()`` and the repeats seen while reading;
    ``items`` are the repeats seen."""
    unexpected: TickSet
    corrupted: TickSet
    quarantined: TickSet
    invalid_stored: TickSet
    gaps: tuple[Gap, ...]
    gap_count: int
    corruptions: tuple[Corruption, ...]
    symbols: tuple[SymbolIntegrity, ...]
    require_complete: bool
    acks_checked: bool
    emitted_repeats: int = 0
    """Ticks the emitted log holds more than once (the first copy is the reference)."""
    quarantine_unmatched: int = 0
    """Quarantine entries that account for no emitted invalid tick (no seq, no reason, or valid)."""
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        """Every emitted tick is stored or, when invalid, quarantined."""
        return not self.missing

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, unexpected, corrupted or invalid in the store, and nothing
        missing when the run claims to have caught up."""
        return not (
            self.lost
            or self.duplicated
            or self.unexpected
            or self.corrupted
            or self.invalid_stored
            or (self.require_complete and self.missing)
        )

    @property
    def rate(self) -> float:
        """Ticks checked per second: the larger of emitted ticks and stored rows, per second."""
        return max(self.emitted, self.rows) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``json.dumps(report.to_dict())``)."""
        sets = ("lost", "missing", "duplicated", "unexpected", "corrupted", "quarantined")
        return {
            "ok": self.ok,
            "complete": self.complete,
            "require_complete": self.require_complete,
            "acks_checked": self.acks_checked,
            "emitted": self.emitted,
            "stored": self.stored,
            "rows": self.rows,
            "acknowledged": self.acknowledged,
            **{name: getattr(self, name).to_dict() for name in sets},
            "invalid_stored": self.invalid_stored.to_dict(),
            "gaps": [[g.symbol, g.first, g.last] for g in self.gaps],
            "gap_count": self.gap_count,
            "corruptions": [
                {"symbol": c.symbol, "seq": c.seq, "fields": list(c.fields)}
                for c in self.corruptions
            ],
            "symbols": [dataclasses.asdict(s) for s in self.symbols],
            "emitted_repeats": self.emitted_repeats,
            "quarantine_unmatched": self.quarantine_unmatched,
            "elapsed_s": self.elapsed_s,
        }

    def summary(self, limit: int = 5, width: int = 80) -> str:
        """A readable plain-text report: verdict, a table (a row per measure, a column per
        symbol, split into as many blocks as it takes to keep lines within ``width``), and the
        first ``limit`` findings of each kind."""
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"integrity {verdict}: {self.emitted} emitted, {self.stored} stored "
            f"({self.rows} rows), "
            f"{self.acknowledged if self.acks_checked else 'n/a'} acknowledged; "
            f"checked in {self.elapsed_s:.2f} s ({self.rate:,.0f} ticks/s)"
            + (" [completeness required]" if self.require_complete else ""),
        ]
        measures: tuple[str, ...] = (
            "emitted", "stored", "acknowledged", "lost", "missing", "duplicated",
            "unexpected", "corrupted", "quarantined", "invalid_stored", "gap_count",
        )  # fmt: skip
        columns = [(s.symbol, [f"{getattr(s, m):,}" for m in measures]) for s in self.symbols]
        totals: tuple[int, ...] = (self.emitted, self.stored, self.acknowledged, self.lost.count)
        totals += (self.missing.count, self.duplicated.count, self.unexpected.count)
        totals += (self.corrupted.count, self.quarantined.count, self.invalid_stored.count)
        columns.append(("TOTAL", [f"{v:,}" for v in (*totals, self.gap_count)]))
        lines.extend(_blocks(measures, columns, width))
        for name in ("lost", "duplicated", "unexpected", "corrupted", "invalid_stored", "missing"):
            found: TickSet = getattr(self, name)
            if found:
                shown = ", ".join(f"{s}#{n}" for s, n in found.items[:limit])
                more = found.count - min(limit, len(found.items))
                lines.append(f"  {name}: {shown}" + (f" … and {more} more" if more else ""))
        lines.extend(
            f"  corrupted {c.symbol}#{c.seq}: {', '.join(c.fields)} differ"
            for c in self.corruptions[:limit]
        )
        if self.gaps:
            shown = ", ".join(f"{g.symbol}#{g.first}..{g.last}" for g in self.gaps[:limit])
            more = self.gap_count - min(limit, len(self.gaps))
            lines.append(f"  gaps: {shown}" + (f" … and {more} more" if more else ""))
        return "\n".join(lines)


def _blocks(labels: tuple[str, ...], columns: list[tuple[str, list[str]]], width: int) -> list[str]:
    """``labels`` down the side, ``columns`` across, in blocks of columns that fit ``width``
    (a column wider than ``width`` on its own still gets a block: numbers are never cut)."""
    side = max(len(label) for label in labels)
    blocks: list[list[tuple[str, list[str], int]]] = [[]]
    used = 2 + side
    for heading, cells in columns:
        w = max(len(heading), *(len(c) for c in cells))
        if blocks[-1] and used + 2 + w > width:
            blocks.append([])
            used = 2 + side
        blocks[-1].append((heading, cells, w))
        used += 2 + w
    out: list[str] = []
    for block in blocks:
        out.append("  " + " " * side + "".join(f"  {h.rjust(w)}" for h, _c, w in block))
        out.extend(
            "  " + label.ljust(side) + "".join(f"  {c[i].rjust(w)}" for _h, c, w in block)
            for i, label in enumerate(labels)
        )
    return out


# ------------------------------------------------------------------------------ range arithmetic


def _count(ranges: Iterable[Range]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def _subtract(ranges: list[Range], minus: list[Range]) -> list[Range]:
    """``ranges`` − ``minus``; both sorted, disjoint, inclusive."""
    out: list[Range] = []
    j = 0
    for a, b in ranges:
        lo = a
        while j < len(minus) and minus[j][1] < lo:
            j += 1
        k = j
        while k < len(minus) and minus[k][0] <= b:
            ma, mb = minus[k]
            if ma > lo:
                out.append((lo, ma - 1))
            lo = max(lo, mb + 1)
            if mb > b:
                break
            k += 1
        if lo <= b:
            out.append((lo, b))
    return out


def _from_points(points: Iterable[int]) -> list[Range]:
    out: list[Range] = []
    for p in sorted(set(points)):
        if out and out[-1][1] + 1 == p:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def _contains(ranges: list[Range], starts: list[int], seq: int) -> bool:
    i = bisect_right(starts, seq) - 1
    return i >= 0 and ranges[i][1] >= seq


def _points(ranges: Iterable[Range], limit: int) -> Iterator[int]:
    for a, b in ranges:
        for p in range(a, b + 1):
            if limit <= 0:
                return
            limit -= 1
            yield p


class _RangeBuilder:
    """Sorted inclusive ranges built from sequences arriving (mostly) in order; repeats counted."""

    __slots__ = ("ranges", "repeated", "strays")

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.strays: list[int] = []
        self.repeated: list[int] = []

    def add(self, seq: int) -> None:
        ranges = self.ranges
        if ranges:
            last = ranges[-1]
            if seq == last[1] + 1:
                last[1] = seq
                return
            if seq > last[1]:
                ranges.append([seq, seq])
                return
            if seq == last[1] or last[0] <= seq:
                self.repeated.append(seq)
                return
            self.strays.append(seq)
            return
        ranges.append([seq, seq])

    def add_range(self, a: int, b: int) -> None:
        ranges = self.ranges
        if not ranges or a > ranges[-1][1] + 1:
            ranges.append([a, b])
        elif a == ranges[-1][1] + 1:
            ranges[-1][1] = b
        else:
            for seq in range(a, b + 1):
                self.add(seq)

    def finish(self) -> list[Range]:
        out = [(a, b) for a, b in self.ranges]
        if self.strays:
            starts = [a for a, _ in out]
            extra: set[int] = set()
            for seq in self.strays:
                if seq in extra or _contains(out, starts, seq):
                    self.repeated.append(seq)
                else:
                    extra.add(seq)
            merged: list[Range] = []
            for a, b in sorted(out + _from_points(extra)):
                if merged and merged[-1][1] + 1 >= a:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], b))
                else:
                    merged.append((a, b))
            out = merged
        return out


# -------------------------------------------------------------------------------- emitted side


class _Emitted:
    """One symbol's emitted ticks: a contiguous run ``first``..``next - 1`` kept as concatenated
    encodings, plus a dict for anything out of that run (which the exchange never produces)."""

    __slots__ = ("buf", "first", "invalid", "max_ts", "next", "offs", "repeats", "sparse", "symbol")

    def __init__(self, symbol: str, first: int) -> None:
        self.symbol = symbol
        self.first = first
        self.next = first
        self.buf = bytearray()
        self.offs = array("Q", [0])
        self.sparse: dict[int, bytes] = {}
        self.invalid: dict[int, str] = {}
        self.max_ts: float = -_INF
        self.repeats = 0

    def add_other(self, seq: int, raw: bytes) -> bool:
        """Keep a tick outside the contiguous run; False (and counted) when it is a repeat."""
        if self.first <= seq < self.next or seq in self.sparse:
            self.repeats += 1
            return False
        self.sparse[seq] = raw
        return True

    def raw(self, seq: int) -> bytes | None:
        if self.first <= seq < self.next:
            i = seq - self.first
            return bytes(self.buf[self.offs[i] : self.offs[i + 1]])
        return self.sparse.get(seq)

    def count(self) -> int:
        return self.next - self.first + len(self.sparse)

    def ranges(self) -> list[Range]:
        run = [(self.first, self.next - 1)] if self.next > self.first else []
        if not self.sparse:
            return run
        merged: list[Range] = []
        for a, b in sorted(run + _from_points(self.sparse)):
            if merged and merged[-1][1] + 1 >= a:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def last(self) -> int:
        return max(self.next - 1, max(self.sparse, default=0)) if self.count() else 0


def _batches(
    source: str | os.PathLike[str] | Iterable[Tick],
) -> Iterator[tuple[list[Tick], list[Any]]]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        records = read_emitted_payloads(path)
        while True:
            try:
                offset, payload = next(records)
            except StopIteration:
                return
            except OSError as exc:
                raise CheckInputError(
                    f"{path}: cannot read the emitted log: {exc.strerror or exc}"
                ) from None
            try:
                yield _ticks_decoder.decode(payload), _raw_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                raise EmittedLogError(path, offset, str(exc)) from exc
    batch: list[Tick] = []
    for tick in source:
        batch.append(tick)
        if len(batch) >= 4096:
            yield batch, [_encoder.encode(t) for t in batch]
            batch = []
    if batch:
        yield batch, [_encoder.encode(t) for t in batch]


def _load_emitted(source: str | os.PathLike[str] | Iterable[Tick]) -> dict[str, _Emitted]:
    table: dict[str, _Emitted] = {}
    inf = _INF
    for ticks, raws in _batches(source):
        for tick, raw in zip(ticks, raws, strict=True):
            e = table.get(tick.symbol)
            if e is None:
                e = table[tick.symbol] = _Emitted(tick.symbol, tick.seq)
            seq = tick.seq
            if seq == e.next:
                e.buf += raw
                e.offs.append(len(e.buf))
                e.next = seq + 1
            elif not e.add_other(seq, bytes(raw)):
                continue  # a repeat: the first copy is the reference, already validated
            # validate_tick's rules inline (the common, valid case costs a few comparisons);
            # previous_ts is the newest accepted ts, i.e. the running max of well-formed ticks.
            if (
                0.0 < tick.bid <= tick.ask < inf
                and 0.0 <= tick.bid_size < inf
                and 0.0 <= tick.ask_size < inf
                and seq >= 1
                and tick.symbol
            ):
                if tick.ts >= e.max_ts:
                    e.max_ts = tick.ts
                    continue
                previous: int | None = int(e.max_ts)
            else:
                previous = None if e.max_ts == -inf else int(e.max_ts)
            reason = validate_tick(tick, previous)
            if reason is not None:
                e.invalid.setdefault(seq, reason)
    return table


# --------------------------------------------------------------------------------- store side


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


# ---------------------------------------------------------------------------------- the check


def _acks(acks: str | os.PathLike[str] | Mapping[str, int] | None) -> dict[str, int] | None:
    if acks is None:
        return None
    if isinstance(acks, Mapping):
        return {str(s): int(n) for s, n in acks.items()}
    try:
        return read_acks(acks)
    except FileNotFoundError:
        raise CheckInputError(f"{os.fspath(acks)}: the ack log does not exist") from None
    except OSError as exc:
        raise CheckInputError(
            f"{os.fspath(acks)}: cannot read the ack log: {exc.strerror or exc}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        # json's own message, a missing key, or a line that is not an object.
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckInputError(
            f'{os.fspath(acks)}: not an ack log (JSON lines {{"symbol": ..., "seq": ...}}): {what}'
        ) from None


def _quarantine(entries: list[QuarantinedTick]) -> tuple[dict[str, set[int]], int]:
    by_symbol: dict[str, set[int]] = {}
    unusable = 0
    for q in entries:
        if q.symbol is None or q.seq is None or not q.reason.strip():
            unusable += 1
            continue
        by_symbol.setdefault(q.symbol, set()).add(q.seq)
    return by_symbol, unusable


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
    acks: str | os.PathLike[str] | Mapping[str, int] | None = None,
    *,
    require_complete: bool = False,
    limit: int = 1000,
    window: int = _WINDOW,
    clock: Clock = SYSTEM_CLOCK,
) -> IntegrityReport:
    """Check ``store`` against the exchange's emitted log and, when given, the node's acks.

    ``emitted_log`` is a path to an emitted log (or any iterable of ticks, for tests); ``acks`` a
    path to an ack log or a ``{symbol: watermark}`` mapping; ``limit`` caps the items kept per
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
    acks: str | os.PathLike[str] | Mapping[str, int] | None = None,
    *,
    require_complete: bool = False,
    limit: int = 1000,
    clock: Clock = SYSTEM_CLOCK,
) -> IntegrityReport:
    """:func:`check` against a tick store opened read-only by
    :func:`~strategylab.market.open_tick_reader`: an SQLite file (a path, or a string that is not
    a URL), whose bytes and modification time stay as they were, or a ``postgresql://`` URL,
    read in read-only transactions.

    Raises :class:`CheckInputError` for an input that cannot be used (missing, empty, not SQLite,
    not a tick store, a server that cannot be reached; an unreadable emitted log or ack log) and
    :class:`~strategylab.market.StoreCorruptedError` for a damaged database, each naming the file.
    """
    source = open_tick_reader(db)
    try:
        await source.open()
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(str(exc)) from None
    try:
        report = await check(
            emitted_log, source, acks, require_complete=require_complete, limit=limit, clock=clock
        )
        if isinstance(source, SQLiteTickReader):
            await asyncio.to_thread(source.verify_unchanged)
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(str(exc)) from None
    finally:
        await source.aclose()
    return report


check_sqlite = check_store
"""The historical name of :func:`check_store` (which reads a ``postgresql://`` URL as well)."""
