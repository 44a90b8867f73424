"""The node as a process under real faults: a full disk, an emergency shutdown, SIGTERM bounds."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from strategylab.chaos import check
from strategylab.fault_tolerance import ErrorContext, ErrorType
from strategylab.market._ledger import read_acks
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.node import EXIT_EMERGENCY, Node, NodeConfig, run_node
from test_node_process import next_event, spawn, status_until
from volumes import fill, tmpfs

pytestmark = pytest.mark.integration

SYMBOLS = "A,B"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (as root): a real volume that can be filled to the brim."""
    with tmpfs(tmp_path / "vol", 24) as mountpoint:
        yield mountpoint


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A real exchange process emitting 60,000 ticks at 6,000 ticks/s; (port, emitted log).

    The ticks must still be flowing when a test fills the disk (about 10 s of them): at a higher
    rate a loaded machine let the node store everything before the ballast was written, and then
    no write ever met the full disk."""
    proc = await spawn(
        "strategylab",
        "exchange",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "exchange"),
        "--symbols",
        SYMBOLS,
        "--tick-rate",
        "6000",
        "--max-ticks",
        "60000",
        "--heartbeat-interval",
        "0.2",
    )
    try:
        port = (await next_event(proc, "listening"))["port"]
        yield port, tmp_path / "exchange" / "emitted.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.wait()


def node_args(port: int, data_dir: Path, *extra: str) -> list[str]:
    return [
        "strategylab",
        "node",
        "--exchange-url",
        f"ws://127.0.0.1:{port}/ws",
        "--data-dir",
        str(data_dir),
        "--symbols",
        SYMBOLS,
        "--status-interval",
        "0.1",
        "--batch-size",
        "2000",
        *extra,
    ]


async def stop(node: asyncio.subprocess.Process) -> tuple[int, float, dict[str, Any]]:
    """SIGTERM; (exit code, seconds to exit, the ``stopped`` line)."""
    started = time.monotonic()
    node.send_signal(signal.SIGTERM)
    stopped = await next_event(node, "stopped", 10)
    async with asyncio.timeout(10):
        code = await node.wait()
    return code, time.monotonic() - started, stopped


async def verify(emitted: Path, db: Path, acks: Path) -> None:
    """The integrity checker: nothing acknowledged lost, nothing duplicated or corrupted."""
    store = SQLiteTickStore(db)
    await store.open()
    try:
        report = await check(emitted, store, acks)
    finally:
        await store.aclose()
    assert report.ok, report.summary()
    assert read_acks(acks), "nothing was acknowledged"


def acknowledged(node: Node) -> int:
    try:
        return node.ingestor.statistics().acknowledged
    except RuntimeError:  # not started yet
        return 0


def disk_full_errors(status: dict[str, Any]) -> int:
    by_type: dict[str, int] = status["recovery"]["by_type"]
    return by_type.get(ErrorType.DISK_SPACE_EXHAUSTED.value, 0)


@pytest.mark.timeout(90)
async def test_full_disk_under_the_ack_log_is_reported_and_ingest_resumes(
    tmp_path: Path, volume: Path, exchange: tuple[int, Path]
) -> None:
    """Store on a healthy disk, ack log on a full one: DISK_SPACE_EXHAUSTED reported, the writer
    stays alive, status says so; space back → acks resume and the checker passes."""
    port, emitted = exchange
    data_dir = volume / "node"
    db = tmp_path / "ticks.db"
    node = await spawn(*node_args(port, data_dir, "--db", str(db)))
    try:
        await status_until(node, lambda s: s["ticks_stored"] > 2_000)
        ballast = volume / "ballast"
        assert fill(ballast) > 0
        failing = await status_until(node, lambda s: s["failing"] == "ack_log", 20)
        assert failing["healthy"] is False
        assert failing["ingest_healthy"] is False
        # The status does not lie: the stuck batch is still queued, nothing more is counted.
        stuck = await status_until(node, lambda s: disk_full_errors(s) >= 1 and s["queued"] > 0, 10)
        again = await next_event(node, "status")
        assert again["ticks_stored"] == stuck["ticks_stored"]
        assert again["writer_restarts"] == 0
        ballast.unlink()
        # The recovery is counted when the manager's re-check observes the writer healthy again,
        # which may be a status line after ingest resumed: wait for both.
        done = await status_until(
            node,
            lambda s: (
                all(s["last_seq"].get(x, 0) >= 30_000 for x in "AB")
                and s["recovery"]["succeeded"] >= 1
            ),
            40,
        )
        assert done["healthy"] is True
        assert done["failing"] is None
        code, seconds, stopped = await stop(node)
        assert code == 0
        assert stopped["queued"] == 0
        assert seconds < 2.0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    await verify(emitted, db, data_dir / "acks.jsonl")


@pytest.mark.timeout(90)
async def test_whole_data_dir_on_a_full_disk_then_space_returns(
    volume: Path, exchange: tuple[int, Path]
) -> None:
    """Store, spool, ack log and audit log all on one full tmpfs: reported as
    DISK_SPACE_EXHAUSTED, unhealthy while full, then ingest resumes by itself; nothing lost."""
    port, emitted = exchange
    data_dir = volume / "node"
    node = await spawn(*node_args(port, data_dir))
    try:
        await status_until(node, lambda s: s["ticks_stored"] > 2_000)
        ballast = volume / "ballast"
        assert fill(ballast) > 0
        down = await status_until(
            node, lambda s: s["failing"] is not None and disk_full_errors(s) >= 1, 20
        )
        assert down["healthy"] is False
        await asyncio.sleep(0.5)  # a while on a full disk: the node must not give up or die
        still = await next_event(node, "status")
        assert still["emergency"] is None
        assert still["writer_restarts"] == 0
        ballast.unlink()
        done = await status_until(
            node,
            lambda s: (
                all(s["last_seq"].get(x, 0) >= 30_000 for x in "AB")
                and s["store_state"] == "primary"
                and s["recovery"]["succeeded"] >= 1
            ),
            40,
        )
        assert done["healthy"] is True
        code, seconds, _ = await stop(node)
        assert code == 0
        assert seconds < 2.0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    await verify(emitted, data_dir / "ticks.db", data_dir / "acks.jsonl")
    audit = [json.loads(line) for line in (data_dir / "audit.jsonl").read_text().splitlines()]
    assert any(r["data"].get("error_type") == "disk_space_exhausted" for r in audit)


@pytest.mark.timeout(60)
async def test_sigterm_stops_a_node_whose_disk_is_full_within_2s(
    volume: Path, exchange: tuple[int, Path]
) -> None:
    """While every write fails on a full disk, SIGTERM still ends the process within 2 s."""
    port, _ = exchange
    node = await spawn(*node_args(port, volume / "node"))
    try:
        await status_until(node, lambda s: s["ticks_stored"] > 2_000)
        ballast = volume / "ballast"
        assert fill(ballast) > 0
        await status_until(node, lambda s: s["failing"] is not None, 20)
        code, seconds, stopped = await stop(node)
        assert code == 0
        assert seconds < 2.0, f"SIGTERM took {seconds:.2f}s"
        assert stopped["queued"] > 0  # not flushed, and said so (never acknowledged)
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()


@pytest.mark.timeout(60)
async def test_disk_full_beyond_the_grace_ends_in_an_emergency_shutdown_exit_3(
    volume: Path, exchange: tuple[int, Path]
) -> None:
    """A disk still full after ``--disk-full-grace`` escalates to EMERGENCY_SHUTDOWN: the process
    prints the reason and exits 3 within grace + deadline, with every ack it wrote stored."""
    port, _ = exchange
    data_dir = volume / "node"
    node = await spawn(
        *node_args(port, data_dir, "--disk-full-grace", "1", "--shutdown-deadline", "2")
    )
    try:
        await status_until(node, lambda s: s["ticks_stored"] > 2_000)
        ballast = volume / "ballast"
        assert fill(ballast) > 0
        filled = time.monotonic()
        line = await next_event(node, "emergency_shutdown", 15)
        async with asyncio.timeout(5):
            code = await node.wait()
        seconds = time.monotonic() - filled
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    assert code == EXIT_EMERGENCY
    assert line["error_type"] == "disk_space_exhausted"
    assert line["exit_code"] == EXIT_EMERGENCY
    assert seconds < 1 + 2 + 2.5, f"emergency shutdown took {seconds:.2f}s"
    ballast.unlink()
    acked = read_acks(data_dir / "acks.jsonl")
    store = SQLiteTickStore(data_dir / "ticks.db")
    await store.open()
    try:
        stored = {s: {t.seq for t in await store.read(s)} for s in acked}
    finally:
        await store.aclose()
    spooled = data_dir / "spool"
    for symbol, seq in acked.items():
        missing = set(range(1, seq + 1)) - stored[symbol]
        # An acknowledged tick is in the store or still durably in the spool.
        assert not missing or any(spooled.glob("*.seg")), f"{symbol}: acked but lost {missing}"


@pytest.mark.timeout(60)
async def test_critical_error_halts_the_node_within_its_deadline(
    tmp_path: Path, exchange: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A SECURITY_VIOLATION reported to a running node's manager ends run_node with exit code 3
    within the shutdown deadline, the store flushed and closed, the last line naming the reason."""
    port, emitted = exchange
    config = NodeConfig(
        exchange_url=f"ws://127.0.0.1:{port}/ws",
        symbols=tuple(SYMBOLS.split(",")),
        data_dir=tmp_path / "node",
        status_interval=0.1,
        shutdown_deadline=2.0,
    )
    node = Node(config)
    stop_event = asyncio.Event()
    runner = asyncio.create_task(run_node(config, stop_event, node=node))
    async with asyncio.timeout(20):
        while acknowledged(node) < 2_000:  # noqa: ASYNC110 - the counters have no event
            await asyncio.sleep(0.05)
    started = time.monotonic()
    context = ErrorContext.from_exception(
        PermissionError("forged frame signature"),
        component=node.feed.name,
        error_type=ErrorType.SECURITY_VIOLATION,
        capture_state=False,
    )
    outcome = await node.manager.handle(context)
    async with asyncio.timeout(5):
        code = await runner
    seconds = time.monotonic() - started
    assert outcome.strategy is not None
    assert outcome.strategy.value == "emergency_shutdown"
    assert code == EXIT_EMERGENCY
    assert seconds < config.shutdown_deadline + 0.5
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["event"] == "emergency_shutdown"
    assert last["error_type"] == "security_violation"
    assert "forged frame signature" in last["reason"]
    await verify(emitted, config.data_dir / "ticks.db", config.data_dir / "acks.jsonl")


@pytest.mark.timeout(60)
async def test_status_output_on_a_full_disk_drops_whole_lines_and_resumes(
    tmp_path: Path, volume: Path, exchange: tuple[int, Path]
) -> None:
    """Status lines to a file on a full disk: the node keeps running, no torn line is left, the
    outage is reported as DISK_SPACE_EXHAUSTED, and lines resume once space returns."""
    port, _ = exchange
    out_path = volume / "status.jsonl"
    with out_path.open("wb") as out:
        node = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *node_args(port, tmp_path / "node"),
            stdout=out,
            stderr=asyncio.subprocess.DEVNULL,
        )
    try:
        async with asyncio.timeout(20):
            while out_path.stat().st_size < 20_000:  # noqa: ASYNC110 - a file has no event
                await asyncio.sleep(0.05)
        ballast = volume / "ballast"
        fill(ballast)
        await asyncio.sleep(1.0)  # several status intervals with nowhere to write
        assert node.returncode is None
        ballast.unlink()
        async with asyncio.timeout(20):
            while True:
                lines = out_path.read_text().splitlines()
                last = json.loads(lines[-1]) if lines and lines[-1].endswith("}") else {}
                if disk_full_errors(last) >= 1 and last.get("healthy"):
                    break
                await asyncio.sleep(0.1)
        node.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await node.wait() == 0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    events = [json.loads(line)["event"] for line in out_path.read_text().splitlines()]
    assert events[0] == "started"
    assert events[-1] == "stopped"
