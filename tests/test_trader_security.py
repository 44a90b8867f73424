"""The trader and forged market data: a forged frame holds trading, a burst pulls the kill switch.

Unit level: the engine against a real in-process exchange, its hold driven by a FakeClock (no
autojump: the clock moves only when a test says so). Process level: a real ``strategylab trade``
process whose order API is a real exchange and whose market data comes from a hostile WebSocket
server (in this test process) that signs its frames with the trader's key and, where the scenario
says so, slips in unsigned ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from strategylab.cli import app
from strategylab.fault_tolerance import AuditLog
from strategylab.market import Exchange, ExchangeConfig, Tick
from strategylab.market._protocol import (
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_TICKS,
    ControlReply,
    Heartbeat,
    encode_control,
    encode_frame,
    encode_heartbeat,
    encode_ticks,
)
from strategylab.strategy._examples import RestingBids, TickTrader
from strategylab.strategy._strategy import Strategy
from strategylab.testing import FakeClock
from strategylab.trading._engine import (
    EXIT_KILL_SWITCH,
    SECURITY_HOLD,
    EngineConfig,
    StrategyEngine,
)
from strategylab.trading._orders import OrderClient
from strategylab.trading._risk import RiskEngine, RiskLimit, RiskLimits, RiskState

KEY_HEX = "5f3c0a91d2e84b7766aa10ce9b3f2d48"
KEY = bytes.fromhex(KEY_HEX)
HOLD = 60.0
EPOCH = 1_700_000_000.0
Proc = asyncio.subprocess.Process


class ForgedFrameError(Exception):
    """Stands in for the feed's SecurityViolationError in unit tests."""


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        # The exchange's order state offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def settle() -> None:
    """Let woken tasks run (no time passes on any clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


def state(risk: RiskEngine) -> RiskState:
    """The risk state now (a call, so that type checkers do not narrow it across a change)."""
    return risk.state


def ticks(start: int, n: int) -> list[Tick]:
    return [Tick("A", s, s * 1000, 99.0, 101.0, 1.0, 1.0) for s in range(start, start + n)]


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=50, data_dir=tmp_path / "ex"))
    await ex.start()
    yield ex
    await ex.stop()


@asynccontextmanager
async def engine_with(
    exchange: Exchange,
    tmp_path: Path,
    strategy: Callable[[], Strategy],
    clock: FakeClock,
    audit: AuditLog | None = None,
) -> AsyncIterator[StrategyEngine]:
    engine = StrategyEngine(
        [strategy],
        client=OrderClient(exchange.url),
        db=tmp_path / "book.db",
        risk=RiskEngine(RiskLimits(stale_after=None), clock=clock),
        config=EngineConfig(security_hold=HOLD, close_deadline=5.0),
        clock=clock,
        audit=audit,
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


def trader() -> Strategy:
    return TickTrader("trader", ("A",), every=1)


# ---------------------------------------------------------------------------------- risk holds


def test_a_hold_halts_and_its_release_lifts_it() -> None:
    """A hold means HALTED with its reason; releasing that source returns to ACTIVE."""
    risk = RiskEngine(RiskLimits(stale_after=None), clock=FakeClock(autojump_threshold=None))
    risk.hold(SECURITY_HOLD, "security: forged frame")
    assert state(risk) is RiskState.HALTED
    assert risk.reason == "security: forged frame"
    assert risk.release(SECURITY_HOLD)
    assert state(risk) is RiskState.ACTIVE
    assert not risk.release(SECURITY_HOLD)


def test_releasing_a_hold_never_lifts_an_operator_halt() -> None:
    """Operator halt plus hold: the release leaves HALTED with the operator's reason."""
    risk = RiskEngine(RiskLimits(stale_after=None), clock=FakeClock(autojump_threshold=None))
    risk.halt("operator: market closed")
    risk.hold(SECURITY_HOLD, "security: forged frame")
    assert "operator" in risk.reason
    assert "security" in risk.reason
    risk.release(SECURITY_HOLD)
    assert state(risk) is RiskState.HALTED
    assert risk.reason == "operator: market closed"


def test_resume_never_lifts_a_hold() -> None:
    """An operator's resume leaves the manual state; the hold keeps the engine HALTED."""
    risk = RiskEngine(RiskLimits(stale_after=None), clock=FakeClock(autojump_threshold=None))
    risk.hold(SECURITY_HOLD, "security: forged frame")
    risk.reduce_only("operator")
    assert state(risk) is RiskState.HALTED
    risk.resume()
    assert state(risk) is RiskState.HALTED
    assert risk.holds == {SECURITY_HOLD: "security: forged frame"}


# ---------------------------------------------------------------------------------- the hold


@pytest.mark.timeout(15)
async def test_a_forged_frame_halts_trading_at_once(exchange: Exchange, tmp_path: Path) -> None:
    """After a violation every order is refused (HALTED, reason names the forged frame)."""
    clock = FakeClock(EPOCH, autojump_threshold=None)
    async with engine_with(exchange, tmp_path, trader, clock) as engine:
        engine.on_security_violation(ForgedFrameError("ws://x/ws: forged frame (unsigned)"))
        await engine.put(ticks(1, 3))
        status = engine.status()
    assert status.orders_sent == 0
    assert status.orders_rejected == 3
    assert all(r.limit is RiskLimit.HALTED for _cid, r in engine.rejections)
    assert status.risk_state == "halted"
    assert status.risk_reason.startswith("security: forged frame")
    assert "hold until 2023-11-14T22:14:20+00:00" in status.risk_reason
    assert status.security_violations == 1
    assert exchange.book.orders() == []


@pytest.mark.timeout(15)
async def test_the_hold_does_not_lift_before_it_expires(exchange: Exchange, tmp_path: Path) -> None:
    """Authenticated data flowing is not enough: the hold lasts ``security_hold`` seconds."""
    clock = FakeClock(EPOCH, autojump_threshold=None)
    async with engine_with(exchange, tmp_path, trader, clock) as engine:
        engine.on_security_violation(ForgedFrameError("forged frame"))
        await engine.put(ticks(1, 5))
        clock.advance(HOLD - 1)
        await settle()
        assert state(engine.risk) is RiskState.HALTED
        assert engine.security_hold_until == HOLD + EPOCH


@pytest.mark.timeout(15)
async def test_the_hold_lifts_after_expiry_once_authenticated_data_flowed(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Expired without data: still held, waiting; the next authenticated ticks lift it."""
    clock = FakeClock(EPOCH, autojump_threshold=None)
    async with engine_with(exchange, tmp_path, trader, clock) as engine:
        engine.on_security_violation(ForgedFrameError("forged frame"))
        clock.advance(HOLD + 1)
        await settle()
        assert state(engine.risk) is RiskState.HALTED
        assert "waiting for authenticated data" in engine.risk.reason
        await engine.put(ticks(1, 1))  # refused: still held when the strategy decides
        await settle()
        assert state(engine.risk) is RiskState.ACTIVE
        assert engine.security_hold_until is None
        await engine.put(ticks(2, 1))
        await wait_until(lambda: exchange.book.orders() != [])
    assert engine.status().orders_sent == 1


@pytest.mark.timeout(15)
async def test_another_violation_restarts_the_hold(exchange: Exchange, tmp_path: Path) -> None:
    """A forged frame during the hold: the hold runs ``security_hold`` from the new one."""
    clock = FakeClock(EPOCH, autojump_threshold=None)
    async with engine_with(exchange, tmp_path, trader, clock) as engine:
        engine.on_security_violation(ForgedFrameError("forged frame"))
        clock.advance(HOLD / 2)
        engine.on_security_violation(ForgedFrameError("forged frame"))
        await engine.put(ticks(1, 1))
        clock.advance(HOLD / 2 + 1)
        await settle()
        assert state(engine.risk) is RiskState.HALTED
        clock.advance(HOLD / 2)
        await settle()
        assert state(engine.risk) is RiskState.ACTIVE
        assert engine.security_violations == 2


@pytest.mark.timeout(15)
async def test_an_unhealthy_feed_keeps_the_hold(exchange: Exchange, tmp_path: Path) -> None:
    """Expired and data seen, but the feed says it is unhealthy: trading stays held."""
    clock = FakeClock(EPOCH, autojump_threshold=None)
    healthy = [False]

    async def health() -> bool:
        return healthy[0]

    async with engine_with(exchange, tmp_path, trader, clock) as engine:
        engine.feed_health = health
        engine.on_security_violation(ForgedFrameError("forged frame"))
        await engine.put(ticks(1, 1))
        clock.advance(HOLD + 1)
        await settle()
        assert state(engine.risk) is RiskState.HALTED
        healthy[0] = True
        await engine.put(ticks(2, 1))
        await settle()
        assert state(engine.risk) is RiskState.ACTIVE


@pytest.mark.timeout(15)
async def test_an_operator_halt_outlives_the_hold(exchange: Exchange, tmp_path: Path) -> None:
    """The hold's expiry lifts only the security hold, never an operator's halt."""
    clock = FakeClock(EPOCH, autojump_threshold=None)
    async with engine_with(exchange, tmp_path, trader, clock) as engine:
        engine.risk.halt("operator: halted by hand")
        engine.on_security_violation(ForgedFrameError("forged frame"))
        await engine.put(ticks(1, 1))
        clock.advance(HOLD + 1)
        await settle()
        assert engine.security_hold_until is None  # the security hold itself lifted
        assert state(engine.risk) is RiskState.HALTED
        assert engine.risk.reason == "operator: halted by hand"
        await engine.put(ticks(2, 1))
    assert engine.status().orders_sent == 0


@pytest.mark.timeout(15)
async def test_violations_and_the_release_are_audited(exchange: Exchange, tmp_path: Path) -> None:
    """The audit log gets a security_violation record and a security_hold_released one."""
    clock = FakeClock(EPOCH, autojump_threshold=None)
    with AuditLog(tmp_path / "audit.jsonl", clock=clock) as audit:
        async with engine_with(exchange, tmp_path, trader, clock, audit) as engine:
            engine.on_security_violation(ForgedFrameError("forged frame (unsigned)"))
            await engine.put(ticks(1, 1))
            clock.advance(HOLD + 1)
            await settle()
    kinds = [r.kind for r in AuditLog.read(tmp_path / "audit.jsonl")]
    assert kinds == ["security_violation", "security_hold_released"]


# ---------------------------------------------------------------------------------- kill switch


@pytest.mark.timeout(20)
async def test_the_kill_switch_cancels_every_open_order_and_persists_state(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Kill switch: resting orders cancelled at the exchange, states saved, audited, halted."""
    clock = FakeClock(EPOCH, autojump_threshold=None)

    def bids() -> Strategy:
        return RestingBids("bids", ("A",), every=1, count=3, fraction=0.01)

    with AuditLog(tmp_path / "audit.jsonl", clock=clock) as audit:
        async with engine_with(exchange, tmp_path, bids, clock, audit) as engine:
            await engine.put(ticks(1, 3))
            await wait_until(lambda: len(exchange.book.orders("open")) == 3)
            await engine.kill_switch(ForgedFrameError("5 forged frames: kill switch"))
            assert engine.killed.is_set()
            report = engine.kill_report
            clock.advance(HOLD * 10)
            await settle()
            assert state(engine.risk) is RiskState.HALTED
            assert "kill switch" in engine.risk.reason
            saved = engine.store.load_state("bids")
    assert report == {
        "reason": "5 forged frames: kill switch",
        "cancelled": 3,
        "left_open": [],
        "complete": True,
    }
    assert exchange.book.orders("open") == []
    assert len(exchange.book.orders("cancelled")) == 3
    assert saved == {"ticks": 3, "placed": 3}
    kinds = [r.kind for r in AuditLog.read(tmp_path / "audit.jsonl")]
    assert kinds == ["kill_switch"]


# ---------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-violations", "0"),
        ("--violation-window", "0"),
        ("--violation-window", "nan"),
        ("--security-hold", "-1"),
        ("--feed-url", "http://127.0.0.1:1/ws"),
    ],
)
def test_bad_security_options_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """A bad security option is refused before anything starts, with the flag named."""
    argv = [
        *("trade", "--exchange-url", "http://127.0.0.1:1", "--book", str(tmp_path / "b.db")),
        *("--strategy", "t=strategylab.strategy._examples:TickTrader", "--symbols", "A"),
        *(flag, value),
    ]
    with pytest.raises(SystemExit) as exited:
        app(argv, standalone_mode=True)
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists()


# ---------------------------------------------------------------------------------- processes

# What a hostile market-data server sends on one connection: (connection number from 1, first
# seq wanted, send) -> None; ``send`` takes a frame and the highest seq it carries.
Script = Callable[[int, int, Callable[[bytes, int], Awaitable[None]]], Awaitable[None]]


def genuine(seq: int) -> bytes:
    tick = Tick("A", seq, time.time_ns(), 100.0, 100.5, 1.0, 1.0)
    return encode_frame(KIND_TICKS, encode_ticks([tick]), KEY)


def forged(seq: int) -> bytes:
    tick = Tick("A", seq, time.time_ns(), 999.0, 999.5, 1.0, 1.0)
    return encode_frame(KIND_TICKS, encode_ticks([tick]))


@asynccontextmanager
async def hostile_feed(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A market-data WebSocket server; yields its URL and the from_seq of each connection."""
    subscriptions: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        first = int(request.get("from_seq", {}).get("A", 1))
        subscriptions.append(first)
        # The answer a keyed exchange gives: a signed control frame bound to the session.
        answer = ControlReply(
            "subscribed", symbols=["A"], last={"A": first - 1}, session=request.get("session", "")
        )
        await ws.send(encode_frame(KIND_CONTROL, encode_control(answer), KEY))
        last = first - 1

        async def send(frame: bytes, seq: int) -> None:
            nonlocal last
            await ws.send(frame)
            last = max(last, seq)

        async def beat() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    hb = Heartbeat(ts=time.time_ns(), last={"A": last})
                    await ws.send(encode_frame(KIND_HEARTBEAT, encode_heartbeat(hb), KEY))
                    await asyncio.sleep(0.1)

        beats = asyncio.ensure_future(beat())
        try:
            with contextlib.suppress(ConnectionClosed):
                await script(len(subscriptions), first, send)
            await ws.wait_closed()  # keep the connection until the client drops it
        finally:
            beats.cancel()
            await asyncio.wait({beats})

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", subscriptions


async def spawn_trader(exchange: Exchange, feed_url: str, db: Path, *extra: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "trade",
        *("--exchange-url", exchange.url, "--feed-url", feed_url, "--book", str(db)),
        *("--strategy", "bids=strategylab.strategy._examples:RestingBids"),
        *("--symbols", "A", "--status-interval", "0.05", *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "STRATEGYLAB_SIGNING_KEY": KEY_HEX},
    )


async def next_event(proc: Proc, event: str, limit: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode(errors="replace")[-2000:]
                raise AssertionError(f"trader exited before {event!r}: {err}")
            data: dict[str, Any] = json.loads(line)
            if data.get("event") == event:
                return data


async def status_until(
    proc: Proc, done: Callable[[dict[str, Any]], bool], limit: float
) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            status = await next_event(proc, "status", limit)
            if done(status):
                return status


async def reap(proc: Proc) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_trader_process_holds_on_a_forged_frame_and_keeps_running(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Signed ticks, one unsigned frame: halted (orders refused), alive, trading again later."""

    async def script(n: int, first: int, send: Callable[[bytes, int], Awaitable[None]]) -> None:
        if n == 1:
            for seq in range(first, first + 5):
                await send(genuine(seq), seq)
            await send(forged(first + 5), first - 1)
            return
        seq = first
        while True:  # authenticated data on the fresh connection, for as long as it lasts
            await send(genuine(seq), seq)
            seq += 1
            await asyncio.sleep(0.05)

    params = ("--param", "every=2", "--param", "count=10000", "--param", "fraction=0.01")
    async with hostile_feed(script) as (url, subscriptions):
        proc = await spawn_trader(
            exchange, url, tmp_path / "book.db", *params, "--security-hold", "2"
        )
        try:
            violation = await next_event(proc, "security_violation", 20)
            held = await status_until(
                proc, lambda s: s["risk_state"] == "halted" and s["orders_rejected"] > 0, 10
            )
            resumed = await status_until(proc, lambda s: s["risk_state"] == "active", 15)
            sent_before = resumed["orders_sent"]
            await status_until(proc, lambda s: s["orders_sent"] > sent_before, 10)
            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            await next_event(proc, "stopped", 15)
            async with asyncio.timeout(10):
                code = await proc.wait()
        finally:
            await reap(proc)
    assert code == 0
    assert "forged frame" in violation["reason"]
    assert held["risk_reason"].startswith("security: forged frame")
    assert "hold until" in held["risk_reason"]
    assert held["security_violations"] == 1
    assert len(subscriptions) >= 2  # the forged frame's connection was dropped
    audit = [json.loads(line) for line in (tmp_path / "book.audit.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in audit]
    assert "security_violation" in kinds
    assert "security_hold_released" in kinds
    assert "kill_switch" not in kinds


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_forged_frames_past_the_threshold_kill_the_trader_with_exit_3(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Three forged frames within the window: resting orders cancelled, kill_switch, exit 3."""
    go = asyncio.Event()

    async def script(n: int, first: int, send: Callable[[bytes, int], Awaitable[None]]) -> None:
        if n == 1:
            for seq in range(first, first + 6):
                await send(genuine(seq), seq)
            await go.wait()  # the resting orders are open at the exchange
            await send(forged(first + 6), first + 5)
            return
        await send(genuine(first), first)
        await send(forged(first + 1), first)

    params = ("--param", "every=2", "--param", "count=3", "--param", "fraction=0.01")
    async with hostile_feed(script) as (url, subscriptions):
        proc = await spawn_trader(
            exchange, url, tmp_path / "book.db", *params, "--max-violations", "3"
        )
        try:
            await status_until(proc, lambda s: s["open_orders"] == 3, 20)
            assert len(exchange.book.orders("open")) == 3
            go.set()
            started = time.monotonic()
            killed = await next_event(proc, "kill_switch", 20)
            async with asyncio.timeout(10):
                code = await proc.wait()
            elapsed = time.monotonic() - started
        finally:
            await reap(proc)
    assert code == EXIT_KILL_SWITCH
    assert elapsed < 15
    assert "kill switch" in killed["reason"]
    assert killed["exit_code"] == EXIT_KILL_SWITCH
    assert killed["cancelled"] == 3
    assert killed["complete"] is True
    assert killed["left_open"] == []
    assert killed["status"]["risk_state"] == "halted"
    assert killed["status"]["security_violations"] == 3
    assert len(subscriptions) == 3
    assert exchange.book.orders("open") == []
    assert len(exchange.book.orders("cancelled")) == 3
    audit = (tmp_path / "book.audit.jsonl").read_text()
    assert '"kind":"kill_switch"' in audit.replace(" ", "")
