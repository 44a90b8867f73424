"""A restart resumes every symbol from the store's last durable sequence: nothing the store
holds is declared lost because the exchange no longer retains it, however far the store's
watermark is beyond the exchange's retention; a range really emitted and dropped while the node
was down is declared lost exactly from the store's watermark + 1.

Real exchange processes (``--retention 1000``), real ``strategylab node`` processes, a real SQLite
store, spool and integrity checker. One seam: a primary store whose ``last_seqs`` stops answering
after it was opened (what a full scan of millions of rows did within the failover store's
``stall_timeout``; a test cannot afford millions of rows)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from strategylab.chaos import check
from strategylab.market import (
    AckLog,
    FailoverStore,
    Feed,
    FeedConfig,
    Ingestor,
    IngestorConfig,
    SpoolStore,
    SQLiteTickStore,
    Tick,
)
from strategylab.market._ledger import read_emitted
from strategylab.market._reader import _LAST_SEQS_SQL

pytestmark = pytest.mark.integration

Proc = asyncio.subprocess.Process
RETENTION = 1000
PER_SYMBOL = 10 * RETENTION
"""Ticks per symbol stored before the restart: the watermark is 9 retentions past the oldest
tick the exchange still retains."""
LOST_LINE = re.compile(r"feed feed: (\w+) seq (\d+)\.\.(\d+) \((\d+) ticks\) lost")


# ------------------------------------------------------------------ processes


async def spawn(*args: str, stderr: int = asyncio.subprocess.PIPE) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
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


async def status_until(
    proc: Proc, done: Callable[[dict[str, Any]], bool], limit: float = 30.0
) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            status = await next_event(proc, "status", limit)
            if done(status):
                return status


async def stop(proc: Proc) -> str:
    """SIGTERM; everything the node wrote to stderr (it must exit 0)."""
    proc.send_signal(signal.SIGTERM)
    await next_event(proc, "stopped")
    assert proc.stderr is not None
    async with asyncio.timeout(15):
        err = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0, err
    return err


async def kill(proc: Proc) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def exchange(tmp_path: Path, *options: str) -> AsyncIterator[str]:
    """A real exchange (A, B; retention ``RETENTION``); yields its http:// URL."""
    proc = await spawn(
        "exchange",
        *("--port", "0", "--data-dir", str(tmp_path / "exchange"), "--symbols", "A,B"),
        *("--heartbeat-interval", "0.2", "--retention", str(RETENTION)),
        *options,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port = int((await next_event(proc, "listening"))["port"])
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await proc.wait()


@asynccontextmanager
async def node(url: str, data_dir: Path) -> AsyncIterator[Proc]:
    proc = await spawn(
        "node",
        *("--exchange-url", url, "--data-dir", str(data_dir), "--symbols", "A,B"),
        "--status-interval",
        "0.1",
    )
    try:
        yield proc
    finally:
        await kill(proc)


def emitted_last(tmp_path: Path) -> dict[str, int]:
    last: dict[str, int] = {}
    for tick in read_emitted(tmp_path / "exchange" / "emitted.log"):
        last[tick.symbol] = max(last.get(tick.symbol, 0), tick.seq)
    return last


async def wait_emitted(tmp_path: Path, done: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Poll the exchange's emitted log (bounded) until ``done`` holds for its positions."""
    async with asyncio.timeout(30):
        while not done(last := await asyncio.to_thread(emitted_last, tmp_path)):  # noqa: ASYNC110 - a file has no event
            await asyncio.sleep(0.05)
    return last


async def stored_last(db: Path) -> dict[str, int]:
    store = SQLiteTickStore(db)
    await store.open()
    try:
        return await store.last_seqs()
    finally:
        await store.aclose()


async def integrity(tmp_path: Path, node_dir: Path, *, complete: bool) -> dict[str, Any]:
    store = SQLiteTickStore(node_dir / "ticks.db")
    await store.open()
    try:
        report = await check(
            tmp_path / "exchange" / "emitted.log",
            store,
            node_dir / "acks.jsonl",
            require_complete=complete,
        )
    finally:
        await store.aclose()
    return report.to_dict()


# ------------------------------------------------------------------ the store's resume point


async def test_sqlite_last_seqs_seeks_the_index_instead_of_scanning(tmp_path: Path) -> None:
    """The store's resume query never reads every row (a full scan of millions took longer than
    the failover store's stall_timeout); its answer equals the GROUP BY one."""
    store = SQLiteTickStore(tmp_path / "ticks.db")
    await store.open()
    try:
        assert await store.last_seqs() == {}
        await store.write(
            [
                Tick(s, n, 1_000 + n, 100.0, 100.5, 1.0, 2.0)
                for s in ("A", "B", "ZZ")
                for n in (1, 7)
            ]
            + [Tick("B", 9, 2_000, 100.0, 100.5, 1.0, 2.0)]
        )
        assert await store.last_seqs() == {"A": 7, "B": 9, "ZZ": 7}
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "ticks.db") as conn:
        plan = [str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + _LAST_SEQS_SQL)]
        grouped = dict(conn.execute("SELECT symbol, MAX(seq) FROM ticks GROUP BY symbol"))
    assert grouped == {"A": 7, "B": 9, "ZZ": 7}
    scans = [step for step in plan if step.startswith("SCAN ticks")]
    assert not scans, plan


class FrozenAfterOpen(SQLiteTickStore):
    """A real SQLite store whose ``last_seqs`` stops answering once ``frozen`` is set."""

    frozen = False

    async def last_seqs(self) -> dict[str, int]:
        if self.frozen:
            await asyncio.Event().wait()
        return await super().last_seqs()


async def ingest(tmp_path: Path, url: str, done: Callable[[Feed], bool], *, freeze: bool) -> Feed:
    """Feed -> ingestor -> failover store (real SQLite + spool) until ``done(feed)``."""
    primary = FrozenAfterOpen(tmp_path / "node" / "ticks.db")
    store = FailoverStore(primary, SpoolStore(tmp_path / "node" / "spool"), stall_timeout=0.2)
    await store.open()
    primary.frozen = freeze
    acks = AckLog(tmp_path / "node" / "acks.jsonl")
    ingestor = Ingestor(store, IngestorConfig(batch_size=2_000, linger=0.005), ack_log=acks)
    feed = Feed(
        FeedConfig(urls=(url.replace("http://", "ws://") + "/ws",), symbols=("A", "B")), ingestor
    )
    await ingestor.start()
    await feed.start()
    try:
        async with asyncio.timeout(30):
            while not done(feed):  # noqa: ASYNC110 - the counters have no event
                await asyncio.sleep(0.02)
    finally:
        await feed.stop()
        await ingestor.aclose()
        await store.aclose()
        acks.close()
    return feed


@pytest.mark.timeout(60)
async def test_resume_point_survives_a_primary_that_cannot_answer_after_open(
    tmp_path: Path,
) -> None:
    """Restarted on a store 9 retentions ahead of what the exchange keeps, with the primary's
    ``last_seqs`` stalling after open, the feed resumes from the store's watermark: no range is
    declared lost, and the checker finds none lost, missing or duplicated."""
    total = 2 * PER_SYMBOL
    async with exchange(tmp_path, "--tick-rate", "0", "--max-ticks", str(total)) as url:
        first = await ingest(
            tmp_path,
            url,
            lambda f: f.statistics().last_seq == {"A": PER_SYMBOL, "B": PER_SYMBOL},
            freeze=False,
        )
        assert first.statistics().lost_ticks == 0
        # Two heartbeats after subscribing: the answers to the subscribe (and any "no longer
        # retained" error) were queued before the second one, so they have been handled.
        again = await ingest(tmp_path, url, lambda f: f.statistics().frames >= 2, freeze=True)
    stats = again.statistics()
    assert (stats.lost_ticks, stats.lost_ranges) == (0, 0)
    assert stats.last_seq == {"A": PER_SYMBOL, "B": PER_SYMBOL}
    report = await integrity(tmp_path, tmp_path / "node", complete=True)
    assert report["ok"], report
    assert (report["lost"]["count"], report["duplicated"]["count"]) == (0, 0)
    assert report["missing"]["count"] == 0
    assert report["stored"] == total


# ------------------------------------------------------------------ real processes


@pytest.mark.timeout(60)
async def test_node_restart_far_beyond_the_retention_declares_nothing_lost(
    tmp_path: Path,
) -> None:
    """A node stopped (SIGTERM) with its store 9 retentions ahead of what the exchange keeps
    starts again on the same data dir, the exchange still running: no lost range is declared,
    lost_ticks stays 0, and the checker finds 0 lost and 0 duplicated."""
    total = 2 * PER_SYMBOL
    data = tmp_path / "node"
    async with exchange(tmp_path, "--tick-rate", "0", "--max-ticks", str(total)) as url:
        async with node(url, data) as first:
            await status_until(first, lambda s: s["last_seq"] == {"A": PER_SYMBOL, "B": PER_SYMBOL})
            err = await stop(first)
        assert not LOST_LINE.search(err), err
        assert await stored_last(data / "ticks.db") == {"A": PER_SYMBOL, "B": PER_SYMBOL}
        async with node(url, data) as second:
            connected = await status_until(second, lambda s: bool(s["connected"]))
            # Ten status lines (>= 1 s, five heartbeats) after the resubscription.
            seen = [await next_event(second, "status") for _ in range(10)]
            err = await stop(second)
    assert not LOST_LINE.search(err), err
    assert [s["lost_ticks"] for s in (connected, *seen)] == [0] * 11
    report = await integrity(tmp_path, data, complete=True)
    assert report["ok"], report
    assert (report["lost"]["count"], report["duplicated"]["count"]) == (0, 0)
    assert report["stored"] == total


@pytest.mark.timeout(60)
async def test_ticks_dropped_while_the_node_was_down_are_lost_from_the_watermark(
    tmp_path: Path,
) -> None:
    """A node down while the exchange emits more than its retention: the next start declares
    each symbol lost exactly from the store's watermark + 1 to just before the oldest retained
    tick, and the checker's only holes (and its lost count) are the declared ranges."""
    data = tmp_path / "node"
    async with exchange(tmp_path, "--tick-rate", "4000") as url:
        async with node(url, data) as first:
            await status_until(first, lambda s: min(s["last_seq"].values(), default=0) >= 2_000)
            before = await stop(first)
        watermark = await stored_last(data / "ticks.db")
        await wait_emitted(
            tmp_path, lambda last: all(last.get(s, 0) > watermark[s] + 3 * RETENTION for s in "AB")
        )
        async with node(url, data) as second:
            after = await status_until(
                second,
                lambda s: all(s["last_seq"].get(x, 0) > watermark[x] + 3 * RETENTION for x in "AB"),
            )
            err = await stop(second)
    # The exchange paces on its own clock: what it emitted before the first node subscribed may
    # already be gone too, and is then lost from seq 1 (an empty store's watermark + 1).
    earlier = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in LOST_LINE.findall(before)}
    assert all(first_lost == 1 for first_lost, _, _ in earlier.values()), before
    declared = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in LOST_LINE.findall(err)}
    assert sorted(declared) == ["A", "B"], err
    for symbol, (first_lost, last_lost, count) in declared.items():
        assert first_lost == watermark[symbol] + 1, (symbol, watermark, err)
        assert last_lost >= first_lost + RETENTION
        assert count == last_lost - first_lost + 1
    assert after["lost_ticks"] == sum(count for _, _, count in declared.values())
    report = await integrity(tmp_path, data, complete=False)
    # Really lost: the checker counts them (acknowledged past, never stored), and nothing else.
    ranges = [(s, a, b) for found in (earlier, declared) for s, (a, b, _) in found.items()]
    assert report["lost"]["count"] == sum(b - a + 1 for _, a, b in ranges), report["gaps"]
    assert report["duplicated"]["count"] == 0
    assert sorted(tuple(gap) for gap in report["gaps"]) == sorted(ranges)
