"""SpoolStore on real files: fsynced appends, torn tails, ordered idempotent drains, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from strategylab.market._spool import SpoolStore
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._store import QuarantinedTick, TickStore
from strategylab.market._tick import Tick


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0, 100.5, 1.0, 2.0) for seq in range(first, last + 1)
    ]


def batches(count: int, size: int = 10) -> list[list[Tick]]:
    out = []
    for i in range(count):
        first = i * size + 1
        out.append([*ticks("AAA", first, first + size - 1), *ticks("BBB", first, first + size - 1)])
    return out


class RecordingStore(SQLiteTickStore):
    """A real SQLite store that remembers the order batches arrived in."""

    def __init__(self, path: Path, *, fail_after: int | None = None) -> None:
        super().__init__(path)
        self.seen: list[list[Tick]] = []
        self.fail_after = fail_after

    async def write(self, ticks: Sequence[Tick]) -> int:
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise ConnectionResetError("target went away mid-drain")
        written = await super().write(ticks)
        self.seen.append(list(ticks))
        return written


@pytest.mark.timeout(10)
async def test_pending_yields_batches_in_order_after_reopen(tmp_path: Path) -> None:
    """Appended batches come back in order from a freshly opened spool."""
    spool = SpoolStore(tmp_path / "spool")
    await spool.open()
    assert isinstance(spool, TickStore)
    written = batches(5)
    for batch in written:
        assert await spool.write(batch) == len(batch)
    await spool.aclose()
    again = SpoolStore(tmp_path / "spool")
    await again.open()
    assert list(again.pending()) == written
    assert again.pending_batches == 5
    assert await again.last_seqs() == {"AAA": 50, "BBB": 50}
    assert await again.read("AAA", 5, 7) == ticks("AAA", 5, 7)
    assert await again.health() is True
    await again.aclose()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("torn", ["mid_payload", "mid_header", "zero_filled"])
async def test_torn_tail_of_last_segment_is_truncated_silently(tmp_path: Path, torn: str) -> None:
    """An append a crash interrupted is cut off on open, unreported; earlier batches survive."""
    directory = tmp_path / "spool"
    spool = SpoolStore(directory)
    await spool.open()
    written = batches(3)
    for batch in written[:2]:
        await spool.write(batch)
    await spool.aclose()
    (segment,) = spool.segments()
    intact = segment.read_bytes()
    spool2 = SpoolStore(tmp_path / "whole")
    await spool2.open()
    await spool2.write(written[2])
    await spool2.aclose()
    record = spool2.segments()[0].read_bytes()
    tail = {
        # The record's header and half its payload reached the disk.
        "mid_payload": record[: len(record) // 2],
        "mid_header": record[:10],
        # The filesystem extended the file before the data reached it (power loss).
        "zero_filled": b"\0" * len(record),
    }[torn]
    segment.write_bytes(intact + tail)
    again = SpoolStore(directory)
    await again.open()
    assert list(again.pending()) == written[:2]
    assert segment.read_bytes() == intact
    assert again.statistics().truncated_bytes == len(tail)
    assert again.corruptions() == ()
    assert not list(directory.glob("*.corrupt"))
    assert await again.last_seqs() == {"AAA": 20, "BBB": 20}
    await again.write(written[2])
    assert list(again.pending()) == written
    await again.aclose()


@pytest.mark.timeout(10)
async def test_drain_writes_in_order_and_deletes_segments(tmp_path: Path) -> None:
    """drain() writes every batch in order into the target, then the spool is empty."""
    spool = SpoolStore(tmp_path / "spool", segment_bytes=2_000, drain_batch=20)
    await spool.open()
    written = batches(12)
    for batch in written:
        await spool.write(batch)
    await spool.quarantine([QuarantinedTick(received_ns=1, reason="nan bid", raw="x")])
    assert len(spool.segments()) > 1
    target = RecordingStore(tmp_path / "target.db")
    await target.open()
    assert await spool.drain(target) == 12
    assert [t for b in target.seen for t in b] == [t for b in written for t in b]
    assert spool.segments() == []
    assert spool.is_empty()
    assert await target.read("BBB") == ticks("BBB", 1, 120)
    assert [q.reason for q in await target.quarantined()] == ["nan bid"]
    assert await spool.quarantined() == []
    await target.aclose()
    await spool.aclose()


@pytest.mark.timeout(10)
async def test_failed_drain_redrains_without_duplicates(tmp_path: Path) -> None:
    """A drain that fails midway keeps the segment; the next drain completes with no duplicates."""
    spool = SpoolStore(tmp_path / "spool", segment_bytes=2_000, drain_batch=20)
    await spool.open()
    for batch in batches(12):
        await spool.write(batch)
    target = RecordingStore(tmp_path / "target.db", fail_after=3)
    await target.open()
    with pytest.raises(ConnectionResetError):
        await spool.drain(target)
    assert spool.segments() != []
    target.fail_after = None
    await spool.drain(target)
    assert spool.segments() == []
    assert await target.count() == 240
    assert await target.duplicates() == 0
    assert await target.read("AAA") == ticks("AAA", 1, 120)
    await target.aclose()
    await spool.aclose()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from strategylab.market._spool import SpoolStore
    from strategylab.market._sqlite_store import SQLiteTickStore

    class Stalling(SQLiteTickStore):
        writes = 0
        async def write(self, ticks):
            n = await super().write(ticks)
            self.writes += 1
            if self.writes == 5:
                print("COMMITTED", flush=True)
                await asyncio.Event().wait()
            return n

    async def main():
        spool = SpoolStore(sys.argv[1], segment_bytes=2_000, drain_batch=20)
        await spool.open()
        target = Stalling(sys.argv[2])
        await target.open()
        await spool.drain(target)

    asyncio.run(main())
    """
)


@pytest.mark.timeout(20)
async def test_sigkill_during_drain_redrains_without_loss_or_duplicates(tmp_path: Path) -> None:
    """A drain SIGKILLed after some commits leaves segments; a re-drain completes exactly."""
    directory = tmp_path / "spool"
    spool = SpoolStore(directory, segment_bytes=2_000)
    await spool.open()
    for batch in batches(12):
        await spool.write(batch)
    await spool.aclose()
    db = tmp_path / "target.db"
    script = tmp_path / "drainer.py"
    script.write_text(_CHILD)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(directory),
        str(db),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(10):
            line = await child.stdout.readline()
        assert line == b"COMMITTED\n"
    finally:
        child.send_signal(signal.SIGKILL)
        async with asyncio.timeout(5):
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    target = SQLiteTickStore(db)
    await target.open()
    partial = await target.count()
    assert 0 < partial < 240
    again = SpoolStore(directory)
    await again.open()
    assert again.segments() != []
    await again.drain(target)
    assert await target.count() == 240
    assert await target.duplicates() == 0
    assert await target.read("BBB") == ticks("BBB", 1, 120)
    assert again.segments() == []
    await target.aclose()
    await again.aclose()


@pytest.mark.timeout(10)
async def test_write_requires_open(tmp_path: Path) -> None:
    """Writing to a spool that was never opened fails with a message saying so."""
    spool = SpoolStore(tmp_path / "spool")
    with pytest.raises(RuntimeError, match="not open"):
        await spool.write(ticks("AAA", 1, 1))
    assert await spool.health() is False
