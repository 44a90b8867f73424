"""The integrity checker against a store double: each planted fault must be reported exactly."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategylab.chaos._checker import (
    EmittedLogError,
    IntegrityReport,
    check,
)
from strategylab.chaos._checker_inputs import _load_emitted
from strategylab.chaos._checker_ranges import _from_points, _subtract
from strategylab.market._ledger import AckLog, EmittedLog
from strategylab.market._store import QuarantinedTick, TickStore
from strategylab.market._tick import Tick, validate_tick

SYMBOLS = ("AAPL", "MSFT", "TSLA")
T0 = 1_700_000_000_000_000_000


def make_ticks(per_symbol: int, symbols: Sequence[str] = SYMBOLS, seed: int = 7) -> list[Tick]:
    """Interleaved random-walk ticks, per-symbol seq from 1, as the exchange emits them."""
    rng = random.Random(seed)
    mids = dict.fromkeys(symbols, 100.0)
    out: list[Tick] = []
    ts = T0
    for seq in range(1, per_symbol + 1):
        for symbol in symbols:
            ts += 1
            mids[symbol] += rng.uniform(-0.05, 0.05)
            mid = mids[symbol]
            out.append(Tick(symbol, seq, ts, mid - 0.01, mid + 0.01, rng.random(), rng.random()))
    return out


def write_log(path: Path, ticks: Sequence[Tick], per_record: int = 50) -> Path:
    """Write ``ticks`` as the exchange would, in records of ``per_record``."""
    log = EmittedLog(path)
    for i in range(0, len(ticks), per_record):
        log.append(list(ticks[i : i + per_record]))
    log.close()
    return path


class DictStore:
    """A TickStore over a dict; ``rows`` may hold a (symbol, seq) twice to plant a duplicate."""

    def __init__(self, ticks: Sequence[Tick] = ()) -> None:
        self.rows: dict[str, list[Tick]] = {}
        self.q: list[QuarantinedTick] = []
        for t in ticks:
            self.rows.setdefault(t.symbol, []).append(t)
        self.reads = 0

    @property
    def name(self) -> str:
        return "dict"

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def write(self, ticks: Sequence[Tick]) -> int:
        for t in ticks:
            self.rows.setdefault(t.symbol, []).append(t)
        return len(ticks)

    async def last_seqs(self) -> dict[str, int]:
        return {s: max(t.seq for t in rows) for s, rows in self.rows.items() if rows}

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        self.reads += 1
        hi = math.inf if to_seq is None else to_seq
        rows = [t for t in self.rows.get(symbol, []) if from_seq <= t.seq <= hi]
        return sorted(rows, key=lambda t: t.seq)

    async def symbols(self) -> list[str]:
        return sorted(s for s, rows in self.rows.items() if rows)

    async def duplicates(self) -> int:
        return 0

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        self.q.extend(entries)

    async def quarantined(self) -> list[QuarantinedTick]:
        return list(self.q)

    async def health(self) -> bool:
        return True

    def remove(self, symbol: str, seq: int) -> None:
        self.rows[symbol] = [t for t in self.rows[symbol] if t.seq != seq]

    def replace(self, tick: Tick) -> None:
        self.rows[tick.symbol] = [tick if t.seq == tick.seq else t for t in self.rows[tick.symbol]]


def acked_all(ticks: Sequence[Tick]) -> dict[str, int]:
    """Watermarks acknowledging every tick."""
    out: dict[str, int] = {}
    for t in ticks:
        out[t.symbol] = max(out.get(t.symbol, 0), t.seq)
    return out


async def run(
    path: Path, store: DictStore, acks: dict[str, int] | Path | None = None, **kw: object
) -> IntegrityReport:
    async with asyncio.timeout(20):
        return await check(path, store, acks, **kw)  # type: ignore[arg-type]


def test_dict_store_is_a_tick_store() -> None:
    """The store double satisfies the TickStore protocol (the seam is legitimate)."""
    assert isinstance(DictStore(), TickStore)


@pytest.mark.timeout(20)
async def test_clean_run_is_ok(tmp_path: Path) -> None:
    """Emitted == stored and all acknowledged: ok, complete, every count zero."""
    ticks = make_ticks(300)
    path = write_log(tmp_path / "emitted.log", ticks)
    report = await run(path, DictStore(ticks), acked_all(ticks), require_complete=True)
    assert report.ok
    assert report.complete
    assert (report.emitted, report.stored, report.rows) == (900, 900, 900)
    assert report.acknowledged == 900
    for found in (report.lost, report.missing, report.duplicated, report.unexpected):
        assert found.count == 0
    assert report.corrupted.count == 0
    assert report.gaps == ()
    assert [s.symbol for s in report.symbols] == sorted(SYMBOLS)


@pytest.mark.timeout(20)
async def test_planted_lost_tick_is_reported(tmp_path: Path) -> None:
    """An acknowledged tick deleted from the store is lost, missing, and a one-tick gap."""
    ticks = make_ticks(100)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    store.remove("MSFT", 42)
    report = await run(path, store, acked_all(ticks))
    assert not report.ok
    assert report.lost.items == (("MSFT", 42),)
    assert report.lost.count == 1
    assert report.missing.items == (("MSFT", 42),)
    assert [(g.symbol, g.first, g.last) for g in report.gaps] == [("MSFT", 42, 42)]


@pytest.mark.timeout(20)
async def test_unacknowledged_missing_tail_is_informational(tmp_path: Path) -> None:
    """Ticks past the ack watermark and not stored are missing, not lost: ok unless required."""
    ticks = make_ticks(100)
    path = write_log(tmp_path / "emitted.log", ticks)
    stored = [t for t in ticks if t.seq <= 90]
    store = DictStore(stored)
    acks = acked_all(stored)
    relaxed = await run(path, store, acks)
    assert relaxed.ok
    assert relaxed.lost.count == 0
    assert relaxed.missing.count == 30
    assert relaxed.gaps == ()  # the tail past the last stored seq is not a gap
    strict = await run(path, store, acks, require_complete=True)
    assert not strict.ok
    assert strict.missing.count == 30


@pytest.mark.timeout(20)
async def test_ack_beyond_store_is_lost(tmp_path: Path) -> None:
    """A watermark above what is stored claims ticks the store lacks: those are lost."""
    ticks = make_ticks(50)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore([t for t in ticks if t.seq <= 45])
    report = await run(path, store, {"AAPL": 48})
    assert report.lost.items == (("AAPL", 46), ("AAPL", 47), ("AAPL", 48))


@pytest.mark.timeout(20)
async def test_ack_log_file_is_read(tmp_path: Path) -> None:
    """Acks given as an ack-log path are read with read_acks (highest watermark wins)."""
    ticks = make_ticks(20)
    path = write_log(tmp_path / "emitted.log", ticks)
    ack_log = AckLog(tmp_path / "acks.jsonl")
    ack_log.append({"TSLA": 10})
    ack_log.append({"TSLA": 20})
    ack_log.close()
    store = DictStore(ticks)
    store.remove("TSLA", 15)
    report = await run(path, store, tmp_path / "acks.jsonl")
    assert report.acks_checked
    assert report.lost.items == (("TSLA", 15),)


@pytest.mark.timeout(20)
async def test_planted_duplicate_is_reported(tmp_path: Path) -> None:
    """A store that returns a (symbol, seq) twice is reported as duplicated, with exact count."""
    ticks = make_ticks(100)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    dup = next(t for t in ticks if t.symbol == "AAPL" and t.seq == 7)
    await store.write([dup, dup])
    report = await run(path, store, acked_all(ticks))
    assert not report.ok
    assert report.duplicated.items == (("AAPL", 7),)
    assert report.duplicated.count == 2  # rows beyond the first
    assert report.corrupted.count == 0
    assert report.stored == 300
    assert report.rows == 302


@pytest.mark.timeout(20)
async def test_store_reported_duplicates_count(tmp_path: Path) -> None:
    """A store whose duplicates() reports rows read() does not show still fails the check."""
    ticks = make_ticks(10)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)

    async def three() -> int:
        return 3

    store.duplicates = three  # type: ignore[method-assign]
    report = await run(path, store)
    assert report.duplicated.count == 3
    assert not report.ok


@pytest.mark.timeout(20)
async def test_planted_corruption_one_ulp_is_reported(tmp_path: Path) -> None:
    """A stored bid one ulp away from the emitted one is corrupted, and the field is named."""
    ticks = make_ticks(100)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    good = next(t for t in ticks if t.symbol == "TSLA" and t.seq == 77)
    bad = Tick(good.symbol, good.seq, good.ts, math.nextafter(good.bid, 0.0), good.ask,
               good.bid_size, good.ask_size)  # fmt: skip
    assert bad.bid != good.bid
    store.replace(bad)
    report = await run(path, store, acked_all(ticks))
    assert not report.ok
    assert report.corrupted.items == (("TSLA", 77),)
    assert report.corruptions[0].fields == ("bid",)
    assert report.lost.count == 0
    assert report.missing.count == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("ts", T0 - 1), ("ask", 1e9), ("bid_size", 0.0), ("ask_size", 123.5), ("symbol", "XXX")],
)
@pytest.mark.timeout(20)
async def test_every_payload_field_is_compared(tmp_path: Path, field: str, value: object) -> None:
    """A change to any payload field (or a row under the wrong symbol) is a corruption."""
    ticks = make_ticks(20)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    good = next(t for t in ticks if t.symbol == "AAPL" and t.seq == 5)
    fields = {name: getattr(good, name) for name in good.__struct_fields__}
    fields[field] = value
    store.rows["AAPL"] = [Tick(**fields) if t is good else t for t in store.rows["AAPL"]]
    report = await run(path, store)
    assert report.corrupted.items == (("AAPL", 5),)
    assert field in report.corruptions[0].fields


@pytest.mark.timeout(20)
async def test_negative_zero_differs_from_zero(tmp_path: Path) -> None:
    """Floats are compared bit for bit: -0.0 stored for an emitted 0.0 size is a corruption."""
    ticks = [Tick("AAPL", 1, T0, 1.0, 2.0, 0.0, 0.0)]
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore([Tick("AAPL", 1, T0, 1.0, 2.0, -0.0, 0.0)])
    report = await run(path, store)
    assert report.corruptions[0].fields == ("bid_size",)


@pytest.mark.timeout(20)
async def test_unexpected_seq_beyond_emitted(tmp_path: Path) -> None:
    """A stored seq past the emitted end is unexpected (and read despite last_seqs)."""
    ticks = make_ticks(30)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    await store.write([Tick("MSFT", 1000, T0 + 10**9, 1.0, 1.1, 1.0, 1.0)])
    report = await run(path, store, acked_all(ticks))
    assert not report.ok
    assert report.unexpected.items == (("MSFT", 1000),)
    assert report.lost.count == 0
    assert [(g.symbol, g.first, g.last) for g in report.gaps] == [("MSFT", 31, 999)]


@pytest.mark.timeout(20)
async def test_unexpected_symbol_never_emitted(tmp_path: Path) -> None:
    """Every row of a symbol the exchange never emitted is unexpected."""
    ticks = make_ticks(30)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    await store.write([Tick("GHOST", n, T0 + n, 1.0, 1.1, 1.0, 1.0) for n in (1, 2, 3)])
    report = await run(path, store)
    assert report.unexpected.items == (("GHOST", 1), ("GHOST", 2), ("GHOST", 3))
    ghost = next(s for s in report.symbols if s.symbol == "GHOST")
    assert (ghost.emitted, ghost.stored, ghost.unexpected) == (0, 3, 3)


@pytest.mark.timeout(20)
async def test_unexpected_seq_below_one(tmp_path: Path) -> None:
    """A stored seq 0 (never valid) is read and reported as unexpected."""
    ticks = make_ticks(5)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    await store.write([Tick("AAPL", 0, T0, 1.0, 1.1, 1.0, 1.0)])
    report = await run(path, store)
    assert report.unexpected.items == (("AAPL", 0),)


@pytest.mark.timeout(20)
async def test_gaps_are_ranges(tmp_path: Path) -> None:
    """Holes in the stored sequences come back as inclusive ranges, per symbol."""
    ticks = make_ticks(100)
    path = write_log(tmp_path / "emitted.log", ticks)
    holes = {("AAPL", n) for n in (*range(10, 20), 50)} | {("TSLA", n) for n in range(1, 4)}
    store = DictStore([t for t in ticks if (t.symbol, t.seq) not in holes])
    report = await run(path, store)
    assert [(g.symbol, g.first, g.last, g.size) for g in report.gaps] == [
        ("AAPL", 10, 19, 10),
        ("AAPL", 50, 50, 1),
        ("TSLA", 1, 3, 3),
    ]
    assert report.gap_count == 3
    aapl = next(s for s in report.symbols if s.symbol == "AAPL")
    assert aapl.gaps == ((10, 19), (50, 50))
    assert report.missing.count == 14


def spoiled(ticks: list[Tick], where: dict[tuple[str, int], str]) -> list[Tick]:
    """Replace ticks with invalid ones: NaN bid, negative bid, crossed, or ts backwards."""
    out = []
    for t in ticks:
        how = where.get((t.symbol, t.seq))
        bid, ask, ts = t.bid, t.ask, t.ts
        if how == "nan":
            bid = math.nan
        elif how == "negative":
            bid = -t.bid
        elif how == "crossed":
            bid = t.ask + 1.0
        elif how == "backwards":
            ts = T0 - 5
        out.append(Tick(t.symbol, t.seq, ts, bid, ask, t.bid_size, t.ask_size))
    return out


@pytest.mark.timeout(20)
async def test_quarantined_invalid_ticks_are_accounted(tmp_path: Path) -> None:
    """Invalid emitted ticks in the quarantine with a reason are neither missing, lost nor gaps."""
    plan = {("AAPL", 5): "nan", ("AAPL", 6): "negative", ("MSFT", 9): "crossed"}
    plan[("TSLA", 30)] = "backwards"
    ticks = spoiled(make_ticks(40), plan)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore([t for t in ticks if (t.symbol, t.seq) not in plan])
    for t in ticks:
        if (t.symbol, t.seq) in plan:
            reason = validate_tick(t, T0 if t.symbol == "TSLA" else None)
            assert reason is not None
            store.q.append(QuarantinedTick(0, reason, repr(t), t.symbol, t.seq))
    report = await run(path, store, acked_all(ticks), require_complete=True)
    assert report.ok, report.summary()
    assert report.quarantined.items == tuple(sorted(plan))
    assert report.missing.count == 0
    assert report.lost.count == 0
    assert report.gaps == ()
    assert report.quarantine_unmatched == 0


@pytest.mark.timeout(20)
async def test_invalid_tick_neither_stored_nor_quarantined_is_missing(tmp_path: Path) -> None:
    """An invalid emitted tick absent from store and quarantine is missing (and lost if acked)."""
    ticks = spoiled(make_ticks(20), {("MSFT", 3): "nan"})
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore([t for t in ticks if (t.symbol, t.seq) != ("MSFT", 3)])
    report = await run(path, store, acked_all(ticks))
    assert report.missing.items == (("MSFT", 3),)
    assert report.lost.items == (("MSFT", 3),)
    assert report.quarantined.count == 0


@pytest.mark.timeout(20)
async def test_quarantine_entry_without_reason_does_not_account(tmp_path: Path) -> None:
    """A quarantine entry with a blank reason does not account for the invalid tick."""
    ticks = spoiled(make_ticks(10), {("AAPL", 2): "crossed"})
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore([t for t in ticks if (t.symbol, t.seq) != ("AAPL", 2)])
    store.q.append(QuarantinedTick(0, "  ", "", "AAPL", 2))
    report = await run(path, store, require_complete=True)
    assert report.missing.items == (("AAPL", 2),)
    assert report.quarantine_unmatched == 1
    assert not report.ok


@pytest.mark.timeout(20)
async def test_valid_tick_in_quarantine_is_still_missing(tmp_path: Path) -> None:
    """Quarantining a VALID tick does not excuse its absence from the store."""
    ticks = make_ticks(10)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore([t for t in ticks if (t.symbol, t.seq) != ("AAPL", 4)])
    store.q.append(QuarantinedTick(0, "lost range 4..4: gone", "", "AAPL", 4))
    report = await run(path, store, acked_all(ticks))
    assert report.lost.items == (("AAPL", 4),)
    assert report.quarantine_unmatched == 1


@pytest.mark.timeout(20)
async def test_invalid_tick_in_store_is_reported(tmp_path: Path) -> None:
    """An emitted invalid tick that reached the store fails the check as invalid_stored."""
    ticks = spoiled(make_ticks(10), {("TSLA", 8): "negative"})
    path = write_log(tmp_path / "emitted.log", ticks)
    report = await run(path, DictStore(ticks))
    assert report.invalid_stored.items == (("TSLA", 8),)
    assert report.corrupted.count == 0
    assert not report.ok


@pytest.mark.timeout(20)
async def test_windows_smaller_than_the_run(tmp_path: Path) -> None:
    """Reading in small windows finds the same faults as one big read."""
    ticks = make_ticks(200)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    store.remove("AAPL", 64)
    store.remove("AAPL", 65)
    good = next(t for t in ticks if t.symbol == "MSFT" and t.seq == 129)
    store.replace(Tick("MSFT", 129, good.ts + 1, good.bid, good.ask, 1.0, 1.0))
    small = await run(path, store, acked_all(ticks), window=16)
    big = await run(path, store, acked_all(ticks))
    assert small.lost.items == big.lost.items == (("AAPL", 64), ("AAPL", 65))
    assert small.corrupted.items == big.corrupted.items == (("MSFT", 129),)
    assert store.reads > 3 * 200 // 16


@pytest.mark.timeout(20)
async def test_counts_exact_when_items_capped(tmp_path: Path) -> None:
    """With ``limit``, items are capped but counts stay exact."""
    ticks = make_ticks(100)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore([t for t in ticks if t.seq <= 10])
    report = await run(path, store, acked_all(ticks), limit=4)
    assert report.lost.count == 270
    assert report.lost.truncated
    assert report.lost.items == (("AAPL", 11), ("AAPL", 12), ("AAPL", 13), ("AAPL", 14))


@pytest.mark.timeout(20)
async def test_to_dict_is_json_and_summary_names_findings(tmp_path: Path) -> None:
    """to_dict() round-trips through JSON; summary() states the verdict and the first findings."""
    ticks = make_ticks(20)
    path = write_log(tmp_path / "emitted.log", ticks)
    store = DictStore(ticks)
    store.remove("AAPL", 3)
    report = await run(path, store, acked_all(ticks))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["lost"] == {"count": 1, "items": [["AAPL", 3]], "truncated": False}
    assert data["symbols"][0]["symbol"] == "AAPL"
    assert data["symbols"][0]["gaps"] == [[3, 3]]
    text = report.summary()
    assert text.startswith("integrity FAILED")
    assert "lost: AAPL#3" in text
    assert "TOTAL" in text


@pytest.mark.timeout(20)
async def test_torn_last_record_is_ignored(tmp_path: Path) -> None:
    """A torn last record (exchange killed mid-write) is ignored, as read_emitted does."""
    ticks = make_ticks(10)
    path = write_log(tmp_path / "emitted.log", ticks, per_record=10)
    with path.open("ab") as f:
        f.write(b"\x00\x00\x10\x00partial")
    report = await run(path, DictStore(ticks))
    assert report.ok
    assert report.emitted == 30


@pytest.mark.timeout(20)
async def test_undecodable_record_names_the_offset(tmp_path: Path) -> None:
    """A complete but garbled record raises EmittedLogError naming the file and byte offset."""
    ticks = make_ticks(2)
    path = write_log(tmp_path / "emitted.log", ticks, per_record=6)
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\x00\x00\x00\x03\xc1\xc1\xc1")
    with pytest.raises(EmittedLogError, match=f"byte {size}"):
        await run(path, DictStore(ticks))


@pytest.mark.timeout(20)
async def test_emitted_repeats_are_counted_once(tmp_path: Path) -> None:
    """A tick logged twice counts once as emitted and is reported in emitted_repeats."""
    ticks = make_ticks(10)
    path = write_log(tmp_path / "emitted.log", [*ticks, ticks[4]])
    report = await run(path, DictStore(ticks), require_complete=True)
    assert report.ok
    assert report.emitted == 30
    assert report.emitted_repeats == 1


@pytest.mark.timeout(20)
async def test_bad_arguments_are_named() -> None:
    """A negative limit or a zero window is refused with the argument named."""
    with pytest.raises(ValueError, match="limit="):
        await check([], DictStore(), limit=-1)
    with pytest.raises(ValueError, match="window="):
        await check([], DictStore(), window=0)


# ------------------------------------------------------------------------- properties


finite = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)
maybe_bad = st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(maybe_bad, maybe_bad, maybe_bad, maybe_bad, st.integers(-3, 3))))
def test_inline_validation_matches_validate_tick(rows: list[tuple[float, ...]]) -> None:
    """The checker's fast validity test agrees with validate_tick (previous = last accepted ts)."""
    ticks = []
    ts = T0
    for seq, (bid, ask, bs, asz, dt) in enumerate(rows, start=1):
        ts += int(dt)
        ticks.append(Tick("S", seq, ts, bid, ask, bs, asz))
    expected: dict[int, str] = {}
    previous: int | None = None
    for t in ticks:
        reason = validate_tick(t, previous)
        if reason is None:
            previous = t.ts
        else:
            expected[t.seq] = reason
    table = _load_emitted(ticks)
    assert (table["S"].invalid if ticks else {}) == expected


ranges = st.lists(st.integers(0, 60), max_size=30).map(_from_points)


@settings(max_examples=300, deadline=None)
@given(ranges, ranges)
def test_range_subtraction_matches_sets(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    """Range subtraction equals set difference."""

    def expand(rs: list[tuple[int, int]]) -> set[int]:
        return {p for lo, hi in rs for p in range(lo, hi + 1)}

    assert expand(_subtract(a, b)) == expand(a) - expand(b)
    assert _subtract(a, b) == _from_points(expand(a) - expand(b))


plantings = st.lists(
    st.tuples(
        st.sampled_from(["drop", "duplicate", "corrupt", "insert"]),
        st.sampled_from(["A", "B", "C"]),
        st.integers(1, 40),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    emitted=st.dictionaries(st.sampled_from(["A", "B"]), st.integers(1, 30), min_size=1),
    planted=plantings,
    ack_frac=st.floats(0.0, 1.0),
    window=st.sampled_from([3, 7, 65_536]),
)
def test_report_finds_exactly_what_was_planted(
    emitted: dict[str, int],
    planted: list[tuple[str, str, int]],
    ack_frac: float,
    window: int,
) -> None:
    """Random emitted sets and random drop/duplicate/corrupt/insert plantings: found exactly."""
    ticks = [
        Tick(s, n, T0 + n, 10.0 + n / 7, 10.5 + n / 7, float(n), 1.0)
        for n in range(1, max(emitted.values()) + 1)
        for s in sorted(emitted)
        if n <= emitted[s]
    ]
    emitted_keys = {(t.symbol, t.seq) for t in ticks}
    rows = {(t.symbol, t.seq): [t] for t in ticks}
    dropped: set[tuple[str, int]] = set()
    corrupted: set[tuple[str, int]] = set()
    for action, symbol, seq in planted:
        key = (symbol, seq)
        present = rows.get(key)
        if action == "drop" and key in emitted_keys and present:
            del rows[key]
            dropped.add(key)
        elif action == "duplicate" and present:
            present.append(present[0])
        elif action == "corrupt" and key in emitted_keys and present:
            t = present[0]
            rows[key] = [
                Tick(t.symbol, t.seq, t.ts, t.bid, math.nextafter(t.ask, math.inf), 1.0, 1.0)
                for _ in present
            ]
            corrupted.add(key)
        elif action == "insert" and key not in emitted_keys and present is None:
            rows[key] = [Tick(symbol, seq, T0, 1.0, 2.0, 3.0, 4.0)]
    store = DictStore([t for key in sorted(rows) for t in rows[key]])
    acks = {s: int(n * ack_frac) for s, n in emitted.items()}

    report = asyncio.run(check(ticks, store, acks, window=window))

    stored = set(rows)
    duplicated = {k for k, v in rows.items() if len(v) > 1}
    corrupted &= stored
    acked = {(s, n) for s, w in acks.items() for n in range(1, w + 1)}
    assert set(report.lost.items) == acked - stored
    assert set(report.missing.items) == emitted_keys - stored == dropped
    assert set(report.duplicated.items) == duplicated
    assert report.duplicated.count == sum(len(v) - 1 for v in rows.values())
    assert set(report.unexpected.items) == stored - emitted_keys
    assert set(report.corrupted.items) == corrupted
    assert report.ok == (not (acked - stored or duplicated or stored - emitted_keys or corrupted))
    assert report.stored == len(stored)
