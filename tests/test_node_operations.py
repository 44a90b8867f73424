"""The node's operations layer against real parts: a real exchange process, node processes, the
status service over real HTTP, the kill switch end to end and the resume after it.

Nodes run as processes built from a :class:`NodeConfig` (``run_node_process``), so that the
status service, its admin token and the kill switch's exit code are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.chaos import check
from strategylab.market._sqlite_store import SQLiteTickStore

pytestmark = pytest.mark.integration

SYMBOLS = ("A", "B")
KEY_HEX = "6b6579206f66207468652074657374"
EXCHANGE_TOKEN = secrets.token_urlsafe(16)
NODE_TOKEN = secrets.token_urlsafe(16)
TOTAL = 40_000
Proc = asyncio.subprocess.Process

NODE_SCRIPT = """
import json, os, sys
from pathlib import Path
from strategylab.node import NodeConfig, run_node_process
args = json.loads(sys.argv[1])
config = NodeConfig(
    exchange_url=args["url"],
    symbols=tuple(args["symbols"]),
    data_dir=Path(args["data_dir"]),
    signing_key=bytes.fromhex(os.environ["TEST_SIGNING_KEY"]),
    admin_token=os.environ.get("TEST_ADMIN_TOKEN"),
    status_port=0,
    status_interval=0.1,
    stale_after=float(args.get("stale_after", 3.0)),
    shutdown_deadline=2.0,
)
sys.exit(run_node_process(config))
"""


async def next_event(proc: Proc, event: str, limit: float = 15.0) -> dict[str, Any]:
    """The next stdout line of ``event`` (lines of other events are skipped)."""
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"process exited ({proc.returncode}) before {event!r}")
            data: dict[str, Any] = json.loads(line)
            if data.get("event") == event:
                return data


async def status_until(proc: Proc, done: Any, limit: float = 30.0) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            status = await next_event(proc, "status", limit)
            if done(status):
                return status


async def stop(proc: Proc) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[tuple[int, Proc]]:
    """A real, signing exchange process: 40,000 ticks at 4,000 ticks/s; (port, process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "exchange",
        *("--port", "0", "--data-dir", str(tmp_path / "exchange")),
        *("--symbols", ",".join(SYMBOLS), "--tick-rate", "4000", "--max-ticks", str(TOTAL)),
        *("--retention", str(TOTAL), "--heartbeat-interval", "0.2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={
            **os.environ,
            "STRATEGYLAB_SIGNING_KEY": KEY_HEX,
            "STRATEGYLAB_ADMIN_TOKEN": EXCHANGE_TOKEN,
        },
    )
    try:
        port = (await next_event(proc, "listening"))["port"]
        yield port, proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await proc.wait()


async def spawn_node(port: int, data_dir: Path, **extra: object) -> Proc:
    args = {
        "url": f"ws://127.0.0.1:{port}/ws",
        "symbols": list(SYMBOLS),
        "data_dir": str(data_dir),
        **extra,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NODE_SCRIPT,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TEST_SIGNING_KEY": KEY_HEX, "TEST_ADMIN_TOKEN": NODE_TOKEN},
    )


async def exchange_status(http: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{port}/api/status") as response:
        data: dict[str, Any] = await response.json()
        return data


async def verify(tmp_path: Path, data_dir: Path) -> None:
    """The integrity checker: zero lost, zero duplicated, zero corrupted; all emitted stored."""
    store = SQLiteTickStore(data_dir / "ticks.db")
    await store.open()
    try:
        report = await check(
            tmp_path / "exchange" / "emitted.log",
            store,
            data_dir / "acks.jsonl",
            require_complete=True,
        )
    finally:
        await store.aclose()
    assert report.ok, report.summary()
    assert report.lost.count == 0
    assert report.duplicated.count == 0
    assert report.stored == TOTAL


def assert_killed(line: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """The emergency line of a forged-frame kill, its report, the snapshot and the marker."""
    assert line["error_type"] == "security_violation"
    assert line["source"] == "security_violation"
    kill = line["kill"]
    steps = [step["name"] for step in kill["steps"]]
    assert steps[:5] == ["halt", "cancel_orders", "quiesce", "flush", "snapshot"]
    assert steps[-1] == "marker"
    stops = [s for s in steps if s.startswith("stop:")]
    assert stops == steps[5:-1]
    # Reverse dependency order: the feed before the ingestor before the store.
    assert stops.index("stop:feed") < stops.index("stop:ingestor") < stops.index("stop:store")
    assert kill["duration_ms"] < 2_000, kill
    assert (data_dir / "UNCLEAN_SHUTDOWN").is_file()
    snapshot: dict[str, Any] = json.loads((data_dir / "snapshot.json").read_text())
    assert snapshot["last_sequence"] == line["last_seq"]
    assert snapshot["positions"] == {}
    assert snapshot["open_orders"] == []
    return snapshot


@pytest.mark.timeout(90)
async def test_forged_frames_from_the_exchange_kill_the_node_and_a_restart_resumes_losing_nothing(
    tmp_path: Path, exchange: tuple[int, Proc]
) -> None:
    """Bad signatures from a real exchange: exit 3 with snapshot.json and UNCLEAN_SHUTDOWN; the
    restart prints ``resumed``, catches up, removes the marker; the checker finds nothing lost
    or duplicated."""
    port, _ = exchange
    data_dir = tmp_path / "node"
    node = await spawn_node(port, data_dir)
    try:
        await status_until(node, lambda s: s["ticks_stored"] > 2_000)
        headers = {"Authorization": f"Bearer {EXCHANGE_TOKEN}"}
        faults = f"http://127.0.0.1:{port}/admin/faults"
        async with aiohttp.ClientSession() as http:
            fault = {"kind": "bad_signatures", "rate": 1.0, "duration": 60.0}
            async with http.post(faults, json=fault, headers=headers) as response:
                assert response.status in (200, 201), await response.text()
            line = await next_event(node, "emergency_shutdown", 30)
            last_line_at = time.monotonic()
            async with asyncio.timeout(10):
                code = await node.wait()
            exited = time.monotonic() - last_line_at
            async with http.delete(faults, headers=headers) as response:
                assert response.status in (200, 204), await response.text()
    finally:
        await stop(node)
    assert code == 3
    assert exited < 2, f"the process took {exited:.2f}s to exit after its last line"
    snapshot = assert_killed(line, data_dir)

    node = await spawn_node(port, data_dir)
    try:
        await next_event(node, "started")
        resumed = await next_event(node, "resumed")
        assert resumed["last_seq"] == snapshot["last_sequence"]
        assert resumed["snapshot_time"] == snapshot["time"]
        assert resumed["behind"] == {}
        assert resumed["warnings"] == []
        assert all(resumed["store_last_seq"][s] >= n for s, n in snapshot["last_sequence"].items())
        await next_event(node, "ready")
        assert not (data_dir / "UNCLEAN_SHUTDOWN").exists()
        per_symbol = TOTAL // len(SYMBOLS)
        await status_until(
            node, lambda s: all(s["last_seq"].get(x, 0) >= per_symbol for x in SYMBOLS), 40
        )
        node.send_signal(signal.SIGTERM)
        await next_event(node, "stopped")
        async with asyncio.timeout(10):
            assert await node.wait() == 0
    finally:
        await stop(node)
    await verify(tmp_path, data_dir)


@pytest.mark.timeout(60)
async def test_admin_kill_over_http_needs_the_token_and_exits_3_with_a_snapshot(
    tmp_path: Path, exchange: tuple[int, Proc]
) -> None:
    """POST /admin/kill: 401 without the token (nothing happens), with it exit 3, snapshot and
    marker written, the ``ready`` line's URL answering until then."""
    port, _ = exchange
    data_dir = tmp_path / "node"
    node = await spawn_node(port, data_dir)
    try:
        ready = await next_event(node, "ready")
        url = ready["status_url"]
        assert url.startswith("http://127.0.0.1:")
        assert ready["pid"] == node.pid
        assert ready["symbols"] == list(SYMBOLS)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/health/live") as response:
                assert response.status == 200
            async with http.post(f"{url}/admin/kill", json={"reason": "drill"}) as response:
                assert response.status == 401
            await status_until(node, lambda s: s["ticks_stored"] > 0)
            assert not (data_dir / "UNCLEAN_SHUTDOWN").exists()
            auth = {"Authorization": f"Bearer {NODE_TOKEN}"}
            started = time.monotonic()
            async with http.post(
                f"{url}/admin/kill", json={"reason": "drill"}, headers=auth
            ) as response:
                assert response.status in (200, 202), await response.text()
        line = await next_event(node, "emergency_shutdown", 10)
        async with asyncio.timeout(10):
            code = await node.wait()
        exited = time.monotonic() - started
    finally:
        await stop(node)
    assert code == 3
    assert line["source"] == "http"
    assert "drill" in line["reason"]
    assert line["kill"]["source"] == "http"
    assert all(step["outcome"] == "ok" for step in line["kill"]["steps"]), line["kill"]
    snapshot = json.loads((data_dir / "snapshot.json").read_text())
    assert "drill" in snapshot["reason"]
    assert snapshot["last_sequence"] == line["last_seq"]
    marker = json.loads((data_dir / "UNCLEAN_SHUTDOWN").read_text())
    assert marker["snapshot_sha256"] == line["kill"]["snapshot_sha256"]
    assert exited < 5, f"kill took {exited:.2f}s to exit"


@pytest.mark.timeout(60)
async def test_readiness_follows_the_feed_and_sigterm_leaves_no_marker(
    tmp_path: Path, exchange: tuple[int, Proc]
) -> None:
    """/health/ready answers 503 naming the feed while the exchange is frozen (SIGSTOP), 200
    once it runs again; SIGTERM then exits 0 with no marker and no snapshot."""
    port, exchange_proc = exchange
    data_dir = tmp_path / "node"
    node = await spawn_node(port, data_dir, stale_after=1.0)
    try:
        url = (await next_event(node, "ready"))["status_url"]
        async with aiohttp.ClientSession() as http:

            async def ready_status(want: int, limit: float) -> dict[str, Any]:
                async with asyncio.timeout(limit):
                    while True:
                        async with http.get(f"{url}/health/ready") as response:
                            body: dict[str, Any] = await response.json()
                            if response.status == want:
                                return body
                        await asyncio.sleep(0.1)  # polling a real process's HTTP answer

            await ready_status(200, 15)
            exchange_proc.send_signal(signal.SIGSTOP)
            try:
                down = await ready_status(503, 15)
            finally:
                exchange_proc.send_signal(signal.SIGCONT)
            assert "feed" in json.dumps(down)
            await ready_status(200, 20)
        node.send_signal(signal.SIGTERM)
        stopped = await next_event(node, "stopped")
        async with asyncio.timeout(10):
            assert await node.wait() == 0
    finally:
        await stop(node)
    assert stopped["emergency"] is None
    assert not (data_dir / "UNCLEAN_SHUTDOWN").exists()
    assert not (data_dir / "snapshot.json").exists()
