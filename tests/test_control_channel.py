"""Issue 9 item 2: with a signing key, the exchange's control answers are signed and bound to the
connection's session, and the feed takes nothing else.

Real exchange (in this process, on a real socket), real feed; the hostile cases of the node
process are in ``test_node_forged_frames.py``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from exchange_client import SYMBOLS, WsClient
from strategylab.exchange._server import Exchange, ExchangeConfig
from strategylab.market._feed import Feed, FeedConfig
from strategylab.market._protocol import (
    KIND_CONTROL,
    KIND_REPLAY_DONE,
    SignatureError,
    decode_control,
    decode_frame,
    decode_replay_done,
)
from strategylab.market._store import QuarantinedTick
from strategylab.market._tick import Tick

KEY = b"control-channel-key"


@asynccontextmanager
async def exchange(tmp_path: Path, **options: object) -> AsyncIterator[Exchange]:
    config = ExchangeConfig(
        symbols=SYMBOLS,
        data_dir=tmp_path / "exchange",
        heartbeat_interval=0.05,
        **options,  # type: ignore[arg-type]
    )
    ex = Exchange(config)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


async def generate_all(ex: Exchange, per_symbol: int = 30) -> None:
    """An as-fast-as-possible exchange emits only to a subscriber: subscribe one and read until
    its heartbeats show every symbol at ``per_symbol``."""
    client = await WsClient.connect(ex.ws_url, key=ex.config.signing_key)
    async with asyncio.timeout(10):
        await client.send({"op": "subscribe", "symbols": [], "from_seq": {}})
        while True:
            kind, body = await client.next()
            if kind == "heartbeat" and body.last == dict.fromkeys(SYMBOLS, per_symbol):
                break
    await client.close()


async def next_bytes(client: WsClient) -> bytes:
    """The next binary message, skipping nothing: a keyed exchange sends no text at all."""
    message = await client.raw()
    assert isinstance(message, bytes), f"a keyed exchange sent text: {message!r}"
    return message


@pytest.mark.timeout(15)
async def test_a_keyed_exchange_answers_with_signed_frames_bound_to_the_session(
    tmp_path: Path,
) -> None:
    """Subscribed, an error for an unretained range and replay-done: each a signed frame that
    echoes the session of the connection; none verifies under another key."""
    async with exchange(
        tmp_path, tick_rate=0, ticks_per_frame=9, max_ticks=90, retention=10, signing_key=KEY
    ) as ex:
        await generate_all(ex)
        client = await WsClient.connect(ex.ws_url, key=KEY)
        async with asyncio.timeout(10):
            await client.send(
                {"op": "subscribe", "symbols": ["A"], "from_seq": {}, "session": "s-1"}
            )
            subscribed = decode_frame(await next_bytes(client), KEY)
            await client.send({"op": "replay", "symbol": "A", "from_seq": 1, "to_seq": 30})
            answers = []
            while True:
                data = await next_bytes(client)
                frame = decode_frame(data, KEY)
                if frame.kind == KIND_CONTROL:
                    answers.append(decode_control(frame.payload))
                if frame.kind == KIND_REPLAY_DONE:
                    done = decode_replay_done(frame.payload)
                    break
        await client.close()
    assert subscribed.kind == KIND_CONTROL
    reply = decode_control(subscribed.payload)
    assert (reply.type, reply.symbols, reply.session) == ("subscribed", ["A"], "s-1")
    assert [(a.type, a.reason, a.from_seq, a.to_seq, a.session) for a in answers] == [
        ("error", "no longer retained", 1, 20, "s-1")
    ]
    assert (done.to_seq, done.session) == (30, "s-1")
    with pytest.raises(SignatureError):
        decode_frame(data, b"another key")


@pytest.mark.timeout(15)
async def test_an_unkeyed_exchange_keeps_answering_json_text(tmp_path: Path) -> None:
    """Without a key the answers stay JSON text, with no session field."""
    async with exchange(tmp_path, tick_rate=0, max_ticks=9) as ex:
        client = await WsClient.connect(ex.ws_url)
        async with asyncio.timeout(10):
            await client.send({"op": "subscribe", "symbols": ["A"], "session": "s-2"})
            message = await client.raw()
        await client.close()
    assert isinstance(message, str)
    assert msgspec.json.decode(message) == {
        "type": "subscribed",
        "symbols": ["A"],
        "last": {"A": 0, "B": 0, "C": 0},
        "heartbeat_interval": 0.05,
    }


@pytest.mark.timeout(15)
async def test_a_long_session_token_is_refused(tmp_path: Path) -> None:
    """A peer cannot make the exchange echo an unbounded token into every answer."""
    async with exchange(tmp_path, tick_rate=0, max_ticks=9, signing_key=KEY) as ex:
        client = await WsClient.connect(ex.ws_url, key=KEY)
        async with asyncio.timeout(10):
            await client.send({"op": "subscribe", "symbols": ["A"], "session": "x" * 65})
            reply = decode_control(decode_frame(await next_bytes(client), KEY).payload)
        await client.close()
    assert reply.type == "error"
    assert "session token longer than 64" in (reply.reason or "")


class Sink:
    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.quarantined: list[QuarantinedTick] = []

    async def put(self, ticks: list[Tick]) -> None:
        self.ticks.extend(ticks)

    async def quarantine(self, entries: list[QuarantinedTick]) -> None:
        self.quarantined.extend(entries)

    async def last_seqs(self) -> dict[str, int]:
        return {}


@pytest.mark.timeout(20)
async def test_a_keyed_feed_acts_on_a_genuine_signed_loss_and_counts_no_forgery(
    tmp_path: Path,
) -> None:
    """A keyed feed subscribing from seq 1 to an exchange that retains only the last 10: the
    signed 'no longer retained' answer is honoured (the range is declared lost, the rest
    ingested), and nothing is counted as a forgery."""
    async with exchange(
        tmp_path, tick_rate=0, ticks_per_frame=9, max_ticks=90, retention=10, signing_key=KEY
    ) as ex:
        await generate_all(ex)
        sink = Sink()
        config = FeedConfig(urls=(ex.ws_url,), symbols=("A",), signing_key=KEY)
        feed = Feed(config, sink, rng=random.Random(3))
        await feed.start()
        try:
            async with asyncio.timeout(10):
                while not sink.ticks or sink.ticks[-1].seq < 30:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            stats = feed.statistics()
        finally:
            await feed.stop()
    assert [t.seq for t in sink.ticks] == list(range(21, 31))
    assert stats.lost_ticks == 20
    assert stats.signature_errors == 0
    assert [q.reason for q in sink.quarantined] == [
        "lost range 1..20: exchange: 'no longer retained'"
    ]
