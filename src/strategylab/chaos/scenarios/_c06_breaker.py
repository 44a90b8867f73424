"""Category 6, circuit breaker: bursts of API failures open the trader's breaker, callers protected.

The exchange answers every order-API request 503 (``api_errors``, phase ``before``: nothing is
processed) for a 1 s and then a 2 s window (scaled by the severity). The trader's order client
(retry inside a circuit breaker of threshold 10) meets 5–10+ failures in the window and its
breaker opens. Observed:

- **the breaker opened**: the trader's breaker (``/status`` ``extra.trader.breaker``: its state
  and call counters, from the trader's status lines) was seen ``open``/``half_open`` or refused
  calls (``rejected_calls`` rose);
- **callers protected** (independent: the exchange's own counter): every request that reached
  the exchange during the fault is one the breaker let through (recorded as failed, or cut short
  by the call's deadline: ``ignored``), i.e. the exchange's ``api_errors`` strikes rose by no more
  than those, while the breaker
  refused ``rejected_calls`` more without a request. The lab's own probes stay off the exchange's
  ``/api/`` while the fault is on, so that the strikes are the trader's alone;
- **recovery**: after the heal the breaker half-opens and closes (``closed`` again), the node is
  ready and its store caught up. SLA: the API's 10 s (category 9).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Final

from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_exchange import ApiErrors
from strategylab.chaos._lab import LabRun, cross_check_recorded
from strategylab.chaos._probes import node_ready
from strategylab.chaos._scenario import Criterion, Lab, Probe, Scenario

__all__ = ["CircuitBreakerScenario", "trader_breaker"]

_WINDOWS: Final = (1.0, 2.0)
"""Seconds of each failure window at medium severity."""
_POLL: Final = 0.1


async def trader_breaker(pipeline: Pipeline) -> dict[str, Any] | None:
    """The trader's breaker from the node's ``/status`` (``state``, ``failed_calls``,
    ``rejected_calls``, ``successful_calls``); ``None`` when the node, its trader or the figure
    is missing. Never raises for a node that does not answer."""
    try:
        status = await pipeline.status()
    except PipelineError:
        return None
    breaker = status.get("extra", {}).get("trader", {}).get("breaker")
    return breaker if isinstance(breaker, dict) else None


async def _strikes(pipeline: Pipeline) -> int | None:
    try:
        status = await pipeline.exchange_status()
    except (PipelineError, OSError, TimeoutError):
        return None
    value = status.get("strikes", {}).get("api_errors")
    return value if isinstance(value, int) else None


class _SeparateApiErrors(ApiErrors):
    """:class:`ApiErrors` that keeps the lab's own exchange requests out of the fault window:
    :attr:`armed` is set before the fault is switched on, and the switch waits for a probe's
    exchange request in flight (:attr:`lock`) to end, so that every strike is the trader's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = False
        self.lock = asyncio.Lock()

    async def _inject(self) -> None:
        self.armed = True
        try:
            async with self.lock:
                await super()._inject()
        except BaseException:
            self.armed = False
            raise

    async def _heal(self) -> None:
        try:
            await super()._heal()
        finally:
            self.armed = False

    def in_force(self) -> bool:
        """True from just before the fault is switched on until it is switched off."""
        return self.armed


def _breaker_recovered(pipeline: Pipeline, fault: _SeparateApiErrors) -> Probe:
    """Ready, breaker closed, store caught up; while ``fault`` is armed it answers "fault in
    force" without asking the exchange (a request of the lab's would count as a strike)."""
    ready = node_ready(pipeline)

    async def probe() -> tuple[bool, str]:
        if fault.in_force():
            return False, "fault in force"
        ok, detail = await ready()
        if not ok:
            return False, f"ready: {detail}"
        breaker = await trader_breaker(pipeline)
        if breaker is None:
            return False, "no trader breaker in /status"
        if breaker.get("state") != "closed":
            return False, f"breaker {breaker.get('state')}"
        async with fault.lock:
            if fault.in_force():
                return False, "fault in force"
            return await pipeline.caught_up()

    return probe


class CircuitBreakerScenario(Scenario):
    """503 bursts in 1–2 s windows: the trader's breaker opens, and no refused call reaches
    the exchange."""

    id: ClassVar[int] = 6
    name: ClassVar[str] = "circuit breaker"
    description: ClassVar[str] = "5–10 failures in 1–2 s windows: breaker opens, callers protected"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.8, text="breaker opens, callers protected"
    )
    sla: ClassVar[float] = 10.0

    async def run(self, lab: Lab) -> None:
        if not isinstance(lab, LabRun):
            raise TypeError(f"{self.name}: needs the lab's own runner (a LabRun), got {lab!r}")
        pipeline, sev = lab.pipeline, lab.severity
        if not pipeline.config.trader:
            lab.result.skipped = "the pipeline runs no trader (no breaker to open)"
            return
        for number, window in enumerate(_WINDOWS, start=1):
            hold = round(window * sev.scale, 2)
            fault = _SeparateApiErrors(
                pipeline.exchange_url,
                pipeline.admin_token,
                status=503,
                phase="before",
                rate=1.0,
                severity=sev,
                name=f"api.errors_503_window_{number}",
                expiry=hold + 30.0,
            )
            await self._one(lab, pipeline, fault, hold)
        await lab.integrity()

    async def _one(
        self, lab: LabRun, pipeline: Pipeline, fault: _SeparateApiErrors, hold: float
    ) -> None:
        before = await _first_breaker(lab, pipeline)
        strikes_before = await _strikes(pipeline)
        seen: set[str] = set()
        watching = True

        async def watch() -> None:
            while watching:
                breaker = await trader_breaker(pipeline)
                if breaker is not None and fault.active:
                    seen.add(str(breaker.get("state")))
                await lab._clock.asleep(_POLL)  # noqa: SLF001 - the lab's clock

        watcher = asyncio.create_task(watch(), name=f"lab-breaker-watch-{fault.name}")
        try:
            run = await lab.fault(
                fault,
                hold=hold,
                sla=self.sla,
                recovered=_breaker_recovered(pipeline, fault),
                recover_timeout=15.0,
            )
        finally:
            watching = False
            await watcher
        # Counters from a trader status line taken after the recovery (one per interval).
        after = await _settled_breaker(lab, pipeline, before)
        strikes_after = await _strikes(pipeline)
        cross_check_recorded(lab, run, expected=False)
        if before is None or after is None or strikes_before is None or strikes_after is None:
            lab.check(
                f"{fault.name}: breaker and exchange counters readable",
                ok=False,
                detail=f"breaker before {before}, after {after}; "
                f"strikes {strikes_before}->{strikes_after}",
            )
            return
        failed = int(after["failed_calls"]) - int(before["failed_calls"])
        # A permitted call cut short (the call's deadline) is "ignored", not failed; its
        # request may still have reached the exchange.
        ignored = int(after.get("ignored_calls", 0)) - int(before.get("ignored_calls", 0))
        rejected = int(after["rejected_calls"]) - int(before["rejected_calls"])
        strikes = strikes_after - strikes_before
        run.extra |= {
            "breaker_states_seen": sorted(seen),
            "breaker_failed_calls": failed,
            "breaker_rejected_calls": rejected,
            "breaker_ignored_calls": ignored,
            "exchange_strikes": strikes,
        }
        opened = bool(seen & {"open", "half_open"}) or rejected > 0
        lab.check(
            f"{fault.name}: breaker opened",
            opened,
            f"states seen {sorted(seen)}, {failed} failed and {rejected} refused calls "
            f"in a {hold:g} s window",
            independent=False,
        )
        lab.check(
            f"{fault.name}: callers protected (exchange strikes <= calls the breaker let through)",
            strikes > 0 and strikes <= failed + ignored and rejected > 0,
            f"the exchange answered {strikes} requests 503; the breaker let through {failed} "
            f"failed and {ignored} cut-short calls and refused {rejected} without a request",
        )


async def _first_breaker(lab: LabRun, pipeline: Pipeline) -> dict[str, Any] | None:
    """The trader's breaker before a fault: a trader (re)started a moment ago has not printed
    its first status line yet, so wait for one (at most 10 s; None if none came)."""
    deadline = lab._clock.monotonic() + 10.0  # noqa: SLF001 - the lab's clock
    while (breaker := await trader_breaker(pipeline)) is None:
        if lab._clock.monotonic() >= deadline:  # noqa: SLF001
            return None
        await lab._clock.asleep(_POLL)  # noqa: SLF001
    return breaker


async def _settled_breaker(
    lab: LabRun, pipeline: Pipeline, before: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The trader's breaker once a status line newer than the recovery shows it closed with a
    success counted after the fault (at most 5 s)."""
    deadline = lab._clock.monotonic() + 5.0  # noqa: SLF001 - the lab's clock
    last = await trader_breaker(pipeline)
    base = 0 if before is None else int(before.get("successful_calls", 0))
    while lab._clock.monotonic() < deadline:  # noqa: SLF001
        last = await trader_breaker(pipeline)
        closed = last is not None and last.get("state") == "closed"
        if closed and last is not None and int(last.get("successful_calls", 0)) > base:
            return last
        await lab._clock.asleep(_POLL)  # noqa: SLF001
    return last
