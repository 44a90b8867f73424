"""A storm of invalid ticks (the exchange's ``invalid_ticks`` admin fault at a high rate) against
real ``strategylab exchange`` and ``strategylab node`` processes: the node keeps up during the
fault and has caught up within seconds of its end, every invalid tick is quarantined exactly
once with its reason, and none is acknowledged as a valid tick.

The regression: the ingestor wrote each frame's quarantine entries as a queue item of their own,
and a quarantine item ended the batch before it; with one lingering write cycle per item, a feed
of frames that each held an invalid tick (the exchange sends a frame every few milliseconds)
left the writer a dozen seconds behind after a one-second fault, and further behind every
second while the fault lasted."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.chaos import check
from strategylab.market import Ingestor, IngestorConfig, QuarantinedTick, SQLiteTickStore, Tick
from strategylab.testing import FakeClock

Proc = asyncio.subprocess.Process

SYMBOLS = "A,B,C,D,E"
TICK_RATE = 1500
MAX_TICKS = 12 * TICK_RATE
"""The exchange stops emitting after 12 s: then every emitted tick can be checked for."""
FAULT_RATE = 0.5
FAULT_SECONDS = 1.0
CATCH_UP_SECONDS = 3.0
"""How long after the fault's end the node may take to acknowledge what the exchange had
emitted by then (before the fix: more than ten seconds)."""
TOKEN = secrets.token_hex(16)


async def spawn(*args: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def next_event(proc: Proc, event: str, limit: float = 20.0) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"process exited ({proc.returncode}) before {event!r}")
            data: dict[str, Any] = json.loads(line)
            if data.get("event") == event:
                return data


async def terminate(proc: Proc) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def running(*args: str) -> AsyncIterator[Proc]:
    proc = await spawn(*args)
    try:
        yield proc
    finally:
        await terminate(proc)


class Node:
    """The node's latest status line, read from its stdout by a task."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.status: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            data = json.loads(line)
            if data.get("event") == "status":
                self.status = data
                self.changed.set()

    def acked(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.status.get("last_seq", {}).items()}

    async def wait_acked(self, targets: dict[str, int], limit: float) -> float:
        """Seconds until the acknowledged watermark reaches ``targets``; AssertionError with the
        symbols still behind after ``limit``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(limit):
                while any(self.acked().get(s, 0) < n for s, n in targets.items()):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            acked = self.acked()
            behind = {s: n - acked.get(s, 0) for s, n in targets.items() if acked.get(s, 0) < n}
            raise AssertionError(
                f"still behind after {limit}s (ticks per symbol): {behind}"
            ) from None
        return loop.time() - started

    async def stop(self) -> None:
        await terminate(self.proc)
        await asyncio.wait({self._task}, timeout=5)


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_storm_of_invalid_ticks_is_quarantined_once_and_the_node_keeps_up(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    exchange_dir, node_dir = tmp_path / "exchange", tmp_path / "node"
    async with (
        running(
            "exchange",
            *("--port", "0", "--data-dir", str(exchange_dir), "--symbols", SYMBOLS),
            *("--tick-rate", str(TICK_RATE), "--ticks-per-frame", "100"),
            *("--heartbeat-interval", "0.25", "--seed", "12", "--max-ticks", str(MAX_TICKS)),
            *("--admin-token-file", str(token_file)),
        ) as exchange,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{(await next_event(exchange, 'listening'))['port']}"

        async def emitted() -> dict[str, int]:
            async with http.get(f"{base}/api/status") as response:
                assert response.status == 200
                data = await response.json()
            return {s: int(n) for s, n in data["last_seq"].items()}

        node = Node(
            await spawn(
                "node",
                *("--exchange-url", f"ws://{base.removeprefix('http://')}/ws"),
                *("--data-dir", str(node_dir), "--symbols", SYMBOLS),
                *("--status-interval", "0.1"),
            )
        )
        try:
            # Warm: the node has caught up with the exchange once before the fault.
            await node.wait_acked(await emitted(), limit=20.0)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            fault = {"kind": "invalid_ticks", "duration": FAULT_SECONDS, "rate": FAULT_RATE}
            async with http.post(f"{base}/admin/faults", json=fault, headers=headers) as response:
                assert response.status in {200, 201}, await response.text()
            # The fault itself lasts FAULT_SECONDS on the exchange's clock: wait it out.
            await asyncio.sleep(FAULT_SECONDS + 0.1)
            after_fault = await emitted()
            assert sum(after_fault.values()) < MAX_TICKS - TICK_RATE, (
                "the exchange was about to stop emitting: the fault came too late to measure"
            )
            took = await node.wait_acked(after_fault, limit=CATCH_UP_SECONDS)
            assert took < CATCH_UP_SECONDS
            # The exchange stops at MAX_TICKS, dealt round-robin: the node acknowledges all of
            # them (the last ticks are valid: the fault is long over), then stops, draining.
            await node.wait_acked(dict.fromkeys(SYMBOLS.split(","), MAX_TICKS // 5), limit=30.0)
            assert node.status["invalid_ticks"] > 0
        finally:
            await node.stop()
        assert node.proc.returncode == 0

    await assert_quarantined_once(exchange_dir, node_dir)


async def assert_quarantined_once(exchange_dir: Path, node_dir: Path) -> None:
    """Every invalid tick emitted is in the quarantine once, with a reason, and none is
    stored; the checker agrees."""
    with sqlite3.connect(node_dir / "ticks.db") as db:
        rows, distinct, unreasoned = db.execute(
            "SELECT count(*), count(DISTINCT symbol || ':' || seq), "
            "sum(symbol IS NULL OR seq IS NULL OR reason = '') FROM quarantine"
        ).fetchone()
        stored_and_quarantined = db.execute(
            "SELECT count(*) FROM ticks JOIN quarantine USING (symbol, seq)"
        ).fetchone()[0]
    db.close()
    assert rows == distinct, f"{rows - distinct} invalid tick(s) quarantined more than once"
    assert unreasoned == 0
    assert stored_and_quarantined == 0
    # About FAULT_RATE of the ticks emitted during the fault were spoiled.
    assert rows > FAULT_RATE * TICK_RATE * FAULT_SECONDS / 2

    store = SQLiteTickStore(node_dir / "ticks.db")
    await store.open()
    try:
        report = await check(
            exchange_dir / "emitted.log", store, node_dir / "acks.jsonl", require_complete=True
        )
    finally:
        await store.aclose()
    assert report.ok, report.summary()
    assert report.quarantined.count == rows
    assert report.quarantine_unmatched == 0
    assert report.invalid_stored.count == 0
    assert report.lost.count == report.duplicated.count == report.corrupted.count == 0
    assert report.stored + rows == report.emitted == MAX_TICKS


# ---------------------------------------------------------------------- the ingestor, in memory


class CountingStore:
    """A TickStore in memory that counts its transactions; ``gate`` holds tick writes."""

    name = "counting-store"

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], Tick] = {}
        self.writes = 0
        self.quarantines = 0
        self.quarantine_rows: list[QuarantinedTick] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def write(self, batch: Sequence[Tick]) -> int:
        self.entered.set()
        await self.gate.wait()
        self.writes += 1
        new = sum((t.symbol, t.seq) not in self.rows for t in batch)
        self.rows.update(((t.symbol, t.seq), t) for t in batch)
        return new

    async def last_seqs(self) -> dict[str, int]:
        return {}

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        return []

    async def symbols(self) -> list[str]:
        return []

    async def duplicates(self) -> int:
        return 0

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        self.quarantines += 1
        self.quarantine_rows.extend(entries)

    async def quarantined(self) -> list[QuarantinedTick]:
        return list(self.quarantine_rows)

    async def health(self) -> bool:
        return True


def frame(first: int) -> tuple[list[Tick], QuarantinedTick]:
    """Frame ``first``..``first + 4`` of symbol A: four valid ticks, the last one refused."""
    valid = [Tick("A", s, s, 1.0, 1.1, 1.0, 1.0) for s in range(first, first + 4)]
    refused = QuarantinedTick(
        received_ns=first, reason="crossed quote", raw="...", symbol="A", seq=first + 4
    )
    return valid, refused


async def queue_frames(ingestor: Ingestor, count: int) -> None:
    """What the feed does per frame: its refused ticks, then its valid ones."""
    for i in range(count):
        valid, refused = frame(1 + 5 * i)
        await ingestor.quarantine([refused])
        await ingestor.put(valid)


async def test_frames_each_with_an_invalid_tick_are_written_in_one_cycle() -> None:
    """Quarantine entries queued among the ticks never split a batch: 200 frames, each with an
    invalid tick, are one quarantine transaction and one tick transaction, not 400 cycles."""
    store = CountingStore()
    ingestor = Ingestor(store, IngestorConfig(batch_size=10_000, linger=0), clock=FakeClock())
    await queue_frames(ingestor, 200)
    await ingestor.drain(timeout=10)
    assert (store.quarantines, store.writes) == (1, 1)
    assert [q.seq for q in store.quarantine_rows] == list(range(5, 1001, 5))
    assert len(store.rows) == 800
    stats = ingestor.statistics()
    assert (stats.quarantined, stats.acknowledged, stats.queued) == (200, 800, 0)
    assert stats.acked == {"A": 999}
    assert ingestor.accounted() == {"A": 1000}
    await ingestor.aclose(5)


async def test_batches_still_end_at_batch_size_with_quarantine_entries_counted() -> None:
    store = CountingStore()
    ingestor = Ingestor(store, IngestorConfig(batch_size=50, linger=0), clock=FakeClock())
    await queue_frames(ingestor, 100)  # 500 entries and ticks: ten cycles of 50
    await ingestor.drain(timeout=10)
    assert (store.quarantines, store.writes) == (10, 10)
    assert len(store.quarantine_rows) == 100
    await ingestor.aclose(5)


async def test_nothing_is_accounted_before_its_span_is_stored_nor_quarantined_twice() -> None:
    """The quarantine entry after ticks still being written does not move the accounted
    watermark over them; a writer stopped during that write and started again writes the
    ticks, not the already-written quarantine entry a second time."""
    store = CountingStore()
    ingestor = Ingestor(store, IngestorConfig(batch_size=10_000, linger=0), clock=FakeClock())
    store.gate.clear()
    await queue_frames(ingestor, 3)
    await ingestor.start()
    await store.entered.wait()
    assert len(store.quarantine_rows) == 3  # the span's refused input went first
    assert ingestor.accounted() == {}
    await ingestor.stop()
    store.gate.set()
    await ingestor.drain(timeout=10)
    assert [q.seq for q in store.quarantine_rows] == [5, 10, 15]
    assert ingestor.statistics().quarantined == 3
    assert len(store.rows) == 12
    assert ingestor.accounted() == {"A": 15}
    await ingestor.aclose(5)
