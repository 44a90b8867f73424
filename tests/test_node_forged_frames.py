"""A forged frame costs a connection, not the node; a burst of them pulls the kill switch.

A real node process with a signing key reads from a real WebSocket server (in this test process)
that signs its frames with the same key and, where the scenario says so, slips in frames that are
unsigned or signed with another key.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve

from strategylab.market._protocol import (
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_REPLAY_DONE,
    KIND_TICKS,
    ControlReply,
    Heartbeat,
    ReplayDone,
    encode_control,
    encode_frame,
    encode_heartbeat,
    encode_replay_done,
    encode_ticks,
)
from strategylab.market._tick import Tick

pytestmark = pytest.mark.integration

KEY_HEX = "5f3c0a91d2e84b7766aa10ce9b3f2d48"
KEY = bytes.fromhex(KEY_HEX)
LAST = 20
Proc = asyncio.subprocess.Process
# (connection number from 1, first seq wanted) -> the frames to send, in order.
Script = Callable[[int, int], list[bytes | str]]
LOST_RANGE = {"type": "error", "reason": "x", "symbol": "A", "from_seq": 6, "to_seq": 10**9}
LOST_REPLY = ControlReply("error", reason="x", symbol="A", from_seq=6, to_seq=10**9)


def tick(seq: int, bid: float) -> Tick:
    return Tick("A", seq, time.time_ns(), bid, bid + 0.5, 1.0, 1.0)


def genuine(first: int, last: int) -> list[bytes]:
    """Signed frames of one tick each: seq ``first``..``last`` at bid 100 + seq."""
    return [
        encode_frame(KIND_TICKS, encode_ticks([tick(s, 100.0 + s)]), KEY)
        for s in range(first, last + 1)
    ]


def control(reply: ControlReply, session: str, key: bytes | None = KEY) -> bytes:
    """A control answer as a keyed exchange sends it: a signed frame bound to ``session``."""
    bound = msgspec.structs.replace(reply, session=session)
    return encode_frame(KIND_CONTROL, encode_control(bound), key)


FORGERIES: dict[str, Callable[[int], bytes | str]] = {
    "unsigned": lambda seq: encode_frame(KIND_TICKS, encode_ticks([tick(seq, 999.0)])),
    "wrong key": lambda seq: encode_frame(
        KIND_TICKS, encode_ticks([tick(seq, 999.0)]), b"not the key"
    ),
    "unsigned heartbeat": lambda _seq: encode_frame(
        KIND_HEARTBEAT, encode_heartbeat(Heartbeat(ts=time.time_ns(), last={"A": 10**6}))
    ),
    # The control channel: the example (a billion ticks declared lost), as text ...
    "unsigned control text": lambda _seq: json.dumps(LOST_RANGE),
    "unsigned subscribed text": lambda _seq: json.dumps({"type": "subscribed", "symbols": ["A"]}),
    # ... as an unsigned control frame, and as a signed one captured on another connection.
    "unsigned control frame": lambda _seq: control(LOST_REPLY, "", key=None),
    "replayed control frame": lambda _seq: control(LOST_REPLY, "other session"),
    "replayed replay-done": lambda seq: encode_frame(
        KIND_REPLAY_DONE,
        encode_replay_done(ReplayDone(symbol="A", to_seq=seq, session="other session")),
        KEY,
    ),
}


@asynccontextmanager
async def exchange(script: Script) -> AsyncIterator[tuple[int, list[int]]]:
    """A WebSocket server on a free port; yields the port and the from_seq of each connection."""
    subscriptions: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        first = int(request.get("from_seq", {}).get("A", 1))
        subscriptions.append(first)
        session = request.get("session", "")
        last = {"A": first - 1}
        await ws.send(control(ControlReply("subscribed", symbols=["A"], last=last), session))
        for frame in script(len(subscriptions), first):
            await ws.send(frame)
        beat = encode_frame(
            KIND_HEARTBEAT, encode_heartbeat(Heartbeat(ts=time.time_ns(), last={"A": LAST})), KEY
        )
        while True:
            await ws.send(beat)
            await asyncio.sleep(0.1)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield port, subscriptions


async def spawn_node(port: int, data_dir: Path) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "node",
        *("--exchange-url", f"ws://127.0.0.1:{port}/ws", "--data-dir", str(data_dir)),
        *("--symbols", "A", "--status-interval", "0.1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "STRATEGYLAB_SIGNING_KEY": KEY_HEX},
    )


async def next_event(proc: Proc, event: str, limit: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"node exited ({proc.returncode}) before {event!r}")
            data: dict[str, Any] = json.loads(line)
            if data.get("event") == event:
                return data


def stored(data_dir: Path) -> dict[int, float]:
    with sqlite3.connect(data_dir / "ticks.db") as db:
        return dict(db.execute("SELECT seq, bid FROM ticks WHERE symbol = 'A' ORDER BY seq"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_a_forged_frame_drops_one_connection_and_every_genuine_tick_is_stored(
    tmp_path: Path, forgery: str
) -> None:
    """Signed 1-5, one forged frame, signed 6-20: the node stays up and stores 1-20, genuine."""
    forge = FORGERIES[forgery]

    def script(n: int, first: int) -> list[bytes | str]:
        if n == 1:
            return [*genuine(1, 5), forge(6), *genuine(6, LAST)]
        return [*genuine(first, LAST)]

    async with exchange(script) as (port, subscriptions):
        proc = await spawn_node(port, tmp_path / "node")
        try:
            status: dict[str, Any] = {}
            async with asyncio.timeout(20):
                while status.get("last_seq", {}).get("A") != LAST or not status.get("connected"):
                    status = await next_event(proc, "status", 20)
            proc.send_signal(signal.SIGTERM)
            await next_event(proc, "stopped", 15)
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0, err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert status["signature_errors"] == 1
    assert len(subscriptions) >= 2  # the forged frame's connection was dropped
    assert subscriptions[1] <= 6  # nothing from the forged frame was taken as delivered
    assert stored(tmp_path / "node") == {s: 100.0 + s for s in range(1, LAST + 1)}
    assert "forged frame" in err
    audit = (tmp_path / "node" / "audit.jsonl").read_text()
    assert "forged frame" in audit
    assert "emergency_shutdown" not in audit


@pytest.mark.timeout(60)
async def test_forged_frames_past_the_threshold_end_the_node_with_exit_3(tmp_path: Path) -> None:
    """A forged frame on every connection: the fifth within 60 s ends the process, exit 3."""

    def script(_n: int, first: int) -> list[bytes | str]:
        return [*genuine(first, first), FORGERIES["unsigned"](first + 1)]

    async with exchange(script) as (port, subscriptions):
        proc = await spawn_node(port, tmp_path / "node")
        started = time.monotonic()
        try:
            line = await next_event(proc, "emergency_shutdown", 20)
            async with asyncio.timeout(10):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        elapsed = time.monotonic() - started
    assert code == 3
    assert elapsed < 15
    assert line["error_type"] == "security_violation"
    assert "kill switch" in line["reason"]
    assert line["signature_errors"] == 5
    assert len(subscriptions) == 5
    assert stored(tmp_path / "node") == {s: 100.0 + s for s in range(1, 6)}
