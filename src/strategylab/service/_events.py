"""Server-sent events: an :class:`EventHub` that fans each event out to bounded client queues.

Each event is encoded once (``id: N``, ``event: KIND``, ``data: JSON`` and a blank line, as the
WHATWG HTML standard's "Server-sent events" section defines the ``text/event-stream`` format) and
the same bytes are offered to every client. A client is **dropped** when

- its queue is full when an event arrives (a queue holds at most ``queue_size`` events), or
- a write to it has been blocked for ``write_timeout`` seconds or more when :meth:`EventHub.expire`
  runs (the writer marks the start of each write with :meth:`EventClient.writing`; a write blocks
  once the kernel send buffer, which the service caps, and the transport's buffer are full).

A dropped client's queue is emptied at once (the memory is freed now, not when the client
reads), it leaves the hub, its stream is ended and its connection aborted (a client that reads
nothing would otherwise hold a blocked write), and :attr:`EventHub.dropped` counts it. A slow
client can cost the server at most ``queue_size`` events plus its capped buffers, for at most
``write_timeout`` seconds after its last write began.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ._status import jsonable

__all__ = ["EventClient", "EventHub"]

_log = logging.getLogger("strategylab.service")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,39}")


class EventClient:
    """One connected ``/events`` stream: its bounded queue of encoded events."""

    __slots__ = (
        "_limit",
        "_pending",
        "_wakeup",
        "closed",
        "dropped",
        "transport",
        "writing_since",
    )

    def __init__(self, limit: int, transport: asyncio.BaseTransport | None) -> None:
        self._limit = limit
        self._pending: collections.deque[bytes] = collections.deque()
        self._wakeup = asyncio.Event()
        self.transport = transport
        self.closed = False
        self.dropped = False
        self.writing_since: float | None = None
        """The clock's ``monotonic()`` when the write in progress began; None between writes."""

    @property
    def pending(self) -> int:
        """Events queued for this client now."""
        return len(self._pending)

    def offer(self, chunk: bytes) -> bool:
        """Queue ``chunk``; False (nothing queued) when the queue is full."""
        if len(self._pending) >= self._limit:
            return False
        self._pending.append(chunk)
        self._wakeup.set()
        return True

    async def take(self) -> bytes | None:
        """Every queued event joined into one chunk, waiting for one; None once closed."""
        while not self._pending:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        chunk = b"".join(self._pending)
        self._pending.clear()
        return chunk

    @contextlib.contextmanager
    def writing(self, now: float) -> Iterator[None]:
        """Mark a write to this client in progress from ``now`` (monotonic seconds) until the
        block ends, however it ends."""
        self.writing_since = now
        try:
            yield
        finally:
            self.writing_since = None

    def close(self, *, abort: bool) -> None:
        """End the stream: free the queue, wake the writer, and (``abort``) cut the connection."""
        self.closed = True
        self._pending.clear()
        self._wakeup.set()
        if abort and self.transport is not None and not self.transport.is_closing():
            abort_transport = getattr(self.transport, "abort", None)
            if callable(abort_transport):
                abort_transport()


class EventHub:
    """The connected clients and the fan-out; one hub belongs to one event loop."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._clients: set[EventClient] = set()
        self._next_id = 0
        self.dropped = 0
        """Clients dropped (a full queue or a blocked write) since the hub was made."""
        self.published = 0
        """Events fanned out since the hub was made."""

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    def connect(self, transport: asyncio.BaseTransport | None) -> EventClient:
        """A new client, registered for every event published from now on."""
        client = EventClient(self._queue_size, transport)
        self._clients.add(client)
        return client

    def disconnect(self, client: EventClient) -> None:
        """Forget ``client`` (its stream ended)."""
        self._clients.discard(client)
        client.close(abort=False)

    def encode(self, kind: str, data: Mapping[str, Any]) -> bytes:
        """One event in ``text/event-stream`` form; ``ValueError`` for a bad kind, ``TypeError`` for
        data that is not a mapping or not JSON-ready."""
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise ValueError(f"kind={kind!r}: must match {_KIND.pattern}")
        if not isinstance(data, Mapping):
            raise TypeError(f"data={type(data).__name__}: must be a mapping")
        self._next_id += 1
        body = json.dumps(jsonable(data), separators=(",", ":"), allow_nan=False)
        return f"id: {self._next_id}\nevent: {kind}\ndata: {body}\n\n".encode()

    def publish(self, kind: str, data: Mapping[str, Any]) -> None:
        """Encode once and offer to every client; drops the clients whose queue is full."""
        if not self._clients:
            return
        self.broadcast(self.encode(kind, data))
        self.published += 1

    def broadcast(self, chunk: bytes) -> None:
        """Offer already encoded bytes (an event or a comment) to every client."""
        full = [client for client in self._clients if not client.offer(chunk)]
        for client in full:
            self._drop(client, f"{self._queue_size} events queued")

    def expire(self, now: float, write_timeout: float) -> int:
        """Drop every client whose write in progress began ``write_timeout`` seconds or more
        before ``now`` (monotonic seconds); returns how many were dropped."""
        stuck = [
            (client, now - client.writing_since)
            for client in self._clients
            if client.writing_since is not None and now - client.writing_since >= write_timeout
        ]
        for client, blocked in stuck:
            self._drop(client, f"a write blocked for {blocked:.1f}s")
        return len(stuck)

    def _drop(self, client: EventClient, why: str) -> None:
        self._clients.discard(client)
        client.dropped = True
        client.close(abort=True)
        self.dropped += 1
        _log.warning("events: dropped a slow client (%s)", why)

    def close(self) -> None:
        """End every stream (the service is closing)."""
        clients, self._clients = self._clients, set()
        for client in clients:
            client.close(abort=False)
