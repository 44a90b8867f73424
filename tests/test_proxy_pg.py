"""The fault proxy in front of the real PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from strategylab.chaos._proxy import Proxy

PG = "127.0.0.1:5432"


@pytest.fixture
async def pg_proxy() -> AsyncIterator[Proxy]:
    try:
        async with asyncio.timeout(5):
            direct = await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=5432, user="postgres", dbname="test"
            )
    except (OSError, TimeoutError, psycopg.OperationalError) as exc:
        pytest.fail(f"PostgreSQL at {PG} (user postgres, db test) is unreachable: {exc}")
    await direct.close()
    async with Proxy("pg", upstream=PG) as proxy:
        yield proxy


async def connect(proxy: Proxy) -> psycopg.AsyncConnection[tuple[int]]:
    return await psycopg.AsyncConnection.connect(
        host="127.0.0.1", port=proxy.listen_port, user="postgres", dbname="test", autocommit=True
    )


@pytest.mark.timeout(20)
async def test_select_one_through_the_proxy(pg_proxy: Proxy) -> None:
    """A psycopg connection through the proxy runs SELECT 1 against the real server."""
    async with asyncio.timeout(10):
        conn = await connect(pg_proxy)
        try:
            cursor = await conn.execute("SELECT 1")
            assert await cursor.fetchone() == (1,)
        finally:
            await conn.close()
    assert pg_proxy.statistics().bytes_downstream > 0


@pytest.mark.timeout(20)
async def test_reset_peer_fails_the_next_query(pg_proxy: Proxy) -> None:
    """With reset_peer on, the next query on an open connection raises OperationalError."""
    async with asyncio.timeout(10):
        conn = await connect(pg_proxy)
        try:
            cursor = await conn.execute("SELECT 1")
            assert await cursor.fetchone() == (1,)
            pg_proxy.add_toxic("reset_peer", timeout=0)
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 1")
            assert conn.broken
        finally:
            await conn.close()
        pg_proxy.remove_toxic("reset_peer_downstream")
        conn = await connect(pg_proxy)
        try:
            cursor = await conn.execute("SELECT 2")
            assert await cursor.fetchone() == (2,)
        finally:
            await conn.close()
