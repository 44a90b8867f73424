"""One proxied connection: two sockets, two directed links, and the toxic stages on each link.

A link forwards one direction of one connection. With no toxic on it, it is *direct*: bytes read
from the source socket are written to the destination in the ``data_received`` callback, with no
per-byte work and with transport flow control (a full destination pauses reading the source). When
a toxic applies, the link switches to a queue drained by one owned task that passes each chunk
through the link's stages in order; a stage may hold a chunk (latency, bandwidth), cut it (slicer),
alter it (corrupt), drop it (timeout, blackhole, reset_peer) or end the connection (timeout,
reset_peer, limit_data). Chunks keep their order across the switch in both directions: the link goes
direct again only once its queue is empty.

A removed toxic is *interrupted*, as in Toxiproxy: a chunk it is holding is released at once, and
from then on it passes data through untouched; it is dropped from the chain before the next chunk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol

from ._toxics import (
    BandwidthAttributes,
    CorruptAttributes,
    LatencyAttributes,
    LimitDataAttributes,
    ResetPeerAttributes,
    SlicerAttributes,
    SlowCloseAttributes,
    Stream,
    TimeoutAttributes,
    Toxic,
)

__all__ = ["Connection", "Counters", "LinkOwner"]

_log = logging.getLogger("strategylab.chaos.proxy")

_PAUSE_CONNECTING: Final = 1
_PAUSE_PEER_FULL: Final = 2
_PAUSE_QUEUE_FULL: Final = 4

_QUEUE_HIGH: Final = 4 * 1024 * 1024
_QUEUE_LOW: Final = 1024 * 1024
_WRITE_HIGH: Final = 1024 * 1024
_WRITE_LOW: Final = 256 * 1024

_Next = Callable[[bytes], Awaitable[None]]


class Counters:
    """Mutable totals a proxy shares with its connections (snapshotted by ``statistics()``)."""

    __slots__ = (
        "connections_active",
        "connections_total",
        "received",
        "sent",
        "upstream_failures",
        "waiters",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_active = 0
        self.upstream_failures = 0
        # Indexed by Stream: 0 upstream, 1 downstream.
        self.received = [0, 0]
        self.sent = [0, 0]
        self.waiters: list[Callable[[], None]] = []

    def notify(self) -> None:
        """Let every statistics waiter re-check its predicate."""
        for waiter in tuple(self.waiters):
            waiter()


class LinkOwner(Protocol):
    """What a connection needs from its proxy."""

    rng: random.Random
    counters: Counters

    def current_toxics(self) -> tuple[Toxic, ...]: ...

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...

    def accepted(self, conn: Connection) -> None: ...

    def connection_finished(self, conn: Connection) -> None: ...


class _Ended(Exception):  # noqa: N818 - control flow inside a link, never escapes it
    """The connection ended while a chunk was on its way."""


class _Side(asyncio.Protocol):
    """One of the two sockets of a connection."""

    def __init__(self, conn: Connection, role: str) -> None:
        self.conn = conn
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.out_link: _Link | None = None  # the link that reads from this socket
        self.in_link: _Link | None = None  # the link that writes to this socket
        self._paused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - TCP only
        self.transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)
        if self.role == "client":
            # Read nothing until the upstream socket is connected and the links are wired.
            self.pause(_PAUSE_CONNECTING)
            self.conn.owner.accepted(self.conn)

    def data_received(self, data: bytes) -> None:
        link = self.out_link
        if link is not None:
            link.feed(data)

    def eof_received(self) -> bool:
        if self.out_link is not None:
            self.out_link.feed_eof()
        return True  # keep the socket open for the other direction (half-close)

    def pause_writing(self) -> None:
        if self.in_link is not None:
            self.in_link.destination_full()

    def resume_writing(self) -> None:
        if self.in_link is not None:
            self.in_link.destination_free()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(exc)

    def pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        was = self._paused
        self._paused &= ~reason
        if was and not self._paused and self.transport is not None:
            self.transport.resume_reading()


class _Stage:
    """A toxic applied to one link of one connection; subclasses hold its per-connection state."""

    def __init__(self, toxic: Toxic, link: _Link) -> None:
        self.toxic = toxic
        self.link = link
        self.removed = False
        self._interrupt = asyncio.Event()

    def start(self) -> None:
        """The toxic now applies to this link (timers start here)."""

    def stop(self) -> None:
        """The toxic was removed, updated, or the connection ended: release what it holds."""
        self.removed = True
        self._interrupt.set()

    async def handle(self, data: bytes, forward: _Next) -> None:
        await forward(data)

    async def before_eof(self) -> None:
        """Called before the end of the stream is passed on."""

    async def sleep_until(self, deadline: float) -> None:
        """Wait until ``deadline`` on the loop clock, or until the toxic is removed."""
        delay = deadline - asyncio.get_running_loop().time()
        if delay <= 0 or self.removed:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._interrupt.wait()


class _Latency(_Stage):
    async def handle(self, data: bytes, forward: _Next) -> None:
        attrs = self.toxic.attributes
        assert isinstance(attrs, LatencyAttributes)  # noqa: S101 - chosen by type
        delay = attrs.latency
        if attrs.jitter:
            delay += self.link.conn.owner.rng.randint(-attrs.jitter, attrs.jitter)
        await self.sleep_until(self.link.arrival + max(delay, 0) / 1000)
        await forward(data)


class _Bandwidth(_Stage):
    def __init__(self, toxic: Toxic, link: _Link) -> None:
        super().__init__(toxic, link)
        self._free_at = 0.0

    async def handle(self, data: bytes, forward: _Next) -> None:
        attrs = self.toxic.attributes
        assert isinstance(attrs, BandwidthAttributes)  # noqa: S101
        per_second = attrs.rate * 1000
        piece = max(1, per_second // 10)  # at most 100 ms of data per write, as Toxiproxy does
        loop = asyncio.get_running_loop()
        for start in range(0, len(data), piece):
            part = data[start : start + piece]
            if not self.removed:
                self._free_at = max(self._free_at, loop.time()) + len(part) / per_second
                await self.sleep_until(self._free_at)
            await forward(part)


class _Slicer(_Stage):
    async def handle(self, data: bytes, forward: _Next) -> None:
        attrs = self.toxic.attributes
        assert isinstance(attrs, SlicerAttributes)  # noqa: S101
        rng = self.link.conn.owner.rng
        loop = asyncio.get_running_loop()
        position = 0
        while position < len(data):
            if self.removed:
                await forward(data[position:])
                return
            size = attrs.average_size
            if attrs.size_variation:
                size += rng.randint(-attrs.size_variation, attrs.size_variation)
            await forward(data[position : position + size])
            position += size
            if position < len(data) and attrs.delay:
                await self.sleep_until(loop.time() + attrs.delay / 1_000_000)


class _Timeout(_Stage):
    def __init__(self, toxic: Toxic, link: _Link) -> None:
        super().__init__(toxic, link)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        attrs = self.toxic.attributes
        assert isinstance(attrs, TimeoutAttributes)  # noqa: S101
        if attrs.timeout > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(attrs.timeout / 1000, self.link.conn.close)

    def stop(self) -> None:
        super().stop()
        if self._timer is not None:
            self._timer.cancel()

    async def handle(self, data: bytes, forward: _Next) -> None:
        if self.removed:
            await forward(data)
        # Otherwise the data is dropped: it will never be delivered, even after removal.


class _ResetPeer(_Timeout):
    def start(self) -> None:
        pass  # Toxiproxy's reset_peer counts its timeout from the first data it sees

    async def handle(self, data: bytes, forward: _Next) -> None:
        if self.removed:
            await forward(data)
            return
        if self._timer is None:
            attrs = self.toxic.attributes
            assert isinstance(attrs, ResetPeerAttributes)  # noqa: S101
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(attrs.timeout / 1000, self.link.conn.reset)


class _LimitData(_Stage):
    def __init__(self, toxic: Toxic, link: _Link) -> None:
        super().__init__(toxic, link)
        self._passed = 0

    async def handle(self, data: bytes, forward: _Next) -> None:
        if self.removed:
            await forward(data)
            return
        attrs = self.toxic.attributes
        assert isinstance(attrs, LimitDataAttributes)  # noqa: S101
        remaining = attrs.bytes - self._passed
        if remaining > 0:
            part = data[:remaining]
            await forward(part)
            self._passed += len(part)
        if self._passed >= attrs.bytes:
            self.link.conn.close()
            raise _Ended


class _SlowClose(_Stage):
    async def before_eof(self) -> None:
        attrs = self.toxic.attributes
        assert isinstance(attrs, SlowCloseAttributes)  # noqa: S101
        await self.sleep_until(asyncio.get_running_loop().time() + attrs.delay / 1000)


class _Corrupt(_Stage):
    def __init__(self, toxic: Toxic, link: _Link) -> None:
        super().__init__(toxic, link)
        self._skip: int | None = None  # bytes left before the next flip; carried across chunks

    def _gap(self, rate: float) -> int:
        # Bytes between two flips follow a geometric law: one draw per flip, not one per byte.
        if rate >= 1.0:
            return 0
        u = self.link.conn.owner.rng.random()
        return int(math.log(1.0 - u) / math.log(1.0 - rate))

    async def handle(self, data: bytes, forward: _Next) -> None:
        attrs = self.toxic.attributes
        assert isinstance(attrs, CorruptAttributes)  # noqa: S101
        rate = attrs.rate
        if self.removed or rate <= 0.0:
            await forward(data)
            return
        rng = self.link.conn.owner.rng
        if self._skip is None:
            self._skip = self._gap(rate)
        position = self._skip
        if position >= len(data):
            self._skip = position - len(data)
            await forward(data)
            return
        buffer = bytearray(data)
        while position < len(buffer):
            buffer[position] ^= 1 << rng.randrange(8)
            position += 1 + self._gap(rate)
        self._skip = position - len(buffer)
        await forward(bytes(buffer))


class _Blackhole(_Stage):
    async def handle(self, data: bytes, forward: _Next) -> None:
        if self.removed:
            await forward(data)


_STAGES: Final[dict[str, type[_Stage]]] = {
    "latency": _Latency,
    "bandwidth": _Bandwidth,
    "timeout": _Timeout,
    "reset_peer": _ResetPeer,
    "slicer": _Slicer,
    "limit_data": _LimitData,
    "slow_close": _SlowClose,
    "corrupt": _Corrupt,
    "blackhole": _Blackhole,
}


class _Link:
    """One direction of one connection."""

    def __init__(self, conn: Connection, stream: Stream, source: _Side, destination: _Side) -> None:
        self.conn = conn
        self.stream = stream
        self.source = source
        self.destination = destination
        self._index = 0 if stream is Stream.UPSTREAM else 1
        self._counters = conn.owner.counters
        self.direct = True
        self.stages: dict[str, _Stage] = {}
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._queued = 0
        self._eof = False
        self.finished = False  # the end of the stream was passed on
        self._wake = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._task: asyncio.Task[None] | None = None
        self.arrival = 0.0  # when the chunk being sent reached the proxy (loop clock)

    # Called from the source socket's protocol callbacks.

    def feed(self, data: bytes) -> None:
        counters = self._counters
        counters.received[self._index] += len(data)
        if self.direct:
            transport = self.destination.transport
            assert transport is not None  # noqa: S101 - links exist once both sockets do
            transport.write(data)
            counters.sent[self._index] += len(data)
        else:
            self._queue.append((asyncio.get_running_loop().time(), data))
            self._queued += len(data)
            if self._queued > _QUEUE_HIGH:
                self.source.pause(_PAUSE_QUEUE_FULL)
            self._wake.set()
        if counters.waiters:
            counters.notify()

    def feed_eof(self) -> None:
        self._eof = True
        if self.direct:
            self._pass_eof()
        else:
            self._wake.set()

    def destination_full(self) -> None:
        self._can_write.clear()
        self.source.pause(_PAUSE_PEER_FULL)

    def destination_free(self) -> None:
        self._can_write.set()
        self.source.resume(_PAUSE_PEER_FULL)

    # Toxic chain.

    def update_chain(self, toxics: tuple[Toxic, ...]) -> None:
        """Apply the proxy's current toxics to this link (live connections included)."""
        kept: dict[str, _Stage] = {}
        for toxic in toxics:
            if toxic.stream is not self.stream:
                continue
            stage = self.stages.get(toxic.name)
            if stage is not None and stage.toxic is toxic:
                kept[toxic.name] = stage
                continue
            if self.conn.applies(toxic):
                stage = _STAGES[toxic.type.value](toxic, self)
                kept[toxic.name] = stage
                stage.start()
        for name, stage in self.stages.items():
            if kept.get(name) is not stage:
                stage.stop()
        self.stages = kept
        if kept:
            self.direct = False
            if self._task is None and not self.conn.closed:
                self._task = self.conn.owner.spawn(
                    self._run(), f"proxy-link-{self.conn.ident}-{self.stream.value}"
                )
        self._wake.set()

    def stop_stages(self) -> None:
        for stage in self.stages.values():
            stage.stop()

    def cancel(self) -> None:
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self) -> None:
        try:
            await self._drain_queue()
        except _Ended:
            pass
        except (ConnectionError, OSError) as exc:
            _log.debug("link %s ended: %r", self.stream.value, exc)
            self.conn.close()
        except Exception:
            _log.exception("proxy link %s failed; closing the connection", self.stream.value)
            self.conn.abort()
        finally:
            self._task = None

    async def _drain_queue(self) -> None:
        while not self.conn.closed:
            if self._queue:
                arrival, data = self._queue.popleft()
                self._queued -= len(data)
                if self._queued <= _QUEUE_LOW:
                    self.source.resume(_PAUSE_QUEUE_FULL)
                self.arrival = arrival
                await self._send(tuple(self.stages.values()), 0, data)
            elif self._eof:
                for stage in tuple(self.stages.values()):
                    await stage.before_eof()
                self._pass_eof()
                return
            elif not self.stages:
                self.direct = True
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _send(self, stages: tuple[_Stage, ...], index: int, data: bytes) -> None:
        if index == len(stages):
            await self._write(data)
            return

        async def forward(part: bytes) -> None:
            await self._send(stages, index + 1, part)

        await stages[index].handle(data, forward)

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        while not self._can_write.is_set():
            await self._can_write.wait()
        transport = self.destination.transport
        if self.conn.closed or transport is None or transport.is_closing():
            raise _Ended
        transport.write(data)
        self._counters.sent[self._index] += len(data)

    def _pass_eof(self) -> None:
        if self.finished:
            return
        self.finished = True
        transport = self.destination.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        self.conn.link_finished()


class Connection:
    """A client socket, its upstream socket, and the two links between them."""

    def __init__(self, owner: LinkOwner, ident: int) -> None:
        self.owner = owner
        self.ident = ident
        self.closed = False
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.up = _Link(self, Stream.UPSTREAM, self.client, self.upstream)
        self.down = _Link(self, Stream.DOWNSTREAM, self.upstream, self.client)
        self._decisions: dict[str, tuple[Toxic, bool]] = {}

    def client_protocol(self) -> _Side:
        """The protocol for the accepted socket; it reads nothing until :meth:`wire` is called."""
        return self.client

    def wire(self) -> None:
        """Both sockets are up: connect the links, apply the toxics, start reading."""
        self.client.out_link = self.up
        self.client.in_link = self.down
        self.upstream.out_link = self.down
        self.upstream.in_link = self.up
        self.refresh()
        self.client.resume(_PAUSE_CONNECTING)

    def applies(self, toxic: Toxic) -> bool:
        """Whether ``toxic`` applies to this connection: one draw per connection and toxic."""
        decided = self._decisions.get(toxic.name)
        if decided is not None and decided[0] is toxic:
            return decided[1]
        applies = toxic.toxicity >= 1.0 or self.owner.rng.random() < toxic.toxicity
        self._decisions[toxic.name] = (toxic, applies)
        return applies

    def refresh(self) -> None:
        """Re-read the proxy's toxics (after one was added, updated or removed)."""
        if self.closed:
            return
        toxics = self.owner.current_toxics()
        self.up.update_chain(toxics)
        self.down.update_chain(toxics)

    def link_finished(self) -> None:
        if self.up.finished and self.down.finished:
            self.close()

    def side_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            _log.debug("proxied connection %d lost a socket: %r", self.ident, exc)
        self.close()

    def close(self) -> None:
        """Close both sockets, after what is already in their write buffers."""
        if self._finish():
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.close()

    def abort(self) -> None:
        """Close both sockets at once, dropping unsent data."""
        if self._finish():
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.abort()

    def reset(self) -> None:
        """Reset both peers: ``SO_LINGER`` 0 turns the close into a TCP RST."""
        linger = struct.pack("ii", 1, 0)
        for side in (self.client, self.upstream):
            if side.transport is not None:
                sock = side.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.abort()

    def _finish(self) -> bool:
        if self.closed:
            return False
        self.closed = True
        for link in (self.up, self.down):
            link.stop_stages()
            link.cancel()
        self.owner.connection_finished(self)
        return True
