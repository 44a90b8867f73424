"""The demo's fault schedule: which faults, at which points of the stream, with what parameters.

:func:`plan_faults` draws the whole schedule from ``random.Random(seed)`` and nothing else, so the
same ``--seed`` (and ``--ticks``) gives the same faults at the same points with the same
parameters; what the run then observed is recorded beside the plan (:class:`FaultRecord`).

Two tracks run side by side, each on its own stream:

- the **feed** track hurts the node's market-data link (the fault proxy between the node and the
  exchange, or the exchange's frames): a connection reset, a blackhole partition, the proxy
  down, corrupted frames, bit flips on the wire, in a seeded order. Each is injected once the
  node has *stored* its point's number of ticks, and held for its drawn duration;
- the **orders** track hurts the trader's order API: the exchange answers 503 *after*
  processing (an ambiguous outcome) to exactly the next ``count`` orders once the trader has
  *sent* its point's number of orders (:class:`strategylab.chaos.ApiErrors` with ``count``), and
  is healed once the trader has counted those ``count`` ambiguous outcomes. So the run's
  ambiguous-order count is the schedule's :attr:`FaultSchedule.ambiguous`, not an accident of
  timing. At most two orders a window: each struck order fails its client's 4 attempts, and 10
  failures in a row would open the client's circuit breaker (then orders it refuses itself
  would turn ambiguous too, by timing).

:func:`build_injector` turns a planned fault into its :class:`~strategylab.chaos.Injector`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from strategylab.chaos import (
    ApiErrors,
    ConnectionReset,
    CorruptFrames,
    Injector,
    Partition,
    Proxy,
    ProxyBitFlip,
    ProxyDisabled,
)
from strategylab.errors import ConfigurationError

__all__ = [
    "FEED_KINDS",
    "FaultRecord",
    "FaultSchedule",
    "PlannedFault",
    "build_injector",
    "plan_faults",
]

FeedKind = Literal["reset", "partition", "drop", "corrupt_frames", "bit_flips"]
FEED_KINDS: Final[tuple[FeedKind, ...]] = (
    "reset",
    "partition",
    "drop",
    "corrupt_frames",
    "bit_flips",
)
"""The feed track's faults, before the seeded shuffle."""
_FIRST: Final = 0.05
_LAST: Final = 0.75
"""The feed faults' points lie between these shares of ``--ticks`` stored by the node."""
_EXPIRY_MARGIN: Final = 10.0
"""Seconds an exchange fault outlives its hold if nobody heals it (a demo killed with -9)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedFault:
    """One fault of the schedule.

    ``track`` is ``"feed"`` (``at`` = ticks stored by the node) or ``"orders"`` (``at`` = orders
    sent by the trader); ``hold`` is how long it is held, in seconds (``0.0`` on the orders
    track: held until its ``count`` orders were struck); ``rate`` is a share of frames (0..1)
    or bytes; ``count`` the orders struck.
    """

    kind: str
    track: Literal["feed", "orders"]
    at: int
    hold: float = 0.0
    rate: float | None = None
    count: int | None = None

    @property
    def label(self) -> str:
        """The fault as the screen and the report name it (``"partition 2.4 s"``)."""
        match self.kind:
            case "reset":
                return f"connection reset, held {self.hold:g} s"
            case "partition":
                return f"partition {self.hold:g} s"
            case "drop":
                return f"connection dropped {self.hold:g} s"
            case "corrupt_frames":
                return f"corrupted frames {self.rate:.0%}, {self.hold:g} s"
            case "bit_flips":
                return f"bit flips on the wire {self.rate:.0e}/byte, {self.hold:g} s"
            case _:
                orders = "order" if self.count == 1 else "orders"
                return f"order API 503 after processing, next {self.count} {orders}"

    @property
    def point(self) -> str:
        """Where in the stream it is injected (``"after 12,300 ticks stored"``)."""
        if self.track == "feed":
            return f"after {self.at:,} ticks stored"
        return f"after {self.at:,} orders sent"

    def to_json(self) -> dict[str, Any]:
        """The planned fault as JSON-ready values."""
        return {
            "kind": self.kind,
            "label": self.label,
            "track": self.track,
            "at": self.at,
            "hold_s": self.hold,
            "rate": self.rate,
            "count": self.count,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSchedule:
    """The run's faults, drawn from ``seed`` for a run of ``ticks`` ticks."""

    seed: int
    ticks: int
    faults: tuple[PlannedFault, ...]

    @property
    def feed(self) -> tuple[PlannedFault, ...]:
        """The feed track, in injection order."""
        return tuple(f for f in self.faults if f.track == "feed")

    @property
    def orders(self) -> tuple[PlannedFault, ...]:
        """The orders track, in injection order."""
        return tuple(f for f in self.faults if f.track == "orders")

    @property
    def ambiguous(self) -> int:
        """The ambiguous order outcomes the schedule makes (orders struck after processing)."""
        return sum(f.count or 0 for f in self.orders)

    def lines(self) -> list[str]:
        """One line per fault: track, point, fault (what the demo prints before it starts)."""
        return [f"{f.track:<6} {f.point}: {f.label}" for f in self.faults]

    def to_json(self) -> dict[str, Any]:
        """The schedule as JSON-ready values."""
        return {
            "seed": self.seed,
            "ticks": self.ticks,
            "ambiguous_planned": self.ambiguous,
            "faults": [f.to_json() for f in self.faults],
        }


@dataclass(slots=True, kw_only=True)
class FaultRecord:
    """What the run did with one planned fault: the point it was injected at as observed
    (``injected_at``: ticks stored or orders sent when it went on), how long it was held
    (seconds), what the exchange said it struck, and a note (why it was skipped, say)."""

    planned: PlannedFault
    injected_at: int | None = None
    held_s: float | None = None
    struck: int | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values."""
        return {
            **self.planned.to_json(),
            "injected_at": self.injected_at,
            "held_observed_s": None if self.held_s is None else round(self.held_s, 3),
            "struck": self.struck,
            "note": self.note,
            "injector": self.details,
        }


def _tenths(rng: random.Random, low: float, high: float) -> float:
    """A duration drawn in ``low..high`` seconds, to a tenth."""
    return round(rng.uniform(low, high), 1)


def _feed_fault(kind: FeedKind, at: int, rng: random.Random) -> PlannedFault:
    match kind:
        case "reset":
            return PlannedFault(kind=kind, track="feed", at=at, hold=_tenths(rng, 0.3, 0.8))
        case "partition":
            return PlannedFault(kind=kind, track="feed", at=at, hold=_tenths(rng, 2.0, 3.0))
        case "drop":
            return PlannedFault(kind=kind, track="feed", at=at, hold=_tenths(rng, 1.0, 2.0))
        case "corrupt_frames":
            rate = round(rng.uniform(0.02, 0.08), 2)
            return PlannedFault(
                kind=kind, track="feed", at=at, hold=_tenths(rng, 1.5, 2.5), rate=rate
            )
        case "bit_flips":
            rate = rng.choice((1e-6, 2e-6, 3e-6, 4e-6))
            return PlannedFault(
                kind=kind, track="feed", at=at, hold=_tenths(rng, 1.5, 2.5), rate=rate
            )


def plan_faults(seed: int, ticks: int) -> FaultSchedule:
    """The schedule for a run of ``ticks`` ticks, drawn from ``random.Random(seed)`` alone.

    Feed track: the five feed faults in a seeded order, the i-th at a point drawn within the
    i-th fifth of 5..75 % of ``ticks`` (to 100 ticks), each with its drawn hold and rate.
    Orders track: two windows of 1 or 2 orders each, the first after 1..5 orders sent, the
    second 10..20 orders later. Raises :class:`ConfigurationError` for a ``seed`` that is not
    an int or ``ticks`` below 1,000.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigurationError("seed", seed, "must be an integer")
    if isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 1_000:
        raise ConfigurationError("ticks", ticks, "must be an integer >= 1000")
    rng = random.Random(seed)
    kinds = list(FEED_KINDS)
    rng.shuffle(kinds)
    low, slot = ticks * _FIRST, ticks * (_LAST - _FIRST) / len(kinds)
    feed = [
        _feed_fault(kind, max(100, round((low + slot * (i + rng.random())) / 100) * 100), rng)
        for i, kind in enumerate(kinds)
    ]
    first = rng.randint(1, 5)
    second = first + rng.randint(10, 20)
    orders = [
        PlannedFault(kind="api_errors", track="orders", at=at, count=rng.randint(1, 2))
        for at in (first, second)
    ]
    return FaultSchedule(seed=seed, ticks=ticks, faults=(*feed, *orders))


def build_injector(
    fault: PlannedFault, *, proxy: Proxy, exchange_url: str, admin_token: str, index: int
) -> Injector:
    """The injector of ``fault``: toxics on ``proxy`` (between the node and the exchange), or a
    fault switched on through the exchange's admin API at ``exchange_url`` with ``admin_token``.
    ``index`` (the fault's place in the schedule) makes the injector's name unique."""
    name = f"demo{index}"
    match fault.kind:
        case "reset":
            return ConnectionReset(proxy, timeout=0, name=f"{name}.reset")
        case "partition":
            return Partition(proxy, name=f"{name}.partition")
        case "drop":
            return ProxyDisabled(proxy, name=f"{name}.down")
        case "corrupt_frames":
            return CorruptFrames(
                exchange_url,
                admin_token,
                rate=fault.rate,
                expiry=fault.hold + _EXPIRY_MARGIN,
                name=f"{name}.corrupt_frames",
            )
        case "bit_flips":
            return ProxyBitFlip(proxy, rate=fault.rate, name=f"{name}.bit_flip")
        case "api_errors":
            return ApiErrors(
                exchange_url,
                admin_token,
                status=503,
                phase="after",
                count=fault.count,
                expiry=120.0,
                name=f"{name}.api_errors",
            )
    raise ConfigurationError("fault.kind", fault.kind, "is not a fault of the demo")
