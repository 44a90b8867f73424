"""A failover group: an ordered set of endpoints or backends, one active, with failback.

The semantics follow HAProxy's *backup servers* and health-checked DNS failover (e.g. Route 53
failover records), not a resilience library: Polly and resilience4j have no such primitive (their
"fallback" answers one call; it does not move a client to another endpoint and back).

- Members are in priority order: ``members[0]`` is the primary, the rest are backups.
- :meth:`FailoverGroup.report_failure` marks the member down and makes the first member in
  priority order that is not known to be down the active one (HAProxy: the first usable backup);
  when every other member is known down it rotates to the next one after the failed member, so a
  caller that must keep trying (a feed) keeps moving. It is synchronous and does no I/O: health
  is what the last probe observed.
- While a backup is active, :meth:`FailoverGroup.run` probes every higher-priority member with its
  own health check, immediately and then every ``probe_interval`` seconds on the injected clock;
  a pass in which no probed member was healthy backs the interval off (``* backoff``, capped at
  ``max_probe_interval``). A member is switched back to once it has been healthy for
  ``failback_after`` consecutive probes (hysteresis, HAProxy's ``rise``): a flapping primary
  does not drag clients back and forth.
- Before the switch back, the optional ``drain`` hook is awaited with ``(source, target)``
  (e.g. the spool drains into the primary store). The switch happens in the same event-loop
  step as the hook returns True (no ``await`` in between), so a hook that finishes its last
  pass under the caller's own lock hands over atomically. A hook that returns False or raises
  counts as a failed drain; the member's consecutive-healthy count starts over.
- Every switch is one :class:`FailoverEvent` to each listener (called synchronously; an
  exception from a listener is logged, never raised into the group), and :meth:`statistics` is
  a frozen snapshot: the active member, switches, failovers, failbacks, per-member health and
  the time (``clock.monotonic()``) of the last switch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError

__all__ = [
    "DrainHook",
    "FailoverEvent",
    "FailoverGroup",
    "FailoverGroupStatistics",
    "FailoverListener",
    "FailoverMember",
    "MemberHealth",
    "SwitchReason",
]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverMember(Generic[_T]):
    """One endpoint or backend: a unique ``name``, the ``target`` a caller uses, and a health
    check (``async () -> bool``; an exception counts as unhealthy)."""

    name: str
    target: _T
    health: Callable[[], Awaitable[bool]]


class SwitchReason(enum.Enum):
    """Why the active member changed."""

    FAILURE = "failure"
    """:meth:`FailoverGroup.report_failure`: the active member failed."""
    FAILBACK = "failback"
    """A higher-priority member passed ``failback_after`` probes (and the drain)."""
    MANUAL = "manual"
    """:meth:`FailoverGroup.switch_to` or :meth:`FailoverGroup.rotate`."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverEvent:
    """One switch: from which member to which, why, and when (``clock.monotonic()`` seconds)."""

    group: str
    previous: str
    active: str
    reason: SwitchReason
    at: float


FailoverListener = Callable[[FailoverEvent], object]
"""Called synchronously on every switch."""

DrainHook = Callable[[FailoverMember[_T], FailoverMember[_T]], Awaitable[bool]]
"""``async (source, target) -> bool``: move what ``source`` holds into ``target`` before the
switch back; True when the switch may happen now."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MemberHealth:
    """What the group knows of one member's health."""

    name: str
    priority: int
    """0 for the primary, 1 for the first backup, ..."""
    healthy: bool | None
    """The last observation: a probe, or False after a reported failure; None when never seen."""
    consecutive_healthy: int
    probes: int
    failures: int
    """Failures reported and probes that failed."""
    last_probe_at: float | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverGroupStatistics:
    """A frozen snapshot of a :class:`FailoverGroup`."""

    name: str
    active: str
    active_index: int
    on_primary: bool
    switches: int
    failovers: int
    """Switches to a lower-priority member."""
    failbacks: int
    """Switches to a higher-priority member."""
    failed_probes: int
    failed_drains: int
    last_switch_at: float | None
    members: tuple[MemberHealth, ...]


class _Member:
    __slots__ = ("consecutive", "failures", "healthy", "last_probe_at", "probes")

    def __init__(self) -> None:
        self.healthy: bool | None = None
        self.consecutive = 0
        self.probes = 0
        self.failures = 0
        self.last_probe_at: float | None = None


def _positive(key: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(key, value, "must be a finite number > 0")
    return float(value)


class FailoverGroup(Generic[_T]):
    """An ordered set of members (primary first), one of them active; see the module docstring.

    ``probe_interval`` and ``max_probe_interval`` are seconds on ``clock`` (``max_probe_interval``
    None: no backoff); ``backoff`` >= 1 multiplies the interval after a pass that found no probed
    member healthy; ``failback_after`` >= 1 consecutive healthy probes switch back. Raises
    :class:`~strategylab.errors.ConfigurationError` naming a bad argument (no members, a repeated
    name, a bad number).
    """

    def __init__(
        self,
        members: Sequence[FailoverMember[_T]],
        *,
        name: str = "failover",
        probe_interval: float = 0.5,
        max_probe_interval: float | None = None,
        backoff: float = 2.0,
        failback_after: int = 3,
        drain: DrainHook[_T] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not members:
            raise ConfigurationError("members", members, "must name at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigurationError("members", names, "member names must be unique")
        self._interval = _positive("probe_interval", probe_interval)
        self._max_interval = (
            self._interval
            if max_probe_interval is None
            else _positive("max_probe_interval", max_probe_interval)
        )
        if self._max_interval < self._interval:
            raise ConfigurationError(
                "max_probe_interval", max_probe_interval, "must be >= probe_interval"
            )
        if _positive("backoff", backoff) < 1:
            raise ConfigurationError("backoff", backoff, "must be >= 1")
        if isinstance(failback_after, bool) or not isinstance(failback_after, int):
            raise ConfigurationError("failback_after", failback_after, "must be an integer >= 1")
        if failback_after < 1:
            raise ConfigurationError("failback_after", failback_after, "must be an integer >= 1")
        self._members = tuple(members)
        self._state = tuple(_Member() for _ in members)
        self._name = name
        self._backoff = float(backoff)
        self._failback_after = failback_after
        self._drain = drain
        self._clock = clock
        self._active = 0
        self._listeners: list[FailoverListener] = []
        self._wake = asyncio.Event()
        self._switches = self._failovers = self._failbacks = 0
        self._failed_probes = self._failed_drains = 0
        self._last_switch_at: float | None = None

    # ------------------------------------------------------------------ state

    @property
    def name(self) -> str:
        """The group's name (in events and statistics)."""
        return self._name

    @property
    def members(self) -> tuple[FailoverMember[_T], ...]:
        """Every member, primary first."""
        return self._members

    @property
    def active(self) -> FailoverMember[_T]:
        """The member in use now."""
        return self._members[self._active]

    @property
    def active_index(self) -> int:
        """The active member's priority (0: the primary)."""
        return self._active

    @property
    def on_primary(self) -> bool:
        """True while the primary is active."""
        return self._active == 0

    def add_listener(self, listener: FailoverListener) -> Callable[[], None]:
        """Call ``listener`` on every switch; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def statistics(self) -> FailoverGroupStatistics:
        """A frozen snapshot of the group."""
        return FailoverGroupStatistics(
            name=self._name,
            active=self.active.name,
            active_index=self._active,
            on_primary=self._active == 0,
            switches=self._switches,
            failovers=self._failovers,
            failbacks=self._failbacks,
            failed_probes=self._failed_probes,
            failed_drains=self._failed_drains,
            last_switch_at=self._last_switch_at,
            members=tuple(
                MemberHealth(
                    name=m.name,
                    priority=i,
                    healthy=s.healthy,
                    consecutive_healthy=s.consecutive,
                    probes=s.probes,
                    failures=s.failures,
                    last_probe_at=s.last_probe_at,
                )
                for i, (m, s) in enumerate(zip(self._members, self._state, strict=True))
            ),
        )

    # ------------------------------------------------------------------ switching

    def report_failure(self, member: FailoverMember[_T] | None = None) -> FailoverMember[_T]:
        """``member`` (default: the active one) failed: mark it down and, if it is the active
        one, switch to the first other member not known down (else the next in rotation).

        Returns the active member afterwards. A group of one stays on it. Raises
        :class:`ValueError` for a member not in the group.
        """
        index = self._active if member is None else self._index(member)
        state = self._state[index]
        state.healthy = False
        state.consecutive = 0
        state.failures += 1
        if index != self._active or len(self._members) == 1:
            return self.active
        order = range(len(self._members))
        choice = next(
            (i for i in order if i != index and self._state[i].healthy is not False),
            (index + 1) % len(self._members),
        )
        self._switch(choice, SwitchReason.FAILURE)
        return self.active

    def switch_to(
        self, member: FailoverMember[_T], reason: SwitchReason = SwitchReason.MANUAL
    ) -> None:
        """Make ``member`` active now (no health check); a no-op when it already is."""
        index = self._index(member)
        if index != self._active:
            self._switch(index, reason)

    def rotate(self) -> FailoverMember[_T]:
        """Switch to the next member in order, wrapping around (a manual failover); returns it."""
        if len(self._members) > 1:
            self._switch((self._active + 1) % len(self._members), SwitchReason.MANUAL)
        return self.active

    def _index(self, member: FailoverMember[_T]) -> int:
        for i, each in enumerate(self._members):
            if each is member or each.name == member.name:
                return i
        raise ValueError(f"{self._name}: {member.name!r} is not a member of this group")

    def _switch(self, index: int, reason: SwitchReason) -> None:
        previous = self._active
        self._active = index
        self._switches += 1
        if index > previous:
            self._failovers += 1
        else:
            self._failbacks += 1
        now = self._clock.monotonic()
        self._last_switch_at = now
        self._wake.set()
        event = FailoverEvent(
            group=self._name,
            previous=self._members[previous].name,
            active=self._members[index].name,
            reason=reason,
            at=now,
        )
        _log.info("%s: %s -> %s (%s)", self._name, event.previous, event.active, reason.value)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("%s: a failover listener raised", self._name)

    # ------------------------------------------------------------------ probing

    async def probe_once(self) -> bool | None:
        """Probe every member above the active one once, and fail back if one has been healthy
        ``failback_after`` times in a row (after the drain).

        Returns True when it switched back, False when a probed member was healthy but not yet
        switched to (hysteresis, or a failed drain), None when no probed member was healthy (or
        the primary is active).
        """
        seen_healthy = False
        for index in range(self._active):
            if index >= self._active:
                break  # a switch happened while probing
            healthy = await self._probe(index)
            seen_healthy = seen_healthy or healthy
            if healthy and self._state[index].consecutive >= self._failback_after:
                if await self._fail_back(index):
                    return True
                break
        return False if seen_healthy else None

    async def _probe(self, index: int) -> bool:
        member = self._members[index]
        try:
            healthy = (await member.health()) is True
        except Exception as exc:  # a probe that raises is a failed probe
            _log.debug("%s: probe of %s raised %r", self._name, member.name, exc)
            healthy = False
        state = self._state[index]
        state.probes += 1
        state.last_probe_at = self._clock.monotonic()
        state.healthy = healthy
        if healthy:
            state.consecutive += 1
        else:
            state.consecutive = 0
            state.failures += 1
            self._failed_probes += 1
        return healthy

    async def _fail_back(self, index: int) -> bool:
        target = self._members[index]
        source = self.active
        drain = self._drain
        if drain is not None:
            try:
                ready = (await drain(source, target)) is True
            except Exception as exc:
                _log.warning(
                    "%s: drain %s -> %s failed: %r", self._name, source.name, target.name, exc
                )
                ready = False
            if not ready:
                self._failed_drains += 1
                self._state[index].consecutive = 0
                return False
        if index < self._active:
            self._switch(index, SwitchReason.FAILBACK)
        return True

    async def run(self) -> None:
        """Probe and fail back forever (run it in an owned task; cancel to stop).

        Waits while the primary is active; probes at once after a switch away, then every
        ``probe_interval`` seconds, backing off while no probed member is healthy.
        """
        interval = self._interval
        while True:
            if self._active == 0:
                self._wake.clear()
                await self._wake.wait()
                interval = self._interval
                continue
            outcome = await self.probe_once()
            if outcome is True:
                interval = self._interval
                continue
            if outcome is None:
                await self._clock.asleep(interval)
                interval = min(interval * self._backoff, self._max_interval)
            else:
                interval = self._interval
                await self._clock.asleep(interval)
