"""The Toxiproxy HTTP API subset, driven over real HTTP with aiohttp's client."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from strategylab.chaos._proxy import ProxyServer
from strategylab.chaos._proxy_api import ProxyApiAccess, serve


class Api:
    """A running API over a fresh ProxyServer, plus an echo upstream to point proxies at."""

    def __init__(self, http: aiohttp.ClientSession, base: str, server: ProxyServer, echo: int):
        self.http = http
        self.base = base
        self.server = server
        self.echo_port = echo

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        async with self.http.request(method, self.base + path, json=body) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    async with ProxyServer() as server, asyncio.TaskGroup() as group:
        # Open without a token: these tests drive the routes; tests/test_proxy_api_token.py the
        # token.
        access = ProxyApiAccess(admin_open=True)
        group.create_task(serve(server, port=0, ready=ready.set_result, stop=stop, access=access))
        async with asyncio.timeout(5):
            port = await ready
        async with aiohttp.ClientSession() as http:
            yield Api(
                http, f"http://127.0.0.1:{port}", server, upstream.sockets[0].getsockname()[1]
            )
        stop.set()
    upstream.close()
    await upstream.wait_closed()


async def echo_through(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = await reader.readexactly(len(data))
    writer.close()
    await writer.wait_closed()
    return received


@pytest.mark.timeout(15)
async def test_create_list_get_and_use_a_proxy(api: Api) -> None:
    """POST /proxies creates a working proxy that GET /proxies and GET /proxies/{name} show."""
    async with asyncio.timeout(10):
        status, created = await api.call(
            "POST", "/proxies", {"name": "ex", "upstream": f"127.0.0.1:{api.echo_port}"}
        )
        assert status == 201
        assert isinstance(created, dict)
        assert created["enabled"] is True
        assert created["toxics"] == []
        port = int(str(created["listen"]).rpartition(":")[2])
        assert port > 0
        status, listing = await api.call("GET", "/proxies")
        assert status == 200
        assert listing == {"ex": created}
        status, one = await api.call("GET", "/proxies/ex")
        assert (status, one) == (200, created)
        assert await echo_through(port, b"hello") == b"hello"


@pytest.mark.timeout(15)
async def test_toxic_lifecycle(api: Api) -> None:
    """Toxics are added, listed, read, updated and deleted with Toxiproxy's shapes."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": f"127.0.0.1:{api.echo_port}"})
        status, toxic = await api.call(
            "POST", "/proxies/p/toxics", {"type": "latency", "attributes": {"latency": 25}}
        )
        assert status == 200
        assert toxic == {
            "name": "latency_downstream",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 1.0,
            "attributes": {"latency": 25, "jitter": 0},
        }
        status, listed = await api.call("GET", "/proxies/p/toxics")
        assert (status, listed) == (200, [toxic])
        status, updated = await api.call(
            "POST", "/proxies/p/toxics/latency_downstream", {"attributes": {"jitter": 5}}
        )
        assert status == 200
        assert isinstance(updated, dict)
        assert updated["attributes"] == {"latency": 25, "jitter": 5}
        status, proxy = await api.call("GET", "/proxies/p")
        assert isinstance(proxy, dict)
        assert proxy["toxics"] == [updated]
        status, _ = await api.call("DELETE", "/proxies/p/toxics/latency_downstream")
        assert status == 204
        status, listed = await api.call("GET", "/proxies/p/toxics")
        assert listed == []


@pytest.mark.timeout(15)
async def test_disable_over_http_and_reset(api: Api) -> None:
    """POST {enabled:false} refuses connections; POST /reset re-enables and clears toxics."""
    async with asyncio.timeout(10):
        _, created = await api.call(
            "POST", "/proxies", {"name": "p", "upstream": f"127.0.0.1:{api.echo_port}"}
        )
        assert isinstance(created, dict)
        port = int(str(created["listen"]).rpartition(":")[2])
        await api.call("POST", "/proxies/p/toxics", {"type": "blackhole", "stream": "upstream"})
        status, disabled = await api.call("POST", "/proxies/p", {"enabled": False})
        assert status == 200
        assert isinstance(disabled, dict)
        assert disabled["enabled"] is False
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        status, _ = await api.call("POST", "/reset")
        assert status == 204
        _, proxy = await api.call("GET", "/proxies/p")
        assert isinstance(proxy, dict)
        assert proxy["enabled"] is True
        assert proxy["toxics"] == []
        assert await echo_through(port, b"back") == b"back"


@pytest.mark.timeout(15)
async def test_delete_proxy_closes_its_port(api: Api) -> None:
    """DELETE /proxies/{name} answers 204, forgets the proxy and stops listening."""
    async with asyncio.timeout(10):
        _, created = await api.call(
            "POST", "/proxies", {"name": "gone", "upstream": f"127.0.0.1:{api.echo_port}"}
        )
        assert isinstance(created, dict)
        port = int(str(created["listen"]).rpartition(":")[2])
        status, _ = await api.call("DELETE", "/proxies/gone")
        assert status == 204
        assert "gone" not in api.server.proxies
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.timeout(15)
async def test_errors_have_toxiproxy_shape(api: Api) -> None:
    """404 for unknown names, 409 for duplicates, 400 naming the bad field."""
    upstream = f"127.0.0.1:{api.echo_port}"
    async with asyncio.timeout(10):
        status, body = await api.call("GET", "/proxies/nope")
        assert status == 404
        assert body == {"error": "proxy 'nope' not found", "status": 404}
        await api.call("POST", "/proxies", {"name": "p", "upstream": upstream})
        status, body = await api.call("POST", "/proxies", {"name": "p", "upstream": upstream})
        assert status == 409
        assert isinstance(body, dict)
        assert body["status"] == 409
        status, body = await api.call("GET", "/proxies/p/toxics/nope")
        assert status == 404
        await api.call("POST", "/proxies/p/toxics", {"type": "timeout"})
        status, _ = await api.call("POST", "/proxies/p/toxics", {"type": "timeout"})
        assert status == 409
        cases = [
            ("/proxies", {"name": "q"}, "upstream"),
            ("/proxies", {"name": "q", "upstream": "no-port"}, "upstream"),
            ("/proxies", {"name": "q", "upstream": upstream, "enabled": "yes"}, "enabled"),
            ("/proxies/p/toxics", {"type": "quake"}, "type"),
            ("/proxies/p/toxics", {"type": "latency", "stream": "left"}, "stream"),
            ("/proxies/p/toxics", {"type": "latency", "toxicity": 2}, "toxicity"),
            ("/proxies/p/toxics", {"type": "latency", "attributes": {"latency": "x"}}, "latency"),
            ("/proxies/p/toxics", {"type": "slicer", "attributes": {"bogus": 1}}, "bogus"),
        ]
        for path, request, field in cases:
            status, body = await api.call("POST", path, request)
            assert status == 400, (path, request)
            assert isinstance(body, dict)
            assert body["status"] == 400
            assert field in str(body["error"]), (field, body)
        async with api.http.post(
            api.base + "/proxies", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400


@pytest.mark.timeout(15)
async def test_version(api: Api) -> None:
    """GET /version answers a JSON version string."""
    async with asyncio.timeout(5):
        status, body = await api.call("GET", "/version")
    assert status == 200
    assert isinstance(body, dict)
    assert str(body["version"]).startswith("2.")


@pytest.mark.timeout(20)
async def test_entry_point_runs_as_its_own_process() -> None:
    """`strategylab proxy --port 0` prints its port and serves the API."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "proxy",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            event = json.loads(await process.stdout.readline())
            assert event["event"] == "listening"
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{event['port']}"
                async with http.get(base + "/proxies") as response:
                    assert response.status == 200
                    assert await response.json() == {}
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            code = await process.wait()
    assert code == 0


@pytest.mark.timeout(15)
async def test_populate_creates_and_replaces(api: Api) -> None:
    """POST /populate creates the listed proxies (replacing same-named ones) and answers 201."""
    upstream = f"127.0.0.1:{api.echo_port}"
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "a", "upstream": upstream})
        await api.call("POST", "/proxies/a/toxics", {"type": "blackhole"})
        status, body = await api.call(
            "POST",
            "/populate",
            [{"name": "a", "upstream": upstream}, {"name": "b", "upstream": upstream}],
        )
        assert status == 201
        assert isinstance(body, dict)
        assert [proxy["name"] for proxy in body["proxies"]] == ["a", "b"]
        assert api.server.get("a").toxics == ()
        assert sorted(api.server.proxies) == ["a", "b"]
        status, _ = await api.call("POST", "/populate", {"name": "c"})
        assert status == 400
