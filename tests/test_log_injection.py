"""Peer text cannot forge log lines or reach the terminal raw: the formatter, real processes.

The formatter (:mod:`strategylab._logging`) is tested on hostile messages, tracebacks and stacks;
then the node, the exchange and the proxy run as real processes, are sent hostile text by real
peers (a WebSocket exchange, WebSocket and HTTP clients), and their stderr is checked.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from strategylab._logging import CONTINUATION, SafeFormatter, configure_logging, escape

# Characters that must never reach a log stream raw: they end a line, move the cursor, start a
# terminal escape or reorder what the operator sees.
FORBIDDEN = frozenset(
    [chr(c) for c in range(0x20) if c != 0x0A]  # "\n" is checked per record, below
    + [chr(c) for c in range(0x7F, 0xA0)]
    + ["\u061c", "\u200e", "\u200f", "\u2028", "\u2029", "\ufeff"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
)

HOSTILE = {
    "newline": "x\nCRITICAL:forged",
    "carriage-return": "x\rCRITICAL:forged",
    "esc-clear": "x\x1b[2J\x1b[HCRITICAL:forged",
    "esc-osc-title": "x\x1b]0;pwned\x07",
    "line-separator": "x\u2028CRITICAL:forged",
    "paragraph-separator": "x\u2029CRITICAL:forged",
    "nel": "x\x85CRITICAL:forged",
    "nul": "x\x00CRITICAL:forged",
    "del": "x\x7fCRITICAL:forged",
    "c1-csi": "x\x9b2JCRITICAL:forged",
    "bidi-override": "x\u202egrofed\u202c",
    "bidi-isolate": "x\u2066CRITICAL\u2069",
    "tab-and-vt": "x\t\x0b\x0cCRITICAL:forged",
}


def format_record(message: str, *args: object, **kwargs: Any) -> str:
    """What a SafeFormatter-handled logger writes for one record."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter(logging.BASIC_FORMAT))
    logger = logging.getLogger("test.log_injection")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error(message, *args, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def assert_not_forged(text: str, *, forged: str = "CRITICAL:forged") -> None:
    """No raw control character, and no physical line that could pass for a forged record."""
    raw = sorted({f"U+{ord(c):04X}" for c in text if c in FORBIDDEN})
    assert raw == [], f"raw control characters reached the log: {raw}"
    starts = [line for line in text.split("\n") if line.startswith(forged)]
    assert starts == [], f"forged log lines: {starts}"


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_message_is_one_escaped_line(hostile: str) -> None:
    """A hostile argument gives exactly one physical line, with no raw control character."""
    written = format_record("exchange error: %s", hostile)
    assert written.endswith("\n")
    assert written.count("\n") == 1
    assert written.startswith("ERROR:test.log_injection:exchange error: x")
    assert_not_forged(written)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("\x1b[31m", "\\x1b[31m"),
        ("\x00\x7f\x9b\x85", "\\x00\\x7f\\x9b\\x85"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\u202e\u2066", "\\u202e\\u2066"),
    ],
)
def test_escapes_are_visible_backslash_sequences(raw: str, shown: str) -> None:
    """Each escaped character shows as a readable backslash escape."""
    assert escape(raw) == shown


def test_printable_text_is_unchanged() -> None:
    """Printable ASCII takes the fast path (the same object); other printable text is kept."""
    plain = "feed main: A seq 1..3 lost: 'no longer retained' \\n stays literal"
    assert escape(plain) is plain
    assert escape("café Zürich 東京 — ✓") == "café Zürich 東京 — ✓"


@given(st.text())
def test_any_message_formats_to_one_line(text: str) -> None:
    """Whatever text a peer supplies, the record is one line with no forbidden character."""
    written = format_record("%s", text)
    assert written.count("\n") == 1
    assert not FORBIDDEN.intersection(written)


def test_traceback_lines_are_marked_and_escaped() -> None:
    """An exception message with newlines and escapes stays inside prefixed continuation lines."""
    try:
        raise ValueError("bad reason\nCRITICAL:forged\x1b[2J\u2028CRITICAL:forged")
    except ValueError:
        written = format_record("peer failed", exc_info=True)
    first, *rest = written.rstrip("\n").split("\n")
    assert first == "ERROR:test.log_injection:peer failed"
    assert rest
    assert all(line.startswith(CONTINUATION) for line in rest)
    assert f"{CONTINUATION}CRITICAL:forged\\x1b[2J\\u2028CRITICAL:forged" in rest
    assert_not_forged(written)


def test_stack_lines_are_marked() -> None:
    """``stack_info`` lines are continuation lines too."""
    written = format_record("where: %s", "x\ny", stack_info=True)
    first, *rest = written.rstrip("\n").split("\n")
    assert first == "ERROR:test.log_injection:where: x\\ny"
    assert rest[0] == f"{CONTINUATION}Stack (most recent call last):"
    assert all(line.startswith(CONTINUATION) for line in rest)


def test_configure_logging_installs_once_and_respects_foreign_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second call replaces the first handler; someone else's handler is left in charge."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    first, second = io.StringIO(), io.StringIO()
    assert configure_logging(logging.INFO, first)
    assert configure_logging(logging.WARNING, second)
    assert len(root.handlers) == 1
    logging.getLogger("test.log_injection.root").warning("hostile %s", "a\nCRITICAL:forged")
    assert first.getvalue() == ""
    # Not a terminal: one JSON line, the hostile text inside the event, escaped by the encoder.
    written = second.getvalue()
    assert written.count("\n") == 1
    record = json.loads(written)
    assert (record["level"], record["logger"]) == ("warning", "test.log_injection.root")
    assert record["event"] == "hostile a\nCRITICAL:forged"
    assert_not_forged(written)
    foreign = logging.NullHandler()
    monkeypatch.setattr(root, "handlers", [foreign])
    assert not configure_logging(stream=io.StringIO())
    assert root.handlers == [foreign]


# ------------------------------------------------------------------------ real processes


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def next_event(process: asyncio.subprocess.Process, done: Any) -> dict[str, Any]:
    """The first JSON event on the process's stdout for which ``done(event)`` holds."""
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            raise AssertionError(f"process exited ({process.returncode}) early")
        event: dict[str, Any] = json.loads(line)
        if done(event):
            return event


def log_events(stderr: str) -> list[str]:
    """The ``event`` of each JSON log line on a child's stderr (a pipe: JSON lines)."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(str(json.loads(line)["event"]))
    return events


async def stop_and_read_stderr(process: asyncio.subprocess.Process) -> str:
    """SIGTERM the process and return everything it wrote to stderr."""
    if process.returncode is None:
        process.terminate()
    async with asyncio.timeout(20):
        _, err = await process.communicate()
    return err.decode("utf-8", errors="replace")


@asynccontextmanager
async def hostile_exchange() -> AsyncIterator[str]:
    """A WebSocket 'exchange' that answers the subscription, then sends hostile control text."""

    async def handler(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": request["symbols"], "last": {}}))
        await ws.send(
            json.dumps({"type": "error", "reason": "x\nCRITICAL:forged\x1b[2J", "symbol": "NOPE"})
        )
        hostile = "y\rCRITICAL:forged\u2028CRITICAL:forged\x9b31m\u202e"
        await ws.send(
            json.dumps(
                {"type": "error", "reason": hostile, "symbol": "A", "from_seq": 1, "to_seq": 3}
            )
        )
        await asyncio.sleep(0.5)
        await ws.close(code=1000, reason="bye\nCRITICAL:forged\x1b[2J")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_node_process_logs_hostile_exchange_text_escaped(tmp_path: Path) -> None:
    """Hostile ``reason`` texts and a hostile close reason reach the node's stderr escaped."""
    async with hostile_exchange() as url:
        node = await spawn(
            "node",
            *("--exchange-url", url, "--data-dir", str(tmp_path / "node")),
            *("--symbols", "A", "--status-interval", "0.1"),
        )
        try:
            async with asyncio.timeout(30):
                await next_event(
                    node,
                    lambda e: (
                        e.get("event") == "status" and e["lost_ticks"] >= 3 and e["reconnects"] >= 1
                    ),
                )
        finally:
            stderr = await stop_and_read_stderr(node)
    events = "\n".join(log_events(stderr))
    assert "lost: exchange:" in events  # the hostile reason was logged ...
    assert "CRITICAL:forged" in events  # ... with its text, escaped
    assert_not_forged(stderr)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_exchange_process_logs_hostile_client_text_escaped(tmp_path: Path) -> None:
    """Hostile WebSocket control messages, order bodies and admin paths do not forge lines."""
    exchange = await spawn(
        "exchange",
        *("--port", "0", "--data-dir", str(tmp_path / "ex"), "--symbols", "A"),
        *("--tick-rate", "0", "--max-ticks", "0"),
    )
    try:
        async with asyncio.timeout(30):
            port = (await next_event(exchange, lambda e: e.get("event") == "listening"))["port"]
            base = f"http://127.0.0.1:{port}"
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                hostile = "A\nCRITICAL:forged\x1b[31m\u2028"
                await ws.send(json.dumps({"op": "subscribe", "symbols": [hostile]}))
                await ws.send(json.dumps({"type": "subscribe", "symbols": [hostile]}))
                await ws.send(f"not json\nCRITICAL:forged\x1b[2J{hostile}")
                await ws.recv()
            async with aiohttp.ClientSession() as http:
                order = {"symbol": hostile, "side": "buy\r\nCRITICAL:forged", "qty": 1}
                async with http.post(f"{base}/api/orders", json=order) as response:
                    assert response.status == 400
                path = "/admin/faults%0ACRITICAL:forged%1B%5B2J%E2%80%A8"
                url = yarl.URL(base + path, encoded=True)
                headers = {"Origin": "https://evil.example"}
                async with http.post(url, json={}, headers=headers) as response:
                    assert response.status == 403
    finally:
        stderr = await stop_and_read_stderr(exchange)
    assert "security event: refused Origin" in stderr
    assert "/admin/faults\\nCRITICAL:forged\\x1b[2J\\u2028" in "\n".join(log_events(stderr))
    assert_not_forged(stderr)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_proxy_process_logs_hostile_proxy_names_escaped() -> None:
    """A hostile proxy name is refused (400, never a proxy); in a refused path it is escaped."""
    proxy = await spawn("proxy", "--port", "0", "--admin-open", "--log-level", "INFO")
    try:
        async with asyncio.timeout(30):
            port = (await next_event(proxy, lambda e: e.get("event") == "listening"))["port"]
            base = f"http://127.0.0.1:{port}"
            name = "p\nCRITICAL:forged\x1b[31m\u2028\u202e"
            body = {"name": name, "upstream": f"127.0.0.1:{free_port()}"}
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/proxies", json=body) as response:
                    assert response.status == 400, await response.text()
                url = yarl.URL(f"{base}/proxies/p%0ACRITICAL:forged%1B%5B31m", encoded=True)
                headers = {"Origin": "https://evil.example"}
                async with http.delete(url, headers=headers) as response:
                    assert response.status == 403
    finally:
        stderr = await stop_and_read_stderr(proxy)
    events = "\n".join(log_events(stderr))
    # The path is logged as the peer sent it; the JSON encoder escapes it on the way out.
    assert "security event: refused Origin on DELETE /proxies/p\nCRITICAL:forged" in events
    assert_not_forged(stderr)
