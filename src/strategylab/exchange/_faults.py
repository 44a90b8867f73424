"""The exchange's admin fault switches: what is active, for how long, and how often it strikes.

Protocol faults (``invalid_ticks``, ``corrupt_frames``, ``bad_signatures``, ``api_errors``) spoil
what the exchange sends; order-lifecycle races (``partial_fills``, ``resting_fills``,
``fill_cancel_race``) change how the order book executes, as real venues do (see
:mod:`strategylab.exchange._book`). ``rate`` is the probability that one frame, request or order
is hit.

``api_errors`` may instead carry a ``count`` (1..10,000): it then strikes the order submissions
(``POST /api/orders``) of exactly the next ``count`` orders to arrive, each order by its client
order id, and nothing else. Every submission of a chosen order is struck (the client's retries of
it included, so that each chosen order really meets the error), no other request is; the choice
depends only on the order in which orders arrive, never on timing or chance. Once ``count`` orders
were chosen and struck the fault takes no new order; it ends when it is cleared or expires, so a
chosen order submitted again later (phase ``"before"``: it was never processed) still fails until
then.

Expiry is measured on the injected clock, so a test with :class:`~strategylab.testing.FakeClock`
moves past a fault's duration without waiting. Whether a given frame or request is hit is decided
by a seeded :class:`random.Random`: a real fault at a chosen rate, not a simulated recovery.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass

from strategylab._validate import shown
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import PicklableErrorMixin

from ._request import request_number, request_object

__all__ = [
    "MAX_COUNT",
    "MAX_DURATION",
    "MIN_DURATION",
    "ActiveFault",
    "FaultBoard",
    "FaultKind",
    "FaultRequestError",
    "parse_fault",
]


class FaultKind(enum.Enum):
    """The faults the exchange can inject: protocol faults and order-lifecycle races."""

    INVALID_TICKS = "invalid_ticks"
    CORRUPT_FRAMES = "corrupt_frames"
    BAD_SIGNATURES = "bad_signatures"
    API_ERRORS = "api_errors"
    PARTIAL_FILLS = "partial_fills"
    """An order that executes fills in 2..4 executions: one now, one per later batch of ticks."""
    RESTING_FILLS = "resting_fills"
    """A limit order rests even when marketable and fills in 2..4 executions as later quotes
    cross its price."""
    FILL_CANCEL_RACE = "fill_cancel_race"
    """A cancel meets an execution in flight: the fill stands; the cancel is answered too late
    (409) or, after a partial execution, cancels the remainder."""


class FaultRequestError(PicklableErrorMixin, ValueError):
    """A fault request is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveFault:
    """One switched-on fault. ``status`` and ``phase`` apply to ``api_errors`` only: ``phase``
    ``"before"`` refuses the request unprocessed, ``"after"`` processes it and then answers the
    error (an ambiguous outcome the client must reconcile)."""

    kind: FaultKind
    rate: float
    duration: float
    expires_at: float
    status: int = 503
    phase: str = "before"
    count: int | None = None
    """``api_errors`` only: strike the submissions of exactly this many orders (the next to
    arrive), and no other request; ``None`` strikes any ``/api/`` request at ``rate``."""

    def to_json(self, now: float) -> dict[str, object]:
        """The fault as the admin API shows it (``count`` only when it has one)."""
        shown: dict[str, object] = {
            "kind": self.kind.value,
            "rate": self.rate,
            "duration": self.duration,
            "remaining": max(0.0, self.expires_at - now),
            "status": self.status,
            "phase": self.phase,
        }
        if self.count is not None:
            shown["count"] = self.count
        return shown


_API_STATUSES = frozenset({429, 500, 502, 503, 504})
_PHASES = ("before", "after")
_FIELDS = frozenset({"kind", "duration", "rate", "status", "phase", "count"})
MAX_COUNT = 10_000
"""The most orders one counted ``api_errors`` fault may strike."""
MIN_DURATION = 0.001
"""The shortest fault, in seconds."""
MAX_DURATION = 86_400.0
"""The longest fault, in seconds (a day): no request can switch a fault on for good."""


def parse_fault(body: object, now: float) -> ActiveFault:
    """Validate an admin request ``{"kind", "duration", "rate"?, "status"?, "phase"?, "count"?}``:
    every field checked (type and range, no unknown key) before a fault exists. ``count`` (an
    int, 1..:data:`MAX_COUNT`) is for ``api_errors`` only and cannot be combined with a ``rate``
    below 1. Raises :class:`FaultRequestError` naming the field."""
    body = request_object(body, _FIELDS, FaultRequestError)
    raw_kind = body.get("kind")
    kind = next((k for k in FaultKind if isinstance(raw_kind, str) and raw_kind == k.value), None)
    if kind is None:
        names = ", ".join(k.value for k in FaultKind)
        raise FaultRequestError("kind", f"{shown(raw_kind)} is not one of {names}")
    duration = request_number(
        body, "duration", FaultRequestError, low=MIN_DURATION, high=MAX_DURATION
    )
    rate = request_number(body, "rate", FaultRequestError, low=0.0, high=1.0, default=1.0)
    status = body.get("status", 503)
    if isinstance(status, bool) or not isinstance(status, int) or status not in _API_STATUSES:
        raise FaultRequestError(
            "status", f"must be one of {sorted(_API_STATUSES)}, got {shown(status)}"
        )
    phase = body.get("phase", "before")
    if not isinstance(phase, str) or phase not in _PHASES:
        raise FaultRequestError("phase", f"must be 'before' or 'after', got {shown(phase)}")
    count = _count(body, kind, rate)
    return ActiveFault(
        kind=kind,
        rate=rate,
        duration=duration,
        expires_at=now + duration,
        status=status,
        phase=phase,
        count=count,
    )


def _count(body: Mapping[str, object], kind: FaultKind, rate: float) -> int | None:
    count = body.get("count")
    if count is None:
        return None
    if kind is not FaultKind.API_ERRORS:
        raise FaultRequestError("count", f"applies to api_errors only, not {kind.value}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise FaultRequestError(
            "count", f"must be an int within 1..{MAX_COUNT}, got {shown(count)}"
        )
    if rate < 1.0:
        raise FaultRequestError("rate", f"must be 1 (or absent) with a count, got {rate:g}")
    return count


class FaultBoard:
    """The active faults, at most one per kind; each expires by itself after its duration."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, seed: int = 0) -> None:
        self._clock = clock
        self._rng = random.Random(seed)
        self._faults: dict[FaultKind, ActiveFault] = {}
        self.strikes: dict[FaultKind, int] = dict.fromkeys(FaultKind, 0)
        self._chosen: list[str] = []
        """The client order ids a counted ``api_errors`` fault chose, in arrival order."""

    def set(self, fault: ActiveFault) -> None:
        """Switch ``fault`` on, replacing one of the same kind (a counted ``api_errors`` fault
        starts with no order chosen)."""
        self._faults[fault.kind] = fault
        if fault.kind is FaultKind.API_ERRORS:
            self._chosen = []

    def clear(self, kind: FaultKind | None = None) -> None:
        """Switch one kind, or every fault, off."""
        if kind is None:
            self._faults.clear()
        else:
            self._faults.pop(kind, None)
        if kind in (None, FaultKind.API_ERRORS):
            self._chosen = []

    def active(self, kind: FaultKind) -> ActiveFault | None:
        """The fault of ``kind`` if it is on and has not expired."""
        fault = self._faults.get(kind)
        if fault is not None and self._clock.monotonic() >= fault.expires_at:
            del self._faults[kind]
            return None
        return fault

    def strike(self, kind: FaultKind) -> ActiveFault | None:
        """The fault if it hits this frame or request (with probability ``rate``), else None.
        A counted ``api_errors`` fault never strikes here (see :meth:`strike_order`)."""
        fault = self.active(kind)
        if fault is None or fault.count is not None:
            return None
        if fault.rate < 1.0 and self._rng.random() >= fault.rate:
            return None
        self.strikes[kind] += 1
        return fault

    def strike_order(self, client_order_id: str) -> ActiveFault | None:
        """The counted ``api_errors`` fault if it hits this order submission, else None.

        The first ``count`` distinct ``client_order_id`` values submitted while it is on are
        chosen; every submission of a chosen one is struck, any other is not."""
        fault = self.active(FaultKind.API_ERRORS)
        if fault is None or fault.count is None:
            return None
        if client_order_id not in self._chosen:
            if len(self._chosen) >= fault.count:
                return None
            self._chosen.append(client_order_id)
        self.strikes[FaultKind.API_ERRORS] += 1
        return fault

    @property
    def chosen_orders(self) -> tuple[str, ...]:
        """The client order ids the counted ``api_errors`` fault chose so far, in order."""
        return tuple(self._chosen)

    def slices(self, qty: float) -> list[float]:
        """``qty`` split into 2..4 executions (their number drawn from the seeded generator):
        equal parts, the last one taking what rounding left, so that they sum to ``qty``."""
        count = self._rng.randint(2, 4)
        part = qty / count
        return [part] * (count - 1) + [qty - part * (count - 1)]

    def rate(self, kind: FaultKind) -> float:
        """The active fault's rate, 0.0 when it is off."""
        fault = self.active(kind)
        return 0.0 if fault is None else fault.rate

    def corrupt(self, frame: bytes) -> bytes:
        """``frame`` with a few payload bytes flipped (the header's CRC no longer matches)."""
        data = bytearray(frame)
        # Flip payload bytes only (after the 9-byte header and the signature, if any), so that a
        # feed sees a CRC mismatch rather than a bad magic or a bad signature.
        low = min(41 if data[4] & 1 else 9, len(data) - 1)
        for _ in range(3):
            i = self._rng.randrange(low, len(data))
            data[i] ^= 1 << self._rng.randrange(8)
        return bytes(data)

    def snapshot(self) -> list[dict[str, object]]:
        """Every active fault as the admin API shows it; a counted ``api_errors`` fault adds
        ``orders_struck`` (how many of its ``count`` orders were chosen so far)."""
        now = self._clock.monotonic()
        shown = []
        for kind in list(self._faults):
            fault = self.active(kind)
            if fault is None:
                continue
            entry = fault.to_json(now)
            if fault.count is not None:
                entry["orders_struck"] = len(self._chosen)
            shown.append(entry)
        return shown
