"""The exchange simulator in-process: market data, replay, heartbeats, signing, protocol faults."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exchange_client import SYMBOLS, WsClient
from strategylab.exchange._server import Exchange, ExchangeConfig
from strategylab.market._ledger import read_emitted
from strategylab.market._protocol import FrameError, SignatureError, decode_frame, encode_ticks
from strategylab.market._tick import Tick, validate_tick

pytestmark = pytest.mark.integration

MakeExchange = Callable[..., Awaitable[Exchange]]


@pytest.fixture
async def make_exchange(tmp_path: Path) -> AsyncIterator[MakeExchange]:
    started: list[Exchange] = []

    async def make(**options: Any) -> Exchange:
        options.setdefault("symbols", SYMBOLS)
        options.setdefault("admin_open", True)  # post_fault calls /admin/faults without a token
        options.setdefault("data_dir", tmp_path / f"exchange{len(started)}")
        extra = {k: options.pop(k) for k in ("clock", "on_drop") if k in options}
        exchange = Exchange(ExchangeConfig(**options), **extra)
        await exchange.start()
        started.append(exchange)
        return exchange

    yield make
    for exchange in started:
        await exchange.stop()


async def read_ticks(
    client: WsClient, per_symbol: int, have: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Read tick frames until every symbol has ``per_symbol`` ticks (counting ``have``)."""
    seqs: dict[str, list[int]] = defaultdict(list)
    have = have or {}
    while any(len(seqs[s]) + len(have.get(s, ())) < per_symbol for s in SYMBOLS):
        kind, body = await client.next()
        if kind == "ticks":
            for tick in body:
                seqs[tick.symbol].append(tick.seq)
    return seqs


@pytest.mark.timeout(15)
async def test_subscriber_receives_gapless_sequences_from_one(make_exchange: MakeExchange) -> None:
    """A fresh subscriber gets every symbol's ticks numbered 1, 2, 3, … with no gap or repeat."""
    exchange = await make_exchange(tick_rate=0, ticks_per_frame=7, max_ticks=300)
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.subscribe()
        seqs = await read_ticks(client, 100)
    await client.close()
    for symbol in SYMBOLS:
        assert seqs[symbol] == list(range(1, 101)), symbol


@pytest.mark.timeout(15)
async def test_rate_limited_subscriber_replays_from_seq_one_then_streams_live(
    make_exchange: MakeExchange,
) -> None:
    """Subscribing with from_seq=1 after ticks were emitted replays them, then continues live."""
    exchange = await make_exchange(tick_rate=3000, ticks_per_frame=10)
    async with asyncio.timeout(10):
        probe = await WsClient.connect(exchange.ws_url)
        await probe.subscribe()
        await read_ticks(probe, 30)  # ticks exist before the real subscriber arrives
        await probe.close()
        client = await WsClient.connect(exchange.ws_url)
        body = await client.subscribe(from_seq=dict.fromkeys(SYMBOLS, 1))
        assert min(body["last"].values()) >= 30
        seqs = await read_ticks(client, 200)
    await client.close()
    for symbol in SYMBOLS:
        assert seqs[symbol][:200] == list(range(1, 201)), symbol


@pytest.mark.timeout(15)
async def test_reconnect_with_from_seq_returns_exactly_the_missing_range(
    make_exchange: MakeExchange,
) -> None:
    """After a disconnect, from_seq = last seen + 1 yields the rest with no gap and no repeat."""
    exchange = await make_exchange(tick_rate=0, ticks_per_frame=5, max_ticks=600)
    async with asyncio.timeout(10):
        first = await WsClient.connect(exchange.ws_url)
        await first.subscribe()
        before = await read_ticks(first, 20)
        await first.close()
        resume = {s: before[s][-1] + 1 for s in SYMBOLS}
        second = await WsClient.connect(exchange.ws_url)
        await second.subscribe(from_seq=resume)
        after = await read_ticks(second, 200, before)
        await second.close()
    for symbol in SYMBOLS:
        combined = before[symbol] + after[symbol]
        assert combined[:200] == list(range(1, 201)), symbol
        assert len(set(combined)) == len(combined), f"{symbol} has a duplicate"


@pytest.mark.timeout(15)
async def test_replay_request_beyond_retention_reports_the_lost_range(
    make_exchange: MakeExchange,
) -> None:
    """A replay reaching past retention answers an error for the lost part, then the rest."""
    exchange = await make_exchange(tick_rate=0, ticks_per_frame=9, max_ticks=90, retention=10)
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.subscribe()
        await read_ticks(client, 30)
        await client.send({"op": "replay", "symbol": "A", "from_seq": 1, "to_seq": 30})
        kind, error = await client.next()
        assert kind == "json"
        assert error == {
            "type": "error",
            "reason": "no longer retained",
            "symbol": "A",
            "from_seq": 1,
            "to_seq": 20,
        }
        replayed: list[int] = []
        while True:
            kind, body = await client.next()
            if kind == "done":
                break
            if kind == "ticks":
                replayed += [t.seq for t in body]
    await client.close()
    assert replayed == list(range(21, 31))
    assert body.symbol == "A"
    assert body.to_seq == 30


@pytest.mark.timeout(15)
async def test_heartbeats_carry_the_last_emitted_seq_per_symbol(
    make_exchange: MakeExchange,
) -> None:
    """Once generation stops at max_ticks, heartbeats report exactly the last seq per symbol."""
    exchange = await make_exchange(
        tick_rate=0, ticks_per_frame=10, max_ticks=60, heartbeat_interval=0.05
    )
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.subscribe()
        while True:
            kind, body = await client.next()
            if kind == "heartbeat" and body.last == dict.fromkeys(SYMBOLS, 20):
                break
    await client.close()
    assert body.ts > 0


@pytest.mark.timeout(15)
async def test_signed_frames_verify_with_the_key_and_fail_with_another(
    make_exchange: MakeExchange,
) -> None:
    """With a signing key, frames verify under it and raise SignatureError under another key."""
    exchange = await make_exchange(tick_rate=0, max_ticks=30, signing_key=b"right key")
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.subscribe()
        data = await client.raw()
    await client.close()
    assert isinstance(data, bytes)
    assert decode_frame(data, b"right key").payload
    with pytest.raises(SignatureError):
        decode_frame(data, b"wrong key")


async def post_fault(exchange: Exchange, **body: Any) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{exchange.url}/admin/faults", json=body) as response,
    ):
        assert response.status == 201, await response.text()


@pytest.mark.timeout(15)
async def test_bad_signatures_fault_makes_frames_fail_verification(
    make_exchange: MakeExchange,
) -> None:
    """Under the bad_signatures fault, frames no longer verify with the real key."""
    exchange = await make_exchange(tick_rate=0, max_ticks=30, signing_key=b"right key")
    await post_fault(exchange, kind="bad_signatures", duration=60)
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.subscribe()
        data = await client.raw()
    await client.close()
    assert isinstance(data, bytes)
    with pytest.raises(SignatureError):
        decode_frame(data, b"right key")


@pytest.mark.timeout(15)
async def test_corrupt_frames_fault_breaks_the_crc_but_not_the_emitted_log(
    make_exchange: MakeExchange,
) -> None:
    """Corrupted frames fail decode_frame (CRC), while the emitted log holds the true ticks."""
    exchange = await make_exchange(tick_rate=0, ticks_per_frame=10, max_ticks=90)
    await post_fault(exchange, kind="corrupt_frames", duration=60, rate=1.0)
    client = await WsClient.connect(exchange.ws_url)
    frames = 0
    async with asyncio.timeout(10):
        await client.subscribe()
        while frames < 9:
            data = await client.raw()
            assert isinstance(data, bytes)
            with pytest.raises(FrameError, match="CRC mismatch"):
                decode_frame(data)
            frames += 1
    await client.close()
    await exchange.stop()
    logged = list(read_emitted(exchange.config.log_path))
    assert len(logged) == 90
    for symbol in SYMBOLS:
        ticks = [t for t in logged if t.symbol == symbol]
        assert [t.seq for t in ticks] == list(range(1, 31))
        assert all(validate_tick(t) is None for t in ticks)


@pytest.mark.timeout(15)
async def test_invalid_ticks_fault_emits_ticks_that_validation_rejects(
    make_exchange: MakeExchange,
) -> None:
    """Under invalid_ticks, some emitted ticks fail validate_tick yet keep gapless seqs."""
    exchange = await make_exchange(tick_rate=0, ticks_per_frame=10, max_ticks=300)
    await post_fault(exchange, kind="invalid_ticks", duration=60, rate=0.3)
    client = await WsClient.connect(exchange.ws_url)
    received: list[Tick] = []
    async with asyncio.timeout(10):
        await client.subscribe()
        while len(received) < 300:
            kind, body = await client.next()
            if kind == "ticks":
                received += body
    await client.close()
    reasons = [r for t in received if (r := validate_tick(t)) is not None]
    assert 30 <= len(reasons) <= 150
    for symbol in SYMBOLS:
        assert [t.seq for t in received if t.symbol == symbol] == list(range(1, 101))
    await exchange.stop()
    # Compared encoded: a NaN bid is not equal to itself.
    assert encode_ticks(list(read_emitted(exchange.config.log_path))) == encode_ticks(received)


@pytest.mark.timeout(20)
async def test_slow_subscriber_is_disconnected_without_stalling_generation(
    make_exchange: MakeExchange,
) -> None:
    """A subscriber that stops reading is dropped once its bounded outbox overflows."""
    dropped: list[str] = []
    gone = asyncio.Event()

    def on_drop(peer: str, reason: str) -> None:
        dropped.append(reason)
        gone.set()

    exchange = await make_exchange(
        tick_rate=200_000, ticks_per_frame=200, send_queue=4, on_drop=on_drop
    )
    stalled = await WsClient.connect(exchange.ws_url, max_queue=4)
    await stalled.subscribe()  # and never reads again: the exchange must give up on it
    async with asyncio.timeout(15):
        await gone.wait()
        assert exchange.status()["subscribers"] == 0
        healthy = await WsClient.connect(exchange.ws_url)
        body = await healthy.subscribe()
        seqs = await read_ticks(healthy, 100)  # generation went on
    await healthy.close()
    stalled.conn.transport.abort()
    assert dropped[0].startswith("slow subscriber")
    assert exchange.subscribers_dropped == 1
    for symbol in SYMBOLS:
        assert seqs[symbol][:100] == list(
            range(body["last"][symbol] + 1, body["last"][symbol] + 101)
        )


@pytest.mark.timeout(15)
async def test_garbage_control_messages_get_errors(make_exchange: MakeExchange) -> None:
    """A bad control message is answered with an error and the connection stays usable."""
    exchange = await make_exchange(tick_rate=0, max_ticks=30)
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.conn.send("not json")
        kind, body = await client.next()
        assert (kind, body["type"]) == ("json", "error")
        await client.subscribe(symbols=["B"])
        seqs = [t.seq for t in (await client.next())[1]]
    await client.close()
    assert seqs == list(range(1, 11))


@pytest.mark.timeout(15)
@pytest.mark.parametrize(
    ("requested", "from_seq"),
    [(["B", "ZZZ", "QQQ"], {}), (["QQQ", "B", "ZZZ"], {"B": 1, "ZZZ": 1, "QQQ": 5})],
)
async def test_unknown_symbols_are_named_and_the_known_ones_subscribed(
    make_exchange: MakeExchange, requested: list[str], from_seq: dict[str, int]
) -> None:
    """A subscribe naming unknown symbols gets an error listing all of them, then the known ones
    are subscribed and stream."""
    exchange = await make_exchange(tick_rate=0, max_ticks=30)
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.send({"op": "subscribe", "symbols": requested, "from_seq": from_seq})
        kind, body = await client.next()
        assert (kind, body) == (
            "json",
            {
                "type": "error",
                "reason": "unknown symbols",
                "unknown": [s for s in requested if s != "B"],
            },
        )
        kind, body = await client.next()
        assert (kind, body["type"], body["symbols"]) == ("json", "subscribed", ["B"])
        seqs: list[int] = []
        while len(seqs) < 10:
            kind, body = await client.next()
            if kind == "ticks":
                assert {t.symbol for t in body} == {"B"}
                seqs += [t.seq for t in body]
    await client.close()
    assert seqs == list(range(1, 11))


@pytest.mark.timeout(15)
async def test_only_unknown_symbols_get_heartbeats_and_no_ticks(
    make_exchange: MakeExchange,
) -> None:
    """With no known symbol the subscriber is told so, then gets heartbeats (alive) and no tick,
    and the as-fast-as-possible generator does not run for it."""
    exchange = await make_exchange(tick_rate=0, max_ticks=30, heartbeat_interval=0.05)
    client = await WsClient.connect(exchange.ws_url)
    async with asyncio.timeout(10):
        await client.send({"op": "subscribe", "symbols": ["ZZZ"], "from_seq": {"ZZZ": 1}})
        assert (await client.next())[1]["unknown"] == ["ZZZ"]
        subscribed = (await client.next())[1]
        assert (subscribed["type"], subscribed["symbols"]) == ("subscribed", [])
        kinds = [(await client.next())[0] for _ in range(3)]
    await client.close()
    assert kinds == ["heartbeat"] * 3
    assert exchange.ticks_emitted == 0
