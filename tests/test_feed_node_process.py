"""The feed inside real ``strategylab node`` processes against a real exchange process:
a SIGSTOP pause is not a stale connection, a bad symbol is said and blocks nothing, a refused
connection is said once."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from strategylab.chaos import check
from strategylab.market._sqlite_store import SQLiteTickStore

pytestmark = pytest.mark.integration

Proc = asyncio.subprocess.Process


async def spawn(*args: str, stderr: int = asyncio.subprocess.PIPE) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


async def next_event(proc: Proc, event: str, limit: float = 15.0) -> dict[str, Any]:
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
    proc: Proc, done: Callable[[dict[str, Any]], bool], limit: float = 20.0
) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            status = await next_event(proc, "status", limit)
            if done(status):
                return status


async def stop(proc: Proc) -> tuple[dict[str, Any], str]:
    """SIGTERM, then the final ``stopped`` line and everything written to stderr."""
    proc.send_signal(signal.SIGTERM)
    stopped = await next_event(proc, "stopped")
    assert proc.stderr is not None
    async with asyncio.timeout(15):
        err = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0, err
    return stopped, err


async def kill(proc: Proc) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def exchange_process(tmp_path: Path, *options: str) -> AsyncIterator[int]:
    proc = await spawn(
        "exchange",
        *("--port", "0", "--data-dir", str(tmp_path / "exchange"), "--symbols", "A,B"),
        *("--heartbeat-interval", "0.2"),
        *options,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield int((await next_event(proc, "listening"))["port"])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await proc.wait()


def node_args(url: str, data_dir: Path, symbols: str, *extra: str) -> list[str]:
    return [
        "node",
        *("--exchange-url", url, "--data-dir", str(data_dir), "--symbols", symbols),
        *("--status-interval", "0.1"),
        *extra,
    ]


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
    assert report.ok, report.summary()
    return report.to_dict()


async def pause(proc: Proc, seconds: float) -> None:
    """SIGSTOP ``proc`` for ``seconds`` (the fault itself, measured on the wall clock)."""
    proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGCONT)


@pytest.mark.timeout(90)
async def test_a_node_resumed_from_sigstop_keeps_its_connection_and_every_tick(
    tmp_path: Path,
) -> None:
    """SIGSTOP the node for three times stale_after, twice: while the exchange streams ticks and
    while it sends only heartbeats. After SIGCONT the feed does not call its own connection
    stale (no reconnect), reads what was buffered, and the store passes the checker with every
    emitted tick acknowledged and stored."""
    total = 6_000
    node_dir = tmp_path / "node"
    async with exchange_process(tmp_path, "--tick-rate", "2000", "--max-ticks", str(total)) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        node = await spawn(*node_args(url, node_dir, "A,B", "--stale-after", "1.0"))
        try:
            await status_until(node, lambda s: s["ticks_stored"] > 1_000)
            await pause(node, 3.0)  # ticks keep coming meanwhile
            half = total // 2
            await status_until(
                node, lambda s: all(s["last_seq"].get(x, 0) >= half for x in "AB"), 30
            )
            await pause(node, 3.0)  # heartbeats only: generation has finished
            # 15 status lines (1.5 s > stale_after) after the resume: any reconnect shows.
            statuses = [await next_event(node, "status") for _ in range(15)]
            stopped, err = await stop(node)
        finally:
            await kill(node)
    assert [s["reconnects"] for s in statuses] == [0] * 15, err
    assert all(s["connected"] for s in statuses)
    assert stopped["reconnects"] == 0, err
    assert stopped["lost_ticks"] == 0
    report = await integrity(tmp_path, node_dir, complete=True)
    assert report["stored"] == total
    assert report["acknowledged"] == total


@pytest.mark.timeout(60)
async def test_a_node_with_one_unknown_symbol_stores_the_others_and_says_which(
    tmp_path: Path,
) -> None:
    """``--symbols A,ZZZ``: every A tick is stored; stderr names ZZZ once; the audit log holds
    the configuration error."""
    total = 6_000
    node_dir = tmp_path / "node"
    async with exchange_process(tmp_path, "--tick-rate", "3000", "--max-ticks", str(total)) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        node = await spawn(*node_args(url, node_dir, "A,ZZZ"))
        try:
            await status_until(node, lambda s: s["last_seq"].get("A", 0) >= total // 2, 30)
            _, err = await stop(node)
        finally:
            await kill(node)
    said = [line for line in err.splitlines() if "ZZZ" in line]
    assert len(said) == 1, err
    assert "does not know" in said[0]
    assert json.loads(said[0])["level"] == "error"  # stderr is a pipe: JSON log lines
    audit = (node_dir / "audit.jsonl").read_text()
    assert "configuration_error" in audit
    report = await integrity(tmp_path, node_dir, complete=False)
    assert report["lost"]["count"] == 0


@pytest.mark.timeout(60)
async def test_a_node_that_cannot_connect_says_why_once(tmp_path: Path) -> None:
    """Nothing listens at the exchange URL: the node keeps retrying (connected false) and its
    stderr holds one line naming the refused connection, not one per attempt."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ws"
    node = await spawn(*node_args(url, tmp_path / "node", "A"))
    try:
        statuses = [await next_event(node, "status") for _ in range(20)]  # >= 2 s of retries
        _, err = await stop(node)
    finally:
        await kill(node)
    assert not any(s["connected"] for s in statuses)
    refused = [line for line in err.splitlines() if "cannot connect" in line]
    assert len(refused) == 1, err
    assert "ECONNREFUSED" in refused[0]
    assert url in refused[0]
