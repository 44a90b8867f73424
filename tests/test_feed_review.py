"""Issue 9 review: faults found by sending other hostile inputs of the issue's kinds.

Each test failed before its fix: noise frames escalating to an emergency shutdown, a lost range
outside 64 bits, a replay clamped below held ticks asking again for ever, one oversized release
of held ticks handed over (and spooled, and drained) as a single batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._protocol import (
    KIND_CONTROL,
    KIND_REPLAY_DONE,
    ControlReply,
    ReplayDone,
    encode_control,
    encode_frame,
    encode_replay_done,
)
from strategylab.market._spool import SpoolStore
from strategylab.market._tick import Tick
from test_feed_logic import T0, Peer, Sink, manager_until, running, scripted, tick, ticks_frame

KEY = b"review-key"


@pytest.mark.timeout(20)
async def test_noise_frames_are_healed_episodes_and_never_escalate_to_a_shutdown() -> None:
    """Twelve undecodable frames spread beyond the report quiet period: the first is reported
    and recovered; the rest fall in the quiet period after that recovery, so pattern analysis
    (5 within 60 s) never escalates and no emergency shutdown runs."""
    shutdowns: list[object] = []

    async def script(peer: Peer) -> None:
        await peer.subscribe(KEY)
        for seq in range(1, 13):
            await peer.ws.send(ticks_frame([tick(seq)], KEY))
            await peer.ws.send(b"XX" + b"\0" * 20)  # bad magic: no key needed to send it
            await asyncio.sleep(0.06)  # the peer's pacing: past report_quiet each time
        await peer.ws.wait_closed()

    async def emergency(context: object) -> bool:
        shutdowns.append(context)
        return True

    sink = Sink()
    manager = ErrorRecoveryManager(capture_state=False, shutdown_handler=emergency)
    async with (
        scripted(script) as url,
        running(url, sink, manager, signing_key=KEY, report_quiet=0.05) as feed,
    ):
        manager.register(feed)
        await sink.wait(lambda: len(sink.seqs()) >= 12, limit=15)
        await manager_until(manager, lambda: manager.statistics().total_errors >= 1)
        stats = feed.statistics()
    assert stats.crc_errors >= 12
    reported = manager.statistics().error_type_distribution.get(ErrorType.INVALID_MARKET_DATA, 0)
    assert reported < 5, reported
    assert not shutdowns


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("first", "last"),
    [(2**63, 2**63), (6, 2**63), (2**64 - 1, 2**64 - 1), (0, 10), (-5, 10), (True, True)],
)
async def test_a_lost_range_outside_the_sequence_column_changes_nothing(
    first: int, last: int
) -> None:
    """A signed 'no longer retained' answer naming sequences outside 1..2**63-1 is refused:
    the delivered position does not move and the genuine 6..20 are delivered."""

    async def script(peer: Peer) -> None:
        message = await peer.subscribe(KEY)
        await peer.ws.send(ticks_frame([tick(s) for s in range(1, 6)], KEY))
        reply = ControlReply(
            "error",
            reason="no longer retained",
            symbol="A",
            from_seq=first,
            to_seq=last,
            session=str(message["session"]),
        )
        await peer.ws.send(encode_frame(KIND_CONTROL, encode_control(reply), KEY))
        await peer.ws.send(ticks_frame([tick(s) for s in range(6, 21)], KEY))
        await peer.ws.wait_closed()

    sink = Sink()
    async with scripted(script) as url, running(url, sink, signing_key=KEY) as feed:
        await sink.wait(lambda: len(sink.seqs()) >= 20)
        stats = feed.statistics()
    assert sink.seqs() == list(range(1, 21))
    assert stats.lost_ticks == 0
    assert not sink.quarantined


@pytest.mark.timeout(10)
@pytest.mark.parametrize("far", [10**6, 2**63 - 1])
async def test_a_held_tick_beyond_what_the_exchange_emitted_is_quarantined_not_chased(
    far: int,
) -> None:
    """Ticks 1-5, one tick far ahead, then a replay the exchange clamps to 5 (it never emitted
    more): the far tick is quarantined, the feed does not ask for the hole again and again, and
    the genuine 6..20 that follow are delivered."""
    requests: list[dict[str, object]] = []

    async def script(peer: Peer) -> None:
        message = await peer.subscribe(KEY)
        session = str(message["session"])
        await peer.ws.send(ticks_frame([tick(s) for s in range(1, 6)], KEY))
        await peer.ws.send(ticks_frame([tick(far, ts=T0 + 6000)], KEY))
        request = await peer.control()
        requests.append(request)
        rid = request["request_id"]
        assert isinstance(rid, int)
        done = ReplayDone(symbol="A", to_seq=5, session=session, request_id=rid)
        await peer.ws.send(encode_frame(KIND_REPLAY_DONE, encode_replay_done(done), KEY))
        await peer.ws.send(ticks_frame([tick(s) for s in range(6, 21)], KEY))
        try:
            async with asyncio.timeout(0.5):  # any further request within 0.5 s is a storm
                while True:
                    requests.append(json.loads(await peer.ws.recv()))
        except TimeoutError:
            pass
        await peer.ws.wait_closed()

    sink = Sink()
    async with scripted(script) as url, running(url, sink, signing_key=KEY) as feed:
        await sink.wait(lambda: len(sink.seqs()) >= 20)
        await sink.wait(lambda: bool(sink.quarantined))
        await asyncio.sleep(0.6)  # let the peer's window for further requests pass
        stats = feed.statistics()
    assert sink.seqs() == list(range(1, 21))
    assert len(requests) == 1, (requests, stats)
    assert [(q.seq, q.reason) for q in sink.quarantined] == [
        (far, "seq beyond the exchange's last emitted 5")
    ]
    assert stats.lost_ticks == 0


@pytest.mark.timeout(20)
async def test_a_long_release_of_held_ticks_reaches_the_sink_in_slices() -> None:
    """A gap holding 5,000 ticks, then the missing tick: the sink gets them in puts of at most
    ``max_put`` ticks, never one oversized batch."""
    sizes: list[int] = []

    class Recording(Sink):
        async def put(self, ticks: list[Tick]) -> None:
            sizes.append(len(ticks))
            await super().put(ticks)

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks(range(1, 2))
        await peer.ticks(range(3, 5003))
        request = await peer.control()
        assert (request["from_seq"], request["to_seq"]) == (2, 2)
        await peer.ticks([2])
        await peer.ws.send(encode_frame(KIND_REPLAY_DONE, encode_replay_done(ReplayDone("A", 2))))
        await peer.ws.wait_closed()

    sink = Recording()
    async with scripted(script) as url, running(url, sink, max_put=700):
        await sink.wait(lambda: len(sink.seqs()) >= 5002)
    assert sink.seqs() == list(range(1, 5003))
    assert max(sizes) <= 700


class SizedStore:
    """A tick store that records the size of every write."""

    name = "sized"

    def __init__(self) -> None:
        self.writes: list[int] = []

    async def write(self, ticks: list[Tick]) -> int:
        self.writes.append(len(ticks))
        return len(ticks)

    async def write_quarantine(self, entries: list[object]) -> None:
        return None

    async def last_seqs(self) -> dict[str, int]:
        return {}


@pytest.mark.timeout(20)
async def test_a_spooled_record_larger_than_a_drain_batch_is_drained_in_batches(
    tmp_path: Path,
) -> None:
    """One acknowledged record of 25,000 ticks drains as writes of at most ``drain_batch``, so a
    drain never outgrows the primary's stall timeout."""
    spool = SpoolStore(tmp_path / "spool", drain_batch=10_000)
    await spool.open()
    try:
        await spool.write([tick(s) for s in range(1, 25_001)])
        store = SizedStore()
        await spool.drain(store)  # type: ignore[arg-type]
    finally:
        await spool.aclose()
    assert store.writes == [10_000, 10_000, 5_000]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("ahead_s", [60, 290])
async def test_a_tick_minutes_ahead_is_refused_and_holds_nothing_back(ahead_s: int) -> None:
    """The default ``max_future`` (5 s) refuses a tick minutes ahead of this clock, so it cannot
    become the reference that quarantines the genuine ticks after it as 'backwards'."""

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks(range(1, 6))
        await peer.ws.send(ticks_frame([tick(6, ts=time.time_ns() + ahead_s * 10**9)]))
        await peer.ticks(range(7, 21))
        await peer.ws.wait_closed()

    sink = Sink()
    async with scripted(script) as url, running(url, sink):
        await sink.wait(lambda: len(sink.seqs()) >= 19)
    assert sink.seqs() == [*range(1, 6), *range(7, 21)]
    assert [q.seq for q in sink.quarantined] == [6]


@pytest.mark.timeout(10)
async def test_a_late_replay_done_of_an_earlier_request_is_not_taken_for_a_clamp() -> None:
    """Request 1 (4..5) is filled by live ticks before its replay-done arrives; by then request 2
    (9..9) is pending. The late done (to_seq 5) answers request 1, not a clamp of request 2:
    nothing is quarantined and 1..12 are delivered."""

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks([1, 2, 3, 6, 7, 8])
        first = await peer.control()
        assert (first["from_seq"], first["to_seq"]) == (4, 5)
        await peer.ticks([4, 5])
        await peer.ticks([10, 11, 12])
        second = await peer.control()
        assert (second["from_seq"], second["to_seq"]) == (9, 9)
        for request, to_seq in ((first, 5), (second, 9)):
            if to_seq == 9:
                await peer.ticks([9])
            rid = request["request_id"]
            assert isinstance(rid, int)
            done = ReplayDone("A", to_seq, request_id=rid)
            await peer.ws.send(encode_frame(KIND_REPLAY_DONE, encode_replay_done(done)))
        await peer.ws.wait_closed()

    sink = Sink()
    async with scripted(script) as url, running(url, sink):
        await sink.wait(lambda: len(sink.seqs()) >= 12)
    assert sink.seqs() == list(range(1, 13))
    assert not sink.quarantined
