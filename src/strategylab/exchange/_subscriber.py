"""One market-data subscriber of the exchange and the retained history it can replay from.

A :class:`_Subscriber` is one WebSocket connection: its subscription and its bounded outbox of
frames (bytes), control answers (str), replays and a final close, drained by a sender task
(:mod:`._feed`). :class:`_History` keeps the last ``retention`` ticks of one symbol.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final

from strategylab.market import ReplayDone, Tick

_CLOSE_GRACE: Final = 2.0  # seconds a kicked subscriber gets before its transport is aborted


class _History:
    """The last ``retention`` ticks of one symbol; trimmed in amortised O(1)."""

    __slots__ = ("base", "retention", "ticks")

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self.ticks: list[Tick] = []
        self.base = 1  # seq of ticks[0]

    @property
    def last(self) -> int:
        return self.base + len(self.ticks) - 1

    @property
    def first(self) -> int:
        """The first sequence still retained (``last + 1`` when none is)."""
        return max(self.base, self.last - self.retention + 1)

    def append(self, tick: Tick) -> None:
        self.ticks.append(tick)
        if len(self.ticks) > 2 * self.retention:
            drop = len(self.ticks) - self.retention
            del self.ticks[:drop]
            self.base += drop

    def range(self, from_seq: int, to_seq: int) -> list[Tick]:
        """Retained ticks ``from_seq..to_seq`` (the caller clamps to ``first..last``)."""
        return self.ticks[from_seq - self.base : to_seq - self.base + 1]


@dataclass(frozen=True, slots=True)
class _Replay:
    ticks: list[Tick]
    done: ReplayDone | None
    session: str = ""


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


_Item = bytes | str | _Replay | _Close


class _Subscriber:
    """One WebSocket connection: its subscription and its bounded outbox, drained by a sender."""

    __slots__ = (
        "abort_handle",
        "kicked",
        "outbox",
        "peer",
        "room",
        "session",
        "symbols",
        "transport",
        "wake",
    )

    def __init__(self, peer: str, transport: asyncio.BaseTransport | None) -> None:
        self.peer = peer
        self.transport = transport
        self.symbols: frozenset[str] | None = None  # None: every symbol
        self.outbox: deque[_Item] = deque()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.kicked: str | None = None
        self.abort_handle: asyncio.TimerHandle | None = None
        self.session = ""  # the feed's token for this connection, echoed in signed answers

    def push(self, item: _Item) -> None:
        if self.kicked is None:
            self.outbox.append(item)
            self.wake.set()

    def kick(self, code: int, reason: str) -> None:
        """Drop everything queued and close with ``reason``; abort if the peer does not drain."""
        if self.kicked is not None:
            return
        self.kicked = reason
        self.outbox.clear()
        self.outbox.append(_Close(code, reason))
        self.wake.set()
        self.room.set()
        transport = self.transport
        if transport is not None:
            loop = asyncio.get_running_loop()
            self.abort_handle = loop.call_later(_CLOSE_GRACE, _abort, transport)


def _abort(transport: asyncio.BaseTransport) -> None:
    if not transport.is_closing() and isinstance(transport, asyncio.WriteTransport):
        transport.abort()
