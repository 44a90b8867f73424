"""The scenario API: a category is a :class:`Scenario` that runs faults through a :class:`Lab`.

A scenario injects faults (:class:`~strategylab.chaos.Injector`) through :meth:`Lab.fault`,
which probes the system before, during and after each one and records a
:class:`~strategylab.chaos.FaultRun`; it adds independent observations with :meth:`Lab.check`
(the exchange's own order book, the process table, the checker over the store) and ends with
:meth:`Lab.integrity`. The lab then judges the :class:`CategoryResult` twice: against the seed's
criterion (DESIGN §6, the floor) and against the project's own, stricter one.

Users write their own scenarios the same way (docs/lab.md shows one).
"""

from __future__ import annotations

import abc
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ._injector import Injector
from ._measure import FaultRun, percentile
from ._severity import Severity

if TYPE_CHECKING:
    from ._checker_report import IntegrityReport

__all__ = [
    "OWN_CRITERION",
    "CategoryResult",
    "Check",
    "Criterion",
    "Integrity",
    "Lab",
    "Probe",
    "Scenario",
    "Verdict",
]

Verdict = Literal["pass", "fail", "skipped"]

Probe = Callable[[], Awaitable[tuple[bool, str]]]
"""An async check of the system: ``(passed, what it saw)``; it must not raise for a failed
check (an exception counts as a failed probe with the exception as the detail)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Criterion:
    """What a category must show; ``None`` means "not judged". Fractions are 0..1."""

    recovered: float = 1.0
    """Faults recovered over faults that ran."""
    availability: float | None = None
    """Passing availability probes over all of them in the fault windows, pooled."""
    consistency: float | None = None
    """Consistent ticks over acknowledged ticks (lost, duplicated, unexpected and corrupted
    ticks are inconsistent)."""
    within_sla: float | None = None
    """Faults recovered within their SLA over faults that ran."""
    shutdown: float | None = None
    """Emergency shutdowns that completed (snapshot + marker + clean resume) over those asked."""
    zero_loss: bool = True
    """No acknowledged tick lost (always true: the product's promise)."""
    zero_duplicated: bool = False
    zero_corrupted: bool = False
    text: str = ""
    """The criterion as the DESIGN table states it."""


OWN_CRITERION = Criterion(
    recovered=1.0,
    availability=None,
    consistency=1.0,
    within_sla=1.0,
    shutdown=None,
    zero_loss=True,
    zero_duplicated=True,
    zero_corrupted=True,
    text="100 % recovered, zero lost/duplicated/corrupted, 100 % within SLA",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """An observation the lab made besides the probes (``independent`` when it comes from a
    source other than the node itself: the exchange, the process table, the store)."""

    name: str
    ok: bool
    detail: str = ""
    independent: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Integrity:
    """The checker's figures for the category (DESIGN §6: Jepsen's set checker)."""

    acknowledged: int
    stored: int
    lost: int
    duplicated: int
    unexpected: int
    corrupted: int
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, report: IntegrityReport, *, caught: bool, detail: str) -> Integrity:
        """The category's figures from one checker report; ``caught``/``detail``: whether the
        store had caught up with the exchange when it was checked (kept in ``report``). A tick
        emitted invalid that sits in the store counts as corrupted here (the checker reports it
        apart as ``invalid_stored``)."""
        return cls(
            acknowledged=report.acknowledged,
            stored=report.stored,
            lost=report.lost.count,
            duplicated=report.duplicated.count,
            unexpected=report.unexpected.count,
            corrupted=report.corrupted.count + report.invalid_stored.count,
            report=report.to_dict() | {"caught_up": caught, "caught_up_detail": detail},
        )

    @property
    def consistency(self) -> float:
        bad = self.lost + self.duplicated + self.unexpected + self.corrupted
        return 1.0 if self.acknowledged == 0 else max(0.0, 1.0 - bad / self.acknowledged)


@dataclass(slots=True, kw_only=True)
class CategoryResult:
    """One category's run: its faults, checks, integrity, and the two verdicts."""

    id: int
    name: str
    seed_criterion: Criterion
    own_criterion: Criterion
    faults: list[FaultRun] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    integrity: Integrity | None = None
    shutdowns_asked: int = 0
    shutdowns_done: int = 0
    skipped: str | None = None
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0

    @property
    def ran(self) -> list[FaultRun]:
        return [f for f in self.faults if f.skipped is None]

    def figures(self) -> dict[str, Any]:
        """Recovered, recovery-time percentiles, availability, consistency, SLA compliance."""
        ran = self.ran
        times = [t for f in ran if (t := f.recovery_time) is not None]
        samples = [
            s
            for f in ran
            for s in f.samples
            if s.probe == "availability"
            and f.t_inject is not None
            and f.t_inject <= s.t <= (f.t_recovered or float("inf"))
        ]
        return {
            "faults": len(self.faults),
            "ran": len(ran),
            "skipped": len(self.faults) - len(ran),
            "recovered": sum(f.recovered for f in ran),
            "recovered_rate": (sum(f.recovered for f in ran) / len(ran)) if ran else None,
            "recovery_p50_s": percentile(times, 0.5),
            "recovery_p95_s": percentile(times, 0.95),
            "recovery_max_s": max(times) if times else None,
            "sla_s": max((f.sla for f in ran), default=None),
            "within_sla_rate": (sum(f.within_sla for f in ran) / len(ran)) if ran else None,
            "availability": (sum(s.ok for s in samples) / len(samples)) if samples else None,
            "consistency": None if self.integrity is None else self.integrity.consistency,
            "shutdown_rate": (
                self.shutdowns_done / self.shutdowns_asked if self.shutdowns_asked else None
            ),
        }

    def judge(self, criterion: Criterion) -> tuple[Verdict, list[str]]:  # noqa: C901
        """``("pass"|"fail"|"skipped", reasons)`` against ``criterion``; every failed check, a
        lab error and any acknowledged tick lost fail every criterion."""
        if self.skipped is not None or (self.faults and not self.ran and not self.checks):
            return "skipped", [self.skipped or "every fault was skipped"]
        fig = self.figures()
        reasons: list[str] = []
        if self.error is not None:
            reasons.append(f"lab error: {self.error}")
        reasons += [f"check failed: {c.name}: {c.detail}" for c in self.checks if not c.ok]
        reasons += [f"{f.name}: lab error: {f.error}" for f in self.ran if f.error]

        def below(key: str, floor: float | None, label: str) -> None:
            value = fig[key]
            if floor is not None and (value is None or value < floor - 1e-12):
                shown = "none" if value is None else f"{value:.1%}"
                reasons.append(f"{label} {shown} < {floor:.0%}")

        if fig["ran"]:
            below("recovered_rate", criterion.recovered, "recovered")
            below("within_sla_rate", criterion.within_sla, "within SLA")
        below("availability", criterion.availability, "availability")
        below("consistency", criterion.consistency, "consistency")
        below("shutdown_rate", criterion.shutdown, "shutdown success")
        integ = self.integrity
        if integ is None and (criterion.consistency is not None or criterion.zero_loss):
            reasons.append("no integrity check")
        elif integ is not None:
            if criterion.zero_loss and integ.lost:
                reasons.append(f"{integ.lost} acknowledged ticks lost")
            if criterion.zero_duplicated and integ.duplicated:
                reasons.append(f"{integ.duplicated} ticks duplicated")
            if criterion.zero_corrupted and integ.corrupted:
                reasons.append(f"{integ.corrupted} ticks corrupted")
        return ("fail" if reasons else "pass"), reasons

    @property
    def verdict(self) -> Verdict:
        """The verdict against the seed's criterion (what the exit code follows)."""
        return self.judge(self.seed_criterion)[0]


class Lab(Protocol):
    """What a scenario may use: the running pipeline, the severity, a seeded random source, and
    the measuring fault runner. Implemented by :class:`~strategylab.chaos.LabRun`."""

    severity: Severity
    rng: random.Random
    result: CategoryResult

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
        """Inject, hold ``hold`` seconds while probing, heal, and wait (at most
        ``recover_timeout`` s) for recovery; the run is recorded in :attr:`result`."""
        ...

    def check(self, name: str, ok: bool, detail: str = "", *, independent: bool = True) -> None:
        """Record an observation (a failed one fails the category)."""
        ...

    async def integrity(self) -> Integrity:
        """Run the checker over the store against the exchange's ledger; recorded in
        :attr:`result`."""
        ...


class Scenario(abc.ABC):
    """One test category. Subclasses set the class attributes and implement :meth:`run`."""

    id: ClassVar[int]
    name: ClassVar[str]
    seed_criterion: ClassVar[Criterion]
    own_criterion: ClassVar[Criterion] = OWN_CRITERION
    description: ClassVar[str] = ""

    @abc.abstractmethod
    async def run(self, lab: Lab) -> None:
        """Inject this category's faults through ``lab`` and record its checks."""
