"""The trader's kill switch end to end, and its resumption after the unclean shutdown.

A real exchange (signing its market data with the trader's key, its admin routes open) and a real
``strategylab trade`` process. The exchange's ``bad_signatures`` fault makes every frame fail
verification: past ``--max-violations`` the trader halts, cancels its resting orders at the
exchange, writes ``snapshot.json`` and ``UNCLEAN_SHUTDOWN`` beside its book and exits 3. The
next start resumes: HALTED until reconciled, a ``resumed`` line, the marker removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab._layout import DataLayout
from strategylab.fault_tolerance import (
    StateSnapshot,
    mark_unclean,
    read_snapshot,
    unclean_marker,
    write_snapshot,
)
from strategylab.market import Exchange, ExchangeConfig
from strategylab.node._trader_kill import snapshot_differences
from strategylab.trading import EXIT_KILL_SWITCH, PositionStore

pytestmark = pytest.mark.integration

KEY_HEX = "5f3c0a91d2e84b7766aa10ce9b3f2d48"
Proc = asyncio.subprocess.Process
STEPS = [
    "halt",
    "cancel_orders",
    "flush",
    "snapshot",
    "stop:feed",
    "stop:strategy_engine",
    "stop:order_client",
    "marker",
]
"""The kill switch's steps, in the order they must run (components: dependants first)."""


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(
        ExchangeConfig(
            symbols=("A",),
            tick_rate=50,
            data_dir=tmp_path / "ex",
            signing_key=bytes.fromhex(KEY_HEX),
            admin_open=True,  # the fault routes without a token, as the exchange tests do
        )
    )
    await ex.start()
    yield ex
    await ex.stop()


async def spawn_trader(url: str, book: Path, *extra: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "trade", "--exchange-url", url, "--book", str(book)),
        *("--strategy", "bids=strategylab.strategy._examples:RestingBids", "--symbols", "A"),
        *("--param", "every=2", "--param", "count=3", "--param", "fraction=0.01"),
        *("--status-interval", "0.05", "--max-violations", "3", *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "STRATEGYLAB_SIGNING_KEY": KEY_HEX},
    )


async def next_event(proc: Proc, event: str, limit: float, seen: list[str] | None = None) -> Any:
    """The next ``event`` line; every event read on the way is appended to ``seen``."""
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode(errors="replace")[-2000:]
                raise AssertionError(f"trader exited before {event!r}: {err}")
            data = json.loads(line)
            if seen is not None:
                seen.append(data["event"])
            if data.get("event") == event:
                return data


async def status_until(proc: Proc, done: Callable[[Any], bool], limit: float) -> Any:
    async with asyncio.timeout(limit):
        while not done(status := await next_event(proc, "status", limit)):
            pass
        return status


async def exited(proc: Proc, limit: float = 15.0) -> int:
    try:
        async with asyncio.timeout(limit):
            return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def admin(exchange: Exchange, method: str, **body: Any) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{exchange.url}/admin/faults", json=body or None) as response,
    ):
        assert response.status in {200, 201}, await response.text()


async def open_at_exchange(exchange: Exchange) -> list[dict[str, Any]]:
    """The exchange's own answer: orders open there (GET /api/orders?status=open)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{exchange.url}/api/orders", params={"status": "open"}) as response,
    ):
        assert response.status == 200
        orders: list[dict[str, Any]] = await response.json()
        return orders


async def kill_with_bad_signatures(exchange: Exchange, book: Path) -> dict[str, Any]:
    """Run a trader until its 3 resting bids are open, forge the exchange's signatures: the
    ``kill_switch`` line, after checking the process exited 3."""
    proc = await spawn_trader(exchange.url, book)
    try:
        await status_until(proc, lambda s: s["open_orders"] == 3, 20)
        assert len(await open_at_exchange(exchange)) == 3
        await admin(exchange, "POST", kind="bad_signatures", duration=120)
        killed: dict[str, Any] = await next_event(proc, "kill_switch", 30)
    finally:
        code = await exited(proc)
    assert code == EXIT_KILL_SWITCH
    return killed


@pytest.mark.timeout(60)
async def test_bad_signatures_halt_cancel_snapshot_mark_and_exit_3(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Forged market data: HALTED within 50 ms, orders cancelled at the exchange, the steps in
    order, snapshot.json and UNCLEAN_SHUTDOWN beside the book, exit 3."""
    book = tmp_path / "trader" / "book.db"
    killed = await kill_with_bad_signatures(exchange, book)
    layout = DataLayout(book.parent)

    assert killed["source"] == "security_violation"
    assert "kill switch" in killed["reason"]
    assert [s["name"] for s in killed["steps"]] == STEPS
    assert {s["name"]: s["outcome"] for s in killed["steps"]} == dict.fromkeys(STEPS, "ok")
    assert killed["halted_ms"] <= 50.0
    assert killed["exit_code"] == EXIT_KILL_SWITCH
    assert killed["status"]["risk_state"] == "halted"
    assert (killed["cancelled"], killed["left_open"], killed["complete"]) == (3, [], True)
    assert await open_at_exchange(exchange) == []
    assert len(exchange.book.orders("cancelled")) == 3

    snapshot = read_snapshot(layout)  # verified: its digest holds
    assert killed["snapshot"] == str(layout.snapshot)
    assert killed["snapshot_sha256"] == snapshot.digest
    assert snapshot.reason == killed["reason"]
    assert snapshot.open_orders == ()  # every one was cancelled before the snapshot
    assert snapshot.last_sequence["A"] > 0
    marker = unclean_marker(layout)
    assert marker is not None
    assert marker.problem is None
    assert marker.snapshot_sha256 == snapshot.digest
    assert killed["marker"] == str(layout.unclean_marker)
    store = PositionStore(book)  # flushed: the strategy's state is in the book
    try:
        assert store.load_state("bids")["placed"] == 3
        assert {o.status for o in store.orders()} == {"cancelled"}
    finally:
        store.close()
    audit = (book.with_suffix(".audit.jsonl")).read_text()
    assert '"kind":"kill_switch"' in audit.replace(" ", "")


@pytest.mark.timeout(90)
async def test_the_restart_resumes_halted_until_reconciled_then_clears_the_marker(
    exchange: Exchange, tmp_path: Path
) -> None:
    """After the kill: ``reconciled`` (still HALTED), ``resumed`` with the snapshot's content,
    then ``trading``; the marker is gone, trading is ACTIVE again, SIGTERM exits 0."""
    book = tmp_path / "book.db"
    killed = await kill_with_bad_signatures(exchange, book)
    layout = DataLayout(book.parent)
    snapshot = read_snapshot(layout)
    await admin(exchange, "DELETE")  # the exchange signs genuinely again

    proc = await spawn_trader(exchange.url, book)
    seen: list[str] = []
    try:
        reconciled = await next_event(proc, "reconciled", 20, seen)
        resumed = await next_event(proc, "resumed", 5, seen)
        await next_event(proc, "trading", 5, seen)
        marker_after_trading = layout.unclean_marker.exists()
        active = await status_until(proc, lambda s: s["risk_state"] == "active", 20)
        proc.send_signal(signal.SIGTERM)
        await next_event(proc, "stopped", 15)
    finally:
        code = await exited(proc)
    assert seen == ["reconciled", "resumed", "trading"]
    assert reconciled["risk_state"] == "halted"  # refused to trade until reconciled
    assert resumed["risk_state"] == "halted"
    assert resumed["reason"] == killed["reason"]
    assert resumed["snapshot_time"] == snapshot.time
    assert resumed["positions"] == snapshot.body()["positions"]
    assert resumed["open_orders"] == []
    assert resumed["last_sequence"] == dict(snapshot.last_sequence)
    assert resumed["marker"] == str(layout.unclean_marker)
    assert resumed["differences"] == []
    assert not marker_after_trading
    assert active["orders_sent"] == 0  # the 3 bids were placed before the kill (state restored)
    assert code == 0
    assert unclean_marker(layout) is None


@pytest.mark.timeout(60)
async def test_sigterm_is_a_graceful_stop_without_marker_or_snapshot(
    exchange: Exchange, tmp_path: Path
) -> None:
    """SIGTERM: ``stopped``, exit 0, neither snapshot.json nor UNCLEAN_SHUTDOWN."""
    book = tmp_path / "book.db"
    proc = await spawn_trader(exchange.url, book)
    try:
        reconciled = await next_event(proc, "reconciled", 20)
        await status_until(proc, lambda s: s["open_orders"] == 3, 20)
        proc.send_signal(signal.SIGTERM)
        stopped = await next_event(proc, "stopped", 15)
    finally:
        code = await exited(proc)
    assert code == 0
    assert reconciled["risk_state"] != "halted"
    assert stopped["open_orders"] == 3  # a graceful stop leaves resting orders resting
    layout = DataLayout(book.parent)
    assert not layout.unclean_marker.exists()
    assert not layout.snapshot.exists()


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _remove(path: Path) -> None:
    path.unlink()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("damage", "why"),
    [(_flip_a_byte, "damaged"), (_truncate, "not JSON"), (_remove, "missing")],
    ids=["flipped byte", "truncated", "missing"],
)
async def test_a_damaged_snapshot_with_a_marker_exits_1_naming_the_file(
    tmp_path: Path, damage: Callable[[Path], None], why: str
) -> None:
    """Marker present, snapshot.json damaged: exit 1 before connecting anywhere, one line
    naming the file; the marker stays."""
    book = tmp_path / "book.db"
    layout = DataLayout(tmp_path)
    snapshot = StateSnapshot.create(
        reason="kill switch", positions={"bids": {"A": 2.0}}, last_sequence={"A": 7}
    )
    write_snapshot(layout, snapshot)
    mark_unclean(layout, "kill switch", snapshot_sha256=snapshot.digest)
    damage(layout.snapshot)
    # Nothing listens there: a trader that tried to connect first would say "cannot connect".
    proc = await spawn_trader("http://127.0.0.1:9", book)
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        err = (await proc.stderr.read()).decode()
    code = await exited(proc)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(layout.snapshot) in lines[0]
    assert why in lines[0]
    assert "cannot connect" not in lines[0]
    assert "Traceback" not in err
    assert layout.unclean_marker.exists()


def test_snapshot_differences_name_each_position_that_moved() -> None:
    """Snapshot and reconciled book compared per strategy and symbol; equal ones are left out."""
    snapshot = StateSnapshot.create(reason="x", positions={"s": {"A": 1.0, "B": 2.0}})
    book = {"s": {"A": 1.0, "B": 3.0}, "t": {"C": -1.0}}
    assert snapshot_differences(snapshot, book) == [
        {"strategy": "s", "symbol": "B", "snapshot": 2.0, "book": 3.0},
        {"strategy": "t", "symbol": "C", "snapshot": 0.0, "book": -1.0},
    ]
    assert snapshot_differences(None, book) == []
