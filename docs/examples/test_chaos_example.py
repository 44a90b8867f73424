"""An example chaos test to copy into your own suite (needs pytest-asyncio).

A tiny TCP echo service stands for your service. Strategy Lab's pytest plugin (installed with the
package) puts a fault proxy in front of it; the client talks to the proxy. With 500 ms of latency
injected, the client's 200 ms deadline trips; once the fault is healed (at the end of the
``async with``, however the block ends) the same call works again.
"""

# ruff: noqa: INP001, S101 - a test file to copy into your own tests/ directory

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from strategylab.chaos.pytest_plugin import FaultProxies, Inject

pytestmark = pytest.mark.asyncio  # not needed with asyncio_mode = "auto", harmless with it


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture
async def echo_service() -> AsyncIterator[str]:
    """The service under test: a TCP echo server on a free local port (``host:port``)."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"{host}:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def ask(address: str, payload: bytes, *, deadline: float) -> bytes:
    """The client: send ``payload`` and read the echo, all within ``deadline`` seconds."""
    host, port = address.rsplit(":", 1)
    async with asyncio.timeout(deadline):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(payload)
            await writer.drain()
            return await reader.readexactly(len(payload))
        finally:
            writer.close()


@pytest.mark.chaos
async def test_the_client_deadline_trips_under_latency_and_recovers(
    echo_service: str, fault_proxy: FaultProxies, inject: Inject
) -> None:
    """500 ms of latency trips a 200 ms deadline; healed, the same call works again."""
    proxy = await fault_proxy(echo_service)
    assert await ask(proxy.listen, b"ping", deadline=1.0) == b"ping"

    async with inject.toxic(proxy, "latency", latency=500):
        with pytest.raises(TimeoutError):
            await ask(proxy.listen, b"ping", deadline=0.2)

    assert proxy.toxics == ()  # healed
    assert await ask(proxy.listen, b"ping", deadline=1.0) == b"ping"
