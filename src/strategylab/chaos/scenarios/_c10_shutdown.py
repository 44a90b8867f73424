"""Category 10, emergency shutdown: a security breach, an operator's kill, a crash loop.

Three real triggers of the node's kill switch, one after the other:

- **security breach**: the exchange signs a share of its frames with the wrong key
  (``bad_signatures``); the node's feed counts forged frames and, past its threshold, pulls the
  kill switch (source ``security_violation``);
- **operator kill**: an authenticated ``POST /admin/kill`` to the node's status service;
- **instability**: the trader child SIGKILLed each time it is started again, until the
  supervisor's restart intensity (3 in 10 s) is exceeded and the node pulls the switch (source
  ``crash_loop``).

Each must end with the node exiting 3 (``EXIT_EMERGENCY``) and ``snapshot.json`` and
``UNCLEAN_SHUTDOWN`` in its data directory, every kill step ``ok`` in its
``emergency_shutdown`` line. The lab then starts the node again (the "heal"): it must print
``resumed``, clear its marker, and its trader must reconcile before it trades again. A shutdown
counts as done (``shutdowns_done``) when all of that held. The checker then runs over the store:
nothing acknowledged lost or duplicated across three unclean stops.

Last, unauthorised admin calls (no token, wrong tokens, HTTP Basic) must be refused and change
nothing in ``/status``. They leave the lab's own address rate-limited (429 on every admin call)
for up to 60 s, which is why they come last and why this category is the last of the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

import aiohttp
import psutil

from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_exchange import BadSignatures, UnauthorisedAdminCalls
from strategylab.chaos._injector import Injector, InjectorError
from strategylab.chaos._lab import LabRun
from strategylab.chaos._probes import all_of, node_ready, store_caught_up
from strategylab.chaos._scenario import Criterion, Lab, Probe, Scenario
from strategylab.chaos._severity import Severity

__all__ = ["EXIT_EMERGENCY", "EmergencyShutdown", "EmergencyShutdownScenario"]

EXIT_EMERGENCY: Final = 3
"""The node's exit status after an emergency shutdown."""
_EXIT_TIMEOUT: Final = 20.0
_TRADING_TIMEOUT: Final = 20.0
_CRASH_KILLS: Final = 8
"""The most SIGKILLs the crash loop sends (the node's intensity is 3 restarts in 10 s)."""
_POLL: Final = 0.05


class EmergencyShutdown(Injector):
    """One emergency shutdown of the node: ``trigger()`` pulls it (a real fault), and the heal
    waits for the node's exit, records what it left, and starts the node again.

    ``cleanup()`` (if given) runs in the heal once the node exited (e.g. switch the exchange's
    forged frames off, so that the restarted node is not killed again). :attr:`outcome` holds
    the exit status, the files found, the ``emergency_shutdown`` and ``resumed`` lines. Raises
    :class:`InjectorError` when the node is not running at inject.
    """

    kind: ClassVar[str] = "shutdown"

    def __init__(
        self,
        name: str,
        pipeline: Pipeline,
        trigger: Callable[[], Awaitable[None]],
        severity: Severity = Severity.MEDIUM,
        *,
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(name, severity)
        self._pipeline = pipeline
        self._trigger = trigger
        self._cleanup = cleanup
        self.outcome: dict[str, Any] = {}

    async def _inject(self) -> None:
        pipeline = self._pipeline
        pid = pipeline.node_pid
        if pid is None:
            raise InjectorError(f"{self.name}: the node is not running")
        self.outcome = {"pid": pid, "lines_before": len(pipeline.lines)}
        try:
            self.outcome["create_time"] = psutil.Process(pid).create_time()
        except psutil.Error:
            self.outcome["create_time"] = None
        await self._trigger()

    async def _heal(self) -> None:
        pipeline = self._pipeline
        try:
            code = await pipeline.wait_node_exit(_EXIT_TIMEOUT)
        finally:
            if self._cleanup is not None:
                await self._cleanup()
        if code is None and pipeline.node_running:
            # The switch did not stop it: stop it (SIGTERM) so that the lab goes on; the exit
            # status recorded is the one it did not give by itself.
            self.outcome["exit_code"] = None
            self.outcome["stopped_by_lab"] = await pipeline.stop_node()
        else:
            self.outcome["exit_code"] = code
        layout = pipeline.node_dir
        self.outcome["snapshot"] = (layout / "snapshot.json").is_file()
        self.outcome["marker"] = (layout / "UNCLEAN_SHUTDOWN").is_file()
        self.outcome["emergency"] = _last_line(pipeline, "emergency_shutdown")
        self.outcome["old_pid_gone"] = _gone(self.outcome["pid"], self.outcome["create_time"])
        mark = len(pipeline.lines)
        await pipeline.start_node()
        self.outcome["resumed"] = next(
            (dict(line.data) for line in list(pipeline.lines)[mark:] if line.event == "resumed"),
            None,
        )

    def describe(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.outcome.items() if k not in {"emergency", "resumed"}}
        return super().describe() | shown


def _last_line(pipeline: Pipeline, event: str) -> dict[str, Any] | None:
    lines = [line for line in pipeline.lines if line.event == event]
    return dict(lines[-1].data) if lines else None


def _gone(pid: int, create_time: float | None) -> bool:
    """The process table no longer holds that process (a reused PID is another process)."""
    try:
        return psutil.Process(pid).create_time() != create_time
    except psutil.NoSuchProcess:
        return True


class EmergencyShutdownScenario(Scenario):
    """Security breach, operator kill, crash loop: each a clean emergency stop and resume."""

    id: ClassVar[int] = 10
    name: ClassVar[str] = "emergency shutdown"
    description: ClassVar[str] = "security breach, operator kill, crash loop: stop, state, resume"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        shutdown=1.0,
        text="100 % shutdown success, state preserved, restart ready",
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        shutdown=1.0,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % shutdown with state preserved and a clean resume, zero lost/duplicated",
    )
    sla: ClassVar[float] = 30.0
    """The critical-component SLA of category 9 (seconds): stop, restart and catch up."""

    async def run(self, lab: Lab) -> None:
        if not isinstance(lab, LabRun):
            raise TypeError(f"{self.name}: needs the lab's own runner (a LabRun), got {lab!r}")
        pipeline, sev = lab.pipeline, lab.severity
        forged = BadSignatures(
            pipeline.exchange_url, pipeline.admin_token, rate=0.05 * sev.scale, severity=sev
        )

        async def breach() -> None:
            await forged.inject()

        async def stop_breach() -> None:
            await forged.heal()

        shutdowns = [
            EmergencyShutdown(
                "security.bad_signatures_kill", pipeline, breach, sev, cleanup=stop_breach
            ),
            EmergencyShutdown("admin.kill", pipeline, lambda: _admin_kill(pipeline), sev),
        ]
        if pipeline.config.trader:
            shutdowns.append(
                EmergencyShutdown(
                    "process.trader_crash_loop", pipeline, lambda: _crash_loop(pipeline), sev
                )
            )
        try:
            for shutdown in shutdowns:
                await self._one(lab, pipeline, shutdown)
        finally:
            await forged.heal()
        await lab.integrity()
        await self._unauthorised(lab, pipeline)

    async def _one(self, lab: LabRun, pipeline: Pipeline, shutdown: EmergencyShutdown) -> None:
        lab.result.shutdowns_asked += 1
        recovered = all_of(node_ready(pipeline), _trading(pipeline), store_caught_up(pipeline))
        run = await lab.fault(
            shutdown, hold=0.0, sla=self.sla, recovered=recovered, recover_timeout=30.0
        )
        out = shutdown.outcome
        run.extra["shutdown"] = {
            k: v for k, v in out.items() if k not in {"emergency", "resumed"}
        } | {"resumed": out.get("resumed") is not None}
        if run.error is not None or run.skipped is not None:
            return
        emergency = out.get("emergency") or {}
        kill = emergency.get("kill") or {}
        steps = kill.get("steps") or []
        failed_steps = [
            f"{s.get('name')} {s.get('outcome')}: {s.get('error')}"
            for s in steps
            if s.get("outcome") != "ok"
        ]
        excused = ""
        if any(f.startswith("cancel_orders") for f in failed_steps):
            # A dead trader has nothing to cancel; the exchange's own book says whether an
            # order of it was left open (the state the kill switch must not leave behind).
            open_orders = await _open_orders(pipeline)
            lab.check(
                f"{shutdown.name}: no order left open at the exchange (its order book)",
                open_orders == 0,
                f"{open_orders} open orders; the kill step said: {failed_steps}",
            )
            run.notes.append(f"kill step not ok (trader down): {failed_steps}")
            excused = " (cancel_orders not ok with the trader down: judged by the order book)"
            failed_steps = [f for f in failed_steps if not f.startswith("cancel_orders")]
        trader = await _trader(pipeline)
        started = list(trader.get("started_with", [])) if trader else []
        checks = [
            ("exited 3", out.get("exit_code") == EXIT_EMERGENCY, f"exit {out.get('exit_code')}"),
            (
                "snapshot.json and UNCLEAN_SHUTDOWN left",
                bool(out.get("snapshot")) and bool(out.get("marker")),
                f"snapshot {out.get('snapshot')}, marker {out.get('marker')}",
            ),
            (
                "old process gone (process table)",
                bool(out.get("old_pid_gone")),
                f"pid {out['pid']}",
            ),
            (
                "every kill step ok" + excused,
                bool(steps) and not failed_steps,
                f"{len(steps)} steps, source {kill.get('source')}, not ok: {failed_steps}",
            ),
            (
                "resumed line after the restart",
                out.get("resumed") is not None,
                json.dumps(out.get("resumed"))[:160],
            ),
            (
                "marker cleared after the resume",
                not (pipeline.node_dir / "UNCLEAN_SHUTDOWN").exists(),
                str(pipeline.node_dir / "UNCLEAN_SHUTDOWN"),
            ),
        ]
        if pipeline.config.trader:
            checks.append(
                (
                    "trader reconciled before it traded",
                    "reconciled" in started
                    and "trading" in started
                    and started.index("reconciled") < started.index("trading"),
                    f"started with {started}",
                )
            )
        for label, ok, detail in checks:
            lab.check(f"{shutdown.name}: {label}", ok, detail)
        if all(ok for _, ok, _ in checks) and run.recovered:
            lab.result.shutdowns_done += 1

    async def _unauthorised(self, lab: LabRun, pipeline: Pipeline) -> None:
        calls = UnauthorisedAdminCalls(pipeline.status_url, severity=lab.severity)

        run = await lab.fault(calls, hold=calls.calls * calls.interval + 0.2, sla=self.sla)
        report = calls.report
        run.extra["admin_calls"] = report.to_dict()
        lab.check(
            "security.unauthorised_admin: every call refused, nothing changed",
            report.held,
            json.dumps(report.to_dict())[:300],
        )


async def _admin_kill(pipeline: Pipeline) -> None:
    """``POST /admin/kill`` with the admin token: 202 expected."""
    url = f"{pipeline.status_url}/admin/kill"
    headers = {"Authorization": f"Bearer {pipeline.admin_token}"}
    async with pipeline.http.post(
        url, json={"reason": "chaos lab: operator kill"}, headers=headers
    ) as response:
        text = await response.text()
        if response.status != 202:
            raise InjectorError(f"admin.kill: POST /admin/kill answered {response.status} {text}")


async def _open_orders(pipeline: Pipeline) -> int | None:
    """Open orders in the exchange's own book (``GET /api/orders?status=open``); None when it
    does not answer."""
    try:
        async with pipeline.http.get(f"{pipeline.exchange_url}/api/orders?status=open") as r:
            if r.status != 200:
                return None
            orders = await r.json()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
    return len(orders) if isinstance(orders, list) else None


async def _trader(pipeline: Pipeline) -> dict[str, Any] | None:
    try:
        status = await pipeline.status()
    except PipelineError:
        return None
    trader = status.get("extra", {}).get("trader")
    return trader if isinstance(trader, dict) else None


async def _crash_loop(pipeline: Pipeline) -> None:
    """SIGKILL the trader child each time it is started again, until the node stops (its
    supervisor past the restart intensity) or :data:`_CRASH_KILLS` were sent."""
    killed: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _EXIT_TIMEOUT
    while len(killed) < _CRASH_KILLS and pipeline.node_running and loop.time() < deadline:
        pid = await pipeline.trader_pid()
        if pid is not None and pid not in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        await asyncio.sleep(_POLL)  # polling the node's /status for the next trader
    if not killed:
        raise InjectorError("process.trader_crash_loop: no trader process to kill")


def _trading(pipeline: Pipeline) -> Probe:
    """A probe: the node's trader trades again (reconciled, ``trading`` true)."""

    async def probe() -> tuple[bool, str]:
        if not pipeline.config.trader:
            return True, "no trader"
        trader = await _trader(pipeline)
        if trader is None:
            return False, "no trader in /status"
        if not trader.get("trading"):
            return False, f"trader not trading ({trader.get('risk_state')})"
        return True, "trading"

    return probe
