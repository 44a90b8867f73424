"""The shared breaker in the running system (issue 14): ``strategylab trade --cluster --redis``.

Real processes against real servers: an exchange process whose order API is made to fail (its
admin ``api_errors`` fault), two trader processes of one cluster sharing the order API's breaker
on the real Redis (127.0.0.1:6379, a unique cluster name per test), and a throwaway
``redis-server`` the test kills and restarts for the fallback and the re-join.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from strategylab._node_cli import _trader_in_cluster
from strategylab.fault_tolerance import ErrorRecoveryManager, HealthState
from strategylab.market import Tick
from strategylab.node import NodeConfig, TraderConfig
from strategylab.node._trader import _shared_breakers, shared_breaker_prefix
from strategylab.node._trader_child import TraderChild, shared_breaker_state, trader_argv
from strategylab.strategy import OrderRequest, Side, Strategy, StrategyContext

TESTS = Path(__file__).resolve().parent
REDIS_URL = "redis://127.0.0.1:6379/0"
ORDER_BREAKER = "order-api.breaker"


class EveryTenthTick(Strategy):
    """A market order of 1 on every tenth tick, buying and selling in turn (the position stays
    within the risk limits), so that its trader keeps calling the order API."""

    def __init__(self, name: str, symbols: tuple[str, ...]) -> None:
        super().__init__(name, symbols)
        self.ticks = 0

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Every tenth tick: one market order."""
        self.ticks += 1
        if self.ticks % 10 == 0:
            side = Side.BUY if self.ticks % 20 == 0 else Side.SELL
            ctx.submit(OrderRequest(symbol=tick.symbol, side=side, qty=1))


class NeverOrders(Strategy):
    """Never calls the order API: its breaker can only change by adopting the cluster's."""

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        """Nothing."""
        del tick, ctx


# ------------------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Lines:
    """A process's JSON lines, read in the background; :meth:`until` waits for one."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                data = json.loads(line)
            except ValueError:
                continue
            self.seen.append(data)
            self._changed.set()
            self._changed = asyncio.Event()
        self._changed.set()

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, limit: float = 10.0
    ) -> dict[str, Any]:
        """The first line (from the start) for which ``predicate`` holds, within ``limit`` s."""
        checked = 0
        async with asyncio.timeout(limit):
            while True:
                for data in self.seen[checked:]:
                    if predicate(data):
                        return data
                checked = len(self.seen)
                if self._task.done():
                    raise AssertionError(f"{what}: the process ended ({self.proc.returncode})")
                await self._changed.wait()

    async def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL after 10 s: a failure)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        finally:
            await asyncio.wait([self._task], timeout=2)
        return code


async def _trader(
    base: str, book: Path, strategy: str, cluster: str, redis_url: str
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "trade", "--exchange-url", base),
        *("--book", str(book), "--symbols", "A", "--strategy", strategy),
        *("--status-interval", "0.1", "--cluster", cluster, "--redis", redis_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[str]:
    """The exchange simulator as its own process (admin API open); yields its base URL."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "exchange", "--port", "0", "--symbols", "A"),
        *("--tick-rate", "200", "--ticks-per-frame", "5", "--data-dir", str(tmp_path / "ex")),
        "--admin-open",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    lines = Lines(proc)
    try:
        announce = await lines.until(lambda d: d.get("event") == "listening", "listening")
        yield f"http://127.0.0.1:{announce['port']}"
    finally:
        assert await lines.stop() == 0


@pytest.fixture
def cluster() -> Iterator[str]:
    """A cluster name of this test's own; its shared breaker's keys are deleted afterwards."""
    name = f"h6-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{shared_breaker_prefix(name)}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _shared(status: dict[str, Any]) -> dict[str, Any]:
    breaker: dict[str, Any] = status["breaker"]
    shared: dict[str, Any] = breaker["shared"]
    return shared


def _status(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d.get("event") == "status" and predicate(d)


# ------------------------------------------------------------------------------ end to end


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_one_traders_open_breaker_is_adopted_by_the_other(
    exchange: str, cluster: str, tmp_path: Path
) -> None:
    """The exchange fails order submissions; the trader that submits trips its breaker; the
    trader that never submits (its calls all succeed) reports the breaker OPEN too (adopted, not
    one failure of its own), and both stop with exit 0."""
    busy = Lines(
        await _trader(
            exchange,
            tmp_path / "a" / "book.db",
            "busy=test_cluster_breaker_wiring:EveryTenthTick",
            cluster,
            REDIS_URL,
        )
    )
    quiet = Lines(
        await _trader(
            exchange,
            tmp_path / "b" / "book.db",
            "quiet=test_cluster_breaker_wiring:NeverOrders",
            cluster,
            REDIS_URL,
        )
    )
    try:
        for lines in (busy, quiet):
            status = await lines.until(_status(lambda d: d["breaker"]["state"] == "closed"), "up")
            shared = _shared(status)
            assert shared["degraded"] is False
            assert shared["health"] == "healthy"
            assert shared["prefix"] == shared_breaker_prefix(cluster)
        await busy.until(_status(lambda d: d["orders_filled"] >= 1), "an order filled")
        async with aiohttp.ClientSession() as http:
            # Only order submissions fail (the next 6 orders', every attempt): the quiet
            # trader's own calls (it polls the order API, it never submits) all succeed.
            fault = {"kind": "api_errors", "duration": 30.0, "count": 6, "status": 503}
            async with http.post(f"{exchange}/admin/faults", json=fault) as response:
                assert response.status == 201, await response.text()
            opened = await quiet.until(
                _status(lambda d: d["breaker"]["state"] == "open"), "the quiet trader's breaker"
            )
            async with http.delete(f"{exchange}/admin/faults") as response:
                assert response.status == 200
        # The trip the quiet trader adopted is the busy one's, published by it.
        tripped = await busy.until(
            _status(lambda d: _shared(d)["published"] >= 1), "the busy trader's trip published"
        )
    finally:
        codes = [await busy.stop(), await quiet.stop()]
    assert codes == [0, 0]
    assert opened["breaker"]["failed_calls"] == 0  # it never failed a call itself: adopted
    first = next(d for d in quiet.seen if d.get("event") == "status")
    assert _shared(opened)["adopted"] > _shared(first)["adopted"]  # taken from a peer
    assert tripped["breaker"]["failed_calls"] >= 1
    for lines in (busy, quiet):  # a graceful stop, with the backend closed before it
        assert [d for d in lines.seen if d.get("event") == "stopped"]
    # Redis never went away: no fallback, no re-join line.
    assert not any(d.get("event") == "breaker_shared" for d in busy.seen + quiet.seen)


class ThrowawayRedis:
    """A ``redis-server`` of the test's own on a free port, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (blocking: call through ``asyncio.to_thread``); ready once it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed")
        self.proc = subprocess.Popen(  # noqa: S603 (redis-server from PATH, our arguments)
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + 5.0
            while not _pings(client):
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {self.port} did not start within 5 s")
                time.sleep(0.02)  # a server starting: nothing to inject a clock into
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_redis_lost_falls_back_reported_and_rejoins(exchange: str, tmp_path: Path) -> None:
    """Redis killed under a trading trader: a ``breaker_shared`` line says ``local``, its status
    shows the breaker degraded (health ``degraded``, one fallback), the recovery manager got a
    report (in the trader's audit log); Redis back: ``breaker_shared`` ``shared``, one re-join."""
    server = ThrowawayRedis(tmp_path)
    await asyncio.to_thread(server.start)
    book = tmp_path / "t" / "book.db"
    trader = Lines(
        await _trader(
            exchange, book, "quiet=test_cluster_breaker_wiring:NeverOrders", "h6-lost", server.url
        )
    )
    try:
        await trader.until(_status(lambda d: _shared(d)["degraded"] is False), "shared")
        server.kill()
        local = await trader.until(lambda d: d.get("event") == "breaker_shared", "fallback")
        degraded = await trader.until(_status(lambda d: _shared(d)["degraded"]), "degraded")
        await asyncio.to_thread(
            server.start
        )  # same port, empty: the re-join re-creates the shared state
        back = await trader.until(
            lambda d: d.get("event") == "breaker_shared" and d["state"] == "shared", "re-join"
        )
        healthy = await trader.until(
            _status(lambda d: _shared(d)["rejoins"] == 1 and not _shared(d)["degraded"]),
            "shared again",
        )
    finally:
        code = await trader.stop()
        server.kill()
    assert code == 0
    assert local["state"] == "local"
    assert local["degraded"] is True
    assert _shared(degraded)["health"] == "degraded"
    assert _shared(degraded)["fallbacks"] == 1
    assert back["degraded"] is False
    assert _shared(healthy)["health"] == "healthy"
    assert _shared(healthy)["fallbacks"] == 1  # no flapping
    assert healthy["breaker"]["state"] == "closed"
    audit = book.with_suffix(".audit.jsonl").read_text(encoding="utf-8")
    assert "breaker-backend" in audit
    assert "SharedStateUnavailableError" in audit


# ------------------------------------------------------------------------------ in process


@pytest.mark.integration
async def test_the_backend_threads_and_connections_end_with_close(
    cluster: str, tmp_path: Path
) -> None:
    """The trader's backend (as ``strategylab trade`` makes it) shares under the cluster's
    prefix, and closing it, as the trader does when it stops, ends its threads."""
    config = TraderConfig(
        exchange_url="http://127.0.0.1:1",
        book=tmp_path / "book.db",
        strategies=("ma_crossover",),
        symbols=("A",),
        cluster=cluster,
        redis_url=REDIS_URL,
    )
    shared = await _shared_breakers(config, ErrorRecoveryManager())
    assert shared is not None
    prefix = shared_breaker_prefix(cluster)

    def threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.endswith(prefix)]

    try:
        assert shared.prefix == prefix
        assert not shared.degraded
        assert len(threads()) == 2
    finally:
        await asyncio.to_thread(shared.close)
    assert threads() == []


def test_cluster_and_redis_go_together_and_name_the_flag(tmp_path: Path) -> None:
    """``--cluster`` without ``--redis`` (and the reverse), a bad name, a bad URL: refused, the
    flag named."""
    base: dict[str, Any] = {
        "exchange_url": "http://127.0.0.1:1",
        "book": tmp_path / "book.db",
        "strategies": ("ma_crossover",),
        "symbols": ("A",),
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cluster": "c"}, "--cluster"),
        ({"redis_url": REDIS_URL}, "--redis"),
        ({"cluster": "a b", "redis_url": REDIS_URL}, "--cluster"),
        ({"cluster": "c", "redis_url": "http://x"}, "--redis"),
    ]
    for extra, flag in cases:
        with pytest.raises(ValueError, match=flag):
            TraderConfig(**base, **extra)
    assert TraderConfig(**base, cluster="c", redis_url=REDIS_URL).cluster == "c"


def test_the_node_passes_its_cluster_to_its_trader(tmp_path: Path) -> None:
    """A node in a cluster runs its trader with the node's ``--cluster`` and ``--redis``."""
    trader = TraderConfig(
        exchange_url="http://127.0.0.1:1",
        book=tmp_path / "trader" / "book.db",
        strategies=("ma_crossover",),
        symbols=("A",),
    )
    node = NodeConfig(
        exchange_url="ws://127.0.0.1:1/ws",
        symbols=("A",),
        data_dir=tmp_path / "node",
        trader=trader,
        cluster="blue",
        redis_url=REDIS_URL,
    )
    settings = _trader_in_cluster(node)
    assert settings.trader is not None
    argv = trader_argv(settings.trader, log_level=30)
    at = argv.index("--cluster")
    assert argv[at : at + 4] == ["--cluster", "blue", "--redis", REDIS_URL]
    alone = _trader_in_cluster(dataclasses.replace(node, cluster=None, redis_url=None))
    assert alone.trader is not None
    assert "--cluster" not in trader_argv(alone.trader, log_level=30)


async def test_the_nodes_trader_panel_and_readiness_show_the_fallback(tmp_path: Path) -> None:
    """The node reads its trader's status lines: the trader panel carries ``breaker.shared``,
    and the readiness check is DEGRADED while the trader's breaker runs on local state."""
    config = TraderConfig(
        exchange_url="http://127.0.0.1:1",
        book=tmp_path / "book.db",
        strategies=("ma_crossover",),
        symbols=("A",),
        cluster="c",
        redis_url=REDIS_URL,
    )
    child = TraderChild(config, channel=tmp_path / "trader.channel")
    assert shared_breaker_state(child, None) is HealthState.HEALTHY  # no trader yet
    child._on_line(b'{"event": "hello", "pid": 4242}')  # the channel's reader
    for degraded in (True, False):
        line = {
            "event": "status",
            "breaker": {"state": "closed", "shared": {"degraded": degraded, "fallbacks": 1}},
        }
        child._on_line(json.dumps(line).encode())
        panel = child.summary(4242)
        assert panel["breaker"]["shared"]["degraded"] is degraded
        expected = HealthState.DEGRADED if degraded else HealthState.HEALTHY
        assert shared_breaker_state(child, 4242) is expected
