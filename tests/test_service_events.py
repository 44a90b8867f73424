"""The status service's ``/events`` stream: order, periodic price and status events, slow
clients (a full queue, a capped send buffer, a blocked write), clients that leave early."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from service_support import LabSource, serving
from strategylab.service import StatusService
from strategylab.testing import FakeClock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(autojump_threshold=None)


@pytest.fixture
def source(clock: FakeClock, tmp_path: Path) -> LabSource:
    return LabSource(clock, tmp_path / "audit.log")


@pytest.fixture
async def service(source: LabSource, clock: FakeClock) -> AsyncIterator[StatusService]:
    async with serving(source, clock=clock, event_queue=4) as running:
        await source.probe_all()
        yield running


class Stream:
    """A parsed ``text/event-stream`` read from a real HTTP response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> tuple[str, dict[str, Any]]:
        """The next event's kind and data (comments and ``retry`` lines skipped)."""
        kind, data = "message", ""
        async with asyncio.timeout(5):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        return kind, json.loads(data)
                    continue
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]


@pytest.fixture
async def stream(service: StatusService) -> AsyncIterator[Stream]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.get(f"{service.url}/events") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        await _until(lambda: service.event_clients >= 1)
        yield Stream(response)


async def _until(condition: Any, within: float = 5.0) -> None:
    """Wait (bounded) for a connection-level condition the test cannot await directly."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a socket-level condition, no event to await
            await asyncio.sleep(0.005)


async def test_published_events_arrive_in_order(service: StatusService, stream: Stream) -> None:
    """Events reach a client in the order they were published, with their kind and data."""
    service.publish("health", {"check": "store", "current": "unhealthy"})
    service.publish("recovery", {"kind": "recovery_started", "component": "store"})
    service.publish("degradation", {"action": "shed", "feature": "live_chart", "level": 1})
    received = [await stream.next() for _ in range(3)]
    assert received == [
        ("health", {"check": "store", "current": "unhealthy"}),
        ("recovery", {"kind": "recovery_started", "component": "store"}),
        ("degradation", {"action": "shed", "feature": "live_chart", "level": 1}),
    ]


async def test_a_bad_event_is_skipped_without_raising(
    service: StatusService, stream: Stream
) -> None:
    """publish never raises: a bad kind or data is logged and the stream goes on."""
    service.publish("Bad Kind\n", {"x": 1})
    service.publish("config", ["not", "a", "mapping"])  # type: ignore[arg-type]
    service.publish("config", {"accepted": True})
    assert await stream.next() == ("config", {"accepted": True})


async def test_price_events_follow_the_clock_while_the_chart_is_on(
    service: StatusService, source: LabSource, clock: FakeClock, stream: Stream
) -> None:
    """Every chart_interval on the service clock a price event carries the last prices."""
    source.tick({"BTC-USD": 64000.0, "ETH-USD": 3100.0})
    clock.advance(0.5)
    kind, data = await stream.next()
    assert kind == "price"
    assert data == {"t": 0.5, "prices": {"BTC-USD": 64000.0, "ETH-USD": 3100.0}}


async def test_no_price_events_while_the_chart_is_shed(
    service: StatusService, source: LabSource, clock: FakeClock, stream: Stream
) -> None:
    """With the chart shed, the next event is the periodic status, saying the chart is shed."""
    source.tick({"BTC-USD": 64000.0})
    await source.degradation.shed_feature("live_chart")
    kind, data = await stream.next()
    assert (kind, data["action"], data["feature"]) == ("degradation", "shed", "live_chart")
    clock.advance(0.5)
    clock.advance(0.5)
    kind, data = await stream.next()
    assert kind == "status"
    assert data["chart"] == {"enabled": False, "state": "shed"}


async def test_status_events_carry_the_status_body(
    service: StatusService, source: LabSource, clock: FakeClock, stream: Stream
) -> None:
    """The periodic status event is the /status body, so a dashboard needs no polling."""
    service.chart_enabled = False
    source.store_ok = False
    await source.monitor.probe("store")
    assert (await stream.next())[0] == "health"
    clock.advance(1.0)
    kind, data = await stream.next()
    assert kind == "status"
    assert data["node"] == "lab-node"
    assert {c["name"]: c["state"] for c in data["components"]}["store"] == "unhealthy"


def _slow_socket(url: str) -> socket.socket:
    """A client that asks for /events and then reads nothing, with a tiny receive window."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(f"GET /events HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    return sock


async def test_a_slow_client_is_dropped_and_others_keep_receiving(
    service: StatusService, stream: Stream
) -> None:
    """A client that reads nothing is dropped once its queue is full; its queue is freed; the
    reading client gets every event, before and after."""
    slow = _slow_socket(service.url)
    try:
        await _until(lambda: service.event_clients == 2)
        hub = service._hub
        clients_before = set(hub._clients)
        pad = "x" * 32768
        sent = 0
        while service.dropped_clients == 0:
            assert sent < 2000, "the slow client was never dropped"
            service.publish("load", {"i": sent, "pad": pad})
            kind, data = await stream.next()
            assert (kind, data["i"]) == ("load", sent)
            sent += 1
        assert service.dropped_clients == 1
        assert service.event_clients == 1
        dropped = [client for client in clients_before if client.dropped]
        assert len(dropped) == 1
        slow_client = dropped[0]
        assert slow_client.pending == 0
        assert slow_client.closed
        assert slow_client not in hub._clients
        service.publish("health", {"check": "store", "current": "healthy"})
        assert await stream.next() == ("health", {"check": "store", "current": "healthy"})
    finally:
        slow.close()
    assert sent > 4


async def test_aclose_ends_the_streams(source: LabSource, clock: FakeClock, tmp_path: Path) -> None:
    """Closing the service ends every open stream instead of leaving it hanging."""
    async with serving(source, clock=clock) as service:
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        response = await http.get(f"{service.url}/events")
        await _until(lambda: service.event_clients == 1)
        await service.aclose()
        assert service.event_clients == 0
        async with asyncio.timeout(5):
            rest = await response.content.read()
        assert b"event:" not in rest
        response.release()
        await http.close()


async def test_each_stream_has_a_capped_kernel_send_buffer(
    source: LabSource, clock: FakeClock
) -> None:
    """SO_SNDBUF of every /events connection is capped (Linux reports twice the figure set), so a
    client that reads nothing holds kilobytes in the kernel, not megabytes."""
    async with (
        serving(source, clock=clock, send_buffer=32 * 1024) as service,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"{service.url}/events") as response,
    ):
        assert response.status == 200
        await _until(lambda: service.event_clients == 1)
        (client,) = service._hub._clients
        assert client.transport is not None
        sock = client.transport.get_extra_info("socket")
        assert 4096 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 32 * 1024


async def test_clients_that_never_read_are_dropped_after_the_write_deadline(
    source: LabSource, clock: FakeClock
) -> None:
    """Three clients that read nothing block their writes (capped buffers, queue not full); when
    the write deadline passes on the service clock they are all dropped and counted, and the
    reading client still gets every event."""
    async with (
        serving(source, clock=clock, send_buffer=4096, write_timeout=5.0) as service,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.get(f"{service.url}/events") as response,
    ):
        reader = Stream(response)
        await _until(lambda: service.event_clients == 1)
        (reading,) = service._hub._clients
        slow = [_slow_socket(service.url) for _ in range(3)]
        try:
            await _until(lambda: service.event_clients == 4)
            stuck = [client for client in service._hub._clients if client is not reading]
            pad = "y" * 32768
            sent = 0
            while not all(client.writing_since is not None for client in stuck):
                assert sent < 200, "the writes to the clients that read nothing never blocked"
                service.publish("load", {"i": sent, "pad": pad})
                assert await reader.next() == ("load", {"i": sent, "pad": pad})
                sent += 1
                await _until(lambda: reading.writing_since is None)
            assert all(client.pending < 256 for client in stuck)  # no queue is full
            assert service.dropped_clients == 0
            clock.advance(5.0)
            await _until(lambda: service.dropped_clients == 3)
            assert service.event_clients == 1
            assert all(client.dropped and client.pending == 0 for client in stuck)
            service.publish("health", {"check": "store", "current": "healthy"})
            while (event := await reader.next())[0] != "health":
                assert event[0] in {"price", "status"}  # the periodic ones the jump woke
            assert event == ("health", {"check": "store", "current": "healthy"})
        finally:
            for sock in slow:
                sock.close()
    assert sent > 1


def _reset_after_request(url: str) -> None:
    """Ask for /events and reset the connection (SO_LINGER 0) before any answer is read."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80)) as sock:
        sock.sendall(f"GET /events HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_a_client_that_leaves_before_its_headers_is_no_error(
    service: StatusService, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that resets the connection before or while the headers are sent leaves no
    ERROR record (no traceback), and the service keeps serving."""

    def left() -> int:
        return sum("left" in r.getMessage() for r in caplog.records if r.name == service_log)

    service_log = "strategylab.service"
    with caplog.at_level(logging.DEBUG):
        for i in range(10):
            _reset_after_request(service.url)
            await _until(lambda: left() > i)  # noqa: B023 - awaited within the iteration
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"{service.url}/health/live") as response,
        ):
            assert response.status == 200
    await _until(lambda: service.event_clients == 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(r.exc_info for r in caplog.records)
