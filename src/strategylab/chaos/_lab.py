"""The measuring fault runner and the suite runner: :class:`LabRun` and :func:`run_lab`.

:class:`LabRun` is the :class:`~strategylab.chaos.Lab` a scenario gets for one category. Its
:meth:`LabRun.fault` probes the system every 0.1 s (an availability probe and a recovery probe,
each in its own loop) while it injects a fault, holds it, heals it (always: through
:func:`~strategylab.chaos.injected`), and waits for three passing recovery probes in a row; it
reads the node's status lines for the ingest rate and the recovery manager's error count. Times
are monotonic seconds:

- ``t_inject``: the injector returned (the fault is on);
- ``t_detect``: the first failed probe taken after ``t_inject``, or the arrival of the first
  status line whose recovery-manager error count rose, whichever is first;
- ``t_heal``: the heal returned;
- ``t_recovered``: the completion of the first of three passing recovery probes in a row, each
  started after ``t_heal`` (after ``t_inject`` for a fault healed by failover). A sample is
  stamped when the probe completed, so no figure is ever earlier than what the lab saw.

:meth:`LabRun.integrity` waits for the store to catch up and runs the Jepsen-style checker
(:func:`~strategylab.chaos.check_store`) over the node's store against the exchange's emitted log
and the node's ack log.

:func:`run_lab` runs the categories in order against one :class:`~strategylab.chaos.Pipeline`
(the node is started again between categories only when one left it down), turns a scenario's
exception into the category's ``error``, heals whatever is still in force however the run ends
(:class:`~strategylab.chaos.HealGuard`), and verifies the node's audit log at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import resource
import secrets
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from strategylab._files import make_private_dir, open_private
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.fault_tolerance import AuditLog
from strategylab.market import (
    QuarantinedTick,
    StoreUnreachableError,
    StoreUnusableError,
    Tick,
    open_tick_reader,
    read_acks,
)

from ._checker import CheckInputError, IntegrityReport, TickSource, check
from ._harness import NodeLine, Pipeline, PipelineConfig, PipelineError
from ._injector import FaultSkippedError, HealGuard, Injector, injected
from ._measure import FaultRun, ProbeSample
from ._probes import all_of, node_ready, node_serving, store_caught_up
from ._run_model import LabEvent, LabOptions, LabReport
from ._scenario import CategoryResult, Check, Integrity, Lab, Probe, Scenario
from ._severity import Severity

__all__ = ["CappedSource", "LabRun", "cross_check_recorded", "run_lab"]

PROBE_INTERVAL: Final = 0.1
"""Seconds between two probes of one kind."""
RECOVERY_STREAK: Final = 3
"""Passing recovery probes in a row that make a recovery."""
_STEADY_TIMEOUT: Final = 10.0
_CATCH_UP_TIMEOUT: Final = 20.0
_DETAIL_MAX: Final = 200

EventSink = Callable[[LabEvent], None]


class LabRun:
    """The :class:`~strategylab.chaos.Lab` of one category: the pipeline, the severity, a random
    source seeded from ``(seed, category id)``, and the result being filled.

    ``guard`` keeps every fault in force so that a run torn down from outside heals it;
    ``on_event`` receives progress events (it must not raise). ``report_dir`` is where the
    integrity report of the category is written as JSON (nothing is written when ``None``).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        scenario: Scenario,
        *,
        severity: Severity = Severity.MEDIUM,
        seed: int = 42,
        guard: HealGuard | None = None,
        on_event: EventSink | None = None,
        report_dir: Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.pipeline = pipeline
        self.severity = severity
        self.rng = random.Random(f"strategylab-lab:{seed}:{scenario.id}")
        self.result = CategoryResult(
            id=scenario.id,
            name=scenario.name,
            seed_criterion=scenario.seed_criterion,
            own_criterion=scenario.own_criterion,
        )
        self.guard = guard if guard is not None else HealGuard()
        self._on_event = on_event
        self._report_dir = report_dir
        self._clock = clock
        self.integrity_paths: list[Path] = []

    # ------------------------------------------------------------------ events

    def emit(self, kind: Any, **fields: Any) -> None:
        """Send a :class:`LabEvent` of ``kind`` for this category to the callback."""
        if self._on_event is None:
            return
        self._on_event(
            LabEvent(
                kind=kind,
                t=self._clock.monotonic(),
                category=self.result.id,
                category_name=self.result.name,
                **fields,
            )
        )

    # ------------------------------------------------------------------ the Lab protocol

    def check(self, name: str, ok: bool, detail: str = "", *, independent: bool = True) -> None:
        """Record an observation; a failed one fails the category."""
        self.result.checks.append(Check(name=name, ok=ok, detail=detail, independent=independent))
        self.emit("note", ok=ok, text=f"check {name}: {'ok' if ok else 'FAILED'} {detail}")

    async def fault(
        self,
        injector: Injector,
        *,
        hold: float,
        sla: float,
        failover: bool = False,
        availability: Probe | None = None,
        recovered: Probe | None = None,
        recover_timeout: float = 30.0,
    ) -> FaultRun:
        """Inject ``injector``, hold it ``hold`` seconds while probing, heal it, and wait at most
        ``recover_timeout`` seconds for :data:`RECOVERY_STREAK` passing recovery probes in a row.

        ``availability`` defaults to :func:`node_serving` (``/health/live`` 200 and ``/status``
        answers), ``recovered`` to ``/health/ready`` 200 and the store caught up. The run is
        appended to :attr:`result` and returned; a fault that cannot run here is recorded with
        ``skipped`` set, an injector that fails with ``error`` set. Raises :class:`ValueError`
        for a negative ``hold`` or a non-positive ``sla``/``recover_timeout``.
        """
        if hold < 0:
            raise ValueError(f"hold={hold!r}: must be >= 0 (seconds)")
        if not sla > 0:
            raise ValueError(f"sla={sla!r}: must be > 0 (seconds)")
        if not recover_timeout > 0:
            raise ValueError(f"recover_timeout={recover_timeout!r}: must be > 0 (seconds)")
        run = FaultRun(
            name=injector.name,
            kind=injector.kind,
            severity=injector.severity.value,
            sla=sla,
            healed_by_failover=failover,
        )
        run.extra["fault"] = injector.describe()
        self.result.faults.append(run)
        watch = _Watch(self, run, availability or node_serving(self.pipeline),
                       recovered or all_of(node_ready(self.pipeline),
                                           store_caught_up(self.pipeline)))  # fmt: skip
        stats_before = await self._statistics()
        async with asyncio.TaskGroup() as tasks:
            watch.start(tasks)
            try:
                await self._run_fault(watch, injector, hold, recover_timeout)
            finally:
                watch.stop()
        stats_after = await self._statistics()
        restarted = watch.node_starts != self.pipeline.node_starts
        _record_node_errors(run, stats_before, stats_after, restarted=restarted)
        return run

    async def _run_fault(
        self, watch: _Watch, injector: Injector, hold: float, recover_timeout: float
    ) -> None:
        run, clock = watch.run, self._clock
        if not await watch.wait_steady(_STEADY_TIMEOUT):
            run.notes.append(f"not in steady state within {_STEADY_TIMEOUT:g} s before the fault")
        try:
            async with injected(injector, self.guard):
                run.t_inject = clock.monotonic()
                self.emit("fault", fault=run.name, text=f"{run.name} on for {hold:g} s")
                await clock.asleep(hold)
        except FaultSkippedError as exc:
            run.skipped = exc.reason
            self.emit("note", fault=run.name, text=f"{run.name} skipped: {exc.reason}")
            return
        except Exception as exc:  # the injector failed: a lab error, recorded on the run
            run.error = f"{type(exc).__name__}: {exc}"
            self.emit("note", fault=run.name, ok=False, text=f"{run.name}: {run.error}")
            return
        run.t_heal = clock.monotonic()
        self.emit("healed", fault=run.name)
        inject = run.t_inject
        start = inject if run.healed_by_failover and inject is not None else run.t_heal
        run.t_recovered = await watch.wait_recovered(start, run.t_heal + recover_timeout)
        if run.t_recovered is None:
            run.notes.append(f"not recovered within {recover_timeout:g} s of the heal")
        else:
            # One more status line, so that an error the node recorded meanwhile is seen.
            await watch.next_status_line(2.0 * self.pipeline.config.status_interval + 0.5)
        self.emit(
            "recovered",
            fault=run.name,
            ok=run.t_recovered is not None,
            text="" if run.t_recovered is not None or not run.notes else run.notes[-1],
        )

    async def _statistics(self) -> dict[str, Any] | None:
        try:
            stats = (await self.pipeline.status()).get("statistics")
        except PipelineError:
            return None
        return stats if isinstance(stats, dict) else None

    async def integrity(self) -> Integrity:
        """Wait (at most 20 s) for the store to catch up with the exchange, then run the checker
        over the store against the emitted log and the node's ack log; recorded in
        :attr:`result`. Raises :class:`~strategylab.chaos.CheckInputError` or
        :class:`~strategylab.market.StoreCorruptedError` when the store cannot be read."""
        pipeline = self.pipeline
        deadline = self._clock.monotonic() + _CATCH_UP_TIMEOUT
        caught, detail = False, "node down"
        while pipeline.node_running and self._clock.monotonic() < deadline:
            caught, detail = await pipeline.caught_up()
            if caught:
                break
            await self._clock.asleep(PROBE_INTERVAL)
        if not caught:
            self.emit("note", text=f"integrity: store not caught up ({detail})")
        report = await _check_snapshot(pipeline, self._clock)
        integ = Integrity.of(report, caught=caught, detail=detail)
        self.result.integrity = integ
        if self._report_dir is not None:
            path = self._report_dir / f"integrity-{self.result.id:02d}.json"
            fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(integ.report, out, indent=1)
            self.integrity_paths.append(path)
        return integ


async def _check_snapshot(pipeline: Pipeline, clock: Clock) -> IntegrityReport:
    """The checker over the node's store as of one instant, though both keep growing.

    The ack watermarks are read first, then the exchange's ``last_seq`` per symbol (the exchange
    logs a batch before it sends it, so the emitted log read later holds every tick up to it);
    the store is read up to that ``last_seq`` and the watermarks capped at it. A tick stored
    after that instant is left to the next check instead of counting as unexpected.
    """
    acks = (
        await asyncio.to_thread(read_acks, pipeline.acks_path)
        if pipeline.acks_path.exists()
        else {}
    )
    last: dict[str, int] | None = None
    for _ in range(20):  # an api_errors fault may still answer a few requests
        try:
            status = await pipeline.exchange_status()
        except PipelineError:
            await clock.asleep(PROBE_INTERVAL)
            continue
        last = {str(k): int(v) for k, v in status.get("last_seq", {}).items()}
        break
    if last is None:
        raise PipelineError("integrity: the exchange's /api/status never answered 200")
    capped_acks = {s: min(n, last.get(s, n)) for s, n in acks.items()}
    source = open_tick_reader(pipeline.store)
    try:
        await source.open()
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(str(exc)) from exc
    try:
        report = await check(
            pipeline.ledger_path, CappedSource(source, last), capped_acks, clock=clock
        )
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(str(exc)) from exc
    finally:
        await source.aclose()
    return report


class CappedSource:
    """A :class:`~strategylab.chaos.TickSource` that reads a store only up to ``last`` per
    symbol (a symbol the exchange never emitted is read whole: its ticks are unexpected)."""

    def __init__(self, store: TickSource, last: dict[str, int]) -> None:
        self._store = store
        self._last = last

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        cap = self._last.get(symbol)
        if cap is not None:
            to_seq = cap if to_seq is None else min(to_seq, cap)
            if to_seq < from_seq:
                return []
        return await self._store.read(symbol, from_seq, to_seq)

    async def symbols(self) -> list[str]:
        return await self._store.symbols()

    async def duplicates(self) -> int:
        return await self._store.duplicates()

    async def quarantined(self) -> list[QuarantinedTick]:
        return [
            q
            for q in await self._store.quarantined()
            if q.seq is None or q.symbol is None or q.seq <= self._last.get(q.symbol, q.seq)
        ]


class _Watch:
    """The probe loops and the status-line reader of one fault run."""

    def __init__(self, lab: LabRun, run: FaultRun, availability: Probe, recovery: Probe) -> None:
        self.lab = lab
        self.run = run
        self.availability = availability
        self.recovery = recovery
        self.clock = lab._clock  # noqa: SLF001 - our own helper
        self.changed = asyncio.Event()
        self.recovery_starts: list[tuple[float, ProbeSample]] = []
        """``(probe start, sample)`` of each recovery probe, in completion order."""
        self.node_starts = lab.pipeline.node_starts
        self._seen: NodeLine | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, tasks: asyncio.TaskGroup) -> None:
        self._tasks = [
            tasks.create_task(self._loop(self.availability, "availability")),
            tasks.create_task(self._loop(self.recovery, "recovery")),
            tasks.create_task(self._lines()),
        ]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _loop(self, probe: Probe, name: str) -> None:
        clock, run = self.clock, self.run
        while True:
            began = clock.monotonic()
            try:
                ok, detail = await probe()
            except Exception as exc:  # a probe that raises has failed; the detail says how
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            t = clock.monotonic()
            sample = ProbeSample(t=t, ok=ok, probe=name, detail=detail[:_DETAIL_MAX])
            run.samples.append(sample)
            if name == "recovery":
                self.recovery_starts.append((began, sample))
            if not ok and run.t_inject is not None and began >= run.t_inject:
                self._detected(t)
            self.changed.set()
            self.lab.emit("probe", fault=run.name, ok=ok, text=f"{name}: {detail[:80]}")
            await clock.asleep(max(0.0, PROBE_INTERVAL - (clock.monotonic() - began)))

    def _detected(self, t: float) -> None:
        run = self.run
        if run.t_detect is None or t < run.t_detect:
            run.t_detect = t

    async def _lines(self) -> None:
        """Follow the node's status lines: ingest rate from ``ticks_stored`` and a rise of the
        recovery manager's error count (a detection)."""
        pipeline, run = self.lab.pipeline, self.run
        seen: NodeLine | None = pipeline.last_status
        while True:
            line = pipeline.last_status
            if line is not None and line is not seen:
                if seen is not None and line.t > seen.t:
                    stored = _int(line.data.get("ticks_stored"))
                    before = _int(seen.data.get("ticks_stored"))
                    if stored is not None and before is not None and stored >= before:
                        rate = (stored - before) / (line.t - seen.t)
                        run.rates.append((line.t, round(rate, 1)))
                        self.lab.emit("rate", fault=run.name, ticks_per_s=rate)
                    errors, errors_before = _errors(line), _errors(seen)
                    # A count that fell is a node started again, counting from zero.
                    rose = errors is not None and (
                        errors > (errors_before or 0)
                        or (errors_before is not None and 0 < errors < errors_before)
                    )
                    if run.t_inject is not None and line.t >= run.t_inject and rose:
                        self._detected(line.t)
                seen = self._seen = line
            await self.clock.asleep(PROBE_INTERVAL / 2)

    async def next_status_line(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until the node printed a status line the reader saw."""
        first = self.lab.pipeline.last_status
        deadline = self.clock.monotonic() + seconds
        while self.clock.monotonic() < deadline:
            line = self.lab.pipeline.last_status
            if line is not None and line is not first and line is self._seen:
                return
            await self.clock.asleep(PROBE_INTERVAL / 2)

    async def wait_steady(self, seconds: float) -> bool:
        """Wait until a recovery probe passes (the steady state before the fault)."""
        deadline = self.clock.monotonic() + seconds
        while self.clock.monotonic() < deadline:
            if any(s.ok for _b, s in self.recovery_starts[-1:]):
                return True
            await self._changed(deadline)
        return False

    async def wait_recovered(self, start: float, deadline: float) -> float | None:
        """The completion time of the first of :data:`RECOVERY_STREAK` passing recovery probes
        in a row started at or after ``start``; ``None`` when ``deadline`` passes first."""
        while True:
            streak: list[ProbeSample] = []
            for began, sample in self.recovery_starts:
                if began < start:
                    continue
                streak = [*streak, sample] if sample.ok else []
                if len(streak) >= RECOVERY_STREAK:
                    return streak[0].t
            if self.clock.monotonic() >= deadline:
                return None
            await self._changed(deadline)

    async def _changed(self, deadline: float) -> None:
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - self.clock.monotonic())):
                await self.changed.wait()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _errors(line: NodeLine) -> int | None:
    recovery = line.data.get("recovery")
    return _int(recovery.get("errors")) if isinstance(recovery, dict) else None


def _record_node_errors(
    run: FaultRun,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    restarted: bool,
) -> None:
    """What the recovery manager recorded during ``run``: errors by type, recoveries that
    succeeded and failed (from ``/status`` ``statistics`` before and after; a node started
    again in between counts from zero)."""
    if after is None:
        run.extra["node_errors"] = None
        return
    base = {} if (before is None or restarted) else before

    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(base.get(key, 0))

    types_after = after.get("error_type_distribution", {}) or {}
    types_before = base.get("error_type_distribution", {}) or {}
    run.extra["node_errors"] = delta("total_errors")
    run.extra["node_recoveries"] = delta("successful_recoveries")
    run.extra["node_failed_recoveries"] = delta("failed_recoveries")
    run.extra["node_error_types"] = {
        k: int(v) - int(types_before.get(k, 0))
        for k, v in types_after.items()
        if int(v) - int(types_before.get(k, 0)) > 0
    }


def cross_check_recorded(lab: Lab, run: FaultRun, *, expected: bool = True) -> None:
    """Cross-check the recovery manager against the lab for ``run``: when ``expected`` and the
    lab saw the fault (a failed probe or an error line), the manager must have recorded at least
    one error in the window, else the category fails with a :class:`Check` saying so. A fault
    the manager recorded although no probe failed is noted on the run, not failed (the node may
    well hide a fault from its users)."""
    if run.skipped is not None or run.error is not None:
        return
    recorded = run.extra.get("node_errors")
    seen = run.t_detect is not None
    if recorded is None:
        lab.check(
            f"{run.name}: recovery manager statistics", ok=False, detail="node /status unreadable"
        )
        return
    if expected and seen:
        types = run.extra.get("node_error_types", {})
        lab.check(
            f"{run.name}: recovery manager recorded the fault the lab saw",
            recorded > 0,
            f"lab detected it after {run.detection_time or 0:.3f} s; manager recorded "
            f"{recorded} error(s) {types}",
            independent=False,
        )
    elif recorded > 0 and not seen:
        run.notes.append(f"the manager recorded {recorded} error(s) no probe saw")


# ---------------------------------------------------------------------- the suite


def _machine(options: LabOptions) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "root": hasattr(os, "geteuid") and os.geteuid() == 0,
        "store": "postgresql" if options.postgres else "sqlite",
    }
    with contextlib.suppress(ImportError, OSError):
        import psutil  # noqa: PLC0415 - optional detail of the report

        info["memory_bytes"] = psutil.virtual_memory().total
    return info


def _verify_audit(path: Path, anchor: Path) -> bool | None:
    if not path.exists():
        return None
    try:
        AuditLog.verify(path, anchor=anchor if anchor.exists() else None)
    except Exception:  # any failure to verify is a "no"; the path is in the report
        return False
    return True


def probe_capabilities() -> dict[str, str]:
    """What this machine lacks for some faults, probed once at the start of a run: capability
    -> why it is missing (an empty mapping when everything can run). The faults that need a
    missing one are reported SKIPPED with the same reason; none is simulated."""
    from ._inject_process import PauseProcess  # noqa: PLC0415 - the probes only
    from ._throwaway_pg import ThrowawayPostgres, storage_capability  # noqa: PLC0415

    probes: dict[str, Callable[[], str | None]] = {
        "signals through a pidfd (process kill, pause, CPU quota)": lambda: PauseProcess(
            lambda: None
        ).capability(),
        "a throwaway PostgreSQL server (server pause and kill)": lambda: (
            ThrowawayPostgres().capability()
        ),
        "a size-limited tmpfs (storage full on a volume)": storage_capability,
        "RLIMIT_FSIZE of another process (storage full on the node)": lambda: (
            None if hasattr(resource, "prlimit") else "this platform has no prlimit"
        ),
    }
    missing: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            reason = probe()
        except Exception as exc:  # a probe that cannot even run: the capability is missing
            reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            missing[name] = reason
    return missing


def _own_schema(dsn: str) -> tuple[str, str]:
    """Create a schema for this run on ``dsn``'s database; ``(schema, a DSN whose
    search_path is that schema)`` (a ``postgresql://`` URL stays one). Raises
    :class:`PipelineError` naming the server when it cannot."""
    import psycopg  # noqa: PLC0415 - only with --postgres

    schema = f"strategylab_lab_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
    except psycopg.Error as exc:
        raise PipelineError(f"--postgres: cannot create the run's schema: {exc}") from exc
    option = f"options=-csearch_path%3D{schema}"
    if dsn.startswith(("postgresql://", "postgres://")):
        return schema, f"{dsn}{'&' if '?' in dsn else '?'}{option}"
    return schema, psycopg.conninfo.make_conninfo(dsn, options=f"-csearch_path={schema}")


def _drop_schema(dsn: str, schema: str) -> None:
    """Drop the run's own schema (it created it; nothing else lives there)."""
    import psycopg  # noqa: PLC0415 - only with --postgres

    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn,
    ):
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                psycopg.sql.Identifier(schema)
            )
        )


async def run_lab(
    options: LabOptions,
    scenarios: Sequence[Scenario],
    on_event: EventSink | None = None,
    *,
    pipeline_config: PipelineConfig | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> LabReport:
    """Run ``scenarios`` in order against one pipeline and report every category.

    The pipeline runs in ``options.work_dir`` (a fresh temporary directory, kept for the report,
    when ``None``); ``pipeline_config`` overrides its settings (its ``work_dir`` wins). A
    scenario's exception becomes its category's ``error`` and the run goes on; a category that
    did not check integrity itself is checked after it. Cancellation (Ctrl-C) heals every fault
    still in force and stops the children before it propagates.
    """
    origin = clock.monotonic()
    started_wall = dt.datetime.now(dt.UTC).isoformat()
    if pipeline_config is not None:
        config = pipeline_config
    else:
        work = options.work_dir or Path(tempfile.mkdtemp(prefix="strategylab-lab-"))
        config = PipelineConfig(work_dir=work, seed=options.seed, postgres=options.postgres)
    schema: str | None = None
    if config.postgres is not None:
        # A fresh schema of the run's own on the server given: a second run (or anything
        # else in that database) never mixes its ticks with this run's.
        schema, dsn = await asyncio.to_thread(_own_schema, config.postgres)
        config = dataclasses.replace(config, postgres=dsn)
    report_dir = make_private_dir(config.work_dir / "integrity")
    guard = HealGuard()
    results: list[CategoryResult] = []
    integrity_paths: list[Path] = []

    def emit(event: LabEvent) -> None:
        if on_event is not None:
            on_event(event)

    capabilities = await asyncio.to_thread(probe_capabilities)
    for name, reason in capabilities.items():
        emit(LabEvent(kind="note", t=clock.monotonic(), text=f"not here: {name}: {reason}"))
    pipeline = Pipeline(config, clock=clock)
    try:
        async with pipeline:
            for scenario in scenarios:
                lab = LabRun(
                    pipeline, scenario, severity=options.severity, seed=options.seed,
                    guard=guard, on_event=emit, report_dir=report_dir, clock=clock,
                )  # fmt: skip
                results.append(lab.result)
                await _run_category(lab, scenario, pipeline)
                integrity_paths += lab.integrity_paths
    finally:
        failures = await asyncio.shield(guard.heal_all())
        for name, exc in failures:
            emit(LabEvent(kind="note", t=clock.monotonic(), text=f"heal of {name} failed: {exc}"))
        if schema is not None and options.postgres is not None:
            await asyncio.shield(asyncio.to_thread(_drop_schema, options.postgres, schema))
    audit_verified = await asyncio.to_thread(
        _verify_audit, pipeline.audit_path, pipeline.audit_anchor_path
    )
    emit(LabEvent(kind="note", t=clock.monotonic(), text="lab run finished"))
    return LabReport(
        options=options,
        results=results,
        started_wall=started_wall,
        origin=origin,
        duration_s=clock.monotonic() - origin,
        machine=_machine(options),
        audit_log=pipeline.audit_path if pipeline.audit_path.exists() else None,
        audit_verified=audit_verified,
        integrity_reports=integrity_paths,
        skipped_capabilities=capabilities,
    )


AGREEMENT_WINDOW: Final = 5.0
"""Seconds the node's own view may take to agree with the lab that everything recovered."""


async def _node_agrees(lab: LabRun, pipeline: Pipeline) -> None:
    """Held to account: the lab saw every fault of the category recover, so the node's own
    health monitor must say every component is healthy and its recovery manager must have no
    recovery still running, within :data:`AGREEMENT_WINDOW` seconds. A disagreement fails the
    category (one of the two is wrong about the system)."""
    clock = lab._clock  # noqa: SLF001 - our own helper
    deadline = clock.monotonic() + AGREEMENT_WINDOW
    seen = "no /status answer"
    while True:
        try:
            status = await pipeline.status()
        except PipelineError as exc:
            status, seen = None, str(exc)
        if status is not None:
            unwell = [
                f"{c.get('name')}={c.get('state')}"
                for c in status.get("components") or []
                if c.get("state") not in {"healthy", None}
            ]
            active = [str(r.get("component", r)) for r in status.get("active_recoveries") or []]
            if not unwell and not active:
                lab.check(
                    "the node's health monitor and recovery manager agree it recovered",
                    ok=True,
                    detail="every component healthy, no recovery running",
                    independent=False,
                )
                return
            seen = f"unhealthy: {unwell or 'none'}; recoveries running: {active or 'none'}"
        if clock.monotonic() >= deadline:
            break
        await clock.asleep(0.2)
    lab.check(
        "the node's health monitor and recovery manager agree it recovered",
        ok=False,
        detail=f"the lab saw every fault recover, but {AGREEMENT_WINDOW:.0f} s later the node "
        f"says {seen}",
        independent=False,
    )


async def _run_category(lab: LabRun, scenario: Scenario, pipeline: Pipeline) -> None:
    result = lab.result
    result.started = lab._clock.monotonic()  # noqa: SLF001 - our own helper
    lab.emit("category", text=scenario.description or scenario.name)
    try:
        if not pipeline.node_running:
            lab.emit("note", text="the node was down: starting it again")
            await pipeline.start_node()
        await scenario.run(lab)
    except Exception as exc:  # a scenario's failure is its category's, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        failures = await asyncio.shield(lab.guard.heal_all())
        for name, failure in failures:
            result.error = result.error or f"heal of {name} failed: {failure}"
    if result.integrity is None and result.skipped is None:
        try:
            if not pipeline.node_running:
                await pipeline.start_node()
            await lab.integrity()
        except Exception as exc:  # the checker could not read the store: a lab error
            result.error = result.error or f"integrity check: {type(exc).__name__}: {exc}"
    if result.ran and all(f.recovered for f in result.ran) and pipeline.node_running:
        await _node_agrees(lab, pipeline)
    result.ended = lab._clock.monotonic()  # noqa: SLF001
    verdict = result.verdict
    lab.emit("done", ok=verdict == "pass", text=verdict)
