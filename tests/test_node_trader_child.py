"""The node's strategy engine: ``strategylab trade`` as a supervised child of a real node.

A real exchange (signing its market data, its order API asked directly), a real ``strategylab
node --strategy ... --book ...`` process with its status service, and the trader it starts. The
trader is SIGKILLed (restarted, its exit status on ``/status``), the node's kill switch is pulled
over HTTP (the trader halted, its orders cancelled at the exchange, both snapshots and markers
written, exit 3, then both resume), the trader crash-loops (the node's kill switch, source
``crash_loop``), and SIGTERM stops both cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab._layout import DataLayout
from strategylab.fault_tolerance import read_snapshot, unclean_marker
from strategylab.market import Exchange, ExchangeConfig

pytestmark = pytest.mark.integration

KEY_HEX = "5f3c0a91d2e84b7766aa10ce9b3f2d48"
TOKEN = secrets.token_urlsafe(16)
BIDS = "bids=strategylab.strategy._examples:RestingBids"
Proc = asyncio.subprocess.Process


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(
        ExchangeConfig(
            symbols=("A",),
            tick_rate=50,
            data_dir=tmp_path / "ex",
            signing_key=bytes.fromhex(KEY_HEX),
            admin_open=True,
        )
    )
    await ex.start()
    yield ex
    await ex.stop()


class Node:
    """A ``strategylab node`` process with a trader child, and the lines it printed."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self.lines: list[dict[str, Any]] = []
        self.url = ""

    def printed(self, event: str) -> dict[str, Any]:
        """The first ``event`` line read so far."""
        return next(line for line in self.lines if line["event"] == event)

    async def next(self, event: str, limit: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(limit):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"node exited ({self.proc.returncode}) before {event!r}")
                data: dict[str, Any] = json.loads(line)
                self.seen.append(data["event"])
                self.lines.append(data)
                if data["event"] == event:
                    return data

    async def status_until(
        self, done: Callable[[dict[str, Any]], bool], limit: float = 30.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(limit):
            while not done(status := await self.next("status", limit)):
                pass
            return status

    async def get(self, path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    async def exited(self, limit: float = 20.0) -> int:
        try:
            async with asyncio.timeout(limit):
                return await self.proc.wait()
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def node(exchange: Exchange, tmp_path: Path, *extra: str) -> AsyncIterator[Node]:
    """A node trading 3 resting bids (far below the market) on A; ready (trading) on entry."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "node", "--exchange-url", exchange.url),
        *("--data-dir", str(tmp_path / "node"), "--symbols", "A"),
        *("--status-port", "0", "--status-interval", "0.1", "--shutdown-deadline", "5"),
        *("--strategy", BIDS, "--book", str(book_of(tmp_path))),
        *("--param", "every=2", "--param", "count=3", "--param", "fraction=0.01", *extra),
        stdout=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "STRATEGYLAB_SIGNING_KEY": KEY_HEX,
            "STRATEGYLAB_ADMIN_TOKEN": TOKEN,
        },
    )
    running = Node(proc)
    try:
        running.url = (await running.next("ready", 40))["status_url"]
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def book_of(tmp_path: Path) -> Path:
    """The trader's book: beside the node's data directory, never inside it."""
    return tmp_path / "trader" / "book.db"


def trader_child(status: dict[str, Any]) -> dict[str, Any]:
    """The trader's entry in ``/status``'s supervisor section."""
    children = status["supervisor"]["children"]
    found: dict[str, Any] = next(c for c in children if c["id"] == "trader")
    return found


async def open_at_exchange(exchange: Exchange) -> list[dict[str, Any]]:
    """The exchange's own answer: orders open there (GET /api/orders?status=open)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{exchange.url}/api/orders", params={"status": "open"}) as response,
    ):
        assert response.status == 200
        orders: list[dict[str, Any]] = await response.json()
        return orders


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(predicate: Callable[[], Any], limit: float) -> None:
    """Poll a condition on another process (no event to await), bounded by ``limit``."""
    async with asyncio.timeout(limit):
        while not await predicate():  # noqa: ASYNC110 - another process: nothing to await
            await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_a_sigkilled_trader_is_restarted_its_exit_status_recorded_and_trades_again(
    exchange: Exchange, tmp_path: Path
) -> None:
    """SIGKILL the trader: restarted, ``exit status -9 (SIGKILL)`` in /status's supervisor
    section, reconciled again before trading; then SIGTERM: both exit 0, no markers."""
    async with node(exchange, tmp_path) as n:
        first = await n.status_until(lambda s: s["trader"]["open_orders"] == 3)
        assert first["risk_state"] == "active"
        status = await n.get("/status")
        assert status["risk_state"] == "ACTIVE"
        old_pid = trader_child(status)["pid"]
        assert old_pid == first["trader"]["pid"]
        os.kill(old_pid, signal.SIGKILL)

        async def restarted() -> bool:
            child = trader_child(await n.get("/status"))
            return bool(child["restarts"] >= 1 and child["status"] == "running")

        await until(restarted, 30)
        status = await n.get("/status")
        child = trader_child(status)
        assert child["last_exit_status"] == -9
        assert child["last_reason"] == "exit status -9 (SIGKILL)"
        assert child["pid"] not in {None, old_pid}
        record = next(r for r in status["supervisor"]["history"] if r["child_id"] == "trader")
        assert (record["exit_status"], record["outcome"]) == (-9, "restarted")
        again = await n.status_until(
            lambda s: s["trader"]["pid"] == child["pid"] and s["trader"]["trading"], 30
        )
        assert again["trader"]["started_with"][0] == "reconciled"
        assert again["trader"]["started_with"][-1] == "trading"
        assert again["trader"]["open_orders"] == 3  # reconciled: the bids still rest
        assert len(await open_at_exchange(exchange)) == 3

        n.proc.send_signal(signal.SIGTERM)
        stopped = await n.next("stopped", 20)
        code = await n.exited()
        assert code == 0
        assert stopped["trader"]["pid"] is None  # stopped with the node
        assert not pid_alive(child["pid"])
    node_layout = DataLayout(tmp_path / "node")
    trader_layout = DataLayout(book_of(tmp_path).parent)
    for layout in (node_layout, trader_layout):
        assert not layout.unclean_marker.exists()
        assert not layout.snapshot.exists()
    assert len(await open_at_exchange(exchange)) == 3  # a graceful stop leaves bids resting
    log = (trader_layout.log_file("trader")).read_text()
    assert "kill switch" not in log


def check_snapshots_and_markers(
    line: dict[str, Any], node_layout: DataLayout, trader_layout: DataLayout
) -> None:
    """Both snapshots verified, the node's naming the trader's; both markers in place."""
    kill = line["trader"]["kill"]
    trader_snapshot = read_snapshot(trader_layout)
    assert kill["snapshot_sha256"] == trader_snapshot.digest
    assert trader_snapshot.open_orders == ()
    node_snapshot = read_snapshot(node_layout)
    assert node_snapshot.digest == line["kill"]["snapshot_sha256"]
    held = node_snapshot.positions["trader"]  # the node's names the trader's
    assert isinstance(held, dict)
    assert (held["snapshot"], held["snapshot_sha256"]) == (
        str(trader_layout.snapshot),
        trader_snapshot.digest,
    )
    assert held["positions"] == trader_snapshot.body()["positions"]
    assert node_snapshot.open_orders == ()
    for layout in (node_layout, trader_layout):
        marker = unclean_marker(layout)
        assert marker is not None
        assert marker.problem is None


@pytest.mark.timeout(120)
async def test_admin_kill_halts_the_trader_cancels_its_orders_and_both_resume(
    exchange: Exchange, tmp_path: Path
) -> None:
    """POST /admin/kill: the trader halted (within 50 ms of the trigger), its orders cancelled
    at the exchange, both snapshots and markers written, the node exits 3; the next start:
    the trader resumes (``resumed`` before ``trading``) and the node prints ``resumed``."""
    async with node(exchange, tmp_path) as n:
        await n.status_until(lambda s: s["trader"]["open_orders"] == 3)
        trader_pid = trader_child(await n.get("/status"))["pid"]
        assert len(await open_at_exchange(exchange)) == 3
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                n.url + "/admin/kill",
                json={"reason": "test kill"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response,
        ):
            assert response.status == 202, await response.text()
        line = await n.next("emergency_shutdown", 30)
        code = await n.exited()
    assert code == 3
    assert line["source"] == "http"
    assert line["not_applicable"] == []
    steps = {s["name"]: s for s in line["kill"]["steps"]}
    assert steps["halt"]["outcome"] == "ok"
    assert steps["cancel_orders"]["outcome"] == "ok"
    assert steps["halt"]["duration_ms"] <= 50.0
    kill = line["trader"]["kill"]
    assert kill["pid"] == trader_pid
    assert kill["halted_ms"] <= 50.0
    assert (kill["cancelled"], kill["left_open"], kill["complete"]) == (3, [], True)
    assert kill["exit_code"] == 3
    assert kill["risk_state"] == "halted"
    assert line["risk_state"] == "halted"
    assert await open_at_exchange(exchange) == []
    assert not pid_alive(trader_pid)

    node_layout = DataLayout(tmp_path / "node")
    trader_layout = DataLayout(book_of(tmp_path).parent)
    check_snapshots_and_markers(line, node_layout, trader_layout)

    async with node(exchange, tmp_path) as again:
        resumed = again.printed("resumed")  # printed before "ready"
        assert again.seen.index("started") < again.seen.index("resumed")
        status = await again.status_until(lambda s: s["trader"]["trading"], 30)
        assert status["trader"]["resumed"] is True
        assert status["trader"]["started_with"] == ["reconciled", "resumed", "trading"]
        assert "test kill" in resumed["reason"]
        assert not trader_layout.unclean_marker.exists()  # removed once reconciled
        again.proc.send_signal(signal.SIGTERM)
        assert await again.exited() == 0
    assert not node_layout.unclean_marker.exists()


@pytest.mark.timeout(90)
async def test_a_crash_looping_trader_pulls_the_node_kill_switch(
    exchange: Exchange, tmp_path: Path
) -> None:
    """The trader's book replaced by garbage, the trader SIGKILLed: every restart fails at
    once, and past the restart intensity the node's kill switch runs (source crash_loop)."""
    async with node(exchange, tmp_path) as n:
        first = await n.status_until(lambda s: s["trader"]["trading"])
        book = book_of(tmp_path)
        for path in (book, Path(f"{book}-wal"), Path(f"{book}-shm")):
            path.unlink(missing_ok=True)
        book.write_bytes(b"this is not an order book\n" * 100)
        os.kill(first["trader"]["pid"], signal.SIGKILL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        line = await n.next("emergency_shutdown", 60)
        code = await n.exited()
        took = loop.time() - started
    assert code == 3
    assert line["source"] == "crash_loop"
    assert "trader" in line["reason"]
    assert line["trader"]["kill"]["note"].startswith("trader not running")
    steps = {s["name"]: s for s in line["kill"]["steps"]}
    cancel = steps["cancel_orders"]
    assert cancel["outcome"] == "failed"  # nothing could cancel a dead trader's orders
    assert "nothing it could cancel" in cancel["error"]
    assert "listed by the exchange" in cancel["error"]
    assert unclean_marker(DataLayout(tmp_path / "node")) is not None
    log = DataLayout(tmp_path / "node").log_file("node").read_text()
    assert "EMERGENCY SHUTDOWN: system_overload in node.supervisor" in log
    assert "data_ingestion_failure" not in log
    assert "supervisor stop did not finish" not in log  # no wait on its own escalation report
    assert took < 15.0  # crash loop (restarts with backoff) + a kill that ends at once


@pytest.mark.timeout(90)
async def test_a_stopped_trader_is_found_unresponsive_killed_and_restarted(
    exchange: Exchange, tmp_path: Path
) -> None:
    """SIGSTOP the trader: no line on its channel for 2 s (3 x 0.1 s is less): the liveness
    check SIGKILLs it, the supervisor records exit status -9 and restarts it, trading again."""
    async with node(exchange, tmp_path) as n:
        await n.status_until(lambda s: s["trader"]["open_orders"] == 3)
        old_pid = trader_child(await n.get("/status"))["pid"]
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        os.kill(old_pid, signal.SIGSTOP)
        try:

            async def restarted() -> bool:
                child = trader_child(await n.get("/status"))
                return bool(child["restarts"] >= 1 and child["status"] == "running")

            await until(restarted, 20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old_pid, signal.SIGKILL)
        took = loop.time() - stopped_at
        child = trader_child(await n.get("/status"))
        assert child["last_exit_status"] == -9
        assert child["pid"] not in {None, old_pid}
        assert 2.0 <= took < 15.0  # >= the window of silence; then SIGKILL, backoff, reconcile
        again = await n.status_until(
            lambda s: s["trader"]["pid"] == child["pid"] and s["trader"]["trading"], 30
        )
        assert again["trader"]["open_orders"] == 3
        n.proc.send_signal(signal.SIGTERM)
        assert await n.exited() == 0
    log = DataLayout(tmp_path / "node").log_file("node").read_text()
    assert f"trader {old_pid}: no line on its channel" in log


@pytest.mark.timeout(90)
async def test_a_kill_with_a_stopped_trader_ends_within_about_2s_and_kills_it(
    exchange: Exchange, tmp_path: Path
) -> None:
    """POST /admin/kill with the trader SIGSTOPped: halt times out, cancel_orders waits a
    moment more, then SIGKILLs it and fails saying its orders may still be open; the node has
    exited 3 within about 2 s of the trigger (no graceful 3 s stop of the trader after it)."""
    async with node(exchange, tmp_path) as n:
        await n.status_until(lambda s: s["trader"]["open_orders"] == 3)
        trader_pid = trader_child(await n.get("/status"))["pid"]
        os.kill(trader_pid, signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    n.url + "/admin/kill",
                    json={"reason": "hung trader"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as response,
            ):
                assert response.status == 202, await response.text()
            line = await n.next("emergency_shutdown", 10)
            code = await n.exited(10)
            took = loop.time() - started
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(trader_pid, signal.SIGKILL)
    assert code == 3
    assert took < 3.0, took
    steps = {s["name"]: s for s in line["kill"]["steps"]}
    assert steps["halt"]["outcome"] in {"timed_out", "failed"}
    assert steps["cancel_orders"]["outcome"] == "failed"
    assert "trader did not confirm; killed" in steps["cancel_orders"]["error"]
    kill = line["trader"]["kill"]
    assert kill["pid"] == trader_pid
    assert kill["note"] == (
        "trader did not confirm; killed; its orders may still be open at the exchange"
    )
    assert not pid_alive(trader_pid)
    assert len(await open_at_exchange(exchange)) == 3  # what the note warns of
