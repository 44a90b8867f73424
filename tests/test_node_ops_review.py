"""The node's answers to the operations review (issue 11), against real parts:

- a ``--memory-budget`` below the node's RSS at start: the node starts (the degradation child is
  ready: its readiness is "the loop runs", not "nothing to shed"), then sheds both features;
- the feed stops at once under a full-rate backlog (the transport is aborted, no closing
  handshake behind megabytes of unread frames); a kill and a SIGTERM under full-rate ingest
  end the process within 2 s;
- every admin action, accepted or refused, is audited (kind ``admin``) and published; a
  rejected configuration is audited and published as a ``config`` event; ``/status`` shows the
  audit log's last records after a restart;
- concurrent kills answer with the reason and source the kill switch recorded;
- a damaged ``snapshot.json`` refuses the start with a hint that works.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab._layout import DataLayout
from strategylab.fault_tolerance import AuditLog, StateSnapshot, mark_unclean, write_snapshot
from strategylab.node import Node, NodeConfig, load_node_config, run_node_process
from strategylab.node._node import _audit_tail
from strategylab.node._operations import DegradationSlot
from strategylab.node._resume import prepare_resume
from strategylab.node._shedding import build_degradation, node_features
from strategylab.testing import FakeClock
from test_node_operations import (
    KEY_HEX,
    NODE_TOKEN,
    SYMBOLS,
    Proc,
    exchange,  # noqa: F401 - the fixture
    next_event,
    stop,
)

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {NODE_TOKEN}"}


def node_config(port: int, data_dir: Path, **extra: Any) -> NodeConfig:
    return NodeConfig(
        exchange_url=f"ws://127.0.0.1:{port}/ws",
        symbols=SYMBOLS,
        data_dir=data_dir,
        signing_key=bytes.fromhex(KEY_HEX),
        status_port=0,
        status_interval=0.2,
        admin_token=NODE_TOKEN,
        shutdown_deadline=2.0,
        **extra,
    )


async def get_status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/status") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def audit_file(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in DataLayout(data_dir).audit.read_text().splitlines()]


async def next_sse(response: aiohttp.ClientResponse, kind: str) -> dict[str, Any]:
    """The data of the next server-sent event of ``kind`` on ``response``."""
    current = None
    async with asyncio.timeout(10):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                current = line.removeprefix("event: ")
            elif line.startswith("data: ") and current == kind:
                data: dict[str, Any] = json.loads(line.removeprefix("data: "))
                return data
    raise AssertionError(f"the stream ended before a {kind!r} event")


async def cli(*args: str, env: dict[str, str] | None = None) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
async def full_rate(tmp_path: Path) -> AsyncIterator[int]:
    """An exchange process sending as fast as it is read (``--tick-rate 0``); its port."""
    proc = await cli(
        "exchange",
        *("--port", "0", "--data-dir", str(tmp_path / "fast-exchange")),
        *("--symbols", ",".join(SYMBOLS), "--tick-rate", "0", "--heartbeat-interval", "0.2"),
    )
    try:
        yield (await next_event(proc, "listening"))["port"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await proc.wait()


# ---------------------------------------------------------------------------------- item 2


async def test_the_supervised_degradation_is_ready_while_it_must_shed() -> None:
    """RSS far above the budget: the controller's health is False (a trigger is above its
    mark), the supervisor's view of the slot is True once its loop runs, False once stopped."""
    config = NodeConfig(
        exchange_url="ws://127.0.0.1:9/ws", symbols=("A",), data_dir=Path("x"), memory_budget=1024
    )
    controller = build_degradation(
        config,
        queue_depth=lambda: 0,
        queue_capacity=lambda: 10,
        features=node_features(lambda _on: None, lambda _on: None),
        clock=FakeClock(),
    )
    slot = DegradationSlot(controller)
    child = slot.supervised()
    assert child.name == "degradation"
    assert await child.health() is False  # not started
    await child.start()
    try:
        assert await slot.health() is False  # RSS > 1 KiB: something to shed
        assert await child.health() is True
    finally:
        await child.stop()
    assert await child.health() is False


@pytest.mark.timeout(60)
async def test_a_memory_budget_below_rss_starts_the_node_then_sheds(
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """`strategylab node --memory-budget 10M` (RSS is several times that): started and ready
    within seconds, then /status shows live_chart and events shed (5 s hold per level)."""
    port, _ = exchange
    proc = await cli(
        "node",
        *("--data-dir", str(tmp_path / "node"), "--symbols", ",".join(SYMBOLS)),
        *("--exchange-url", f"http://127.0.0.1:{port}", "--status-port", "0"),
        *("--memory-budget", "10M", "--status-interval", "0.5"),
        env={"STRATEGYLAB_SIGNING_KEY": KEY_HEX},
    )
    try:
        await next_event(proc, "started", 8)
        url = (await next_event(proc, "ready", 8))["status_url"]
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    status = await get_status(http, url)
                    if status["degradation"]["shed"] == ["live_chart", "events"]:
                        break
                    assert proc.returncode is None
                    await asyncio.sleep(0.25)  # polling a real node's HTTP answer
        assert status["chart"] == {"enabled": False, "state": "shed"}
        children = {c["id"]: c for c in status["supervisor"]["children"]}
        assert children["degradation"]["restarts"] == 0
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        await stop(proc)
    # Each shed is on the record (the hash-chained audit log), not only on screen.
    shed = [
        record.data
        for record in AuditLog.read(tmp_path / "node" / "audit.jsonl")
        if record.kind == "degradation"
    ]
    assert [(r["action"], r["feature"]) for r in shed][:2] == [
        ("shed", "live_chart"),
        ("shed", "events"),
    ]


# ---------------------------------------------------------------------------------- item 4


@pytest.mark.timeout(60)
async def test_feed_stop_under_a_full_rate_backlog_is_immediate(
    tmp_path: Path,
    full_rate: int,
) -> None:
    """A node reading a full-rate exchange (its socket full, the queue filling): feed.stop()
    takes well under the 0.5 s the kill's flush step allows it (it took websockets'
    close_timeout, 1 s, waiting for a closing handshake behind the backlog)."""
    node = Node(
        NodeConfig(
            exchange_url=f"ws://127.0.0.1:{full_rate}/ws", symbols=SYMBOLS, data_dir=tmp_path / "n"
        )
    )
    await node.start()
    try:
        async with asyncio.timeout(20):
            while node.ingestor.statistics().acknowledged < 50_000:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # a real exchange filling the pipe
        started = time.monotonic()
        await node.feed.stop()
        took = time.monotonic() - started
        assert took < 0.25, f"feed.stop() took {took:.3f}s"
        assert not node.feed.statistics().connected
    finally:
        await node.aclose()


async def spawn_fast_node(port: int, data_dir: Path) -> tuple[Proc, str]:
    proc = await cli(
        "node",
        *("--data-dir", str(data_dir), "--symbols", ",".join(SYMBOLS)),
        *("--exchange-url", f"http://127.0.0.1:{port}", "--status-port", "0"),
        *("--status-interval", "0.2"),
        env={"STRATEGYLAB_ADMIN_TOKEN": NODE_TOKEN},
    )
    try:
        url: str = (await next_event(proc, "ready", 10))["status_url"]
    except AssertionError:
        assert proc.stderr is not None
        raise AssertionError((await proc.stderr.read()).decode()[-2000:]) from None
    await next_event(proc, "status", 5)
    await asyncio.sleep(2)  # full-rate ingest: the queue and the socket fill up
    return proc, url


@pytest.mark.timeout(60)
async def test_a_kill_under_full_rate_ingest_exits_within_2s(
    tmp_path: Path, full_rate: int
) -> None:
    """POST /admin/kill to a node process ingesting a --tick-rate 0 exchange: exit code 3 within
    2 s of the request, and no "feed stop did not finish" line."""
    proc, url = await spawn_fast_node(full_rate, tmp_path / "node")
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.post(
                f"{url}/admin/kill", json={"reason": "drill"}, headers=AUTH
            ) as response:
                assert response.status == 202, await response.text()
            async with asyncio.timeout(10):
                code = await proc.wait()
            took = time.monotonic() - started
        assert code == 3
        assert took < 2.0, f"exit {took:.2f}s after the kill"
        assert proc.stderr is not None
        assert b"feed stop did not finish" not in await proc.stderr.read()
    finally:
        await stop(proc)


@pytest.mark.timeout(60)
async def test_sigterm_under_full_rate_ingest_exits_within_2s(
    tmp_path: Path, full_rate: int
) -> None:
    """SIGTERM to a node process ingesting a --tick-rate 0 exchange: exit 0 within 2 s."""
    proc, _ = await spawn_fast_node(full_rate, tmp_path / "node")
    try:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await proc.wait()
        took = time.monotonic() - started
        assert code == 0
        assert took < 2.0, f"exit {took:.2f}s after SIGTERM"
        assert proc.stderr is not None
        assert b"feed stop did not finish" not in await proc.stderr.read()
    finally:
        await stop(proc)


# ---------------------------------------------------------------------------------- item 5


@pytest.mark.timeout(60)
async def test_every_admin_action_is_audited_and_published(  # noqa: PLR0915
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """shed (accepted), shed of an unknown feature (404), restore, a breaker force (404), a
    kill: each one an ``admin`` record (action, target, outcome) in audit.jsonl and /status
    and an ``admin`` event; the token is nowhere in the log. After a restart /status shows
    the log's last records."""
    port, _ = exchange
    data_dir = tmp_path / "node"
    node = Node(node_config(port, data_dir))
    await node.start()
    try:
        url = node.status_url
        assert url is not None
        async with aiohttp.ClientSession() as http, http.get(f"{url}/events") as events:
            assert events.status == 200
            feature = f"{url}/admin/features/live_chart"
            async with http.post(f"{feature}/shed", headers=AUTH) as response:
                assert response.status == 200, await response.text()
            event = await next_sse(events, "admin")
            assert event["action"] == "shed"
            assert event["target"] == "live_chart"
            assert event["outcome"] == "accepted"
            async with http.post(f"{url}/admin/features/nope/shed", headers=AUTH) as response:
                assert response.status == 404
            async with http.post(f"{feature}/restore", headers=AUTH) as response:
                assert response.status == 200
            async with http.post(
                f"{url}/admin/breakers/db", json={"state": "open"}, headers=AUTH
            ) as response:
                assert response.status == 404
            status = await get_status(http, url)
            async with http.post(
                f"{url}/admin/kill", json={"reason": "audit drill"}, headers=AUTH
            ) as response:
                assert response.status == 202
        admin = [a["data"] for a in status["audit"] if a["kind"] == "admin"]
        assert [(a["action"], a["target"], a["outcome"]) for a in admin] == [
            ("shed", "live_chart", "accepted"),
            ("shed", "nope", "rejected"),
            ("restore", "live_chart", "accepted"),
            ("breaker", "db", "rejected"),
        ]
        assert admin[1]["status"] == 404
        assert "nope" in admin[1]["error"]
        assert admin[3]["state"] == "open"
        async with asyncio.timeout(10):
            await node.halted.wait()
    finally:
        await node.aclose()
    records = audit_file(data_dir)
    kills = [r["data"] for r in records if r["kind"] == "admin" and r["data"]["action"] == "kill"]
    assert kills == [
        {
            "action": "kill",
            "target": None,
            "outcome": "accepted",
            "reason_given": "audit drill",
            "result": {
                "accepted": True,
                "already_triggered": False,
                "reason": "audit drill",
                "source": "http",
            },
        }
    ]
    assert NODE_TOKEN not in DataLayout(data_dir).audit.read_text()

    again = Node(node_config(port, data_dir))
    await again.start()
    try:
        url = again.status_url
        assert url is not None
        async with aiohttp.ClientSession() as http:
            status = await get_status(http, url)
        shown = [(a["seq"], a["kind"]) for a in status["audit"]]
        on_file = [(r["seq"], r["kind"]) for r in records]
        assert shown
        assert shown == on_file[-len(shown) :]  # the file's last records, in order
    finally:
        await again.aclose()


def test_the_audit_tail_reads_only_whole_records_from_the_end(tmp_path: Path) -> None:
    """A tail cut mid-line skips the partial record; the limit keeps the newest; no file: []."""
    path = tmp_path / "audit.jsonl"
    assert _audit_tail(path) == []
    lines = [
        json.dumps({"seq": n, "timestamp": "t", "kind": "k", "data": {"n": n}, "hash": "h"})
        for n in range(1, 101)
    ]
    path.write_text("\n".join(lines) + "\n")
    tail = _audit_tail(path, limit=5)
    assert [r["seq"] for r in tail] == [96, 97, 98, 99, 100]
    assert tail[-1] == {"seq": 100, "timestamp": "t", "kind": "k", "data": {"n": 100}}
    cut = _audit_tail(path, max_bytes=len(lines[-1]) * 3 + 10)
    assert [r["seq"] for r in cut] == [98, 99, 100]


@pytest.mark.timeout(60)
async def test_a_rejected_configuration_is_audited_and_published(
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """A bad value written to the running node's file: a ``config_reload`` record with ok
    false and the reason, and a ``config`` event saying the same (the dashboard's timeline)."""
    port, _ = exchange
    conf = tmp_path / "node.toml"
    conf.write_text("[ingest]\nbatch_size = 500\n")
    node = Node(
        load_node_config(node_config(port, tmp_path / "node", config_file=conf), environ={})
    )
    await node.start()
    try:
        url = node.status_url
        assert url is not None
        async with aiohttp.ClientSession() as http, http.get(f"{url}/events") as events:
            conf.write_text("[ingest]\nbatch_size = 0\n")
            event = await next_sse(events, "config")  # the poll finds it within a second
            assert event["ok"] is False
            assert "ingest.batch_size" in event["error"]
            status = await get_status(http, url)
        records = [a["data"] for a in status["audit"] if a["kind"] == "config_reload"]
        assert records[-1]["ok"] is False
        assert records[-1]["error"] == event["error"]
        assert records[-1]["path"] == str(conf)
    finally:
        await node.aclose()
    on_file = [r for r in audit_file(tmp_path / "node") if r["kind"] == "config_reload"]
    assert on_file[-1]["data"]["ok"] is False


# ---------------------------------------------------------------------------------- item 13


@pytest.mark.timeout(60)
async def test_concurrent_kills_answer_with_the_recorded_reason(
    tmp_path: Path,
    exchange: tuple[int, Proc],  # noqa: F811 - the imported fixture
) -> None:
    """Five kills at once: all 202, one pulled it, the other four joined; every answer gives
    the reason and source the kill switch recorded (the first one's), not its own."""
    port, _ = exchange
    node = Node(node_config(port, tmp_path / "node"))
    await node.start()
    try:
        url = node.status_url
        assert url is not None

        async def kill(http: aiohttp.ClientSession, n: int) -> dict[str, Any]:
            async with http.post(
                f"{url}/admin/kill", json={"reason": f"kill {n}"}, headers=AUTH
            ) as response:
                assert response.status == 202
                body: dict[str, Any] = await response.json()
                return body

        async with aiohttp.ClientSession() as http:
            answers = await asyncio.gather(*(kill(http, n) for n in range(5)))
        results = [a["result"] for a in answers]
        assert sorted(r["already_triggered"] for r in results) == [False, True, True, True, True]
        assert {r["reason"] for r in results} == {node.kill_reason}
        assert {r["source"] for r in results} == {"http"}
        first = next(r for r in results if not r["already_triggered"])
        assert first["reason"] == node.kill_reason
        async with asyncio.timeout(10):
            await node.halted.wait()
    finally:
        await node.aclose()


# ---------------------------------------------------------------------------------- item 14


def test_a_damaged_snapshot_says_how_to_recover_and_the_hint_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged snapshot.json with the marker: one line naming the file and saying to move it
    aside; done as it says, the next start resumes from the store alone (with a warning)."""
    data_dir = tmp_path / "node"
    layout = DataLayout(data_dir)
    written = StateSnapshot.create(reason="drill", last_sequence={"A": 3}, clock=FakeClock(1e9))
    write_snapshot(layout, written)
    mark_unclean(layout, "drill", snapshot_sha256=written.digest)
    layout.snapshot.write_bytes(layout.snapshot.read_bytes().replace(b'"A":3', b'"A":4'))
    config = NodeConfig(exchange_url="ws://127.0.0.1:9/ws", symbols=("A",), data_dir=data_dir)
    assert run_node_process(config) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "snapshot damaged" in err
    moved = f"{layout.snapshot}.damaged"
    assert f"move it aside (mv {layout.snapshot} {moved})" in err
    layout.snapshot.rename(moved)  # as the line says
    resume = prepare_resume(layout)
    assert resume is not None
    assert resume.snapshot is None
    assert any("from the store alone" in w for w in resume.warnings)
