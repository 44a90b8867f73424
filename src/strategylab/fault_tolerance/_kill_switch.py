"""The kill switch: an emergency shutdown in ordered steps, each bounded by a deadline.

:meth:`KillSwitch.trigger` runs, once per switch:

1. the caller's :class:`KillStep` s, in order. The node passes "halt trading" (the risk engine goes
   HALTED, new orders are rejected), "cancel open orders" at the exchange and "flush and fsync the
   ingest queue and spool". Each is bounded by its deadline on the injected clock: a step that
   overruns is cancelled, recorded as ``timed_out``, and the sequence goes on (a kill switch that
   hangs on a dead exchange would be worse than none). A step that raises is recorded as
   ``failed`` and the sequence goes on too;
2. ``snapshot``: ``snapshot_source()`` gives the :class:`StateSnapshot` (positions, open orders,
   last durable sequence per symbol), whose ``reason`` and ``time`` are set to the trigger's, and
   it is written atomically (:func:`write_snapshot`);
3. ``stop:NAME``: every component of the registry in reverse dependency order
   (:meth:`ComponentRegistry.stop_order`), each bounded by ``stop_deadline``;
4. ``marker``: the ``UNCLEAN_SHUTDOWN`` marker (:func:`mark_unclean`), last, naming the digest of
   the snapshot written in step 2 (None when that failed).

Every step is audited (name, outcome, duration) when an audit sink is given, and timed on the
clock (:class:`StepRecord`: start and end, so "trigger to trading halted" is
``report.elapsed("halt")``). The result is a frozen :class:`KillReport` with a non-zero exit code
(:data:`EXIT_EMERGENCY`, 3, the node's); ``exit(code)``, when given, is called with it at the end.

Triggers come from the caller (a bad signature, an exhausted CRITICAL chain, a crash loop, the
CLI, the HTTP admin call): :class:`TriggerSource` names them. A second trigger, while the first
runs or after it ended, joins the first and returns the same report.

The steps are callables given by the composition root; this module imports nothing from
``market``, ``trading`` or ``node``. Snapshot and marker writes are synchronous (a small file and
an fsync), on the event loop's thread, so nothing else runs between them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

from strategylab._clock_wait import wait_within
from strategylab._layout import DataLayout
from strategylab._validate import seconds as _seconds
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError

from ._component import AuditSink
from ._snapshot import StateSnapshot, mark_unclean, write_snapshot

__all__ = [
    "EXIT_EMERGENCY",
    "KillReport",
    "KillStep",
    "KillSwitch",
    "StepOutcome",
    "StepRecord",
    "TriggerSource",
]

_log = logging.getLogger(__name__)

EXIT_EMERGENCY: Final = 3
"""The exit code of a process after an emergency shutdown (the node's ``EXIT_EMERGENCY``)."""
AUDIT_KIND: Final = "kill_switch"
"""The ``kind`` of the kill switch's audit records."""


class TriggerSource(enum.Enum):
    """What pulled the kill switch."""

    SECURITY_VIOLATION = "security_violation"
    """Bad signatures or another security violation."""
    CRITICAL_CHAIN_EXHAUSTED = "critical_chain_exhausted"
    """The recovery manager ran out of strategies for a CRITICAL error."""
    CRASH_LOOP = "crash_loop"
    """A supervisor's child crashed past the restart intensity."""
    CLI = "cli"
    """``strategylab kill``."""
    HTTP = "http"
    """An authenticated ``POST /admin/kill``."""
    PARENT = "parent"
    """The parent process (a node's kill switch halting its trader child)."""
    API = "api"
    """Library code calling :meth:`KillSwitch.trigger` for another reason."""


class StepOutcome(enum.Enum):
    """How one step of the emergency shutdown ended."""

    OK = "ok"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class KillStep:
    """One caller-given step: ``action()`` (sync, or returning an awaitable) within ``deadline``
    seconds (finite, > 0) on the kill switch's clock.

    The deadline cuts an awaitable: it is cancelled when it overruns. A synchronous action runs
    on the event loop's thread and cannot be cut (it is recorded as ``timed_out`` when it
    overran); keep it short or make it async (``asyncio.to_thread``).
    Raises :class:`~strategylab.errors.ConfigurationError` naming the field for a bad name,
    action or deadline.
    """

    name: str
    action: Callable[[], object]
    deadline: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError("name", self.name, "must be a non-empty str")
        if not callable(self.action):
            raise ConfigurationError("action", self.action, "must be callable")
        object.__setattr__(self, "deadline", _seconds("deadline", self.deadline))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """One step as it ran: ``started``/``finished`` in clock seconds (monotonic), its
    ``deadline`` in seconds (``inf`` for the marker, a synchronous write), its ``outcome`` and,
    unless OK, the ``error`` (one line)."""

    name: str
    outcome: StepOutcome
    started: float
    finished: float
    deadline: float
    error: str | None = None

    @property
    def duration(self) -> float:
        """Seconds the step took (``finished - started``)."""
        return self.finished - self.started


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KillReport:
    """What an emergency shutdown did.

    ``reason`` and ``source`` of the trigger; ``triggered`` (clock seconds, monotonic) and
    ``triggered_time`` (aware-UTC ISO-8601); ``steps`` in the order they ran (the caller's, then
    ``snapshot``, ``stop:NAME`` for each component, ``marker``); ``snapshot_path`` and
    ``snapshot_sha256`` (None when no snapshot was written), ``marker_path`` (None when the
    marker could not be written); ``finished`` (clock seconds); ``exit_code`` (non-zero);
    ``joined``: how many later triggers joined this one.
    """

    reason: str
    source: TriggerSource
    triggered: float
    triggered_time: str
    steps: tuple[StepRecord, ...]
    snapshot_path: Path | None
    snapshot_sha256: str | None
    marker_path: Path | None
    finished: float
    exit_code: int

    @property
    def ok(self) -> bool:
        """True when every step ended OK."""
        return all(step.outcome is StepOutcome.OK for step in self.steps)

    @property
    def duration(self) -> float:
        """Seconds from the trigger to the end of the last step."""
        return self.finished - self.triggered

    def step(self, name: str) -> StepRecord:
        """The record of the step ``name``; ``KeyError`` naming it when no such step ran."""
        for record in self.steps:
            if record.name == name:
                return record
        raise KeyError(f"no step {name!r} in this kill report")

    def elapsed(self, name: str) -> float:
        """Seconds from the trigger to the end of step ``name`` (``"halt"``: trading halted)."""
        return self.step(name).finished - self.triggered

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary (durations in milliseconds; each step's ``elapsed_ms`` runs
        from the trigger to the end of that step: ``halt``'s is trigger -> trading halted)."""
        return {
            "reason": self.reason,
            "source": self.source.value,
            "triggered_time": self.triggered_time,
            "duration_ms": round(self.duration * 1000, 3),
            "exit_code": self.exit_code,
            "snapshot": None if self.snapshot_path is None else str(self.snapshot_path),
            "snapshot_sha256": self.snapshot_sha256,
            "marker": None if self.marker_path is None else str(self.marker_path),
            "steps": [
                {
                    "name": step.name,
                    "outcome": step.outcome.value,
                    "duration_ms": round(step.duration * 1000, 3),
                    "elapsed_ms": round((step.finished - self.triggered) * 1000, 3),
                    "error": step.error,
                }
                for step in self.steps
            ],
        }


class StopOrderSource(Protocol):
    """Where the components to stop come from; :class:`ComponentRegistry` is one."""

    def stop_order(self) -> tuple[str, ...]:
        """Component names, every dependant before what it depends on."""
        ...

    def get(self, name: str) -> object:
        """The component registered as ``name``."""
        ...


def _one_line(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ").strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class KillSwitch:
    """An emergency shutdown that runs once; see the module docstring for the sequence.

    ``steps``: the caller's :class:`KillStep` s, in order (names unique, and none of ``snapshot``,
    ``marker`` or ``stop:...``). ``layout``: the data directory (``snapshot.json`` and
    ``UNCLEAN_SHUTDOWN`` go there). ``snapshot_source()`` (sync or async) returns the
    :class:`StateSnapshot` to write, within ``snapshot_deadline`` seconds. ``registry``: the
    components to stop, each within ``stop_deadline`` seconds (optional). ``audit``: where each
    step is recorded (optional; an audit write that fails or takes longer than
    ``audit_deadline`` real seconds, a bound on I/O, is logged and the shutdown goes on).
    ``exit(code)`` is called with ``exit_code`` (non-zero) once the report is built (optional:
    the caller may exit itself).
    Raises :class:`~strategylab.errors.ConfigurationError` naming the bad argument.
    """

    def __init__(
        self,
        steps: Sequence[KillStep],
        *,
        layout: DataLayout,
        snapshot_source: Callable[[], StateSnapshot | Awaitable[StateSnapshot]],
        registry: StopOrderSource | None = None,
        clock: Clock = SYSTEM_CLOCK,
        audit: AuditSink | None = None,
        exit: Callable[[int], object] | None = None,  # noqa: A002 - the documented name
        exit_code: int = EXIT_EMERGENCY,
        snapshot_deadline: float = 1.0,
        stop_deadline: float = 1.0,
        audit_deadline: float = 1.0,
    ) -> None:
        steps = tuple(steps)
        names: set[str] = set()
        for step in steps:
            if not isinstance(step, KillStep):
                raise ConfigurationError("steps", step, "must be KillStep instances")
            if (
                step.name in names
                or step.name in {"snapshot", "marker"}
                or (step.name.startswith("stop:"))
            ):
                raise ConfigurationError(
                    "steps", step.name, "step names must be unique and not reserved"
                )
            names.add(step.name)
        if not isinstance(layout, DataLayout):
            raise ConfigurationError("layout", layout, "must be a DataLayout")
        if not callable(snapshot_source):
            raise ConfigurationError("snapshot_source", snapshot_source, "must be callable")
        if isinstance(exit_code, bool) or not isinstance(exit_code, int) or exit_code == 0:
            raise ConfigurationError("exit_code", exit_code, "must be a non-zero int")
        self._steps = steps
        self._layout = DataLayout(Path(layout.root))
        self._snapshot_source = snapshot_source
        self._registry = registry
        self._clock = clock
        self._audit = audit
        self._exit = exit
        self._exit_code = exit_code
        self._snapshot_deadline = _seconds("snapshot_deadline", snapshot_deadline)
        self._stop_deadline = _seconds("stop_deadline", stop_deadline)
        self._audit_deadline = _seconds("audit_deadline", audit_deadline)
        self._task: asyncio.Task[KillReport] | None = None
        self._report: KillReport | None = None
        self._joined = 0
        self._pending_audit: list[dict[str, object]] = []

    @property
    def triggered(self) -> bool:
        """True once :meth:`trigger` was called."""
        return self._task is not None

    @property
    def report(self) -> KillReport | None:
        """The report once the shutdown has finished; None before."""
        return self._report

    @property
    def joined(self) -> int:
        """How many triggers after the first joined it."""
        return self._joined

    async def trigger(self, reason: str, source: TriggerSource = TriggerSource.API) -> KillReport:
        """Run the emergency shutdown (once) and return its report.

        A later call, while it runs or after, joins the first run and returns the same report
        (its own ``reason`` is audited, not acted on). Cancelling a caller does not stop the
        shutdown: it runs in a task the switch owns. Raises ``ValueError`` for an empty
        ``reason`` and ``TypeError`` for a ``source`` that is not a :class:`TriggerSource`.
        """
        task = self.trigger_soon(reason, source)
        report = await asyncio.shield(task)
        if self._pending_audit:
            await self._flush_audit(None)  # a join after the end is audited too
        return report

    def trigger_soon(
        self, reason: str, source: TriggerSource = TriggerSource.API
    ) -> asyncio.Task[KillReport]:
        """Start the emergency shutdown (once) from synchronous code on the event loop's thread
        (a signal handler, a callback) and return its task; errors as :meth:`trigger`."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason={reason!r}: must be a non-empty str")
        if not isinstance(source, TriggerSource):
            raise TypeError(f"source={source!r}: must be a TriggerSource")
        if self._task is not None:
            self._joined += 1
            self._pending_audit.append(
                {"event": "trigger_joined", "reason": reason, "source": source.value}
            )
            return self._task
        triggered = self._clock.monotonic()
        self._task = asyncio.get_running_loop().create_task(
            self._run(reason, source, triggered), name="kill-switch"
        )
        return self._task

    async def _run(self, reason: str, source: TriggerSource, triggered: float) -> KillReport:
        clock = self._clock
        triggered_time = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC).isoformat()
        _log.critical("kill switch: %s (%s)", reason, source.value)
        self._pending_audit.insert(
            0, {"event": "triggered", "reason": reason, "source": source.value}
        )
        records: list[StepRecord] = []
        for step in self._steps:
            records.append(await self._bounded(step.name, step.action, step.deadline))
            await self._flush_audit(records[-1])

        record, snapshot_path, digest = await self._snapshot_step(reason, triggered_time)
        records.append(record)
        await self._flush_audit(record)

        if self._registry is not None:
            for record in await self._stop_components(self._registry):
                records.append(record)
                await self._flush_audit(record)

        record, marker_path = self._marker_step(reason, digest)
        records.append(record)
        await self._flush_audit(record)

        report = KillReport(
            reason=reason,
            source=source,
            triggered=triggered,
            triggered_time=triggered_time,
            steps=tuple(records),
            snapshot_path=snapshot_path,
            snapshot_sha256=digest,
            marker_path=marker_path,
            finished=clock.monotonic(),
            exit_code=self._exit_code,
        )
        self._pending_audit.append({"event": "finished", **report.to_dict()})
        await self._flush_audit(None)
        self._report = report
        _log.critical(
            "kill switch finished in %.3fs: %s",
            report.duration,
            ", ".join(f"{s.name}={s.outcome.value}" for s in report.steps),
        )
        if self._exit is not None:
            self._exit(report.exit_code)
        return report

    async def _snapshot_step(
        self, reason: str, triggered_time: str
    ) -> tuple[StepRecord, Path | None, str | None]:
        """Take the snapshot (bounded) and write it: the record, the path and the digest."""
        taken: list[StateSnapshot] = []

        async def take_snapshot() -> None:
            result = self._snapshot_source()
            snapshot = await result if inspect.isawaitable(result) else result
            if not isinstance(snapshot, StateSnapshot):
                raise TypeError(f"snapshot_source returned {type(snapshot).__name__}")
            taken.append(snapshot)

        record = await self._bounded("snapshot", take_snapshot, self._snapshot_deadline)
        if not taken:
            return record, None, None
        try:
            snapshot = dataclasses.replace(taken[0], reason=reason, time=triggered_time)
            path = write_snapshot(self._layout, snapshot)
        except Exception as exc:
            _log.error("kill switch: snapshot not written: %s", exc)
            failed = dataclasses.replace(
                record,
                outcome=StepOutcome.FAILED,
                finished=self._clock.monotonic(),
                error=_one_line(exc),
            )
            return failed, None, None
        return dataclasses.replace(record, finished=self._clock.monotonic()), path, snapshot.digest

    def _marker_step(self, reason: str, digest: str | None) -> tuple[StepRecord, Path | None]:
        """Write the unclean-shutdown marker: the record and the path (None when it failed)."""
        started = self._clock.monotonic()
        error: str | None
        written: Path | None
        try:
            path = mark_unclean(
                self._layout, reason, snapshot_sha256=digest, clock=self._clock
            ).path
        except Exception as exc:
            _log.error("kill switch: marker not written: %s", exc)
            outcome, error, written = StepOutcome.FAILED, _one_line(exc), None
        else:
            outcome, error, written = StepOutcome.OK, None, path
        record = StepRecord(
            name="marker",
            outcome=outcome,
            started=started,
            finished=self._clock.monotonic(),
            deadline=math.inf,
            error=error,
        )
        return record, written

    async def _stop_components(self, registry: StopOrderSource) -> list[StepRecord]:
        clock = self._clock
        try:
            order = registry.stop_order()
        except Exception as exc:
            now = clock.monotonic()
            return [
                StepRecord(
                    name="stop:*",
                    outcome=StepOutcome.FAILED,
                    started=now,
                    finished=now,
                    deadline=math.inf,
                    error=_one_line(exc),
                )
            ]
        records = []
        for name in order:

            async def stop(name: str = name) -> None:
                component = registry.get(name)
                stopper = getattr(component, "stop", None)
                if not callable(stopper):
                    raise TypeError(f"component {name!r} has no stop()")
                result = stopper()
                if inspect.isawaitable(result):
                    await result

            records.append(await self._bounded(f"stop:{name}", stop, self._stop_deadline))
        return records

    async def _bounded(
        self, name: str, action: Callable[[], object], deadline: float
    ) -> StepRecord:
        """Run ``action`` within ``deadline`` on the clock; the outcome, never an exception
        (except the caller's own cancellation)."""
        clock = self._clock
        started = clock.monotonic()
        outcome = StepOutcome.OK
        error: str | None = None
        try:
            result = action()
            if inspect.isawaitable(result):
                await wait_within(clock, result, deadline)
        except TimeoutError as exc:
            # The deadline's TimeoutError comes at the deadline; a step's own (a socket's)
            # earlier one is a failure of the step.
            if clock.monotonic() - started >= deadline:
                outcome, error = StepOutcome.TIMED_OUT, f"did not finish within {deadline:g}s"
            else:
                outcome, error = StepOutcome.FAILED, _one_line(exc)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the shutdown itself is cancelled: never swallowed
            outcome, error = StepOutcome.FAILED, _one_line(exc) or "cancelled"
        except Exception as exc:
            outcome, error = StepOutcome.FAILED, _one_line(exc)
        finished = clock.monotonic()
        if outcome is StepOutcome.OK and finished - started > deadline:
            # A synchronous action cannot be cut; it still counts as overrunning.
            outcome, error = StepOutcome.TIMED_OUT, f"took {finished - started:.3f}s"
        if outcome is not StepOutcome.OK:
            _log.error("kill switch step %s: %s (%s)", name, outcome.value, error)
        return StepRecord(
            name=name,
            outcome=outcome,
            started=started,
            finished=finished,
            deadline=deadline,
            error=error,
        )

    async def _flush_audit(self, record: StepRecord | None) -> None:
        if record is not None:
            self._pending_audit.append(
                {
                    "event": "step",
                    "step": record.name,
                    "outcome": record.outcome.value,
                    "duration_ms": round(record.duration * 1000, 3),
                    "error": record.error,
                }
            )
        pending, self._pending_audit = self._pending_audit, []
        if self._audit is None:
            return
        for data in pending:
            try:
                # A bound on one I/O call (a write and an fsync in a thread), so on the loop's
                # own timer: an injected clock cannot see a thread make progress.
                async with asyncio.timeout(self._audit_deadline):
                    await self._audit.aappend(AUDIT_KIND, data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.error("kill switch: audit record %s not written: %s", data, exc)
