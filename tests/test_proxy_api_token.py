"""The proxy API's admin token: changes need it, a closed API refuses them, GET stays open.

An in-process API on a real socket for the token rules, and the real ``strategylab proxy``
process for how the token is given (file, environment) and for ``--admin-open``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab._secrets import write_secret_file
from strategylab.chaos import ProxyApiAccess, ProxyServer
from strategylab.chaos._proxy_api import serve
from strategylab.errors import ConfigurationError

pytestmark = pytest.mark.integration

TOKEN = "pr0xy-t0ken"  # noqa: S105 - a test token
UPSTREAM = "127.0.0.1:9"  # never connected to: creating a proxy does not dial its upstream
CREATE = {"name": "p", "upstream": UPSTREAM}
WITH_TOKEN = ProxyApiAccess(admin_token=TOKEN)

Serve = Callable[[ProxyApiAccess], Awaitable[str]]


@pytest.fixture
async def api() -> AsyncIterator[Serve]:
    """Start the API over a fresh ProxyServer with the given access; yields its base URL."""
    async with asyncio.TaskGroup() as group, ProxyServer() as server:
        stops: list[asyncio.Event] = []

        async def start(access: ProxyApiAccess) -> str:
            stop = asyncio.Event()
            stops.append(stop)
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            group.create_task(
                serve(server, port=0, ready=ready.set_result, stop=stop, access=access)
            )
            async with asyncio.timeout(5):
                return f"http://127.0.0.1:{await ready}"

        yield start
        for stop in stops:
            stop.set()


async def call(
    method: str, url: str, *, token: str | None = None, body: object = None
) -> tuple[int, dict[str, Any] | None]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.request(method, url, json=body, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def raw_status(base: str, request: bytes) -> bytes:
    host, _, port = base.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read(1 << 16)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.timeout(15)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/proxies", CREATE),
        ("POST", "/populate", [CREATE]),
        ("POST", "/reset", None),
        ("PATCH", "/proxies/p", {"enabled": False}),
        ("DELETE", "/proxies/p", None),
        ("POST", "/proxies/p/toxics", {"type": "latency"}),
    ],
)
async def test_changes_without_a_token_are_401(
    api: Serve, method: str, path: str, body: object
) -> None:
    """Every state-changing route answers 401 without the token, and nothing changes."""
    base = await api(WITH_TOKEN)
    status, _ = await call("POST", f"{base}/proxies", token=TOKEN, body=CREATE)
    assert status == 201
    status, answer = await call(method, base + path, body=body)
    assert status == 401
    assert answer == {"error": "Authorization: admin token missing or wrong", "status": 401}
    _, proxy = await call("GET", f"{base}/proxies/p")
    assert proxy is not None
    assert proxy["enabled"] is True
    assert proxy["toxics"] == []


@pytest.mark.timeout(15)
@pytest.mark.parametrize("given", ["wrong", f"{TOKEN}x", TOKEN[:-1], ""])
async def test_a_wrong_token_is_401(api: Serve, given: str) -> None:
    """A wrong, longer, shorter or empty bearer token is a 401."""
    base = await api(WITH_TOKEN)
    status, _ = await call("POST", f"{base}/proxies", token=given, body=CREATE)
    assert status == 401
    _, proxies = await call("GET", f"{base}/proxies")
    assert proxies == {}


@pytest.mark.timeout(15)
@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer pr0xy-t0ken\x80"])
async def test_non_utf8_authorization_is_401(api: Serve, value: bytes) -> None:
    """Undecodable Authorization bytes are a 401, not a 500."""
    base = await api(WITH_TOKEN)
    answer = await raw_status(
        base,
        b"POST /reset HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + value
        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    assert b"not UTF-8" in answer


@pytest.mark.timeout(15)
async def test_the_right_token_creates_a_proxy(api: Serve) -> None:
    """With the token a POST /proxies is a 201, and /reset a 204."""
    base = await api(WITH_TOKEN)
    status, proxy = await call("POST", f"{base}/proxies", token=TOKEN, body=CREATE)
    assert status == 201
    assert proxy is not None
    assert proxy["name"] == "p"
    status, _ = await call("POST", f"{base}/reset", token=TOKEN)
    assert status == 204


@pytest.mark.timeout(15)
async def test_without_a_token_the_api_is_closed_to_changes_but_readable(api: Serve) -> None:
    """No token and not open: changes are 403 naming how to open the API; GET is 200."""
    base = await api(ProxyApiAccess())
    status, answer = await call("POST", f"{base}/proxies", body=CREATE)
    assert status == 403
    assert answer is not None
    assert "--admin-token-file" in answer["error"]
    assert "--admin-open" in answer["error"]
    status, _ = await call("POST", f"{base}/reset")
    assert status == 403
    status, proxies = await call("GET", f"{base}/proxies")
    assert (status, proxies) == (200, {})


@pytest.mark.timeout(15)
async def test_an_open_api_takes_changes_without_a_token(api: Serve) -> None:
    """``admin_open``: a POST without a token is a 201."""
    base = await api(ProxyApiAccess(admin_open=True))
    status, _ = await call("POST", f"{base}/proxies", body=CREATE)
    assert status == 201


def test_open_and_token_contradict() -> None:
    """A token and ``admin_open`` together are refused, naming ``admin_open``."""
    with pytest.raises(ConfigurationError, match="admin_open"):
        ProxyApiAccess(admin_token=TOKEN, admin_open=True)


# ------------------------------------------------------------------------ the real process


@asynccontextmanager
async def proxy_process(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, list[str]]]:
    """``strategylab proxy --port 0 ARGS``: yields its base URL and, after it ends, its stderr."""
    environment = {k: v for k, v in os.environ.items() if k != "STRATEGYLAB_ADMIN_TOKEN"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "proxy", "--port", "0", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environment, **(env or {})},
    )
    stderr: list[str] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            event = json.loads(await process.stdout.readline())
        assert event["event"] == "listening"
        yield f"http://127.0.0.1:{event['port']}", stderr
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(10):
            _, err = await process.communicate()
        stderr.append(err.decode())
    assert process.returncode == 0


@pytest.mark.timeout(30)
async def test_process_takes_the_token_from_a_file(tmp_path: Path) -> None:
    """``--admin-token-file``: no token 401 (logged as a security event), the token 201."""
    token_file = write_secret_file(tmp_path / "token", TOKEN)
    async with proxy_process("--admin-token-file", str(token_file)) as (base, stderr):
        status, _ = await call("POST", f"{base}/proxies", body=CREATE)
        assert status == 401
        status, _ = await call("POST", f"{base}/proxies", token=TOKEN, body=CREATE)
        assert status == 201
    assert "security event: missing admin token on POST /proxies" in stderr[0]
    assert TOKEN not in stderr[0]


@pytest.mark.timeout(30)
async def test_process_takes_the_token_from_the_environment() -> None:
    """``$STRATEGYLAB_ADMIN_TOKEN``: a wrong token 401, the token 201."""
    async with proxy_process(env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN}) as (base, _):
        status, _ = await call("POST", f"{base}/proxies", token="nope", body=CREATE)  # noqa: S106
        assert status == 401
        status, _ = await call("POST", f"{base}/proxies", token=TOKEN, body=CREATE)
        assert status == 201


@pytest.mark.timeout(30)
async def test_process_without_a_token_refuses_changes() -> None:
    """No token and no ``--admin-open``: a POST is 403, a GET 200."""
    async with proxy_process() as (base, _):
        status, _ = await call("POST", f"{base}/proxies", body=CREATE)
        assert status == 403
        status, _ = await call("GET", f"{base}/proxies")
        assert status == 200


@pytest.mark.timeout(30)
async def test_process_with_admin_open_takes_changes() -> None:
    """``--admin-open`` on the default loopback address: a POST without a token is 201."""
    async with proxy_process("--admin-open") as (base, _):
        status, _ = await call("POST", f"{base}/proxies", body=CREATE)
        assert status == 201


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--admin-open", "--host", "0.0.0.0"], "--admin-open"),  # noqa: S104 - refused
        (["--admin-open", "--admin-token", TOKEN], "--admin-open"),
    ],
)
async def test_process_refuses_an_open_api_off_loopback_or_with_a_token(
    args: list[str], named: str
) -> None:
    """``--admin-open`` off loopback, or with a token, exits 2 naming the option."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "proxy", "--port", "0", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    assert named in err.decode()
    assert TOKEN not in err.decode()
