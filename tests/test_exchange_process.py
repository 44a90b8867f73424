"""The exchange as its own process: listening line, serving, clean SIGTERM, bad options."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest

from exchange_client import WsClient
from strategylab.market._ledger import read_emitted
from strategylab.market._tick import Tick

pytestmark = pytest.mark.integration

ENTRY = [sys.executable, "-m", "strategylab", "exchange"]


@pytest.mark.timeout(20)
async def test_process_prints_port_serves_and_flushes_log_on_sigterm(tmp_path: Path) -> None:
    """The subprocess announces its port, streams ticks, and on SIGTERM exits 0 with the log
    holding every tick it sent."""
    proc = await asyncio.create_subprocess_exec(
        *ENTRY,
        *("--port", "0", "--symbols", "X,Y", "--tick-rate", "2000", "--ticks-per-frame", "20"),
        *("--data-dir", str(tmp_path), "--signing-key", "00ff10"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            announce = json.loads(await proc.stdout.readline())
            assert announce["event"] == "listening"
            assert announce["pid"] == proc.pid
            port = announce["port"]
            client = await WsClient.connect(
                f"ws://127.0.0.1:{port}/ws", key=bytes.fromhex("00ff10")
            )
            await client.subscribe(from_seq={"X": 1, "Y": 1})
            received: list[Tick] = []
            while len(received) < 200:
                kind, body = await client.next()
                if kind == "ticks":
                    received += body
            await client.close()
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/api/status") as response,
            ):
                status = await response.json()
            assert status["ticks_emitted"] >= 200
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    logged = list(read_emitted(tmp_path / "emitted.log"))
    assert len(logged) >= status["ticks_emitted"]
    by_key = {(t.symbol, t.seq): t for t in logged}
    assert all(by_key[t.symbol, t.seq] == t for t in received)
    seqs: dict[str, list[int]] = defaultdict(list)
    for tick in logged:
        seqs[tick.symbol].append(tick.seq)
    for symbol in ("X", "Y"):
        assert seqs[symbol] == list(range(1, len(seqs[symbol]) + 1))


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--tick-rate", "-3"], "--tick-rate"),
        (["--symbols", "A,,B"], "symbols"),
        (["--port", "not-a-port"], "--port"),
        (["--heartbeat-interval", "0"], "--heartbeat-interval"),
    ],
)
async def test_bad_options_exit_2_naming_the_option(
    tmp_path: Path, args: list[str], named: str
) -> None:
    """A bad option prints an error naming it and exits with status 2, no traceback."""
    proc = await asyncio.create_subprocess_exec(
        *ENTRY,
        *args,
        "--data-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(15):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    assert named in err.decode()
    assert "Traceback" not in err.decode()
    assert out == b""
