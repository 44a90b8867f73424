"""A node restarted on a ticks.db damaged while it was stopped: the file is moved aside, the node
says so, rebuilds from the exchange's replay, and every acknowledged tick ends up stored."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from strategylab.chaos._checker import check
from strategylab.market._ledger import read_acks
from strategylab.market._sqlite_store import SQLiteTickStore

SYMBOLS = "A,B"
TOTAL = 40_000
PAGE = 4096


async def spawn(*args: str, stderr: BinaryIO | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if stderr is None else stderr,
    )


async def next_event(proc: asyncio.subprocess.Process, event: str, limit: float = 20.0) -> Any:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"process exited ({proc.returncode}) before {event!r}")
            data = json.loads(line)
            if data.get("event") == event:
                return data


async def run_node_until_caught_up(port: int, node_dir: Path, log: Path) -> dict[str, Any]:
    """Start a node, wait until it stored every tick, stop it with SIGTERM; its last status."""
    with log.open("wb") as err:
        return await _run_node(port, node_dir, err)


async def _run_node(port: int, node_dir: Path, log: BinaryIO) -> dict[str, Any]:
    node = await spawn(
        "strategylab",
        "node",
        "--exchange-url",
        f"ws://127.0.0.1:{port}/ws",
        "--data-dir",
        str(node_dir),
        "--symbols",
        SYMBOLS,
        "--status-interval",
        "0.1",
        stderr=log,
    )
    try:
        per_symbol = TOTAL // 2
        async with asyncio.timeout(40):
            while True:
                status = await next_event(node, "status")
                if all(status["last_seq"].get(s, 0) >= per_symbol for s in ("A", "B")):
                    break
        node.send_signal(signal.SIGTERM)
        stopped: dict[str, Any] = await next_event(node, "stopped")
        async with asyncio.timeout(10):
            assert await node.wait() == 0
        return stopped
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()


def wal_exists(db: Path) -> bool:
    return Path(f"{db}-wal").exists()


def damage_last_pages(db: Path, seed: int) -> None:
    """Overwrite two of the last four pages of the stopped node's file with random bytes."""
    rng = random.Random(seed)
    data = bytearray(db.read_bytes())
    pages = len(data) // PAGE
    for page in rng.sample(range(pages - 4, pages), 2):
        data[page * PAGE : (page + 1) * PAGE] = rng.randbytes(PAGE)
    db.write_bytes(bytes(data))


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_restart_on_damaged_file_rebuilds_and_loses_no_acknowledged_tick(
    tmp_path: Path,
) -> None:
    """Stop the node, damage the last pages of ticks.db, restart: the damaged file is kept
    aside, an ERROR names both paths, the audit has the recovery, and the checker finds every
    acknowledged tick stored, nothing duplicated or corrupted."""
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
    db = node_dir / "ticks.db"
    try:
        port = (await next_event(exchange, "listening"))["port"]
        await run_node_until_caught_up(port, node_dir, tmp_path / "first.log")
        assert not wal_exists(db)
        damage_last_pages(db, seed=5)
        await run_node_until_caught_up(port, node_dir, tmp_path / "second.log")
    finally:
        exchange.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await exchange.wait()

    moved = sorted(node_dir.glob("ticks.db.corrupt-*"))
    assert len(moved) == 1
    errors = [
        line
        for line in (tmp_path / "second.log").read_text().splitlines()
        if line.startswith("{") and json.loads(line)["level"] == "error" and "corrupted" in line
    ]
    assert len(errors) == 1, errors
    assert str(db) in errors[0]
    assert str(moved[0]) in errors[0]
    audit = (node_dir / "audit.jsonl").read_text()
    assert "corrupted" in audit
    assert str(moved[0]) in audit

    acks = read_acks(node_dir / "acks.jsonl")
    assert acks == {"A": TOTAL // 2, "B": TOTAL // 2}
    store = SQLiteTickStore(db, on_corruption="raise")
    await store.open()
    try:
        async with asyncio.timeout(30):
            report = await check(
                tmp_path / "exchange" / "emitted.log",
                store,
                node_dir / "acks.jsonl",
                require_complete=True,
            )
    finally:
        await store.aclose()
    assert report.ok, report.summary()
    assert report.lost.count == 0
    assert report.stored == TOTAL
