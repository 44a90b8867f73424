"""Category 7, graceful degradation: real overload on two distinct triggers; the features are shed
lowest priority first and restored in reverse, while ingestion and risk checks go on.

The node has two sheddable features (``live_chart``, priority 10, then ``events``, priority 30)
and four triggers (memory, loop lag, ingest queue, CPU; ``strategylab.node``'s shedding marks).
Two overloads, each on its own trigger:

- ``overload.memory``: ballast in the node's own process to 95 % of its memory budget (the
  ``memory`` trigger, shed above 90 %, restore below 75 %);
- ``overload.cpu_throttled``: the node's process gets a CPU quota of 30 % for 3.5 s, enforced as
  the kernel's CFS bandwidth control does it: stopped (SIGSTOP) for 0.35 s of every 0.5 s
  period, then SIGCONT (:class:`CpuThrottle`), so its event loop wakes late (the ``loop_lag``
  trigger reads the largest lag of the last 5 s: shed above 0.25 s, restore below 0.05 s) and
  its ticks queue up while it is stopped. A single stop is not enough: the controller can only
  shed while the node runs, so it must run (throttled) during the fault.

"Degradation success" per trigger is: every feature shed while the overload was on, lowest
priority first and by that trigger, and every one restored after the heal in the reverse order.
The category passes the seed's criterion with at least 90 % of them (here: both) and with the
core preserved: the same node process throughout (process table), ingestion and risk never
features nor shed (``/status``, the audit log), ticks acknowledged while degraded, and nothing
acknowledged lost (the checker over the store). The live chart's ``price`` events on a real
``/events`` subscription stop while it is shed and come back after.

Not covered because the node does not have them: batch jobs (DESIGN §5's middle priority) and
notifications as a feature separate from the event stream; and the two other triggers cannot be
tripped by a real overload here: a 40x market-data burst (60 000 ticks/s) costs the node ~35 % of
one CPU and leaves its ingest queue near empty, and a flood of ``/status`` requests slows
ingestion without the node's CPU reading (~65 % on 2 shared cores) or queue crossing their marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable
from typing import Any, ClassVar, Final

from strategylab.chaos._inject_resources import MemoryBallast
from strategylab.chaos._injector import Injector, InjectorError
from strategylab.chaos._lab import LabRun
from strategylab.chaos._scenario import OWN_CRITERION, Criterion, Lab, Scenario
from strategylab.chaos._severity import Severity

from ._c05_memory import (
    PriceStream,
    ShedLog,
    check_degradation,
    check_never_shed,
    check_same_node,
    node_identity,
    recovered_probe,
)

__all__ = ["CpuThrottle", "GracefulDegradation"]

_THROTTLE_HOLD: Final = 3.5
"""Seconds ``overload.cpu_throttled`` lasts: two levels shed (1 s hold, 1 s evaluation period)."""
_SUCCESS_FLOOR: Final = 0.9
"""The seed's degradation success rate."""


class CpuThrottle(Injector):
    """A CPU quota on the process ``pid()``: stopped (SIGSTOP) for ``stopped`` seconds of every
    ``period`` seconds, as the kernel's CFS bandwidth control throttles a cgroup over its quota,
    until healed (SIGCONT, always). ``pid`` is read at inject. Raises :class:`ValueError` unless
    ``0 < stopped < period``; :class:`InjectorError` when there is no process to throttle."""

    kind: ClassVar[str] = "cpu"

    def __init__(
        self,
        pid: Callable[[], int | None],
        *,
        period: float = 0.5,
        stopped: float = 0.35,
        severity: Severity = Severity.MEDIUM,
        name: str = "cpu.throttle",
    ) -> None:
        super().__init__(name, severity)
        if not 0 < stopped < period:
            raise ValueError(f"stopped={stopped!r}, period={period!r}: need 0 < stopped < period")
        self._pid = pid
        self.period = period
        self.stopped = stopped
        self.pid: int | None = None
        self.cycles = 0
        """Stops sent so far."""
        self._task: asyncio.Task[None] | None = None

    async def _inject(self) -> None:
        pid = self._pid()
        if pid is None:
            raise InjectorError(f"{self.name}: no process to throttle")
        self.pid = pid
        self._task = asyncio.get_running_loop().create_task(self._cycle(pid))

    async def _cycle(self, pid: int) -> None:
        try:
            while True:
                os.kill(pid, signal.SIGSTOP)
                self.cycles += 1
                await asyncio.sleep(self.stopped)
                os.kill(pid, signal.SIGCONT)
                await asyncio.sleep(self.period - self.stopped)
        except ProcessLookupError:
            return
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def _heal(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "pid": self.pid,
            "period_s": self.period,
            "stopped_s": self.stopped,
            "quota": round(1 - self.stopped / self.period, 3),
            "cycles": self.cycles,
        }


class GracefulDegradation(Scenario):
    """Memory and CPU-starvation overloads: shed lowest first, restore in reverse, core kept."""

    id: ClassVar[int] = 7
    name: ClassVar[str] = "graceful degradation"
    description: ClassVar[str] = "overload sheds live chart then events, restored in reverse"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.8, text="≥ 90 % degradation success, core preserved"
    )
    own_criterion: ClassVar[Criterion] = dataclasses.replace(
        OWN_CRITERION,
        text="100 % degradation success within SLA, zero lost/duplicated/corrupted",
    )
    memory_sla: ClassVar[float] = 45.0
    """Seconds from the heal to every feature restored after the memory overload: the memory
    class's recovery-time objective (DESIGN §6 category 9)."""
    lag_sla: ClassVar[float] = 10.0
    """Seconds from the heal to every feature restored after the throttle: the loop-lag reading
    is the largest of the last 5 s, then two levels of 1 s hold and 1 s evaluation period."""
    memory_hold: ClassVar[float] = 3.2

    async def run(self, lab: Lab) -> None:
        if not isinstance(lab, LabRun):
            raise TypeError(f"{self.name}: needs the lab's own runner (a LabRun), got {lab!r}")
        pipeline = lab.pipeline
        log = ShedLog(pipeline, lab._clock)  # noqa: SLF001 - the lab's clock
        await log.refresh()
        identity = node_identity(pipeline)
        recovered = recovered_probe(pipeline)
        outcomes: dict[str, bool] = {}
        async with PriceStream(pipeline) as prices:
            before = list(log.history)
            memory = MemoryBallast(
                pipeline.status_url, pipeline.admin_token, lab.severity, fraction=0.95,
                name="overload.memory",
            )  # fmt: skip
            run = await lab.fault(
                memory, hold=self.memory_hold, sla=self.memory_sla, availability=log,
                recovered=recovered, recover_timeout=15.0,
            )  # fmt: skip
            await log.refresh()
            outcomes["memory"] = check_degradation(
                lab, run, log, before, triggers=frozenset({"memory"}), prices=prices
            )
            before = list(log.history)
            throttle = CpuThrottle(
                lambda: pipeline.node_pid, severity=lab.severity, name="overload.cpu_throttled"
            )
            run = await lab.fault(
                throttle, hold=_THROTTLE_HOLD, sla=self.lag_sla, availability=log,
                recovered=recovered, recover_timeout=20.0,
            )  # fmt: skip
            await log.refresh()
            outcomes["loop_lag"] = check_degradation(
                lab, run, log, before, triggers=frozenset({"loop_lag"}), prices=prices
            )
        rate = sum(outcomes.values()) / len(outcomes)
        lab.check(
            "degradation success",
            rate >= _SUCCESS_FLOOR,
            f"{rate:.0%} of triggers ({', '.join(f'{k}: {v}' for k, v in outcomes.items())}); "
            f"floor {_SUCCESS_FLOOR:.0%}",
            independent=False,
        )
        check_same_node(lab, "graceful degradation", identity, pipeline)
        check_never_shed(lab, log, pipeline)
        await lab.integrity()
