"""Spool corruption on real files: kept around, moved aside, reported, re-fetched, never lost."""

from __future__ import annotations

import asyncio
import json
import random
import struct
import zlib
from pathlib import Path

import pytest

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._failover_store import FailoverState, FailoverStore
from strategylab.market._protocol import encode_ticks
from strategylab.market._spool import SpoolCorruption, SpoolStore
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._store import QuarantinedTick
from strategylab.market._tick import Tick

HEAD = 16  # magic, length, payload CRC, header CRC
PER_BATCH = 10


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0, 100.5, 1.0, 2.0) for seq in range(first, last + 1)
    ]


def batch(index: int) -> list[Tick]:
    first = index * PER_BATCH + 1
    last = first + PER_BATCH - 1
    return [*ticks("AAA", first, last), *ticks("BBB", first, last)]


def record_size(index: int) -> int:
    return HEAD + len(encode_ticks(batch(index)))


async def two_segments(directory: Path, first: int = 6, second: int = 6) -> list[list[Tick]]:
    """Spool ``first`` batches in one run and ``second`` in the next: two segments."""
    written = []
    for run in (range(first), range(first, first + second)):
        spool = SpoolStore(directory)
        await spool.open()
        for index in run:
            written.append(batch(index))
            await spool.write(written[-1])
        await spool.aclose()
    return written


def flip(path: Path, offset: int, count: int = 8) -> bytes:
    """XOR ``count`` bytes at ``offset`` (like bit rot or a stray write); returns the new bytes."""
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + count, len(data))):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))
    return bytes(data)


def offsets(first: int, count: int) -> list[int]:
    """Byte offsets of the records of batches ``first..first+count-1`` in their segment."""
    out, at = [], 0
    for index in range(first, first + count):
        out.append(at)
        at += record_size(index)
    return out


# Where to damage: (segment 0 or 1, batch index hit, offset inside that record).
PLACES = {
    "first_record_payload": (0, 0, HEAD + 5),
    "middle_of_segment_1": (0, 3, HEAD + 40),
    "last_record_of_segment_1": (0, 5, HEAD + 100),
    "record_header_length": (0, 2, 4),
    "record_magic": (0, 4, 0),
    "middle_of_last_segment": (1, 8, HEAD + 60),
    "complete_last_record_of_last_segment": (1, 11, HEAD + 60),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("place", list(PLACES))
async def test_damage_is_reported_kept_around_and_held_at_the_resume_point(
    tmp_path: Path, place: str
) -> None:
    """Damage but a torn tail: neighbours kept, bytes moved aside, resume held before it."""
    directory = tmp_path / "spool"
    written = await two_segments(directory)
    segment_no, hit, inside = PLACES[place]
    segment = sorted(directory.glob("*.seg"))[segment_no]
    first_index = 0 if segment_no == 0 else 6
    start = offsets(first_index, 6)[hit - first_index]
    damaged = flip(segment, start + inside)

    spool = SpoolStore(directory)
    await spool.open()
    (corruption,) = spool.corruptions()
    assert corruption.path == segment
    assert corruption.offset == start
    assert corruption.length == record_size(hit)
    assert corruption.moved_to.read_bytes() == damaged[start : start + record_size(hit)]
    last = None if hit == len(written) - 1 else (hit + 1) * PER_BATCH
    assert corruption.ranges == {
        "AAA": (hit * PER_BATCH + 1, last),
        "BBB": (hit * PER_BATCH + 1, last),
    }
    assert list(spool.pending()) == [b for i, b in enumerate(written) if i != hit]
    assert spool.pending_batches == len(written) - 1
    assert spool.statistics().truncated_bytes == 0
    # Nothing past the hole is reported: the feed asks for it again.
    held = {} if hit == 0 else {"AAA": hit * PER_BATCH, "BBB": hit * PER_BATCH}
    assert await spool.last_seqs() == held
    await spool.aclose()


@pytest.mark.timeout(30)
async def test_failover_store_reports_drains_and_resumes_before_the_hole_until_refetched(
    tmp_path: Path,
) -> None:
    """The store reports the damage, drains what is intact, and holds the resume point durably."""
    directory = tmp_path / "spool"
    written = await two_segments(directory)
    segment = min(directory.glob("*.seg"))
    flip(segment, offsets(0, 6)[3] + HEAD + 40)
    manager = ErrorRecoveryManager()
    store = FailoverStore(
        SQLiteTickStore(tmp_path / "ticks.db"),
        SpoolStore(directory),
        manager=manager,
        probe_interval=0.01,
    )
    await store.open()
    try:
        assert (
            manager.statistics().error_type_distribution.get(ErrorType.DATA_INGESTION_FAILURE) == 1
        )
        assert store.statistics().corruptions == 1
        assert await store.last_seqs() == {"AAA": 30, "BBB": 30}
        async with asyncio.timeout(10):
            await store.wait_for_state(FailoverState.PRIMARY)
        intact = [t for i, b in enumerate(written) if i != 3 for t in b if t.symbol == "AAA"]
        assert await store.primary.read("AAA") == intact
        # The primary holds ticks up to 120, but 31..40 are missing: resume from 31.
        assert await store.last_seqs() == {"AAA": 30, "BBB": 30}
    finally:
        await store.aclose()

    # Durable: a restart (primary caught up past the hole) still resumes before it.
    store = FailoverStore(
        SQLiteTickStore(tmp_path / "ticks.db"), SpoolStore(directory), probe_interval=0.01
    )
    await store.open()
    try:
        assert await store.last_seqs() == {"AAA": 30, "BBB": 30}
        # The feed re-fetches from 31 on, in order; the store ignores what it already has.
        for index in range(3, 12):
            await store.write(batch(index))
        assert await store.last_seqs() == {"AAA": 120, "BBB": 120}
        assert not (directory / "holes.json").exists()
        assert await store.read("BBB") == ticks("BBB", 1, 120)
        assert await store.duplicates() == 0
    finally:
        await store.aclose()


@pytest.mark.timeout(20)
async def test_damage_found_while_draining_is_reported_not_skipped(tmp_path: Path) -> None:
    """Bytes that rot after open: the drain keeps going, moves them aside and holds the resume."""
    directory = tmp_path / "spool"
    written = await two_segments(directory)
    spool = SpoolStore(directory)
    await spool.open()
    segment = sorted(directory.glob("*.seg"))[1]
    flip(segment, offsets(6, 6)[2] + HEAD + 10)  # batch 8
    target = SQLiteTickStore(tmp_path / "ticks.db")
    await target.open()
    try:
        assert await spool.drain(target) == len(written) - 1
        (corruption,) = spool.corruptions()
        assert corruption.path == segment
        assert corruption.ranges == {"AAA": (81, 90), "BBB": (81, 90)}
        assert corruption.moved_to.exists()
        assert spool.segments() == []
        assert spool.is_empty()
        assert await spool.last_seqs() == {"AAA": 80, "BBB": 80}
        assert await target.read("AAA") == [*ticks("AAA", 1, 80), *ticks("AAA", 91, 120)]
    finally:
        await target.aclose()
        await spool.aclose()


@pytest.mark.timeout(20)
async def test_undecodable_payload_with_valid_crc_is_corruption_not_a_stuck_drain(
    tmp_path: Path,
) -> None:
    """A record whose framing is intact but whose payload is no batch never blocks the drain."""
    directory = tmp_path / "spool"
    written = await two_segments(directory, 2, 2)
    segment = min(directory.glob("*.seg"))
    payload = b"\xc1 not msgpack"
    head = b"SLsp" + struct.pack(">II", len(payload), zlib.crc32(payload))
    bogus = head + struct.pack(">I", zlib.crc32(head)) + payload
    data = segment.read_bytes()
    segment.write_bytes(data[: record_size(0)] + bogus + data[record_size(0) :])
    spool = SpoolStore(directory)
    await spool.open()
    target = SQLiteTickStore(tmp_path / "ticks.db")
    await target.open()
    try:
        (corruption,) = spool.corruptions()
        assert corruption.length == len(bogus)
        assert await spool.drain(target) == len(written)
        assert await target.read("AAA") == ticks("AAA", 1, 40)
    finally:
        await target.aclose()
        await spool.aclose()


@pytest.mark.timeout(20)
async def test_damaged_quarantine_entries_are_moved_aside_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    """Damage in the middle of quarantine.log keeps the entries before and after it."""
    directory = tmp_path / "spool"
    spool = SpoolStore(directory)
    await spool.open()
    for reason in ("one", "two", "three"):
        await spool.quarantine([QuarantinedTick(received_ns=1, reason=reason, raw="x")])
    await spool.aclose()
    log = directory / "quarantine.log"
    first = len(log.read_bytes()) // 3
    flip(log, first + HEAD + 2)
    again = SpoolStore(directory)
    await again.open()
    assert [q.reason for q in await again.quarantined()] == ["one", "three"]
    (corruption,) = again.corruptions()
    assert corruption.path == log
    assert corruption.ranges == {}
    await again.aclose()


@pytest.mark.timeout(20)
async def test_segments_in_the_old_record_format_are_still_read(tmp_path: Path) -> None:
    """A segment written before the magic (length | CRC | payload) drains as before."""
    directory = tmp_path / "spool"
    directory.mkdir()
    payloads = [encode_ticks(batch(i)) for i in range(3)]
    legacy = b"".join(struct.pack(">II", len(p), zlib.crc32(p)) + p for p in payloads)
    (directory / "000000000001.seg").write_bytes(legacy)
    spool = SpoolStore(directory)
    await spool.open()
    assert list(spool.pending()) == [batch(i) for i in range(3)]
    assert spool.corruptions() == ()
    await spool.write(batch(3))
    assert list(spool.pending()) == [batch(i) for i in range(4)]
    await spool.aclose()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(12))
async def test_random_damage_never_loses_silently(tmp_path: Path, seed: int) -> None:
    """Any flip anywhere: every batch is pending, or inside a reported range below the resume."""
    rng = random.Random(seed)
    directory = tmp_path / "spool"
    written = await two_segments(directory)
    segments = sorted(directory.glob("*.seg"))
    for _ in range(rng.randint(1, 3)):
        segment = rng.choice(segments)
        size = segment.stat().st_size
        flip(segment, rng.randrange(size), rng.randint(1, 16))
    spool = SpoolStore(directory)
    await spool.open()
    pending = list(spool.pending())
    resume = await spool.last_seqs()
    reported: list[SpoolCorruption] = list(spool.corruptions())
    for index, each in enumerate(written):
        if each in pending:
            continue
        for tick in each:
            assert resume.get(tick.symbol, 0) < tick.seq, f"batch {index} lost past the resume"
            spans = [c.ranges[tick.symbol] for c in reported if tick.symbol in c.ranges]
            assert any(
                low <= tick.seq and (high is None or tick.seq <= high) for low, high in spans
            ), f"batch {index} lost without a report"
    assert sum(c.length for c in reported) == spool.statistics().corrupt_bytes
    if reported:
        holes = json.loads((directory / "holes.json").read_text())["holes"]
        assert holes
    await spool.aclose()
