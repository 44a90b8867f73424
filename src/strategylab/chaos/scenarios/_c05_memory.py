"""Category 5, memory pressure: ballast in the node toward 80, 95 and 98 % of its memory budget.

The node runs with ``--memory-budget`` and ``--chaos-agent`` (the lab's harness sets both, and a
1 s ``--degradation-hold``); :class:`~strategylab.chaos.MemoryBallast` makes the node hold real,
touched memory in its own process, so its RSS trigger (shed above 90 %, restore below 75 % of the
budget) reads it. Three faults, each healed (the ballast released):

- ``memory.gradual_80``: grown in four steps to 80 %: under the shed mark, so NOTHING may be shed
  (checked on every sample of the fault window), while the node's own memory reading is seen to
  reach it (the fault was real);
- ``memory.spike_95``: 95 % at once: the two features are shed, lowest priority first
  (``live_chart``, then ``events``), and restored in the reverse order after the heal;
- ``memory.critical_98``: 98 % at once: the same.

Recovery is every feature restored, ``/health/ready`` and the store caught up with the exchange;
``t_detect`` is the first sample that saw a feature shed. Stable: the same node process throughout
(PID and start time from the process table, :mod:`psutil`), ingestion and risk never among the
features (``/status``) and never shed (``/status`` and the audit log), ingestion going on while
degraded, and nothing acknowledged lost (the checker over the store).

The helpers here are shared with category 7 (graceful degradation): :class:`ShedLog` (a probe that
records the node's degradation state every 0.1 s), :class:`PriceStream` (a real ``/events``
subscriber: the live chart's ``price`` events stop while ``live_chart`` is shed, an observation
of the feature itself rather than of the controller's word), :func:`features_restored` and
:func:`check_degradation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Final, Self

import aiohttp
import psutil

from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_resources import MemoryBallast
from strategylab.chaos._lab import LabRun
from strategylab.chaos._measure import FaultRun
from strategylab.chaos._probes import all_of, node_ready, store_caught_up
from strategylab.chaos._scenario import OWN_CRITERION, Criterion, Lab, Probe, Scenario
from strategylab.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "FEATURE_ORDER",
    "NEVER_SHED",
    "MemoryPressure",
    "PriceStream",
    "ShedLog",
    "ShedSample",
    "check_degradation",
    "check_never_shed",
    "check_same_node",
    "features_restored",
    "node_identity",
    "recovered_probe",
]

FEATURE_ORDER: Final = ("live_chart", "events")
"""The node's sheddable features, lowest priority (shed first) first."""
NEVER_SHED: Final = frozenset({"ingest", "ingestion", "risk", "risk_checks"})
"""Names that must never be a sheddable feature (the core)."""
_PRICE_PERIOD: Final = 0.5
"""Seconds between two ``price`` events of the node's live chart (the service's default)."""


@dataclass(frozen=True, slots=True)
class ShedSample:
    """One reading of the node's ``/status``: lab monotonic time, the features shed, every
    feature name, the memory trigger's reading (bytes) and the acknowledged ticks (all symbols)."""

    t: float
    shed: tuple[str, ...]
    features: tuple[str, ...]
    memory: float | None
    acked: int
    risk_state: str | None


@dataclass(slots=True)
class ShedLog:
    """A probe of the node that also records its degradation state.

    Called (as the lab's availability probe) it passes when ``/health/live`` answers 200 and
    ``/status`` answers, as :func:`~strategylab.chaos.node_serving` does, and appends a
    :class:`ShedSample` from that ``/status``. :attr:`samples` is in time order.
    """

    pipeline: Pipeline
    clock: Clock = SYSTEM_CLOCK
    samples: list[ShedSample] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    """The controller's ``degradation.history`` as last read."""
    budget: int | None = None
    """The node's memory budget in bytes (``extra.chaos_agent``), once read."""

    async def __call__(self) -> tuple[bool, str]:
        ok, detail = await self.pipeline.live()
        if not ok:
            return False, f"live: {detail}"
        try:
            status = await self.pipeline.status()
        except PipelineError as exc:
            return False, f"status: {exc}"
        self.record(status)
        shed = self.samples[-1].shed
        return True, f"serving; shed {list(shed)}" if shed else "serving"

    def record(self, status: dict[str, Any]) -> ShedSample:
        """Append the sample ``status`` (the node's ``/status`` JSON) makes."""
        degradation = status.get("degradation") or {}
        memory = next(
            (
                t.get("reading")
                for t in degradation.get("triggers", [])
                if t.get("name") == "memory"
            ),
            None,
        )
        acked = status.get("ingest", {}).get("acked", {}) or {}
        sample = ShedSample(
            t=self.clock.monotonic(),
            shed=tuple(degradation.get("shed", ())),
            features=tuple(str(f.get("name")) for f in degradation.get("features", ())),
            memory=memory if isinstance(memory, int | float) else None,
            acked=sum(int(v) for v in acked.values()),
            risk_state=status.get("risk_state"),
        )
        self.samples.append(sample)
        self.history = list(degradation.get("history", ()))
        budget = (status.get("extra", {}).get("chaos_agent") or {}).get("memory_budget")
        if isinstance(budget, int):
            self.budget = budget
        return sample

    def window(self, start: float | None, end: float | None) -> list[ShedSample]:
        """The samples taken in ``[start, end]`` (lab monotonic seconds; open when None)."""
        low = float("-inf") if start is None else start
        high = float("inf") if end is None else end
        return [s for s in self.samples if low <= s.t <= high]

    def first_shed(self, after: float) -> float | None:
        """When a sample first saw a feature shed, at or after ``after``."""
        return next((s.t for s in self.samples if s.t >= after and s.shed), None)

    async def refresh(self) -> None:
        """Take one sample now (raises :class:`PipelineError` when ``/status`` fails)."""
        self.record(await self.pipeline.status())


def features_restored(pipeline: Pipeline) -> Probe:
    """A probe: the node's ``/status`` shows no feature shed."""

    async def probe() -> tuple[bool, str]:
        try:
            status = await pipeline.status()
        except PipelineError as exc:
            return False, str(exc)
        shed = (status.get("degradation") or {}).get("shed", [])
        return (not shed), f"shed {shed}" if shed else "all features on"

    return probe


def recovered_probe(pipeline: Pipeline) -> Probe:
    """Every feature restored, ``/health/ready`` 200 and the store caught up."""
    return all_of(features_restored(pipeline), node_ready(pipeline), store_caught_up(pipeline))


class PriceStream:
    """A subscriber of the node's ``/events`` stream that keeps the lab-time arrival of every
    ``price`` event (the live chart's data, sent every 0.5 s while ``live_chart`` is on).

    ``async with PriceStream(pipeline) as prices:``; :attr:`times` grows while it runs;
    :attr:`error` says why the stream ended early (``None`` while it runs or after a clean
    stop)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self.times: list[float] = []
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="lab-prices")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(f"{self._pipeline.status_url}/events") as response,
            ):
                if response.status != 200:
                    self.error = f"/events answered {response.status}"
                    return
                async for raw in response.content:
                    if raw.strip() == b"event: price":
                        self.times.append(loop.time())
                self.error = "the /events stream ended"
        except (aiohttp.ClientError, OSError) as exc:
            self.error = f"/events: {type(exc).__name__}: {exc}"

    def between(self, start: float, end: float) -> int:
        """``price`` events that arrived in ``[start, end]``."""
        return sum(start <= t <= end for t in self.times)


def node_identity(pipeline: Pipeline) -> tuple[int, float] | None:
    """The running node's ``(pid, start time)`` from the process table, ``None`` when down."""
    pid = pipeline.node_pid
    if pid is None:
        return None
    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def check_same_node(
    lab: Lab, name: str, before: tuple[int, float] | None, pipeline: Pipeline
) -> None:
    """Record whether the node process is the one that ran before (process table)."""
    after = node_identity(pipeline)
    lab.check(
        f"{name}: same node process throughout",
        before is not None and after == before,
        f"before {before}, after {after} (process table)",
    )


def check_never_shed(lab: Lab, log: ShedLog, pipeline: Pipeline) -> None:
    """Ingestion and risk are never features, never shed (``/status``), never shed by an admin
    call (the audit log), and the trader's risk state stayed ``active``."""
    named = {f for s in log.samples for f in (*s.features, *s.shed)} & NEVER_SHED
    risk = {s.risk_state.lower() for s in log.samples if s.risk_state is not None}
    lab.check(
        "ingestion and risk are never shed (/status)",
        not named and risk <= {"active"} and bool(log.samples),
        f"core names among features: {sorted(named)}; risk states seen {sorted(risk)}; "
        f"{len(log.samples)} samples",
        independent=False,
    )
    shed_calls: list[str] = []
    ballast = sheds = 0
    try:
        with pipeline.audit_path.open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                data = record.get("data") or {}
                if record.get("kind") == "degradation":
                    # The controller's own sheds are on the record too (kind "degradation").
                    sheds += data.get("action") == "shed"
                    if data.get("feature") in NEVER_SHED:
                        shed_calls.append(str(data.get("feature")))
                    continue
                if record.get("kind") != "admin":
                    continue
                if data.get("action") == "shed" and data.get("target") in NEVER_SHED:
                    shed_calls.append(str(data.get("target")))
                if data.get("action") == "ballast" and data.get("outcome") == "accepted":
                    ballast += 1
    except (OSError, ValueError) as exc:
        lab.check("audit log readable", ok=False, detail=f"{pipeline.audit_path}: {exc}")
        return
    lab.check(
        "ingestion and risk never shed (audit log)",
        not shed_calls and sheds > 0,
        f"sheds of core: {shed_calls}; sheds recorded: {sheds}; accepted ballast calls audited: "
        f"{ballast}",
    )


def _events(
    history: Sequence[dict[str, Any]], before: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The controller's events that are in ``history`` but not in ``before``."""
    seen = {(e.get("at"), e.get("action"), e.get("feature")) for e in before}
    return [e for e in history if (e.get("at"), e.get("action"), e.get("feature")) not in seen]


def check_degradation(
    lab: Lab,
    run: FaultRun,
    log: ShedLog,
    before: Sequence[dict[str, Any]],
    *,
    triggers: frozenset[str],
    prices: PriceStream | None = None,
) -> bool:
    """Check one overload fault: every feature shed while the fault was on (lowest priority
    first, by one of ``triggers``), every one restored after the heal in the reverse order,
    ingestion going on while degraded, and (with ``prices``) no ``price`` event while
    ``live_chart`` was seen shed but some after its restore. Sets ``run.t_detect`` to the first
    sample that saw a shed, and ``run.extra`` figures; returns the degradation success."""
    if run.t_inject is None or run.t_heal is None:
        return False
    events = _events(log.history, before)
    sheds = [e for e in events if e.get("action") == "shed" and e.get("ok")]
    restores = [e for e in events if e.get("action") == "restore" and e.get("ok")]
    shed_order = [str(e.get("feature")) for e in sheds]
    restore_order = [str(e.get("feature")) for e in restores]
    shed_by = sorted({str(e.get("trigger")) for e in sheds})
    first = log.first_shed(run.t_inject)
    if first is not None:
        run.t_detect = first
    window = log.window(run.t_inject, run.t_heal + 0.5)
    shed_in_fault = sorted({f for s in window for f in s.shed})
    degraded = [s for s in log.samples if s.shed and s.t >= run.t_inject]
    ingest_went_on = len(degraded) >= 2 and degraded[-1].acked > degraded[0].acked
    run.extra |= {
        "shed_order": shed_order,
        "restore_order": restore_order,
        "shed_by": shed_by,
        "t_first_shed_s": None if first is None else round(first - run.t_inject, 3),
        "acked_while_degraded": (degraded[-1].acked - degraded[0].acked) if degraded else 0,
    }
    shed_ok = shed_order == list(FEATURE_ORDER) and set(shed_by) <= triggers and bool(shed_by)
    lab.check(
        f"{run.name}: features shed lowest priority first while over the mark",
        shed_ok and set(shed_in_fault) == set(FEATURE_ORDER),
        f"shed {shed_order} by {shed_by} (expected {list(FEATURE_ORDER)} by one of "
        f"{sorted(triggers)}); seen shed in the fault window: {shed_in_fault}",
        independent=False,
    )
    restored_ok = restore_order == list(reversed(FEATURE_ORDER)) and run.t_recovered is not None
    lab.check(
        f"{run.name}: features restored in reverse order after the heal",
        restored_ok,
        f"restored {restore_order}; recovered: {run.t_recovered is not None}",
        independent=False,
    )
    lab.check(
        f"{run.name}: ingestion went on while degraded",
        ingest_went_on,
        f"{run.extra['acked_while_degraded']} ticks acknowledged over {len(degraded)} degraded "
        "samples",
        independent=False,
    )
    if prices is not None:
        chart_shed = [s.t for s in log.samples if "live_chart" in s.shed and s.t >= run.t_inject]
        if chart_shed:
            # A price event already on its way when the chart was shed may still arrive.
            start, end = chart_shed[0] + _PRICE_PERIOD + 0.2, chart_shed[-1]
            during = prices.between(start, end) if end > start else 0
            after = prices.between(chart_shed[-1], float("inf"))
            run.extra |= {"prices_while_chart_shed": during, "prices_after_restore": after}
            lab.check(
                f"{run.name}: the live chart really stopped, and came back (/events)",
                during == 0 and (after > 0 or run.t_recovered is None),
                f"{during} price events in {max(end - start, 0):.1f} s while shed, {after} "
                f"after; stream: {prices.error or 'open'}",
            )
    success = shed_ok and restored_ok
    run.extra["degradation_success"] = success
    return success


class MemoryPressure(Scenario):
    """Ballast to 80 % (gradual: nothing shed), 95 % and 98 % (shed, then restored)."""

    id: ClassVar[int] = 5
    name: ClassVar[str] = "memory pressure"
    description: ClassVar[str] = "ballast to 80 / 95 / 98 % of the node's memory budget"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.8, text="≥ 80 % recovered, stable (same process, nothing lost)"
    )
    own_criterion: ClassVar[Criterion] = dataclasses.replace(
        OWN_CRITERION,
        text="100 % recovered within the memory SLA (45 s), every feature restored, zero "
        "lost/duplicated/corrupted",
    )
    sla: ClassVar[float] = 45.0
    """Seconds from the heal to every feature restored with the node ready and caught up: the
    memory class's recovery-time objective (DESIGN §6 category 9). Unloaded it takes 2–3 s (two
    levels, 1 s hold and 1 s evaluation period each); on a loaded machine the loop-lag trigger,
    the largest lag of the last 5 s, can hold the restore several seconds more."""
    shed_hold: ClassVar[float] = 3.2
    """Seconds a shedding fault is held: two levels, each one hold plus one evaluation period
    after the reading crossed the mark, and a margin."""

    async def run(self, lab: Lab) -> None:
        if not isinstance(lab, LabRun):
            raise TypeError(f"{self.name}: needs the lab's own runner (a LabRun), got {lab!r}")
        pipeline = lab.pipeline
        log = ShedLog(pipeline, lab._clock)  # noqa: SLF001 - the lab's clock
        await log.refresh()
        identity = node_identity(pipeline)
        recovered = recovered_probe(pipeline)
        url, token = pipeline.status_url, pipeline.admin_token
        async with PriceStream(pipeline) as prices:
            gradual = MemoryBallast(
                url, token, lab.severity, fraction=0.80, steps=4, step_interval=0.25,
                name="memory.gradual_80",
            )  # fmt: skip
            run = await lab.fault(
                gradual, hold=2.2, sla=self.sla, availability=log, recovered=recovered,
                recover_timeout=15.0,
            )  # fmt: skip
            self._check_gradual(lab, run, log, gradual)
            for fraction, name in ((0.95, "memory.spike_95"), (0.98, "memory.critical_98")):
                before = list(log.history)
                ballast = MemoryBallast(url, token, lab.severity, fraction=fraction, name=name)
                run = await lab.fault(
                    ballast, hold=self.shed_hold, sla=self.sla, availability=log,
                    recovered=recovered, recover_timeout=15.0,
                )  # fmt: skip
                await log.refresh()
                check_degradation(
                    lab, run, log, before, triggers=frozenset({"memory", "loop_lag"}),
                    prices=prices,
                )  # fmt: skip
        check_same_node(lab, "memory pressure", identity, pipeline)
        check_never_shed(lab, log, pipeline)
        await lab.integrity()

    @staticmethod
    def _check_gradual(lab: Lab, run: FaultRun, log: ShedLog, ballast: MemoryBallast) -> None:
        if run.t_inject is None or run.t_heal is None:
            return
        window = log.window(run.t_inject, run.t_heal)
        shed = sorted({f for s in window for f in s.shed})
        budget = log.budget or 0
        peak = max((s.memory for s in window if s.memory is not None), default=0.0)
        share = peak / budget if budget else 0.0
        run.extra |= {
            "peak_rss_bytes": peak,
            "peak_share_of_budget": round(share, 3),
            "samples": len(window),
            "shed_seen": shed,
        }
        lab.check(
            f"{run.name}: the node's RSS rose past 75 % of its budget, and nothing was shed "
            "below the 90 % mark",
            not shed and len(window) > 0 and 0.75 <= share < 0.9,
            f"peak RSS {peak:.0f} B = {share:.1%} of {budget} B (asked {ballast.fraction:.0%}); "
            f"shed seen {shed} over {len(window)} samples",
            independent=False,
        )
