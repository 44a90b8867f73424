"""The node as a process: SIGKILL mid-run and restart lose nothing; SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from strategylab.market._ledger import read_acks, read_emitted
from strategylab.market._sqlite_store import SQLiteTickStore

SYMBOLS = "A,B"
TOTAL = 60_000


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def next_event(proc: asyncio.subprocess.Process, event: str, limit: float = 10.0) -> Any:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"process exited ({proc.returncode}) before {event!r}")
            data = json.loads(line)
            if data.get("event") == event:
                return data


async def status_until(
    proc: asyncio.subprocess.Process, done: Any, limit: float = 20.0
) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            status: dict[str, Any] = await next_event(proc, "status", limit)
            if done(status):
                return status


def node_args(port: int, data_dir: Path) -> list[str]:
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
    ]


@pytest.mark.timeout(60)
async def test_sigkill_mid_run_then_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Kill -9 the node mid-stream, restart it: the store equals the emitted log, acks included."""
    exchange = await spawn(
        "strategylab",
        "exchange",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "exchange"),
        "--symbols",
        SYMBOLS,
        "--tick-rate",
        "20000",
        "--max-ticks",
        str(TOTAL),
        "--heartbeat-interval",
        "0.2",
    )
    node_dir = tmp_path / "node"
    try:
        port = (await next_event(exchange, "listening"))["port"]
        node = await spawn(*node_args(port, node_dir))
        try:
            await status_until(node, lambda s: s["ticks_stored"] > 5_000)
        finally:
            node.send_signal(signal.SIGKILL)
            assert await node.wait() == -signal.SIGKILL
        acked_before = read_acks(node_dir / "acks.jsonl")
        assert acked_before

        node = await spawn(*node_args(port, node_dir))
        try:
            per_symbol = TOTAL // 2  # the generator alternates symbols evenly
            await status_until(
                node, lambda s: all(s["last_seq"].get(x, 0) >= per_symbol for x in ("A", "B")), 30
            )
            node.send_signal(signal.SIGTERM)
            stopped = await next_event(node, "stopped")
            assert stopped["queued"] == 0
            async with asyncio.timeout(10):
                assert await node.wait() == 0
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()
    finally:
        exchange.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await exchange.wait()

    emitted = {(t.symbol, t.seq): t for t in read_emitted(tmp_path / "exchange" / "emitted.log")}
    assert len(emitted) == TOTAL
    store = SQLiteTickStore(node_dir / "ticks.db")
    await store.open()
    try:
        stored = {(t.symbol, t.seq): t for s in ("A", "B") for t in await store.read(s)}
        assert await store.duplicates() == 0
    finally:
        await store.aclose()
    assert set(stored) == set(emitted), "lost or unexpected ticks"
    assert all(stored[k] == emitted[k] for k in stored), "corrupted ticks"
    for symbol, seq in read_acks(node_dir / "acks.jsonl").items():
        assert all((symbol, n) in stored for n in range(1, seq + 1)), f"acked {symbol} not stored"


def test_bad_option_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value is named on stderr and the exit status is 2."""
    from strategylab.cli import app  # noqa: PLC0415

    with pytest.raises(SystemExit) as exited:
        app(["node", "--exchange-url", "ftp://x", "--data-dir", "/tmp/x", "--symbols", "A"])  # noqa: S108
    assert exited.value.code == 2
    assert "--exchange-url" in capsys.readouterr().err
