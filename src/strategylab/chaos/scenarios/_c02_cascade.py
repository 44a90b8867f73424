"""Category 2, cascading failure: database → WebSocket → strategy → backtest, overlapping.

Three faults, staggered so that each starts while the previous one is still in force, each run
through :meth:`~strategylab.chaos.Lab.fault` concurrently (each with its own probes and figures):

1. ``database.sqlite_lock`` at 0 s, held 3 s (x severity): the store's write lock; the node
   fails over to its spool. Recovered = ready, spool drained back, caught up.
2. ``network.partition_feed`` at 0.8 s, held 2 s (x severity): a blackhole on the feed's
   proxy; the node's feed goes stale and reconnects. Recovered = ready and caught up.
3. ``process.kill_trader`` at 1.6 s: SIGKILL of the node's trader child; the node's supervisor
   restarts it. Recovered = a new trader pid, alive in the process table, and the supervisor's
   snapshot in ``/status`` counting the restart with the exit recorded.

4. A backtest (``python -m strategylab backtest --db STORE --json``, a process) starts at 2 s,
   while all three are still in force or just healed, and must complete with a result.

"Functional" is checked apart from the faults' own recovery: the node answered ``/health/live``
and ``/status`` on every availability probe of the cascade, and its pid never changed (process
table); the trader came back; the backtest exited 0 with a result; the store caught up after
the heal; the checker found the store clean. The stages are checked to have overlapped (each
injected before the previous one healed), from the lab's own timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

import psutil

from strategylab._children import ChildGuard, ChildProcesses
from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_database import PgLockHolder, SQLiteLockHolder
from strategylab.chaos._inject_network import Partition
from strategylab.chaos._inject_process import KillProcess
from strategylab.chaos._injector import Injector
from strategylab.chaos._lab import LabRun, cross_check_recorded
from strategylab.chaos._measure import FaultRun
from strategylab.chaos._probes import all_of, node_ready, store_caught_up
from strategylab.chaos._scenario import Criterion, Lab, Scenario

from ._c04_database import DATABASE_SLA, lab_run, store_recovered

__all__ = ["CascadingFailure", "trader_back"]

_BACKTEST_TIMEOUT: Final = 30.0
_API_SLA: Final = 10.0
_CRITICAL_SLA: Final = 30.0


def _trader_child(status: dict[str, Any]) -> dict[str, Any] | None:
    children = status.get("supervisor", {}).get("children", [])
    for child in children if isinstance(children, list) else []:
        if isinstance(child, dict) and child.get("id") == "trader":
            return child
    return None


class TraderBack:
    """A probe: the node's trader runs and is alive in the process table; once ``killed()``
    names a pid (the kill injected), it must be a new process whose predecessor's exit and
    restart the supervisor recorded (its restart count above the one seen before the kill)."""

    def __init__(self, pipeline: Pipeline, killed: Callable[[], int | None]) -> None:
        self.pipeline = pipeline
        self.killed = killed
        self.restarts_before = 0
        self.seen: dict[str, Any] = {}

    async def __call__(self) -> tuple[bool, str]:  # noqa: PLR0911 - one reason per failure
        try:
            status = await self.pipeline.status()
        except PipelineError as exc:
            return False, str(exc)
        child = _trader_child(status)
        if child is None:
            return False, "no trader in the supervisor's snapshot"
        pid = child.get("pid")
        restarts = int(child.get("restarts") or 0)
        if not isinstance(pid, int) or child.get("status") != "running":
            return False, f"trader {child.get('status')} (pid {pid})"
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            return False, f"trader pid {pid} is not in the process table"
        killed = self.killed()
        if killed is None:
            self.restarts_before = restarts
            return True, f"trader pid {pid} running"
        if pid == killed:
            return False, f"trader still pid {pid} (the killed one)"
        if restarts <= self.restarts_before:
            return False, f"supervisor counts {restarts} restart(s), none new"
        self.seen = {
            "pid": pid,
            "restarts": restarts,
            "last_exit_status": child.get("last_exit_status"),
            "last_reason": child.get("last_reason"),
        }
        return True, f"trader pid {pid} running, {restarts} restart(s)"


def trader_back(pipeline: Pipeline, killed: Callable[[], int | None]) -> TraderBack:
    """A probe that the trader came back after a kill (see :class:`TraderBack`)."""
    return TraderBack(pipeline, killed)


class CascadingFailure(Scenario):
    """Database, WebSocket and strategy faults overlapping, and a backtest run through them."""

    id: ClassVar[int] = 2
    name: ClassVar[str] = "cascading failure"
    description: ClassVar[str] = "database → WebSocket → strategy → backtest, overlapping"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.75, zero_loss=True, text="≥ 75 % recovered, system stays functional"
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        availability=0.99,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % recovered within SLA, node serving ≥ 99 %, zero lost/duplicated/corrupted",
    )

    async def run(self, lab: Lab) -> None:
        run_lab = lab_run(lab, self)
        pipeline, sev = run_lab.pipeline, lab.severity
        node_pid = pipeline.node_pid
        trader_pid = await pipeline.trader_pid()
        lock: Injector
        if pipeline.config.postgres is not None:
            lock = PgLockHolder(pipeline.config.postgres, sev)
        elif pipeline.store_path is not None:
            lock = SQLiteLockHolder(pipeline.store_path, sev)
        else:  # pragma: no cover - the pipeline has one or the other
            raise PipelineError("the node has neither a SQLite nor a PostgreSQL store")
        partition = Partition(pipeline.ws_proxy, severity=sev, name="network.partition_feed")
        kill = KillProcess(lambda: trader_pid, severity=sev, name="process.kill_trader")
        back = trader_back(pipeline, lambda: kill.pid)

        # Each stage starts a little after the previous one is observed in force (its injector
        # switched on), never on the wall clock alone: a loaded machine that is slow to inject
        # must not break the cascade's overlap. Coroutines are made when their stage starts.
        stages: list[tuple[Injector | None, float, Callable[[], Awaitable[FaultRun]]]] = [
            (
                None, 0.0,
                lambda: lab.fault(
                    lock, hold=3.0 * sev.scale, sla=DATABASE_SLA,
                    recovered=store_recovered(pipeline), recover_timeout=20.0,
                ),
            ),
            (
                lock, 0.8,
                lambda: lab.fault(
                    partition, hold=2.0 * sev.scale, sla=_API_SLA,
                    recovered=all_of(node_ready(pipeline), store_caught_up(pipeline)),
                    recover_timeout=20.0,
                ),
            ),
            (
                partition, 0.8,
                lambda: lab.fault(
                    kill, hold=0.2, sla=_CRITICAL_SLA, failover=True, recovered=back,
                    recover_timeout=20.0,
                ),
            ),
        ]  # fmt: skip
        backtest: dict[str, Any] = {}
        async with asyncio.TaskGroup() as tasks:
            started = [
                tasks.create_task(_after(previous, delay, stage), name=f"cascade-stage-{i}")
                for i, (previous, delay, stage) in enumerate(stages)
            ]
            tasks.create_task(
                _after(partition, 1.2, lambda: self._backtest(pipeline, backtest)),
                name="cascade-backtest",
            )
        runs = [task.result() for task in started]
        for run in runs[:2]:
            cross_check_recorded(lab, run, expected=True)
        self._check_functional(run_lab, runs, node_pid, back, backtest)
        await lab.integrity()

    def _check_functional(
        self,
        lab: LabRun,
        runs: list[FaultRun],
        node_pid: int | None,
        back: TraderBack,
        backtest: dict[str, Any],
    ) -> None:
        pipeline = lab.pipeline
        ran = [r for r in runs if r.skipped is None and r.error is None]
        origin = runs[0].t_inject
        overlapped = all(
            later.t_inject is not None and earlier.t_heal is not None
            and later.t_inject < earlier.t_heal
            for earlier, later in itertools.pairwise(runs)
        )  # fmt: skip
        lab.check(
            "cascade: each stage started while the previous one was in force",
            overlapped,
            "; ".join(
                f"{r.name} on {_rel(r.t_inject, origin)}–{_rel(r.t_heal, origin)}" for r in runs
            ),
            independent=False,
        )
        samples = [s for r in ran for s in r.samples if s.probe == "availability"]
        failed = [s for s in samples if not s.ok]
        lab.check(
            "cascade: the node answered /health/live and /status throughout",
            bool(samples) and not failed,
            f"{len(samples) - len(failed)}/{len(samples)} availability probes passed"
            + (f"; first failure: {failed[0].detail}" if failed else ""),
            independent=False,
        )
        same = (
            node_pid is not None and pipeline.node_pid == node_pid and psutil.pid_exists(node_pid)
        )
        lab.check(
            "cascade: the node process never restarted (process table)",
            same,
            f"node pid {node_pid} before, {pipeline.node_pid} after",
        )
        lab.check(
            "cascade: the trader came back as a new process, its exit recorded",
            bool(back.seen) and back.seen.get("last_exit_status") is not None,
            f"killed pid {back.killed()}; supervisor: {back.seen or 'no new trader seen'}",
        )
        heals = [r.t_heal for r in ran if r.t_heal is not None]
        began = backtest.get("began")
        during = began is not None and bool(heals) and began < max(heals)
        lab.check(
            "cascade: the backtest completed with a result during the cascade",
            backtest.get("exit") == 0 and bool(backtest.get("result")) and during,
            f"started {_rel(began, origin)} (last heal {_rel(max(heals, default=None), origin)}), "
            f"exit {backtest.get('exit')}, {backtest.get('seconds', 0):.2f} s, "
            f"result keys {sorted(backtest.get('result') or {})[:6]}; "
            f"stderr: {backtest.get('stderr', '')[:160]}",
        )

    async def _backtest(self, pipeline: Pipeline, out: dict[str, Any]) -> None:
        """``strategylab backtest`` over the node's store, as a process; its exit status,
        decoded JSON result and time into ``out``."""
        symbol = pipeline.config.symbols[0]
        guard = ChildGuard()
        children = ChildProcesses(guard, stop_timeout=2.0)
        # The lab's clock (monotonic seconds), to compare with the faults' timestamps.
        began = out["began"] = time.monotonic()
        try:
            process = await children.start(
                "backtest", sys.executable, "-m", "strategylab", "backtest",
                "--db", pipeline.store, "--symbols", symbol, "--json",
                "--param", "fast=5", "--param", "slow=20",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                async with asyncio.timeout(_BACKTEST_TIMEOUT):
                    stdout, stderr = await process.communicate()
            except TimeoutError:
                out["stderr"] = f"no result within {_BACKTEST_TIMEOUT:g} s"
                return
            out["exit"] = process.returncode
            out["stderr"] = stderr.decode(errors="replace").strip()
            with contextlib.suppress(ValueError):
                result = json.loads(stdout)
                if isinstance(result, list) and result:
                    result = result[0]
                out["result"] = result if isinstance(result, dict) else {"result": result}
        finally:
            out["seconds"] = time.monotonic() - began
            await children.aclose()
            await asyncio.to_thread(guard.close)


async def _after(
    previous: Injector | None, delay: float, stage: Callable[[], Awaitable[Any]]
) -> Any:
    """``stage()`` started ``delay`` seconds after ``previous`` is seen switched on (at once
    after ``delay`` without one): the cascade's stagger, anchored to what really happened."""
    if previous is not None:
        # Switched on by its own stage within a few ms to a second; a stage that could not
        # inject at all (skipped, failed) does not hold the next one back for long.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_WATCH_LIMIT):
                while not previous.active:  # noqa: ASYNC110 - an Injector has no event
                    await asyncio.sleep(_WATCH)
    await asyncio.sleep(delay)
    return await stage()


_WATCH = 0.01
"""Seconds between looks at whether the previous stage's fault is in force."""
_WATCH_LIMIT = 10.0
"""Seconds a stage waits at most for the previous one to be in force."""


def _rel(t: float | None, origin: float | None) -> str:
    return "?" if t is None or origin is None else f"{t - origin:+.2f}s"
