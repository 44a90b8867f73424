"""Graceful degradation: shed features by priority under pressure, restore them in reverse.

A :class:`Feature` is something the system can do without: a live price chart, batch jobs
(backtests, optimisation), notifications. Each has a ``priority`` (higher is more important) and
two actions, ``shed`` and ``restore``. An ``essential`` feature (ingestion, risk checks) is listed
so that it shows, and is never shed.

A :class:`Trigger` reads one real signal (resident memory against a budget, event-loop lag, ingest
queue depth, CPU; see :mod:`._resources`) and has two thresholds, ``shed_above`` and a lower
``restore_below``: the gap between them is the hysteresis that keeps a reading hovering at one
threshold from shedding and restoring a feature on every evaluation (a thermostat's dead band).

The :class:`DegradationController` evaluates the triggers every ``interval`` seconds:

- while **any** trigger reads above ``shed_above`` for ``hold`` seconds, it sheds the
  lowest-priority non-essential feature still on (ties: the one listed first), one level per
  evaluation, then waits another ``hold`` before the next level;
- while **every** trigger reads below ``restore_below`` for ``hold`` seconds, it restores the most
  recently shed feature, one level per evaluation and ``hold``: the exact reverse of the shedding
  (a feature an operator shed by name stays shed until the operator restores it);
- in between (some reading inside its dead band), it does nothing and both hold timers restart.

Every shed and restore (and every failed attempt) is a :class:`DegradationEvent` kept in a bounded
history and sent to listeners; :meth:`DegradationController.snapshot` is a frozen view with the
current level. The controller is also a recovery-manager component with the ``degrade(level)`` /
``restore()`` face of :class:`~strategylab.fault_tolerance.Degradable`, so the manager's
GRACEFUL_DEGRADATION strategy drives it, and its ``health()`` (no trigger above its shed
threshold) is how that recovery is judged.

This module is a long-running part: the hot path never imports it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Self

from strategylab import _validate
from strategylab._clock_wait import wait_within
from strategylab._tasks import cancel_and_wait
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError

from ._resources import CpuMeter, LoopLagSampler, rss_bytes

__all__ = [
    "DegradationController",
    "DegradationEvent",
    "DegradationListener",
    "DegradationSnapshot",
    "Feature",
    "FeatureStatus",
    "Trigger",
    "TriggerStatus",
    "cpu_trigger",
    "loop_lag_trigger",
    "queue_depth_trigger",
    "rss_trigger",
]

_log = logging.getLogger(__name__)

Action = Callable[[], object]
"""A feature's shed or restore action: a plain callable or one returning an awaitable."""


def _name(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(key, value, "must be a non-empty str")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Feature:
    """A sheddable capability: ``name``, ``priority`` (int, higher = more important, shed later),
    ``shed`` and ``restore`` actions (sync, or returning an awaitable), and ``essential`` (never
    shed). Raises :class:`~strategylab.errors.ConfigurationError` naming the field."""

    name: str
    priority: int
    shed: Action
    restore: Action
    essential: bool = False

    def __post_init__(self) -> None:
        _name("name", self.name)
        _validate.integer("priority", self.priority)
        if not callable(self.shed):
            raise ConfigurationError("shed", self.shed, "must be callable")
        if not callable(self.restore):
            raise ConfigurationError("restore", self.restore, "must be callable")
        if not isinstance(self.essential, bool):
            raise ConfigurationError("essential", self.essential, "must be a bool")


@dataclasses.dataclass(frozen=True, slots=True)
class Trigger:
    """A pressure signal: ``read()`` returns the current reading (a finite number, in the
    signal's unit: bytes, seconds, items, percent); above ``shed_above`` is pressure, below
    ``restore_below`` (which must be lower) is calm. Raises
    :class:`~strategylab.errors.ConfigurationError` naming the field."""

    name: str
    read: Callable[[], float]
    shed_above: float
    restore_below: float

    def __post_init__(self) -> None:
        _name("name", self.name)
        if not callable(self.read):
            raise ConfigurationError("read", self.read, "must be callable")
        shed = _validate.number("shed_above", self.shed_above)
        restore = _validate.number("restore_below", self.restore_below)
        if restore >= shed:
            raise ConfigurationError(
                "restore_below",
                self.restore_below,
                f"must be lower than shed_above ({shed:g}): the gap is the hysteresis",
            )


def rss_trigger(
    budget_bytes: int,
    *,
    shed_at: float = 0.9,
    restore_at: float = 0.75,
    read: Callable[[], float] = rss_bytes,
    name: str = "memory",
) -> Trigger:
    """Resident memory against a budget: shed above ``shed_at`` of ``budget_bytes``, restore
    below ``restore_at`` of it (fractions in (0, 1], ``restore_at < shed_at``)."""
    budget = _validate.integer("budget_bytes", budget_bytes, minimum=1)
    shed = _validate.number("shed_at", shed_at, minimum=0, maximum=1, exclusive_minimum=True)
    restore = _validate.number(
        "restore_at", restore_at, minimum=0, maximum=1, exclusive_minimum=True
    )
    return Trigger(name, read, budget * shed, budget * restore)


def loop_lag_trigger(
    sampler: LoopLagSampler,
    *,
    shed_above: float = 0.25,
    restore_below: float = 0.05,
    name: str = "loop_lag",
) -> Trigger:
    """Event-loop lag in seconds: the largest lag in ``sampler``'s window."""
    return Trigger(name, lambda: sampler.max_lag, shed_above, restore_below)


def queue_depth_trigger(
    depth: Callable[[], float],
    capacity: int,
    *,
    shed_at: float = 0.8,
    restore_at: float = 0.5,
    name: str = "ingest_queue",
) -> Trigger:
    """A bounded queue's depth (items) against its ``capacity``: shed above ``shed_at`` of it,
    restore below ``restore_at`` of it."""
    cap = _validate.integer("capacity", capacity, minimum=1)
    shed = _validate.number("shed_at", shed_at, minimum=0, maximum=1, exclusive_minimum=True)
    restore = _validate.number(
        "restore_at", restore_at, minimum=0, maximum=1, exclusive_minimum=True
    )
    return Trigger(name, depth, cap * shed, cap * restore)


def cpu_trigger(
    meter: CpuMeter,
    *,
    shed_above: float = 90.0,
    restore_below: float = 60.0,
    name: str = "cpu",
) -> Trigger:
    """The process's CPU use in percent of one CPU since the previous evaluation."""
    return Trigger(name, meter.read, shed_above, restore_below)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DegradationEvent:
    """One shed or restore: what, why (the trigger and its reading), when, and whether it worked.

    ``trigger`` is the trigger's name, or ``manual`` / ``manager`` for a requested change;
    ``reading`` is that trigger's reading (None for a requested change). ``level`` is the number of
    features shed after the event. A failed action (it raised or timed out) has ``ok=False``,
    ``error`` set, and leaves the feature as it was.
    """

    action: str
    """``shed`` or ``restore``."""
    feature: str
    trigger: str
    reading: float | None
    at: float
    """The controller's monotonic clock."""
    time: float
    """The controller's wall clock (seconds since the epoch)."""
    level: int
    ok: bool = True
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return dataclasses.asdict(self)


DegradationListener = Callable[[DegradationEvent], object]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FeatureStatus:
    """A feature as it is now."""

    name: str
    priority: int
    essential: bool
    active: bool
    pinned: bool = False
    """Shed by an operator: automatic restores leave it shed."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TriggerStatus:
    """A trigger's thresholds and its last reading (None before the first or when it failed)."""

    name: str
    reading: float | None
    shed_above: float
    restore_below: float
    over: bool
    """The last reading was above ``shed_above``."""
    error: str = ""
    """Why the last reading failed; "" when it did not."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DegradationSnapshot:
    """The controller at one moment: level, features, triggers, and the recent history."""

    at: float
    level: int
    """Features shed now (0: everything on)."""
    max_level: int
    """Non-essential features: the deepest possible level."""
    shed: tuple[str, ...]
    """The features shed now, in the order they were shed (restored from the end)."""
    features: tuple[FeatureStatus, ...]
    triggers: tuple[TriggerStatus, ...]
    history: tuple[DegradationEvent, ...]
    running: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "at": self.at,
            "level": self.level,
            "max_level": self.max_level,
            "shed": list(self.shed),
            "running": self.running,
            "features": [dataclasses.asdict(f) for f in self.features],
            "triggers": [dataclasses.asdict(t) for t in self.triggers],
            "history": [event.to_dict() for event in self.history],
        }


class DegradationController:
    """Sheds and restores :class:`Feature` s as :class:`Trigger` readings rise and fall.

    ``features`` and ``triggers`` have unique names. ``hold`` (seconds >= 0) is how long a
    condition must last before each level changes; ``interval`` (seconds > 0) is the period of
    the evaluation loop run by :meth:`start`; ``action_timeout`` (seconds > 0) bounds each
    ``shed``/``restore`` action; ``history`` (>= 1) bounds the kept events. All on ``clock``.
    :meth:`evaluate` runs one evaluation now. Raises
    :class:`~strategylab.errors.ConfigurationError` naming a bad argument.

    As a recovery-manager component it is called ``name`` and has ``start``/``stop``/``health``
    and ``degrade(level)``/``restore()``. One controller belongs to one event loop.
    """

    def __init__(
        self,
        features: Iterable[Feature],
        triggers: Iterable[Trigger] = (),
        *,
        clock: Clock = SYSTEM_CLOCK,
        hold: float = 5.0,
        interval: float = 1.0,
        action_timeout: float = 5.0,
        history: int = 256,
        name: str = "degradation",
    ) -> None:
        if not isinstance(clock, Clock):
            raise ConfigurationError("clock", clock, "must implement strategylab.clock.Clock")
        self._name = _name("name", name)
        self._features: dict[str, Feature] = {}
        for feature in features:
            if not isinstance(feature, Feature):
                raise ConfigurationError("features", feature, "must be a Feature")
            if feature.name in self._features:
                raise ConfigurationError("features", feature.name, "is listed twice")
            self._features[feature.name] = feature
        self._triggers: dict[str, Trigger] = {}
        for trigger in triggers:
            if not isinstance(trigger, Trigger):
                raise ConfigurationError("triggers", trigger, "must be a Trigger")
            if trigger.name in self._triggers:
                raise ConfigurationError("triggers", trigger.name, "is listed twice")
            self._triggers[trigger.name] = trigger
        self._clock = clock
        self._hold = _validate.seconds("hold", hold, allow_zero=True)
        self._interval = _validate.seconds("interval", interval)
        self._action_timeout = _validate.seconds("action_timeout", action_timeout)
        size = _validate.integer("history", history, minimum=1)
        self._history: collections.deque[DegradationEvent] = collections.deque(maxlen=size)
        # Shedding order: lowest priority first, the one listed first among equals.
        order = sorted(enumerate(self._features.values()), key=lambda p: (p[1].priority, p[0]))
        self._shed_order = tuple(f.name for _, f in order if not f.essential)
        self._shed: list[str] = []
        self._pinned: set[str] = set()
        """Shed by an operator (:meth:`shed_feature`): automatic restores leave them shed."""
        self._readings: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._pressure_since: float | None = None
        self._calm_since: float | None = None
        self._listeners: list[DegradationListener] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ reading

    @property
    def name(self) -> str:
        """The component name the recovery manager knows this controller by."""
        return self._name

    @property
    def level(self) -> int:
        """How many features are shed now."""
        return len(self._shed)

    @property
    def max_level(self) -> int:
        """How many features can be shed (the non-essential ones)."""
        return len(self._shed_order)

    @property
    def running(self) -> bool:
        """True while the evaluation loop runs."""
        return self._task is not None and not self._task.done()

    def is_active(self, name: str) -> bool:
        """True when the feature called ``name`` is on; ``KeyError`` naming it otherwise."""
        self._feature(name)
        return name not in self._shed

    def history(self) -> tuple[DegradationEvent, ...]:
        """The kept events, oldest first."""
        return tuple(self._history)

    def snapshot(self) -> DegradationSnapshot:
        """The level, every feature and trigger, and the kept history, frozen."""
        triggers = tuple(
            TriggerStatus(
                name=t.name,
                reading=self._readings.get(t.name),
                shed_above=t.shed_above,
                restore_below=t.restore_below,
                over=self._readings.get(t.name, -math.inf) > t.shed_above,
                error=self._errors.get(t.name, ""),
            )
            for t in self._triggers.values()
        )
        features = tuple(
            FeatureStatus(
                name=f.name,
                priority=f.priority,
                essential=f.essential,
                active=f.name not in self._shed,
                pinned=f.name in self._pinned,
            )
            for f in self._features.values()
        )
        return DegradationSnapshot(
            at=self._clock.monotonic(),
            level=self.level,
            max_level=self.max_level,
            shed=tuple(self._shed),
            features=features,
            triggers=triggers,
            history=tuple(self._history),
            running=self.running,
        )

    def add_listener(self, listener: DegradationListener) -> None:
        """Call ``listener(event)`` for every event; an exception from it is logged."""
        if not callable(listener):
            raise ConfigurationError("listener", listener, "must be callable")
        self._listeners.append(listener)

    def remove_listener(self, listener: DegradationListener) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was never added."""
        self._listeners.remove(listener)

    # ------------------------------------------------------------------ evaluation

    async def evaluate(self) -> DegradationEvent | None:
        """Read every trigger and shed or restore at most one level; the event, or None.

        A trigger whose ``read`` raises or returns a non-finite number is logged, shown in the
        snapshot, and counts as neither pressure nor calm (an unreadable signal must not restore
        a feature that is holding the system up).
        """
        async with self._lock:
            now = self._clock.monotonic()
            over, calm = self._pressure()
            if over is not None:
                self._calm_since = None
                if self._pressure_since is None:
                    self._pressure_since = now
                if now - self._pressure_since < self._hold:
                    return None
                event = await self._shed_next(over[0].name, over[1])
                if event is not None and event.ok:
                    self._pressure_since = now  # the next level waits another hold
                return event
            self._pressure_since = None
            name = next((n for n in reversed(self._shed) if n not in self._pinned), None)
            if not calm or name is None:
                self._calm_since = None
                return None
            if self._calm_since is None:
                self._calm_since = now
            if now - self._calm_since < self._hold:
                return None
            trigger_name, reading = self._calmest()
            event = await self._act("restore", self._features[name], trigger_name, reading)
            if event.ok:
                self._calm_since = now
            return event

    def _pressure(self) -> tuple[tuple[Trigger, float] | None, bool]:
        """Read every trigger: the first one above its shed threshold (with its reading), and
        whether every one reads below its restore threshold."""
        over: tuple[Trigger, float] | None = None
        calm = True
        for trigger in self._triggers.values():
            reading = self._read(trigger)
            if reading is None:
                calm = False
                continue
            if reading > trigger.shed_above and over is None:
                over = (trigger, reading)
            if not reading < trigger.restore_below:
                calm = False
        return over, calm

    def _read(self, trigger: Trigger) -> float | None:
        try:
            reading = float(trigger.read())
            if not math.isfinite(reading):
                raise ValueError(f"reading {reading!r} is not finite")  # noqa: TRY301
        except Exception as exc:
            self._readings.pop(trigger.name, None)
            error = f"{type(exc).__name__}: {exc}"
            if self._errors.get(trigger.name) != error:
                _log.warning("degradation trigger %s could not be read: %s", trigger.name, error)
            self._errors[trigger.name] = error
            return None
        self._errors.pop(trigger.name, None)
        self._readings[trigger.name] = reading
        return reading

    def _calmest(self) -> tuple[str, float | None]:
        """The trigger to credit a restore to: the first one (all are below their thresholds)."""
        first = next(iter(self._triggers), None)
        if first is None:
            return "manual", None
        return first, self._readings.get(first)

    async def _shed_next(self, trigger: str, reading: float | None) -> DegradationEvent | None:
        """Shed the lowest-priority feature still on; a failed one is recorded and the next
        tried, so that one level is shed if any can be. None when nothing is left to shed."""
        last: DegradationEvent | None = None
        for name in self._shed_order:
            if name in self._shed:
                continue
            last = await self._act("shed", self._features[name], trigger, reading)
            if last.ok:
                return last
        return last

    async def _act(
        self, action: str, feature: Feature, trigger: str, reading: float | None
    ) -> DegradationEvent:
        """Run ``feature``'s action (lock held), update the state, record and publish it."""
        fn = feature.shed if action == "shed" else feature.restore
        error = ""
        try:
            await wait_within(self._clock, _run(fn), self._action_timeout)
        except TimeoutError:
            error = f"timed out after {self._action_timeout:g}s"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if not error:
            if action == "shed":
                self._shed.append(feature.name)
            else:
                self._shed.remove(feature.name)
        event = DegradationEvent(
            action=action,
            feature=feature.name,
            trigger=trigger,
            reading=reading,
            at=self._clock.monotonic(),
            time=self._clock.time(),
            level=len(self._shed),
            ok=not error,
            error=error,
        )
        self._history.append(event)
        if error:
            _log.error("%s %s failed: %s", action, feature.name, error)
        else:
            _log.warning(
                "%s %s (%s=%s); level %d",
                action,
                feature.name,
                trigger,
                "-" if reading is None else f"{reading:g}",
                event.level,
            )
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("degradation listener %r raised", listener)
        return event

    # ------------------------------------------------------------------ requested changes

    async def shed_feature(self, name: str, *, reason: str = "manual") -> bool:
        """Shed the feature called ``name`` now (an operator's request) and keep it shed until
        :meth:`restore_feature` (automatic restores pass it by); False when it is shed already
        or its action failed. ``KeyError`` for an unknown name,
        :class:`~strategylab.errors.ConfigurationError` for an essential feature."""
        feature = self._feature(name)
        if feature.essential:
            raise ConfigurationError("feature", name, "is essential and is never shed")
        async with self._lock:
            if name in self._shed:
                self._pinned.add(name)
                return False
            done = (await self._act("shed", feature, reason, None)).ok
            if done:
                self._pinned.add(name)
            return done

    async def restore_feature(self, name: str, *, reason: str = "manual") -> bool:
        """Restore the feature called ``name`` now, out of order if need be; False when it is on
        already or its action failed. ``KeyError`` for an unknown name."""
        feature = self._feature(name)
        async with self._lock:
            if name not in self._shed:
                return False
            done = (await self._act("restore", feature, reason, None)).ok
            if done:
                self._pinned.discard(name)
            return done

    # ------------------------------------------------------------------ component face

    async def degrade(self, level: int) -> bool:
        """Shed features, lowest priority first, until at least ``level`` are shed (or all that
        can be); True when that many are shed, False when nothing can be shed."""
        wanted = _validate.integer("level", level, minimum=1)
        async with self._lock:
            while len(self._shed) < min(wanted, self.max_level):
                event = await self._shed_next("manager", None)
                if event is None or not event.ok:
                    break
            return self.max_level > 0 and len(self._shed) >= min(wanted, self.max_level)

    async def restore(self) -> bool:
        """Restore every shed feature in reverse order (but those an operator shed by name), once
        every trigger reads below its restore threshold; False while one does not (or an action
        failed)."""
        async with self._lock:
            for trigger in self._triggers.values():
                reading = self._read(trigger)
                if reading is None or not reading < trigger.restore_below:
                    return False
            while self._shed:
                event = await self._act("restore", self._features[self._shed[-1]], "manager", None)
                if not event.ok:
                    return False
            return True

    async def health(self) -> bool:
        """True when no trigger reads above its shed threshold (or fails to read) right now."""
        for trigger in self._triggers.values():
            reading = self._read(trigger)
            if reading is None or reading > trigger.shed_above:
                return False
        return True

    async def start(self) -> None:
        """Start the evaluation loop (every ``interval`` seconds; a no-op while it runs)."""
        if not self.running:
            self._task = asyncio.create_task(self._loop(), name=f"{self._name}:evaluate")

    async def stop(self) -> None:
        """Stop the evaluation loop and wait for it; shed features stay shed."""
        await cancel_and_wait((self._task,))
        self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:
                _log.exception("degradation evaluation failed")
            await self._clock.asleep(self._interval)

    def _feature(self, name: str) -> Feature:
        try:
            return self._features[name]
        except KeyError:
            raise KeyError(f"feature {name!r} is not known") from None

    def __repr__(self) -> str:
        return (
            f"DegradationController(name={self._name!r}, level={self.level}, shed={self._shed!r})"
        )


async def _run(fn: Action) -> None:
    result = fn()
    if inspect.isawaitable(result):
        await result
