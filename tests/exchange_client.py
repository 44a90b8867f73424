"""Helpers for the exchange tests (no tests here): a raw WebSocket client that decodes frames."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import websockets

from strategylab.market._protocol import (
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_REPLAY_DONE,
    decode_control,
    decode_frame,
    decode_heartbeat,
    decode_replay_done,
    decode_ticks,
)

SYMBOLS = ("A", "B", "C")


class WsClient:
    """A raw websockets client that decodes what the exchange sends."""

    def __init__(self, conn: websockets.ClientConnection, key: bytes | None = None) -> None:
        self.conn = conn
        self.key = key

    @classmethod
    async def connect(
        cls, url: str, key: bytes | None = None, max_queue: int | None = None
    ) -> WsClient:
        # max_queue=None: buffer everything, so that close() sees the server's close frame behind
        # a flood of unread frames instead of waiting out the close timeout.
        conn = await websockets.connect(
            url, compression=None, max_size=None, max_queue=max_queue, close_timeout=2
        )
        return cls(conn, key)

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(message))

    async def subscribe(
        self,
        symbols: list[str] | None = None,
        from_seq: dict[str, int] | None = None,
        session: str = "",
    ) -> dict[str, Any]:
        message = {"op": "subscribe", "symbols": symbols or [], "from_seq": from_seq or {}}
        await self.send({**message, "session": session} if session else message)
        kind, body = await self.next()
        assert kind == "json", (kind, body)
        assert body["type"] == "subscribed", body
        return dict(body)

    async def raw(self) -> str | bytes:
        return await self.conn.recv()

    async def next(self) -> tuple[str, Any]:
        """("json", dict: a text answer or a control frame) | ("ticks", list[Tick]) |
        ("heartbeat", Heartbeat) | ("done", ReplayDone)."""
        msg = await self.conn.recv()
        if isinstance(msg, str):
            return "json", json.loads(msg)
        frame = decode_frame(msg, self.key)
        if frame.kind == KIND_HEARTBEAT:
            return "heartbeat", decode_heartbeat(frame.payload)
        if frame.kind == KIND_CONTROL:  # a keyed exchange's answers are signed frames
            fields = msgspec.structs.asdict(decode_control(frame.payload))
            return "json", {k: v for k, v in fields.items() if v is not None}
        if frame.kind == KIND_REPLAY_DONE:
            return "done", decode_replay_done(frame.payload)
        return "ticks", decode_ticks(frame.payload)

    async def close(self) -> None:
        await self.conn.close()
