"""The optimiser: a parameter grid or a random search over backtests in worker processes.

Each job is one parameter set. The optimiser turns it into a spec with ``make_spec(parameters,
scope)`` (``scope`` is the fraction of the data to run over: 1.0, then smaller after a timeout)
and runs ``job(spec) -> metrics`` in a worker process. Only the metrics (a small ``str -> float``
mapping) travel back; a full backtest result (trades, equity curve) never crosses the pipe.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: it cannot kill the one worker whose job
overran (there is no per-task process), and a worker that dies makes the whole pool BROKEN, failing
every pending job with it. So the optimiser owns its workers: one ``multiprocessing`` process per
slot, each with a pipe; a slot sends one job at a time and waits, on the event loop, for either
the pipe or the process sentinel to become readable, with a deadline on the injected ``clock``
(the job's ``timeout`` and the worker's ``startup_timeout``; the elapsed times in the report are
read from it too). Hence:

- a job that overruns its timeout is an OPTIMIZATION_TIMEOUT: its worker is SIGKILLed and reaped,
  a fresh worker takes its place, and the job runs again at ``scope * shrink``; after
  ``max_shrinks`` smaller attempts that also overrun it is SKIPPED, with the reason;
- a worker that dies (crash, ``os._exit``, SIGKILL, the OOM killer) loses only its own job: the
  slot reaps it, starts a new worker and retries that job up to ``max_crash_retries`` times, then
  reports it FAILED with the exit status; every other slot keeps going;
- a job that raises is FAILED at once with the exception's type and message (a deterministic
  backtest that raised will raise again; the backtest engine retries its own transient failures);
- :meth:`Optimizer.cancel` stops taking jobs, SIGKILLs every worker and returns what finished,
  the rest marked CANCELLED; every worker is reaped before :meth:`Optimizer.arun` returns, also
  when the calling task is cancelled.

Workers start with the ``spawn`` method by default: ``fork`` from a process that has threads
(the event loop's executor, SQLite's writer thread) can deadlock the child and is deprecated
there, and ``forkserver`` only passes the parent's ``sys.path`` on when it is first started. The
job function (and the spec) must therefore be picklable: module-level functions and plain data.
Workers ignore SIGINT, so Ctrl-C reaches only the parent, which cancels cleanly.

Errors are reported to an optional :class:`ErrorRecoveryManager` with component ``name``
(``"optimizer"``); the optimiser is itself a ``Component`` whose ``health()`` is True while every
worker it holds is alive, so the manager's RETRY strategy observes the replaced pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import random
import signal
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from strategylab._clock_wait import wait_within
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import (
    ErrorReporter,
    ErrorType,
    KnobValue,
    ScalingKnob,
    scale_knobs,
)

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext, SpawnProcess

    from strategylab.fault_tolerance import ErrorRecoveryManager

    from ._spec import BacktestSpec

__all__ = [
    "BACKTEST_METRICS",
    "JobCrashedError",
    "JobError",
    "JobResult",
    "JobStatus",
    "OptimizationReport",
    "OptimizationTimeoutError",
    "Optimizer",
    "ParamValue",
    "WorkerStartError",
    "backtest_metrics",
    "grid",
    "random_search",
    "rank",
    "scoped_backtest_spec",
    "share_backtest_read",
    "shared_backtest_read",
]

ParamValue = int | float | str | bool
"""One parameter's value."""

S = TypeVar("S")

_ASCENDING_METRICS: Final = frozenset({"max_drawdown", "drawdown"})
_REAP_DEADLINE: Final = 5.0
"""Seconds a worker gets to exit (on request, or after SIGKILL). A bound on the kernel, not a
policy: it follows the event loop's timer, so a FakeClock never leaves a worker unreaped."""
_READY: Final = "ready"


# ---------------------------------------------------------------------------------------- errors


class OptimizationTimeoutError(StrategyLabError, TimeoutError):
    """A job ran past the per-job timeout; its worker was killed."""

    error_type = ErrorType.OPTIMIZATION_TIMEOUT

    def __init__(self, parameters: Mapping[str, ParamValue], timeout: float, scope: float) -> None:
        super().__init__(
            f"backtest {dict(parameters)!r} at scope {scope:g} overran the {timeout:g}s timeout"
        )
        self.parameters = dict(parameters)
        self.timeout = timeout
        self.scope = scope


class JobCrashedError(StrategyLabError):
    """A worker process died while it ran a job."""

    error_type = ErrorType.BACKTEST_ENGINE_FAILURE

    def __init__(self, parameters: Mapping[str, ParamValue], exit_status: str) -> None:
        super().__init__(f"worker running {dict(parameters)!r} died ({exit_status})")
        self.parameters = dict(parameters)
        self.exit_status = exit_status


class WorkerStartError(StrategyLabError):
    """A worker process could not start (often: the job function cannot be unpickled there)."""

    error_type = ErrorType.CONFIGURATION_ERROR

    def __init__(self, job: object, detail: str) -> None:
        super().__init__(
            f"optimizer worker for job {job!r} failed to start ({detail}); the job must be a "
            "module-level function importable in a fresh interpreter"
        )
        self.detail = detail


class JobError(StrategyLabError):
    """A job raised inside its worker; carries the original exception's type and message."""

    error_type = ErrorType.BACKTEST_ENGINE_FAILURE

    def __init__(self, parameters: Mapping[str, ParamValue], description: str) -> None:
        super().__init__(f"backtest {dict(parameters)!r} raised {description}")
        self.parameters = dict(parameters)
        self.description = description


# --------------------------------------------------------------------------------------- records


class JobStatus(enum.Enum):
    """How a job ended."""

    OK = "ok"
    RETRIED_SMALLER = "retried-smaller"
    """It overran at full scope and finished at a smaller one: its metrics cover less data."""
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    """One row of the results table."""

    index: int
    """Position of the parameter set in the input."""
    parameters: Mapping[str, ParamValue]
    status: JobStatus
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    attempts: int = 0
    scope: float = 1.0
    """The scope of the last attempt."""
    reason: str = ""
    """Why it was retried, skipped, failed or cancelled; empty for a clean OK."""
    elapsed: float = 0.0
    """Seconds from the first attempt's start to the end of the last."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationReport:
    """Every job's result in input order, and whether the run was cancelled."""

    results: tuple[JobResult, ...]
    cancelled: bool
    elapsed: float
    worker_pids: tuple[int, ...]
    """Every worker process the run started (all of them reaped by the time this exists)."""

    def ranked(self, metric: str, *, descending: bool | None = None) -> list[JobResult]:
        """The results best first by ``metric`` (see :func:`rank`)."""
        return rank(self.results, metric, descending=descending)

    def count(self, status: JobStatus) -> int:
        """How many jobs ended with ``status``."""
        return sum(1 for r in self.results if r.status is status)


def rank(
    results: Sequence[JobResult], metric: str, *, descending: bool | None = None
) -> list[JobResult]:
    """``results`` best first by ``metric``; rows without it (skipped, failed...) go last.

    Higher is better except for drawdowns, where the smallest magnitude is best (whichever sign
    convention the backtest uses). ``descending`` overrides the direction.
    """
    if descending is None:
        descending = metric not in _ASCENDING_METRICS

    def key(row: JobResult) -> tuple[int, float, int]:
        value = row.metrics.get(metric)
        if value is None or math.isnan(value):
            return (1, 0.0, row.index)
        if metric in _ASCENDING_METRICS:
            value = abs(value)
        return (0, -value if descending else value, row.index)

    return sorted(results, key=key)


# ----------------------------------------------------------------------------- parameter spaces


def grid(space: Mapping[str, Sequence[ParamValue]]) -> list[dict[str, ParamValue]]:
    """Every combination of the listed values (the cartesian product), in a stable order."""
    for name, values in space.items():
        if not values:
            raise ValueError(f"grid[{name!r}]=[]: give at least one value")
    names = list(space)
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(space[n] for n in names))
    ]


def random_search(
    ranges: Mapping[str, tuple[float, float]],
    n: int,
    *,
    rng: random.Random | int = 0,
    fixed: Mapping[str, ParamValue] | None = None,
) -> list[dict[str, ParamValue]]:
    """``n`` distinct parameter sets drawn from ``ranges`` (inclusive), reproducibly.

    A range whose bounds are both ints draws ints, otherwise floats. ``rng`` is a seed or a
    ``random.Random``. Fewer than ``n`` sets come back only when the integer space is smaller
    than ``n``. ``fixed`` values are added to every set.
    """
    if n < 1:
        raise ValueError(f"n={n!r}: must be >= 1")
    for name, (low, high) in ranges.items():
        if not low <= high:
            raise ValueError(f"range {name}={low}:{high}: the low bound exceeds the high bound")
    source = rng if isinstance(rng, random.Random) else random.Random(rng)
    size = math.prod(
        int(high) - int(low) + 1 if _is_int_range(low, high) else math.inf
        for low, high in ranges.values()
    )
    wanted = int(min(n, size))
    seen: set[tuple[ParamValue, ...]] = set()
    out: list[dict[str, ParamValue]] = []
    # Bounded: with ints a near-full space could otherwise make the last draws take long.
    for _ in range(wanted * 50):
        if len(out) == wanted:
            break
        draw: dict[str, ParamValue] = {
            name: (
                source.randint(int(low), int(high))
                if _is_int_range(low, high)
                else source.uniform(low, high)
            )
            for name, (low, high) in ranges.items()
        }
        key = tuple(draw.values())
        if key in seen:
            continue
        seen.add(key)
        out.append({**(fixed or {}), **draw})
    return out


def _is_int_range(low: float, high: float) -> bool:
    return isinstance(low, int) and isinstance(high, int)


# ----------------------------------------------------------------------------------- the worker


def _worker_main(conn: multiprocessing.connection.Connection, job: Callable[[S], object]) -> None:
    """A worker's loop: receive ``(index, spec)``, send ``(index, ok, metrics | description)``."""
    # Ctrl-C goes to the whole process group; only the parent decides what to do with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Ready only now, after the interpreter started and the job unpickled (its module imported):
    # the per-job timeout must measure the job, not the worker's start-up.
    conn.send(_READY)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, spec = message
        try:
            metrics = _as_metrics(job(spec))
        except Exception as exc:
            conn.send((index, False, f"{type(exc).__name__}: {exc}"))
        else:
            conn.send((index, True, metrics))


def _as_metrics(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise TypeError(f"the job returned {type(value).__name__}, expected a str -> float mapping")
    return {str(k): float(v) for k, v in value.items()}


def _exit_status(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Worker:
    __slots__ = ("conn", "process")

    def __init__(self, process: SpawnProcess, conn: multiprocessing.connection.Connection) -> None:
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int:
        pid = self.process.pid
        if pid is None:  # pragma: no cover - only before start()
            raise RuntimeError("worker not started")
        return pid


class _RunCancelledError(Exception):
    """Internal: the run was cancelled while a slot was busy."""


# -------------------------------------------------------------------------------- the optimiser


ProgressCallback = Callable[[JobResult, int, int], None]
"""Called after each job with its result, the jobs done so far and the total."""


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


class Optimizer(Generic[S]):
    """Runs ``job(make_spec(parameters, scope))`` for many parameter sets in worker processes.

    ``job`` must be picklable (a module-level function) and return a ``str -> float`` mapping of
    metrics. ``make_spec`` runs in the parent. See the module docstring for the failure handling.
    ``timeout``, ``startup_timeout`` and the elapsed times of the report are seconds on ``clock``.
    """

    def __init__(
        self,
        job: Callable[[S], Mapping[str, float]],
        make_spec: Callable[[Mapping[str, ParamValue], float], S],
        *,
        max_workers: int | None = None,
        worker_limit: int | None = None,
        timeout: float = 60.0,
        shrink: float = 0.5,
        max_shrinks: int = 1,
        max_crash_retries: int = 1,
        startup_timeout: float = 60.0,
        manager: ErrorRecoveryManager | None = None,
        progress: ProgressCallback | None = None,
        name: str = "optimizer",
        mp_context: BaseContext | str = "spawn",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        workers = default_workers() if max_workers is None else max_workers
        if workers < 1:
            raise ValueError(f"max_workers={max_workers!r}: must be >= 1")
        ceiling = max(2 * workers, default_workers()) if worker_limit is None else worker_limit
        if ceiling < workers:
            raise ValueError(f"worker_limit={worker_limit!r}: must be >= max_workers ({workers})")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout={timeout!r}: must be a finite number of seconds > 0")
        if not 0 < shrink < 1:
            raise ValueError(f"shrink={shrink!r}: must be between 0 and 1 (exclusive)")
        if not (math.isfinite(startup_timeout) and startup_timeout > 0):
            raise ValueError(f"startup_timeout={startup_timeout!r}: must be a finite number > 0")
        if max_shrinks < 0:
            raise ValueError(f"max_shrinks={max_shrinks!r}: must be >= 0")
        if max_crash_retries < 0:
            raise ValueError(f"max_crash_retries={max_crash_retries!r}: must be >= 0")
        self._job = job
        self._make_spec = make_spec
        self.max_workers = workers
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.shrink = float(shrink)
        self.max_shrinks = max_shrinks
        self.max_crash_retries = max_crash_retries
        self._progress = progress
        self._name = name
        self._clock = clock
        self._ctx = (
            multiprocessing.get_context(mp_context) if isinstance(mp_context, str) else mp_context
        )
        self._workers: set[_Worker] = set()
        self._pids: list[int] = []
        self._cancelled = False
        self._running = False
        # While a run is in progress: its task group and queue, so a scaled worker count can
        # add slots (or let surplus ones retire after their current job).
        self._group: asyncio.TaskGroup | None = None
        self._pending: deque[tuple[int, Mapping[str, ParamValue]]] = deque()
        self._finish: Callable[[JobResult], None] | None = None
        self._active_slots = 0
        self._knob = ScalingKnob(
            name="max_workers",
            getter=lambda: self.max_workers,
            setter=self._set_workers,
            lower=1,
            upper=ceiling,
        )
        # In owned tasks (a recovery may probe health() with backoff: it must not hold up the
        # other jobs), unfolded: every failed job is an error of its own.
        self._reporter = ErrorReporter(
            manager, component=name, quiet=0.0, recovered_quiet=0.0, clock=clock
        )

    # ------------------------------------------------------------------ Component protocol

    @property
    def name(self) -> str:
        """The component name errors are reported under (``"optimizer"`` unless given)."""
        return self._name

    async def start(self) -> None:
        """Nothing to start: workers are started with a run, one per slot, on demand."""

    async def stop(self) -> None:
        """Cancel a running optimisation (see :meth:`cancel`)."""
        self.cancel()

    async def health(self) -> bool:
        """True unless a worker the optimiser holds has died without being replaced yet."""
        return all(w.process.is_alive() for w in list(self._workers))

    # ------------------------------------------------------------------ public API

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """Every worker process started so far (including replaced ones)."""
        return tuple(self._pids)

    def knobs(self) -> tuple[KnobValue, ...]:
        """The scalable resources (``max_workers``) with their values and bounds."""
        return (self._knob.snapshot(),)

    async def scale(self, factor: float) -> bool:
        """``Scalable.scale``: multiply the worker count by ``factor`` within
        ``[1, worker_limit]`` (default: twice ``max_workers`` or the CPU count, the larger);
        False at the bound. In a running optimisation, more workers start at once for the jobs
        not yet started; fewer let the surplus workers retire after their current job."""
        return scale_knobs((self._knob,), factor)

    def _set_workers(self, count: int) -> None:
        self.max_workers = count
        group, finish = self._group, self._finish
        if group is None or finish is None:
            return
        for _ in range(min(count, len(self._pending)) - self._active_slots):
            try:
                group.create_task(self._slot(self._pending, finish))
            except RuntimeError:  # the run is finishing: nothing left to start
                return
            self._active_slots += 1

    def _stopping(self) -> bool:
        # A call, not the attribute: cancel() flips it while a slot awaits.
        return self._cancelled

    def cancel(self) -> None:
        """Stop taking jobs and kill every worker; the run returns its partial results.

        Safe from a signal handler or a progress callback; idempotent.
        """
        self._cancelled = True
        for worker in list(self._workers):
            _kill(worker)

    def run(self, parameter_sets: Sequence[Mapping[str, ParamValue]]) -> OptimizationReport:
        """Run every parameter set (blocking); see :meth:`arun`."""
        return asyncio.run(self.arun(parameter_sets))

    async def arun(self, parameter_sets: Sequence[Mapping[str, ParamValue]]) -> OptimizationReport:
        """Run every parameter set; the report lists them in input order."""
        if self._running:
            raise RuntimeError(f"{self._name}: a run is already in progress")
        self._running = True
        started = self._clock.monotonic()
        total = len(parameter_sets)
        pending: deque[tuple[int, Mapping[str, ParamValue]]] = deque(enumerate(parameter_sets))
        results: dict[int, JobResult] = {}

        def finish(result: JobResult) -> None:
            results[result.index] = result
            if self._progress is not None:
                self._progress(result, len(results), total)

        try:
            slots = min(self.max_workers, total)
            async with asyncio.TaskGroup() as group:
                self._group, self._pending, self._finish = group, pending, finish
                for _ in range(slots):
                    group.create_task(self._slot(pending, finish))
                    self._active_slots += 1
        except ExceptionGroup as group:
            # A worker that cannot start is a setup error: raise it as itself, not in a group.
            start_errors, rest = group.split(WorkerStartError)
            if start_errors is not None and rest is None:
                raise start_errors.exceptions[0] from None
            raise
        finally:
            self._group = self._finish = None
            self._active_slots = 0
            await self._shutdown()
            self._running = False
        for index, parameters in pending:
            results.setdefault(
                index,
                JobResult(
                    index=index,
                    parameters=dict(parameters),
                    status=JobStatus.CANCELLED,
                    reason="cancelled before it started",
                ),
            )
        return OptimizationReport(
            results=tuple(results[i] for i in sorted(results)),
            cancelled=self._cancelled,
            elapsed=self._clock.monotonic() - started,
            worker_pids=tuple(self._pids),
        )

    # ------------------------------------------------------------------ slots

    async def _slot(
        self,
        pending: deque[tuple[int, Mapping[str, ParamValue]]],
        finish: Callable[[JobResult], None],
    ) -> None:
        """Run jobs from ``pending`` on one worker; counted in ``_active_slots`` by its creator."""
        worker: _Worker | None = None
        try:
            while pending and not self._cancelled:
                if self._active_slots > self.max_workers:
                    break  # scaled down: this slot's worker retires
                index, parameters = pending.popleft()
                result, worker = await self._run_job(index, dict(parameters), worker)
                finish(result)
        finally:
            self._active_slots -= 1
        # On an exception (or cancellation) the worker is left to _shutdown, which kills it.
        if worker is not None:
            await self._retire(worker)

    async def _run_job(  # noqa: C901 - one attempt loop, each branch one outcome
        self, index: int, parameters: dict[str, ParamValue], worker: _Worker | None
    ) -> tuple[JobResult, _Worker | None]:
        scope = 1.0
        attempts = shrinks = crashes = 0
        notes: list[str] = []
        started = self._clock.monotonic()

        def done(
            status: JobStatus, metrics: dict[str, float] | None = None, reason: str | None = None
        ) -> JobResult:
            return JobResult(
                index=index,
                parameters=parameters,
                status=status,
                metrics=metrics or {},
                attempts=attempts,
                scope=scope,
                reason="; ".join(notes) if reason is None else reason,
                elapsed=self._clock.monotonic() - started,
            )

        while True:
            if self._stopping():
                return done(JobStatus.CANCELLED, reason=_joined(notes, "cancelled")), worker
            spec = self._make_spec(parameters, scope)
            if worker is None:
                try:
                    worker = await self._spawn()
                except _RunCancelledError:
                    continue
            attempts += 1
            try:
                message = await self._attempt(worker, index, spec)
            except TimeoutError:
                await self._reap(worker)
                worker = None
                if self._stopping():
                    continue
                error = OptimizationTimeoutError(parameters, self.timeout, scope)
                self._reporter.report(error)
                notes.append(f"overran {self.timeout:g}s at scope {scope:g}")
                if shrinks < self.max_shrinks:
                    shrinks += 1
                    scope *= self.shrink
                    continue
                return done(JobStatus.SKIPPED), None
            except _RunCancelledError:
                await self._reap(worker)
                worker = None
                continue
            if message is None:
                status = await self._reap(worker)
                worker = None
                if self._stopping():
                    continue
                self._reporter.report(JobCrashedError(parameters, status))
                notes.append(f"worker died ({status}) at scope {scope:g}")
                if crashes < self.max_crash_retries:
                    crashes += 1
                    continue
                return done(JobStatus.FAILED), None
            ok, payload = message
            if not ok:
                assert isinstance(payload, str)  # noqa: S101 - the worker's protocol
                self._reporter.report(JobError(parameters, payload))
                notes.append(f"raised {payload}")
                return done(JobStatus.FAILED), worker
            assert isinstance(payload, dict)  # noqa: S101 - the worker's protocol
            status_ok = JobStatus.OK if shrinks == 0 else JobStatus.RETRIED_SMALLER
            return done(status_ok, metrics=payload), worker

    async def _attempt(
        self, worker: _Worker, index: int, spec: S
    ) -> tuple[bool, dict[str, float] | str] | None:
        """Run one job on ``worker``; None when the worker died. Raises TimeoutError on overrun."""
        try:
            worker.conn.send((index, spec))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return None
        await self._readable(worker, self.timeout)
        if self._cancelled:
            raise _RunCancelledError
        try:
            if not worker.conn.poll():
                return None
            reply_index, ok, payload = worker.conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            # The worker died, perhaps half-way through writing its answer.
            return None
        if reply_index != index:  # pragma: no cover - one job per worker at a time
            return None
        return ok, payload

    # ------------------------------------------------------------------ worker lifecycle

    async def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child, self._job),
            name=f"{self._name}-worker",
            daemon=True,
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.add(worker)
        self._pids.append(worker.pid)
        if self._stopping():
            # cancel() ran while this worker was starting: it must not outlive the run.
            _kill(worker)
        try:
            await self._readable(worker, self.startup_timeout)
        except TimeoutError:
            await self._reap(worker)
            raise WorkerStartError(
                self._job, f"not ready within {self.startup_timeout:g}s"
            ) from None
        if self._stopping():
            await self._reap(worker)
            raise _RunCancelledError
        try:
            hello = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            hello = None
        if hello != _READY:
            status = await self._reap(worker)
            raise WorkerStartError(self._job, status)
        return worker

    async def _readable(self, worker: _Worker, deadline: float) -> None:
        """Wait until ``worker`` answered or died; TimeoutError after ``deadline`` seconds."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        conn_fd, sentinel = worker.conn.fileno(), worker.process.sentinel
        loop.add_reader(conn_fd, wake)
        loop.add_reader(sentinel, wake)
        try:
            await wait_within(self._clock, ready, deadline)
        finally:
            loop.remove_reader(conn_fd)
            loop.remove_reader(sentinel)

    async def _retire(self, worker: _Worker) -> None:
        """Ask an idle worker to exit; kill it if it does not within the deadline."""
        with contextlib.suppress(OSError):
            worker.conn.send(None)
        await self._reap(worker, kill=False)

    async def _reap(self, worker: _Worker, *, kill: bool = True) -> str:
        """Kill (unless asked not to) and wait for ``worker``; its exit status, for reports."""
        if kill:
            _kill(worker)
        process = worker.process
        if process.exitcode is None:
            loop = asyncio.get_running_loop()
            gone = loop.create_future()

            def wake() -> None:
                if not gone.done():
                    gone.set_result(None)

            loop.add_reader(process.sentinel, wake)
            try:
                async with asyncio.timeout(_REAP_DEADLINE):
                    await gone
            except TimeoutError:
                _kill(worker)
            finally:
                loop.remove_reader(process.sentinel)
        process.join(_REAP_DEADLINE)
        status = _exit_status(process.exitcode)
        worker.conn.close()
        process.close()
        self._workers.discard(worker)
        return status

    async def _shutdown(self) -> None:
        """Reap every worker and settle the error reports; runs however the run ends."""
        leftovers = list(self._workers)
        for worker in leftovers:
            _kill(worker)
        for worker in leftovers:
            await self._reap(worker, kill=False)
        if self._cancelled:
            await self._reporter.aclose()
        else:
            await self._reporter.ajoin()


def _kill(worker: _Worker) -> None:
    process = worker.process
    try:
        if process.exitcode is None:
            process.kill()
    except (ValueError, ProcessLookupError):  # already closed, or already gone
        pass


def _joined(notes: list[str], last: str) -> str:
    return "; ".join([*notes, last])


# ------------------------------------------------------------------------- backtests as jobs

BACKTEST_METRICS: Final = ("pnl", "sharpe", "max_drawdown", "trades", "fees", "ticks")
"""What :func:`backtest_metrics` returns, in table order."""


def backtest_metrics(spec: BacktestSpec) -> dict[str, float]:
    """The optimiser's job: run one backtest in this (worker) process, return its headline metrics.

    Only these numbers cross back to the parent, not the trades or the equity curve.
    """
    from ._spec import run_backtest  # noqa: PLC0415 - the worker pays the import, once

    result = run_backtest(spec)
    metrics = {
        "pnl": result.total_pnl,
        "max_drawdown": result.max_drawdown,
        "trades": float(len(result.trades)),
        "fees": result.fees,
        "ticks": float(result.ticks),
    }
    if result.sharpe is not None:  # None: too few periods to annualise (ranked last, shown n/a)
        metrics["sharpe"] = result.sharpe
    return metrics


def share_backtest_read(base: BacktestSpec) -> BacktestSpec:
    """``base``, with its ticks read once for all the jobs made from it.

    Call it in the parent before running the optimiser: it brings the columnar snapshot of
    ``base``'s SQLite store up to date for ``base.symbol`` (one sync, here) and returns ``base``
    with ``pinned=True``, so that every job reads that snapshot as it stands (memory-mapped, no
    sync, no SQLite read; each worker maps and validates it once and keeps it for its later
    jobs). Every job then also sees the same ticks, even if the store grows meanwhile. ``base``
    unchanged for a PostgreSQL store (:func:`shared_backtest_read` shares its read),
    ``columnar=False``, or a place where no snapshot can be kept (a read-only directory: each
    job then reads SQLite).
    """
    from strategylab.market import is_postgres_url  # noqa: PLC0415

    from ._columnar import sync_columnar  # noqa: PLC0415

    if not base.columnar or is_postgres_url(base.db_path):
        return base
    if not sync_columnar(base.db_path, [base.symbol]).available:
        return base
    return dataclasses.replace(base, pinned=True)


@contextlib.contextmanager
def shared_backtest_read(base: BacktestSpec) -> Iterator[BacktestSpec]:
    """``base``, with its ticks read once for all the jobs made from it, while the block runs.

    An SQLite store: :func:`share_backtest_read` (the columnar snapshot, synced once). A
    PostgreSQL store: ``base``'s range of ``base.symbol`` is read here, in one read-only snapshot
    (:func:`~._pg_data.load_postgres_arrays`), into a private temporary directory of one ``.npy``
    file per column, and the spec yielded names it (``shared_ticks``): every job maps those
    files (the page cache holds them once) instead of querying the server, and every job sees
    the same ticks. The directory is removed when the block exits. Raises what the read raises
    (:class:`~strategylab.market.StoreUnreachableError`,
    :class:`~strategylab.market.StoreUnusableError`).
    """
    from strategylab.market import is_postgres_url  # noqa: PLC0415

    if not is_postgres_url(base.db_path):
        yield share_backtest_read(base)
        return
    from ._pg_data import load_postgres_arrays, remove_shared, share_arrays  # noqa: PLC0415

    ticks = load_postgres_arrays(
        base.db_path,
        base.symbol,
        base.from_seq,
        base.to_seq,
        table=base.pg_table,
        schema=base.pg_schema,
    )
    directory = share_arrays(ticks)
    del ticks
    try:
        yield dataclasses.replace(base, shared_ticks=str(directory))
    finally:
        remove_shared(directory)


def scoped_backtest_spec(
    base: BacktestSpec, parameters: Mapping[str, ParamValue], scope: float
) -> BacktestSpec:
    """``base`` with ``parameters``, over the first ``scope`` of its sequence range.

    ``base.to_seq`` must be set (the caller knows the stored range); scope 0.5 runs the first half
    of the ticks, never fewer than one.
    """
    if base.to_seq is None:
        raise ValueError("base.to_seq=None: a scoped spec needs the end of the range")
    count = base.to_seq - base.from_seq + 1
    to_seq = base.from_seq + max(1, math.ceil(count * scope)) - 1
    return dataclasses.replace(
        base, parameters={**base.parameters, **parameters}, to_seq=min(to_seq, base.to_seq)
    )
