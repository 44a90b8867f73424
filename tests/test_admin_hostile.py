"""Hostile peers on the admin surfaces: browsers, bad headers, oversized and poisoned bodies.

Real servers on 127.0.0.1 (the exchange, and the proxy API over a real ProxyServer), real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab._http_guard import HttpLimits
from strategylab.chaos._proxy import ProxyServer
from strategylab.chaos._proxy_api import ProxyApiAccess, serve
from strategylab.exchange._server import Exchange, ExchangeConfig
from strategylab.testing import FakeClock

pytestmark = pytest.mark.integration

TOKEN = "t0ken"  # noqa: S105 - a test token
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
FAULT = {"kind": "api_errors", "duration": 60.0, "rate": 1.0}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b'{"kind": "api_errors", "duration": ' + b"7" * 5000 + b"}"

MakeExchange = Callable[..., Awaitable[Exchange]]


@pytest.fixture
async def make_exchange(tmp_path: Path) -> AsyncIterator[MakeExchange]:
    started: list[Exchange] = []

    async def make(**options: Any) -> Exchange:
        config = ExchangeConfig(
            symbols=("A",),
            tick_rate=0,
            max_ticks=0,
            data_dir=tmp_path / str(len(started)),
            **options,
        )
        exchange = Exchange(config, clock=FakeClock(start=1000.0))
        await exchange.start()
        started.append(exchange)
        return exchange

    yield make
    for exchange in started:
        await exchange.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def send(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, str]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.text()


@pytest.mark.timeout(10)
async def test_admin_api_is_closed_without_a_token(
    make_exchange: MakeExchange, http: aiohttp.ClientSession
) -> None:
    """With no admin token, a cross-site text/plain POST cannot switch a fault on."""
    exchange = await make_exchange()
    status, _ = await send(
        http,
        "POST",
        f"{exchange.url}/admin/faults",
        data=json.dumps(FAULT),
        headers={"Content-Type": "text/plain"},
    )
    assert status == 415
    status, text = await send(http, "POST", f"{exchange.url}/admin/faults", json=FAULT)
    assert status == 403
    assert "admin_token" in text
    assert exchange.faults.snapshot() == []
    assert exchange.security_events == 1


@pytest.mark.timeout(10)
async def test_admin_open_flag_opens_the_admin_api(
    make_exchange: MakeExchange, http: aiohttp.ClientSession
) -> None:
    """``admin_open`` serves /admin/* without a token, still refusing browsers."""
    exchange = await make_exchange(admin_open=True)
    status, _ = await send(http, "POST", f"{exchange.url}/admin/faults", json=FAULT)
    assert status == 201
    status, _ = await send(
        http, "DELETE", f"{exchange.url}/admin/faults", headers={"User-Agent": BROWSER}
    )
    assert status == 403
    assert len(exchange.faults.snapshot()) == 1


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Origin": "https://evil.example", "Content-Type": "application/json"}, 403),
        ({"Origin": "null", "Content-Type": "application/json"}, 403),
        ({"User-Agent": BROWSER, "Content-Type": "application/json"}, 403),
        ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, 403),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ],
    ids=["origin", "null-origin", "browser-agent", "sec-fetch", "text", "form", "multipart"],
)
async def test_browser_style_admin_requests_are_refused_even_with_the_token(
    make_exchange: MakeExchange,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    expected: int,
) -> None:
    """A browser Origin/agent is a 403 and a non-JSON body a 415; the fault stays off."""
    exchange = await make_exchange(admin_token=TOKEN)
    status, _ = await send(
        http,
        "POST",
        f"{exchange.url}/admin/faults",
        data=json.dumps(FAULT).encode(),
        headers={**ADMIN, **headers},
    )
    assert status == expected
    assert exchange.faults.snapshot() == []


@pytest.mark.timeout(10)
async def test_an_explicitly_allowed_origin_may_call_the_admin_api(
    make_exchange: MakeExchange, http: aiohttp.ClientSession
) -> None:
    """An origin in ``allowed_origins`` (with the token) is served."""
    origin = "https://ops.example:8443"
    limits = HttpLimits(allowed_origins=frozenset({origin}))
    exchange = await make_exchange(admin_token=TOKEN, http_limits=limits)
    headers = {**ADMIN, "Origin": origin, "User-Agent": BROWSER}
    status, _ = await send(
        http, "POST", f"{exchange.url}/admin/faults", json=FAULT, headers=headers
    )
    assert status == 201


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read(1 << 16)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer t0ken\x80"])
async def test_non_utf8_authorization_is_a_401_security_event(
    make_exchange: MakeExchange, value: bytes
) -> None:
    """Undecodable Authorization bytes are a 401 counted as a security event, not a 500."""
    exchange = await make_exchange(admin_token=TOKEN)
    answer = await raw_request(
        exchange.port,
        b"GET /admin/faults HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + value
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    assert exchange.security_events == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/admin/faults", "/api/orders", "/api/orders/lookup"])
@pytest.mark.parametrize(
    "body",
    [DEEP, HUGE_INT, b'{"a": 1e999}', b'{"a": NaN}'],
    ids=["deep", "huge-int", "inf", "nan"],
)
async def test_poisoned_json_bodies_are_400s(
    make_exchange: MakeExchange, http: aiohttp.ClientSession, path: str, body: bytes
) -> None:
    """Deep nesting, huge numbers and non-JSON constants are 400s naming ``body``; nothing set."""
    exchange = await make_exchange(admin_token=TOKEN)
    headers = {**ADMIN, "Content-Type": "application/json"}
    status, text = await send(http, "POST", exchange.url + path, data=body, headers=headers)
    assert status == 400, text[:200]
    assert "body" in text
    assert exchange.faults.snapshot() == []
    assert exchange.book.orders() == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/admin/faults", "/api/orders", "/api/orders/lookup"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_over_the_limit_are_413s(
    make_exchange: MakeExchange, http: aiohttp.ClientSession, path: str, *, chunked: bool
) -> None:
    """A body over ``max_body`` is a 413, from the header or while reading a chunked body."""
    exchange = await make_exchange(admin_token=TOKEN, http_limits=HttpLimits(max_body=4096))
    body = b'{"pad": "' + b"x" * 10_000 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    headers = {**ADMIN, "Content-Type": "application/json"}
    data: Any = chunks() if chunked else body
    status, _ = await send(http, "POST", exchange.url + path, data=data, headers=headers)
    assert status == 413


@pytest.mark.timeout(30)
async def test_exchange_process_refuses_admin_calls_without_a_token(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The real exchange process, started without --admin-token, keeps its faults off."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "exchange", "--port", "0", "--symbols", "A"),
        *("--tick-rate", "10", "--data-dir", str(tmp_path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            port = json.loads(await proc.stdout.readline())["port"]
        url = f"http://127.0.0.1:{port}"
        status, _ = await send(
            http, "POST", f"{url}/admin/faults", data=json.dumps(FAULT), headers={}
        )
        assert status in {403, 415}
        status, _ = await send(http, "POST", f"{url}/admin/faults", json=FAULT)
        assert status == 403
        status, text = await send(http, "GET", f"{url}/api/status")
        assert status == 200
        assert json.loads(text)["faults"] == []
        assert json.loads(text)["security_events"] >= 1
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


# -- the proxy API -----------------------------------------------------------------------------


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str, server: ProxyServer, echo: int):
        self.http = http
        self.base = base
        self.server = server
        self.echo_port = echo


@pytest.fixture
async def api(http: aiohttp.ClientSession) -> AsyncIterator[Api]:
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
    limits = HttpLimits(max_body=256 * 1024)
    async with ProxyServer() as server, asyncio.TaskGroup() as group:
        # Open: the browser and body guards come first and hold without a token too.
        access = ProxyApiAccess(admin_open=True)
        group.create_task(
            serve(server, port=0, ready=ready.set_result, stop=stop, limits=limits, access=access)
        )
        async with asyncio.timeout(5):
            port = await ready
        yield Api(http, f"http://127.0.0.1:{port}", server, upstream.sockets[0].getsockname()[1])
        stop.set()
    upstream.close()
    await upstream.wait_closed()


async def echo_through(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        await writer.drain()
        return await reader.readexactly(4)
    finally:
        writer.close()


@pytest.mark.timeout(15)
@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("POST", "/proxies", {"User-Agent": BROWSER}, 403),
        ("POST", "/reset", {"User-Agent": BROWSER}, 403),
        ("POST", "/reset", {"Origin": "http://localhost:3000"}, 403),
        ("GET", "/proxies", {"Origin": "https://evil.example"}, 403),
        ("POST", "/proxies", {"Content-Type": "text/plain"}, 415),
        ("PATCH", "/proxies/p", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
async def test_proxy_api_refuses_browser_style_requests(
    api: Api, method: str, path: str, headers: dict[str, str], expected: int
) -> None:
    """Browser agents and origins are 403s and non-JSON bodies 415s; nothing changes."""
    upstream = f"127.0.0.1:{api.echo_port}"
    proxy = await api.server.create("p", upstream=upstream)
    proxy.add_toxic("latency", name="slow", latency=1)
    body = json.dumps({"name": "q", "upstream": upstream, "enabled": False}).encode()
    status, _ = await send(
        api.http, method, api.base + path, data=body if method != "GET" else None, headers=headers
    )
    assert status == expected
    assert set(api.server.proxies) == {"p"}
    assert proxy.enabled
    assert [t.name for t in proxy.toxics] == ["slow"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/proxies", DEEP, 400),
        ("POST", "/populate", DEEP, 400),
        ("PATCH", "/proxies/p", b'{"enabled": ' + b"1" * 5000 + b"}", 400),
        (
            "POST",
            "/proxies/p/toxics",
            b'{"type": "latency", "toxicity": 0.' + b"5" * 5000 + b"}",
            400,
        ),
        ("POST", "/proxies", b'{"pad": "' + b"x" * 300_000 + b'"}', 413),
    ],
    ids=["deep", "deep-populate", "huge-int", "huge-float", "too-large"],
)
async def test_proxy_api_refuses_poisoned_bodies(
    api: Api, method: str, path: str, body: bytes, expected: int
) -> None:
    """Deep, huge-number and oversized bodies are refused; the proxy still forwards."""
    proxy = await api.server.create("p", upstream=f"127.0.0.1:{api.echo_port}")
    headers = {"Content-Type": "application/json"}
    status, text = await send(api.http, method, api.base + path, data=body, headers=headers)
    assert status == expected, text[:200]
    assert json.loads(text)["status"] == expected
    assert list(api.server.proxies) == ["p"]
    assert proxy.toxics == ()
    async with asyncio.timeout(5):
        assert await echo_through(proxy.listen_port) == b"ping"


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "listen",
    [
        "\u0000:0",
        "127.0.0.1\u0000:0",
        "bad host:0",
        "127.0.0.1:99999999999999999999",
        "192.0.2.1:0",  # TEST-NET-1: not an address of this machine, cannot be bound
        "no-such-host.invalid:0",
    ],
)
async def test_bad_listen_is_a_400_and_the_proxy_keeps_working(api: Api, listen: str) -> None:
    """A bad or unbindable ``listen`` changes nothing; later updates still succeed."""
    proxy = await api.server.create("p", upstream=f"127.0.0.1:{api.echo_port}")
    before = proxy.listen
    async with api.http.patch(f"{api.base}/proxies/p", json={"listen": listen}) as response:
        assert response.status == 400, await response.text()
        assert "listen" in (await response.json())["error"]
    assert proxy.listen == before
    async with asyncio.timeout(5):
        assert await echo_through(proxy.listen_port) == b"ping"
    async with api.http.patch(f"{api.base}/proxies/p", json={"listen": "127.0.0.1:0"}) as response:
        assert response.status == 200
    async with asyncio.timeout(5):
        assert await echo_through(proxy.listen_port) == b"ping"


@pytest.mark.timeout(15)
async def test_populate_with_one_bad_record_creates_nothing(api: Api) -> None:
    """Every record of /populate is validated before the first proxy is created."""
    upstream = f"127.0.0.1:{api.echo_port}"
    body = [
        {"name": "a", "upstream": upstream},
        {"name": "b", "upstream": upstream, "listen": "\0:0"},
    ]
    async with api.http.post(f"{api.base}/populate", json=body) as response:
        assert response.status == 400
    assert dict(api.server.proxies) == {}
