"""The fault proxy's Python API and its toxics, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Self

import pytest

from strategylab.chaos._proxy import (
    Proxy,
    ProxyStatistics,
    ToxicExistsError,
    ToxicNotFoundError,
)
from strategylab.errors import ConfigurationError

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """An in-process TCP server on an ephemeral port whose handlers are owned and awaited."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)
        try:
            await self.behaviour(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        async with asyncio.timeout(5):
            await asyncio.gather(*self.handlers, return_exceptions=True)
            await self.server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()


async def read_all(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """Everything until EOF, and how many reads it took."""
    parts = []
    while chunk := await reader.read(1 << 16):
        parts.append(chunk)
    return b"".join(parts), len(parts)


@pytest.fixture
async def echo_proxy() -> AsyncIterator[Proxy]:
    async with (
        Upstream(echo) as upstream,
        Proxy("echo", upstream=f"127.0.0.1:{upstream.port}", rng=random.Random(7)) as proxy,
    ):
        yield proxy


async def connect(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.listen_port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(data)
    assert await reader.readexactly(len(data)) == data
    return loop.time() - started


@pytest.mark.timeout(10)
async def test_pass_through_is_byte_exact_both_ways(echo_proxy: Proxy) -> None:
    """1 MB of random bytes goes up and comes back identical, and the counters see it."""
    payload = os.urandom(1 << 20)
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        await close(writer)
    assert echoed == payload
    stats = echo_proxy.statistics()
    assert stats.bytes_upstream == stats.bytes_downstream == len(payload)
    assert stats.connections_total == 1


@pytest.mark.timeout(10)
async def test_latency_delays_an_open_connection(echo_proxy: Proxy) -> None:
    """A latency toxic added to a live connection delays each chunk by at least its latency."""
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        await round_trip(reader, writer, b"warm")
        async with echo_proxy.toxic("latency", latency=50):
            delayed = await round_trip(reader, writer, b"slow")
        fast = await round_trip(reader, writer, b"fast")
        await close(writer)
    assert delayed >= 0.05
    assert fast < delayed


@pytest.mark.timeout(10)
async def test_latency_on_the_upstream_stream(echo_proxy: Proxy) -> None:
    """stream=upstream delays client-to-server data, and jitter stays within its bound."""
    echo_proxy.add_toxic("latency", stream="upstream", latency=60, jitter=20)
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        delayed = await round_trip(reader, writer, b"up")
        await close(writer)
    assert delayed >= 0.04
    assert echo_proxy.toxics[0].name == "latency_upstream"


@pytest.mark.timeout(10)
async def test_bandwidth_limits_the_rate(echo_proxy: Proxy) -> None:
    """60 KB at 200 KB/s take at least 0.28 s to come back."""
    echo_proxy.add_toxic("bandwidth", rate=200)
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        elapsed = await round_trip(reader, writer, os.urandom(60_000))
        await close(writer)
    assert elapsed >= 0.28


@pytest.mark.timeout(10)
async def test_timeout_stops_data_and_closes(echo_proxy: Proxy) -> None:
    """With a 100 ms timeout toxic nothing comes back and the connection closes after 100 ms."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        await round_trip(reader, writer, b"ok")
        added = loop.time()
        echo_proxy.add_toxic("timeout", timeout=100)
        writer.write(b"lost")
        data, _ = await read_all(reader)
        closed = loop.time()
        await close(writer)
    assert data == b""
    assert closed - added >= 0.1


@pytest.mark.timeout(10)
async def test_reset_peer_resets_the_client(echo_proxy: Proxy) -> None:
    """reset_peer turns the next exchange into a ConnectionResetError at the client."""
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        await round_trip(reader, writer, b"ok")
        echo_proxy.add_toxic("reset_peer", timeout=0)
        writer.write(b"boom")
        with pytest.raises(ConnectionResetError):
            await read_all(reader)
        writer.transport.abort()


@pytest.mark.timeout(10)
async def test_slicer_delivers_the_same_bytes_in_many_reads() -> None:
    """A 4000-byte write arrives intact, cut into many small reads."""
    payload = os.urandom(4000)

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    async with (
        Upstream(send) as upstream,
        Proxy("slicer", upstream=f"127.0.0.1:{upstream.port}", rng=random.Random(1)) as proxy,
    ):
        proxy.add_toxic("slicer", average_size=200, size_variation=50, delay=2000)
        async with asyncio.timeout(5):
            reader, writer = await connect(proxy)
            data, reads = await read_all(reader)
            await close(writer)
    assert data == payload
    assert reads >= 10


@pytest.mark.timeout(10)
async def test_limit_data_closes_after_n_bytes() -> None:
    """limit_data passes exactly its byte budget, then closes the connection."""
    payload = os.urandom(1000)

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        await reader.read()  # hold the connection until the proxy closes it

    async with (
        Upstream(send) as upstream,
        Proxy("limit", upstream=f"127.0.0.1:{upstream.port}") as proxy,
    ):
        proxy.add_toxic("limit_data", bytes=100)
        async with asyncio.timeout(5):
            reader, writer = await connect(proxy)
            data, _ = await read_all(reader)
            await close(writer)
    assert data == payload[:100]


@pytest.mark.timeout(10)
async def test_slow_close_delays_the_close() -> None:
    """The server's FIN reaches the client at least slow_close's delay after it was sent."""
    loop = asyncio.get_running_loop()
    server_closed: list[float] = []

    async def send_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()
        server_closed.append(loop.time())

    async with (
        Upstream(send_and_close) as upstream,
        Proxy("slow", upstream=f"127.0.0.1:{upstream.port}") as proxy,
    ):
        proxy.add_toxic("slow_close", delay=100)
        async with asyncio.timeout(5):
            reader, writer = await connect(proxy)
            data, _ = await read_all(reader)
            eof_at = loop.time()
            await close(writer)
    assert data == b"bye"
    assert eof_at - server_closed[0] >= 0.1


@pytest.mark.timeout(10)
async def test_corrupt_flips_single_bits_and_keeps_length(echo_proxy: Proxy) -> None:
    """corrupt at rate 0.05 changes about 5 % of bytes, each by exactly one bit."""
    payload = bytes(20_000)
    echo_proxy.add_toxic("corrupt", rate=0.05)
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        writer.write(payload)
        received = await reader.readexactly(len(payload))
        await close(writer)
    flipped = [a ^ b for a, b in zip(payload, received, strict=True)]
    changed = [x for x in flipped if x]
    assert received != payload
    assert 500 <= len(changed) <= 1500
    assert all(x.bit_count() == 1 for x in changed)


@pytest.mark.timeout(10)
async def test_blackhole_drops_data_and_removal_does_not_resurrect_it(echo_proxy: Proxy) -> None:
    """A blackhole keeps the connection open, delivers nothing, and dropped bytes stay dropped."""
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        await round_trip(reader, writer, b"ok")
        before = echo_proxy.statistics()
        echo_proxy.add_toxic("blackhole")
        writer.write(b"lost")
        # The proxy has read the echoed bytes (and dropped them): wait for that, don't sleep.
        after = await echo_proxy.wait_for(
            lambda s: s.bytes_received_downstream >= before.bytes_received_downstream + 4
        )
        assert after.bytes_downstream == before.bytes_downstream
        assert echo_proxy.statistics().connections_active == 1
        echo_proxy.remove_toxic("blackhole_downstream")
        writer.write(b"back")
        assert await reader.readexactly(4) == b"back"
        await close(writer)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("toxicity", "delivered"), [(0.0, True), (1.0, False)])
async def test_toxicity_zero_never_applies_and_one_always_does(
    echo_proxy: Proxy, toxicity: float, delivered: bool
) -> None:
    """A blackhole with toxicity 0 lets data through; with toxicity 1 it drops it."""
    echo_proxy.add_toxic("blackhole", toxicity=toxicity)
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        writer.write(b"ping")
        stats = await echo_proxy.wait_for(lambda s: s.bytes_received_downstream >= 4)
        if delivered:
            assert await reader.readexactly(4) == b"ping"
        else:
            assert stats.bytes_downstream == 0
        await close(writer)


@pytest.mark.timeout(10)
async def test_toxicity_is_drawn_once_per_connection() -> None:
    """With toxicity 0.5 and a seeded rng, some connections get the toxic and some do not."""
    async with (
        Upstream(echo) as upstream,
        Proxy("half", upstream=f"127.0.0.1:{upstream.port}", rng=random.Random(3)) as proxy,
    ):
        proxy.add_toxic("blackhole", toxicity=0.5)
        outcomes = []
        async with asyncio.timeout(5):
            for _ in range(20):
                reader, writer = await connect(proxy)
                previous = proxy.statistics()
                writer.write(b"ab")
                wanted = previous.bytes_received_downstream + 2

                def arrived(s: ProxyStatistics, wanted: int = wanted) -> bool:
                    return s.bytes_received_downstream >= wanted

                stats = await proxy.wait_for(arrived)
                outcomes.append(stats.bytes_downstream > previous.bytes_downstream)
                if outcomes[-1]:
                    assert await reader.readexactly(2) == b"ab"
                await close(writer)
    assert 3 <= sum(outcomes) <= 17


@pytest.mark.timeout(10)
async def test_disable_closes_and_refuses_enable_listens_on_the_same_port(
    echo_proxy: Proxy,
) -> None:
    """disable() ends open connections and refuses new ones; enable() serves the same port again."""
    port = echo_proxy.listen_port
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        await round_trip(reader, writer, b"ok")
        await echo_proxy.disable()
        assert not await echo_proxy.health()
        try:
            data, _ = await read_all(reader)
        except ConnectionResetError:
            data = b""
        assert data == b""
        await close(writer)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await echo_proxy.enable()
        assert echo_proxy.listen_port == port
        assert await echo_proxy.health()
        reader, writer = await connect(echo_proxy)
        await round_trip(reader, writer, b"again")
        await close(writer)


@pytest.mark.timeout(10)
async def test_reset_removes_toxics_and_enables(echo_proxy: Proxy) -> None:
    """reset() clears every toxic and re-enables a disabled proxy."""
    echo_proxy.add_toxic("latency", latency=1000)
    echo_proxy.add_toxic("blackhole", stream="upstream")
    await echo_proxy.disable()
    await echo_proxy.reset()
    assert echo_proxy.toxics == ()
    assert echo_proxy.enabled
    async with asyncio.timeout(5):
        reader, writer = await connect(echo_proxy)
        assert await round_trip(reader, writer, b"clean") < 1.0
        await close(writer)


@pytest.mark.timeout(10)
async def test_unreachable_upstream_closes_the_client() -> None:
    """A refused upstream connection closes the client's and is counted."""
    async with Upstream(echo) as upstream:
        dead_port = upstream.port
    async with Proxy("dead", upstream=f"127.0.0.1:{dead_port}") as proxy:
        async with asyncio.timeout(5):
            reader, writer = await connect(proxy)
            try:
                data, _ = await read_all(reader)
            except ConnectionResetError:
                data = b""
            await close(writer)
            stats = await proxy.wait_for(lambda s: s.connections_active == 0)
    assert data == b""
    assert stats.upstream_failures == 1


async def test_toxic_context_manager_and_errors(echo_proxy: Proxy) -> None:
    """toxic() removes its toxic on exit; duplicate or unknown names and bad values are refused."""
    async with echo_proxy.toxic("latency", name="lag", latency=10) as toxic:
        assert echo_proxy.toxics == (toxic,)
        assert toxic.name == "lag"
        with pytest.raises(ToxicExistsError):
            echo_proxy.add_toxic("latency", name="lag")
    remaining = list(echo_proxy.toxics)
    assert remaining == []
    with pytest.raises(ToxicNotFoundError):
        echo_proxy.remove_toxic("lag")
    with pytest.raises(ConfigurationError, match="latency"):
        echo_proxy.add_toxic("latency", latency=-1)
    with pytest.raises(ConfigurationError, match=r"attributes\.rate"):
        echo_proxy.add_toxic("latency", rate=1)
    with pytest.raises(ConfigurationError, match="type"):
        echo_proxy.add_toxic("earthquake")
    with pytest.raises(ConfigurationError, match="stream"):
        echo_proxy.add_toxic("latency", stream="sideways")
    with pytest.raises(ConfigurationError, match="toxicity"):
        echo_proxy.add_toxic("latency", toxicity=1.5)
    with pytest.raises(ConfigurationError, match="upstream"):
        Proxy("bad", upstream="nowhere")


@pytest.mark.timeout(10)
async def test_adding_and_removing_toxics_mid_stream_keeps_bytes_in_order(
    echo_proxy: Proxy,
) -> None:
    """Toggling toxics while 2 MB stream through loses, duplicates and reorders nothing."""
    payload = os.urandom(2 << 20)
    async with asyncio.timeout(8):
        reader, writer = await connect(echo_proxy)

        async def send() -> None:
            for start in range(0, len(payload), 1 << 14):
                writer.write(payload[start : start + (1 << 14)])
                await writer.drain()
                if start % (1 << 18) == 0:
                    name = f"lag{start}"
                    echo_proxy.add_toxic("latency", name=name, latency=5, stream="upstream")
                    echo_proxy.add_toxic("slicer", name=f"cut{start}", average_size=4096)
                elif start % (1 << 18) == 1 << 17:
                    for toxic in echo_proxy.toxics:
                        echo_proxy.remove_toxic(toxic.name)

        async with asyncio.TaskGroup() as group:
            group.create_task(send())
            echoed = await reader.readexactly(len(payload))
        await close(writer)
    assert echoed == payload
