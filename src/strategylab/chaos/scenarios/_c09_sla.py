"""Category 9, recovery-time SLA: one fault of each class, each measured against its SLA.

The classes and their SLAs (DESIGN §6):

- ``api`` 10 s: the exchange's order API answers 503 to every request (``api_errors``, rate 1,
  before processing) for 1 s. Recovered = the API answers through the lab's API proxy AND the
  trader's orders flow again: the exchange accepted an order created after the fault started
  (its own order book, read directly).
- ``critical`` 30 s: SIGKILL of the node, restarted on its data directory
  (:class:`~strategylab.chaos.scenarios.NodeCrash`). Recovered = ready and the store caught up;
  the time runs from the kill (the restart is part of the recovery).
- ``memory`` 45 s: ballast in the node toward the severity's mark of its memory budget
  (:class:`~strategylab.chaos.MemoryBallast`), when the node runs its chaos agent
  (``--chaos-agent --memory-budget``, as the lab's pipeline starts it); SKIPPED otherwise,
  saying so. Recovered = ready and caught up after the ballast is released.
- ``database`` 60 s: the store's write lock held (SQLite, or the ``ticks`` table with
  ``--postgres``); recovered = ready, the spool drained back, caught up.

Each run carries its class (``extra["sla_class"]``) and the class's p50/p95/max recovery time
(``extra["class_figures"]``, also in its notes).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Final

import aiohttp

from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_database import PgLockHolder, SQLiteLockHolder
from strategylab.chaos._inject_exchange import ApiErrors
from strategylab.chaos._inject_resources import MemoryBallast
from strategylab.chaos._injector import Injector
from strategylab.chaos._lab import cross_check_recorded
from strategylab.chaos._measure import FaultRun, percentile
from strategylab.chaos._probes import all_of, http_ok, node_ready, store_caught_up
from strategylab.chaos._scenario import Criterion, Lab, Scenario

from ._c04_database import (
    DATABASE_SLA,
    StoreObserver,
    lab_run,
    lock_hold,
    skip_fault,
    store_recovered,
)
from ._c08_integrity import CRITICAL_SLA, NodeCrash

__all__ = ["SLAS", "OrdersSince", "RecoverySla", "orders_flowing"]

SLAS: Final = {"api": 10.0, "critical": CRITICAL_SLA, "memory": 45.0, "database": DATABASE_SLA}
"""Recovery-time objective per fault class, seconds (DESIGN §6 category 9)."""


class OrdersSince:
    """A probe: the exchange accepted an order created at or after :attr:`since_ns` (its own
    order book, ``GET /api/orders`` on the exchange directly; ``created_ns`` is the exchange's
    wall clock, the same host's as the lab's). With ``since_ns`` ``None`` it passes (no fault
    yet: the steady state does not wait for an order)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.since_ns: int | None = None
        self.first_seen: str | None = None

    async def __call__(self) -> tuple[bool, str]:
        since = self.since_ns
        if since is None:
            return True, "no fault yet"
        try:
            async with self.pipeline.http.get(f"{self.pipeline.exchange_url}/api/orders") as r:
                if r.status != 200:
                    return False, f"exchange /api/orders answered {r.status}"
                orders = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError, PipelineError) as exc:
            return False, f"exchange /api/orders: {type(exc).__name__}: {exc}"
        fresh = [
            o for o in orders if isinstance(o, dict) and int(o.get("created_ns") or 0) >= since
        ]
        if not fresh:
            return False, f"no order accepted since the fault began ({len(orders)} in all)"
        self.first_seen = self.first_seen or str(fresh[0].get("id"))
        return True, f"{len(fresh)} order(s) accepted since the fault began"


def orders_flowing(pipeline: Pipeline) -> OrdersSince:
    """A probe that the trader's orders reach the exchange again (see :class:`OrdersSince`)."""
    return OrdersSince(pipeline)


class RecoverySla(Scenario):
    """API, critical, memory and database faults, each against its recovery-time SLA."""

    id: ClassVar[int] = 9
    name: ClassVar[str] = "recovery-time SLA"
    description: ClassVar[str] = "API 10 s, critical 30 s, memory 45 s, database 60 s"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.9, within_sla=0.9, zero_loss=True, text="≥ 90 % within SLA"
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % within SLA, zero lost/duplicated/corrupted",
    )

    async def run(self, lab: Lab) -> None:
        run_lab = lab_run(lab, self)
        pipeline, sev = run_lab.pipeline, lab.severity
        runs: list[FaultRun] = []

        # api: 503 to every order-API request for 1 s.
        api = ApiErrors(
            pipeline.exchange_url, pipeline.admin_token, status=503, rate=1.0,
            severity=sev, expiry=10.0 + 5.0 * sev.scale,
        )  # fmt: skip
        orders = orders_flowing(pipeline)
        through = http_ok(f"http://127.0.0.1:{pipeline.api_proxy.listen_port}/api/status")
        strikes_before = await _strikes(pipeline)
        orders.since_ns = time.time_ns()
        run = await lab.fault(
            api, hold=1.0 * sev.scale, sla=SLAS["api"],
            recovered=all_of(through, orders, node_ready(pipeline)), recover_timeout=15.0,
        )  # fmt: skip
        runs.append(_classed(run, "api"))
        cross_check_recorded(lab, run, expected=False)
        if run.skipped is None and run.error is None:
            struck = (await _strikes(pipeline)) - strikes_before
            lab.check(
                f"{run.name}: the exchange answered errors to real requests (its own count)",
                struck > 0,
                f"{struck} request(s) answered 503; first order after: {orders.first_seen}",
            )

        # critical: SIGKILL of the node, restarted.
        crash = NodeCrash(pipeline, sev)
        run = await lab.fault(
            crash, hold=0.2, sla=SLAS["critical"], failover=True,
            recovered=all_of(node_ready(pipeline), store_caught_up(pipeline)),
            recover_timeout=SLAS["critical"],
        )  # fmt: skip
        runs.append(_classed(run, "critical"))
        if run.skipped is None and run.error is None:
            lab.check(
                f"{run.name}: the node exited by SIGKILL and a new one runs (process table)",
                crash.exit_status == -9
                and crash.restarted_pid is not None
                and crash.restarted_pid != crash.killed_pid
                and pipeline.node_pid == crash.restarted_pid,
                f"killed pid {crash.killed_pid} exit {crash.exit_status}; "
                f"running pid {pipeline.node_pid}",
            )

        # memory: ballast, when the node has its chaos agent.
        agent = await _chaos_agent(pipeline)
        if agent is None:
            runs.append(
                _classed(
                    skip_fault(
                        lab, "memory.ballast", "memory", SLAS["memory"],
                        "the lab's node runs without --chaos-agent and --memory-budget",
                    ),
                    "memory",
                )
            )  # fmt: skip
        else:
            ballast = MemoryBallast(pipeline.status_url, pipeline.admin_token, sev)
            run = await lab.fault(
                ballast, hold=1.0 * sev.scale, sla=SLAS["memory"], recover_timeout=20.0
            )
            runs.append(_classed(run, "memory"))
            cross_check_recorded(lab, run, expected=False)

        # database: the store's write lock held.
        lock: Injector
        if pipeline.config.postgres is not None:
            lock = PgLockHolder(pipeline.config.postgres, sev)
        elif pipeline.store_path is not None:
            lock = SQLiteLockHolder(pipeline.store_path, sev)
        else:  # pragma: no cover - the pipeline has one or the other
            raise PipelineError("the node has neither a SQLite nor a PostgreSQL store")
        observer = StoreObserver(pipeline)
        async with observer.watching():
            run = await lab.fault(
                lock, hold=lock_hold(lab), sla=SLAS["database"],
                recovered=store_recovered(pipeline), recover_timeout=20.0,
            )  # fmt: skip
        runs.append(_classed(run, "database"))
        cross_check_recorded(lab, run, expected=True)
        run.notes.append(observer.summary())

        _class_figures(runs)
        await lab.integrity()


def _classed(run: FaultRun, cls: str) -> FaultRun:
    run.extra["sla_class"] = cls
    return run


def _class_figures(runs: list[FaultRun]) -> None:
    """Per class: p50/p95/max recovery time against the SLA, on each run of the class."""
    for cls in SLAS:
        members = [r for r in runs if r.extra.get("sla_class") == cls and r.skipped is None]
        times = [t for r in members if (t := r.recovery_time) is not None]
        figures: dict[str, Any] = {
            "class": cls,
            "sla_s": SLAS[cls],
            "faults": len(members),
            "p50_s": percentile(times, 0.5),
            "p95_s": percentile(times, 0.95),
            "max_s": max(times) if times else None,
            "within_sla": sum(r.within_sla for r in members),
        }
        for r in members:
            r.extra["class_figures"] = figures
            shown = "none" if not times else f"p50 {figures['p50_s']:.3f} s, max {max(times):.3f} s"
            r.notes.append(f"class {cls}: {shown} against {SLAS[cls]:g} s")


async def _strikes(pipeline: Pipeline) -> int:
    """The exchange's own count of requests it answered with an ``api_errors`` fault."""
    for _ in range(20):
        try:
            status = await pipeline.exchange_status()
        except (PipelineError, aiohttp.ClientError, TimeoutError):
            continue
        value = status.get("strikes", {}).get("api_errors", 0)
        return int(value) if isinstance(value, int) else 0
    return 0


async def _chaos_agent(pipeline: Pipeline) -> dict[str, Any] | None:
    try:
        agent = (await pipeline.status()).get("extra", {}).get("chaos_agent")
    except PipelineError:
        return None
    if not isinstance(agent, dict) or not isinstance(agent.get("memory_budget"), int):
        return None
    return agent
