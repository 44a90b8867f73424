"""Issue 8 item 1 end to end: a real exchange and node; the spool is damaged while the node is down;
after the restart nothing acknowledged is missing from the store (checked with the checker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strategylab.chaos import check
from strategylab.market._ledger import read_acks
from strategylab.market._pg_store import PostgresTickStore

SYMBOLS = "A,B"
TOTAL = 40_000


class Postgres:
    """A PostgreSQL server of this test's own, run as ``postgres``; started and stopped at will."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        runuser = shutil.which("runuser")
        if not found or runuser is None or os.geteuid() != 0:
            pytest.fail("needs root, runuser(1) and PostgreSQL's initdb under /usr/lib/postgresql")
        self.runuser = runuser
        self.bindir = found[-1].parent
        user = pwd.getpwnam("postgres")
        self.base = Path(tempfile.mkdtemp(prefix="spool-corruption-pg-"))
        os.chown(self.base, user.pw_uid, user.pw_gid)
        self.data = self.base / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.dsn = f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(  # noqa: S603
            [self.runuser, "-u", "postgres", "--", str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.base / "log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


async def spawn(*args: str, stderr: Path | None = None) -> asyncio.subprocess.Process:
    err = stderr.open("ab") if stderr is not None else None
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=err if err is not None else asyncio.subprocess.DEVNULL,
        )
    finally:
        if err is not None:
            err.close()


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


async def run_node(args: list[str], done: Any, log: Path, limit: float = 30.0) -> None:
    """Start the node, wait for a status line satisfying ``done``, stop it with SIGTERM (exit 0)."""
    node = await spawn(*args, stderr=log)
    try:
        async with asyncio.timeout(limit):
            while not done(await next_event(node, "status", limit)):
                pass
        node.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await node.wait() == 0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_damaged_spool_segment_loses_no_acknowledged_tick(
    tmp_path: Path, postgres: Postgres
) -> None:
    """Primary down, two spool segments, SIGTERM, 8 bytes flipped mid segment 1, store back,
    restart: the damage is reported and moved aside, and the store ends up complete."""
    exchange_dir, node_dir = tmp_path / "exchange", tmp_path / "node"
    exchange = await spawn(
        "strategylab", "exchange", "--port", "0", "--data-dir", str(exchange_dir),
        "--symbols", SYMBOLS, "--tick-rate", "8000", "--max-ticks", str(TOTAL),
        "--heartbeat-interval", "0.2",
    )  # fmt: skip
    log = tmp_path / "node.log"
    try:
        port = (await next_event(exchange, "listening"))["port"]
        args = [
            "strategylab", "node", "--exchange-url", f"ws://127.0.0.1:{port}/ws",
            "--data-dir", str(node_dir), "--postgres", postgres.dsn, "--symbols", SYMBOLS,
            "--status-interval", "0.1", "--batch-size", "500",
        ]  # fmt: skip
        # Two runs while the primary cannot be written: each one spools into a segment.
        await run_node(args, lambda s: s["ticks_stored"] > 4_000, log)
        await run_node(args, lambda s: s["ticks_stored"] > 4_000, log)
        segments = sorted((node_dir / "spool").glob("*.seg"))
        assert len(segments) == 2
        acked = read_acks(node_dir / "acks.jsonl")
        data = bytearray(segments[0].read_bytes())
        middle = len(data) // 2
        data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
        segments[0].write_bytes(bytes(data))

        postgres.start()  # the store comes back
        per_symbol = TOTAL // 2
        await run_node(
            args,
            lambda s: (
                s["store_state"] == "primary"
                and all(s["last_seq"].get(x, 0) >= per_symbol for x in "AB")
            ),
            log,
            60,
        )
    finally:
        exchange.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await exchange.wait()

    store = PostgresTickStore(postgres.dsn)
    await store.open()
    try:
        report = await check(
            exchange_dir / "emitted.log", store, node_dir / "acks.jsonl", require_complete=True
        )
    finally:
        await store.aclose()
    assert report.ok, report.summary()
    assert "CORRUPTION" in log.read_text()
    assert list((node_dir / "spool").glob("*.corrupt"))
    assert all(acked[s] > 0 for s in "AB")
