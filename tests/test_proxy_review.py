"""The fault proxy under a reviewer's hostile inputs: every failed change changes nothing.

A request that fails (a bad field, a listen address that cannot be bound) leaves every proxy as it
was: ``/populate``, ``PATCH``, ``/reset`` and toxics alike. Names are addressable, toxic attributes
bounded, malformed HTTP a 400 logged in one line, and ``strategylab proxy`` fails in one line with
exit 2 for a bad ``--config`` and 1 when it cannot listen. Real sockets throughout (an in-process
API on 127.0.0.1 over a real :class:`ProxyServer`), real processes for the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from strategylab.chaos import Proxy, ProxyServer
from strategylab.chaos._proxy_api import ProxyApiAccess, serve
from strategylab.errors import ConfigurationError

pytestmark = pytest.mark.integration

UNBINDABLE = "192.0.2.1:1"  # TEST-NET-1: not an address of this machine


class Api:
    """An open API on a real socket over a fresh ProxyServer, and an echo upstream."""

    def __init__(self, http: aiohttp.ClientSession, base: str, server: ProxyServer, echo: int):
        self.http = http
        self.base = base
        self.server = server
        self.upstream = f"127.0.0.1:{echo}"

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        async with self.http.request(method, self.base + path, json=body) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def state(self) -> object:
        status, proxies = await self.call("GET", "/proxies")
        assert status == 200
        return proxies


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    access = ProxyApiAccess(admin_open=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with ProxyServer() as server, asyncio.TaskGroup() as group:
        group.create_task(serve(server, port=0, ready=ready.set_result, stop=stop, access=access))
        async with asyncio.timeout(5):
            port = await ready
        async with aiohttp.ClientSession(timeout=timeout) as http:
            yield Api(
                http, f"http://127.0.0.1:{port}", server, upstream.sockets[0].getsockname()[1]
            )
        stop.set()
    upstream.close()
    await upstream.wait_closed()


@contextlib.contextmanager
def occupied() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def open_echo(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def round_trip(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes = b"ping"
) -> bytes:
    reader, writer = connection
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


async def echo_through(port: int) -> bytes:
    connection = await open_echo(port)
    try:
        return await round_trip(connection)
    finally:
        connection[1].close()


# ------------------------------------------------------------------ all or nothing (fault 1)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("unbindable", ["not-local", "in-use"])
async def test_populate_that_cannot_bind_changes_no_proxy(api: Api, unbindable: str) -> None:
    """A /populate whose last listener cannot be bound is a 400: the proxy it would have replaced
    keeps its port, toxics and open connection, and the new one it would have added is absent."""
    async with asyncio.timeout(15):
        await api.call("POST", "/proxies", {"name": "p1", "upstream": api.upstream})
        await api.call("POST", "/proxies/p1/toxics", {"name": "slow", "type": "latency"})
        p1 = api.server.get("p1")
        connection = await open_echo(p1.listen_port)
        before = await api.state()
        with occupied() as busy:
            listen = UNBINDABLE if unbindable == "not-local" else f"127.0.0.1:{busy}"
            records = [
                {"name": "p1", "upstream": api.upstream},
                {"name": "new", "upstream": api.upstream},
                {"name": "pbad", "upstream": api.upstream, "listen": listen},
            ]
            status, body = await api.call("POST", "/populate", records)
        assert status == 400, body
        assert "listen" in str(body)
        assert await api.state() == before
        assert api.server.get("p1") is p1
        assert await round_trip(connection) == b"ping"
        connection[1].close()


@pytest.mark.timeout(15)
async def test_populate_with_a_name_twice_is_a_400(api: Api) -> None:
    """Two records with one name are ambiguous: a 400 naming the record, nothing created."""
    async with asyncio.timeout(10):
        records = [{"name": "q", "upstream": api.upstream}] * 2
        status, body = await api.call("POST", "/populate", records)
        assert status == 400
        assert "[1].name" in str(body)
        assert await api.state() == {}


@pytest.mark.timeout(15)
async def test_populate_keeps_a_fixed_port_without_releasing_it(api: Api) -> None:
    """Replacing a proxy with one on the same fixed address hands the socket over (201): the
    port stays bound, toxics are gone, new connections are forwarded."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        old = api.server.get("p")
        old.add_toxic("blackhole")
        record = {"name": "p", "upstream": api.upstream, "listen": old.listen}
        status, body = await api.call("POST", "/populate", [record])
        assert status == 201, body
        new = api.server.get("p")
        assert new is not old
        assert new.listen == old.listen == record["listen"]
        assert new.toxics == ()
        assert await echo_through(new.listen_port) == b"ping"


@pytest.mark.timeout(15)
async def test_patch_to_an_address_in_use_keeps_connections_and_toxics(api: Api) -> None:
    """A PATCH whose listen address is taken is a 400; the proxy keeps listening where it was,
    with its open connections and its toxics."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        proxy = api.server.get("p")
        proxy.add_toxic("latency", name="slow", latency=1)
        connection = await open_echo(proxy.listen_port)
        before = await api.state()
        with occupied() as busy:
            status, body = await api.call("PATCH", "/proxies/p", {"listen": f"127.0.0.1:{busy}"})
        assert status == 400, body
        assert "listen" in str(body)
        assert await api.state() == before
        assert await round_trip(connection) == b"ping"
        connection[1].close()
        assert await echo_through(proxy.listen_port) == b"ping"


@pytest.mark.timeout(15)
async def test_enable_when_the_port_was_taken_stays_disabled(api: Api) -> None:
    """Enabling a proxy whose port another program took meanwhile is a 400; it stays disabled."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        await api.call("PATCH", "/proxies/p", {"enabled": False})
        port = api.server.get("p").listen_port
        with socket.socket() as thief:
            thief.bind(("127.0.0.1", port))
            thief.listen()
            status, body = await api.call("PATCH", "/proxies/p", {"enabled": True})
            assert status == 400, body
            _, proxy = await api.call("GET", "/proxies/p")
        assert isinstance(proxy, dict)
        assert proxy["enabled"] is False


@pytest.mark.timeout(15)
async def test_reset_that_cannot_rebind_changes_no_proxy(api: Api) -> None:
    """/reset is all or nothing: when one disabled proxy cannot listen again, the toxics of the
    others stay too."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "a", "upstream": api.upstream})
        await api.call("POST", "/proxies/a/toxics", {"name": "slow", "type": "latency"})
        await api.call("POST", "/proxies", {"name": "b", "upstream": api.upstream})
        await api.call("PATCH", "/proxies/b", {"enabled": False})
        before = await api.state()
        with socket.socket() as thief:
            thief.bind(("127.0.0.1", api.server.get("b").listen_port))
            thief.listen()
            status, body = await api.call("POST", "/reset")
        assert status == 400, body
        assert await api.state() == before
        status, _ = await api.call("POST", "/reset")
        assert status == 204
        assert api.server.get("a").toxics == ()
        assert api.server.get("b").enabled


# ------------------------------------------------------------ names and bounded values (fault 3)

BAD_NAMES = ["a\u0000b", "\ud800", "n" * 500_000, "", "..", ".hidden", "-x", "a/b", "a b", "é"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
async def test_unaddressable_proxy_names_are_400s(api: Api, name: str) -> None:
    """A proxy name with a control character, a surrogate, a slash, a leading dot or 500,000
    characters is a 400 naming ``name``, and no proxy is created."""
    async with asyncio.timeout(15):
        body = json.dumps({"name": name, "upstream": api.upstream}).encode()  # \ud800 escaped
        async with api.http.post(
            api.base + "/proxies", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert "name" in error
        assert len(error) < 400
        assert await api.state() == {}
    with pytest.raises(ConfigurationError, match="name"):
        Proxy(name, upstream=api.upstream)


@pytest.mark.timeout(15)
@pytest.mark.parametrize("name", ["redis-master_1.a", "x" * 128, "_"])
async def test_valid_names_are_addressable(api: Api, name: str) -> None:
    """Names of letters, digits, ``._-`` up to 128 characters are created and reached by URL."""
    async with asyncio.timeout(10):
        status, _ = await api.call("POST", "/proxies", {"name": name, "upstream": api.upstream})
        assert status == 201
        status, _ = await api.call(
            "POST", f"/proxies/{name}/toxics", {"name": name, "type": "latency"}
        )
        assert status == 200
        status, proxy = await api.call("GET", f"/proxies/{name}")
        assert status == 200
        assert isinstance(proxy, dict)
        assert proxy["toxics"][0]["name"] == name
        status, _ = await api.call("DELETE", f"/proxies/{name}")
        assert status == 204


@pytest.mark.timeout(15)
async def test_a_toxic_name_too_long_is_a_400(api: Api) -> None:
    """Toxic names follow the proxy names' rule."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        toxic = {"name": "t" * 129, "type": "latency"}
        status, body = await api.call("POST", "/proxies/p/toxics", toxic)
        assert status == 400
        assert "name" in str(body)
        assert api.server.get("p").toxics == ()


HOUR_MS = 3_600_000
OUT_OF_RANGE = [
    ("latency", {"latency": 1e300}, "latency"),
    ("latency", {"latency": HOUR_MS + 1}, "latency"),
    ("latency", {"jitter": 10**60}, "jitter"),
    ("timeout", {"timeout": 10**60}, "timeout"),
    ("reset_peer", {"timeout": HOUR_MS + 1}, "timeout"),
    ("slow_close", {"delay": 10**60}, "delay"),
    ("slicer", {"average_size": 10, "delay": HOUR_MS * 1000 + 1}, "delay"),
    ("slicer", {"average_size": 10**60}, "average_size"),
    ("bandwidth", {"rate": 10**60}, "rate"),
    ("limit_data", {"bytes": 2**60}, "bytes"),
    ("corrupt", {"rate": 10**60}, "rate"),
]


@pytest.mark.timeout(15)
@pytest.mark.parametrize(("kind", "attributes", "field"), OUT_OF_RANGE)
async def test_out_of_range_toxic_attributes_are_400s(
    api: Api, kind: str, attributes: dict[str, object], field: str
) -> None:
    """A duration over an hour or a size or rate beyond any network is a 400 naming the field,
    on create and on update; the proxy's toxics are unchanged."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        status, body = await api.call(
            "POST", "/proxies/p/toxics", {"type": kind, "attributes": attributes}
        )
        assert status == 400
        assert field in str(body)
        assert api.server.get("p").toxics == ()
        base = {"slicer": {"average_size": 10}, "bandwidth": {"rate": 10}}.get(kind, {})
        status, toxic = await api.call(
            "POST", "/proxies/p/toxics", {"name": "t", "type": kind, "attributes": base}
        )
        assert status == 200, toxic
        status, body = await api.call("PATCH", "/proxies/p/toxics/t", {"attributes": attributes})
        assert status == 400
        assert field in str(body)
        _, listed = await api.call("GET", "/proxies/p/toxics")
        assert listed == [toxic]


@pytest.mark.timeout(15)
@pytest.mark.parametrize("toxicity", [10**60, -(10**60), 1.0000001])
async def test_out_of_range_toxicity_is_a_400(api: Api, toxicity: float) -> None:
    """A toxicity outside 0..1, however large, is a 400 naming ``toxicity``."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        toxic = {"type": "latency", "toxicity": toxicity}
        status, body = await api.call("POST", "/proxies/p/toxics", toxic)
        assert status == 400
        assert "toxicity" in str(body)


@pytest.mark.timeout(15)
async def test_an_hour_of_latency_is_accepted(api: Api) -> None:
    """The bounds are inclusive: an hour of latency and jitter is a valid toxic."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        attributes = {"latency": HOUR_MS, "jitter": HOUR_MS}
        status, toxic = await api.call(
            "POST", "/proxies/p/toxics", {"type": "latency", "attributes": attributes}
        )
        assert status == 200
        assert isinstance(toxic, dict)
        assert toxic["attributes"] == attributes


# ------------------------------------------------------------------ the real process (2 and 4)


async def run_proxy(*args: str) -> tuple[int, str, str]:
    """``strategylab proxy --port 0 ARGS`` expected to exit by itself: (code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "proxy", "--port", "0", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode(errors="replace")


def assert_one_line(err: str, *expected: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err[:500]
    assert err.startswith("strategylab proxy: error: "), err[:200]
    for text in expected:
        assert text in err, (text, err[:300])


CONFIGS: dict[str, bytes | None] = {
    "deep": b"[" * 100_000,
    "not-utf8": b"\xff\xfe[]",
    "not-json": b"[{",
    "huge-number": b'[{"name": "a", "upstream": "127.0.0.1:1", "enabled": ' + b"9" * 5000 + b"}]",
    "bad-name": b'[{"name": "a\\u0000b", "upstream": "127.0.0.1:1"}]',
    "bad-enabled": b'[{"name": "a", "upstream": "127.0.0.1:1", "enabled": "yes"}]',
    "not-a-list": b'{"name": "a"}',
    "fifo": None,
    "directory": None,
    "missing": None,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(CONFIGS))
async def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    """A config that is deep, not UTF-8, not JSON, holds a bad record, is a FIFO (no hang), a
    directory or missing: exit 2 and one line naming the file, never a traceback."""
    path = tmp_path / f"{kind}.json"
    content = CONFIGS[kind]
    if content is not None:
        path.write_bytes(content)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    code, out, err = await run_proxy("--config", str(path))
    assert code == 2
    assert out == ""
    assert_one_line(err, str(path))


@pytest.mark.timeout(30)
async def test_an_api_port_in_use_is_exit_1() -> None:
    """The API's port already taken: exit 1 (operational, as the exchange), one line."""
    with occupied() as busy:
        code, out, err = await run_proxy("--port", str(busy))
    assert code == 1
    assert out == ""
    assert_one_line(err, str(busy))


@pytest.mark.timeout(30)
async def test_a_config_proxy_that_cannot_listen_is_exit_1(tmp_path: Path) -> None:
    """A configured proxy whose listen address cannot be bound: exit 1 naming the proxy."""
    path = tmp_path / "bind.json"
    path.write_text(json.dumps([{"name": "a", "upstream": "127.0.0.1:1", "listen": UNBINDABLE}]))
    code, _, err = await run_proxy("--config", str(path))
    assert code == 1
    assert_one_line(err, "'a'", UNBINDABLE)


MALFORMED = [
    (
        b"PATCH /proxies/p HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ),
    (
        b"POST /proxies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: -1\r\n\r\n{}"
    ),
    b"GET /proxies HTTP/1.1\r\nHost: x\r\nX-Forged: a\x00\nCRITICAL:forged\r\n\r\n",
]


@pytest.mark.timeout(30)
async def test_malformed_http_is_a_400_logged_in_one_line() -> None:
    """Duplicate headers, a negative Content-Length, a NUL in a header: each a 400, each logged
    as one escaped WARNING line, no traceback, no forged record; the API keeps serving."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "strategylab", "proxy", "--port", "0", "--admin-open"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            port = json.loads(await process.stdout.readline())["port"]
            for request in MALFORMED:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
                answer = await reader.read()
                writer.close()
                assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:80]
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/proxies") as response,
            ):
                assert response.status == 200
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(10):
            _, err_bytes = await process.communicate()
    assert process.returncode == 0
    lines = err_bytes.decode().splitlines()
    assert "Traceback" not in err_bytes.decode()
    levels = [json.loads(line)["level"] for line in lines]  # stderr is a pipe: JSON log lines
    malformed = [line for line in lines if "malformed HTTP request" in line]
    assert len(malformed) == len(MALFORMED), lines
    assert levels == ["warning"] * len(lines), lines


@pytest.mark.timeout(15)
@pytest.mark.parametrize("where", ["in-use", "not-local"])
async def test_a_disabled_proxy_never_takes_an_address_it_cannot_bind(api: Api, where: str) -> None:
    """PATCH {listen: <unbindable>, enabled: false} is a 400 that changes nothing, so neither a
    later enable nor /reset can fail on it for ever (second review)."""
    async with asyncio.timeout(10):
        await api.call("POST", "/proxies", {"name": "p", "upstream": api.upstream})
        before = await api.state()
        with occupied() as busy:
            listen = f"127.0.0.1:{busy}" if where == "in-use" else "192.0.2.7:5555"
            status, body = await api.call(
                "PATCH", "/proxies/p", {"listen": listen, "enabled": False}
            )
        assert status == 400, body
        assert await api.state() == before
        status, body = await api.call("POST", "/reset", None)
        assert status in (200, 204), body
