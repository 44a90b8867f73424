"""What the lab measures of one fault, on a monotonic clock (DESIGN §6).

- ``t_inject``: the fault switched on; ``t_heal``: switched off (``None`` while in force);
- ``t_detect``: the first failed probe or the first error the node recorded, after ``t_inject``;
- ``t_recovered``: the first of three passing recovery probes in a row, taken with the store
  caught up with the exchange, after ``t_heal`` (or after ``t_inject`` for a fault that the
  system heals by failover while it is still in force).

Recovery time is ``t_recovered - t_heal`` for a transient fault and ``t_recovered - t_inject`` for
one healed by failover (seconds). Availability is the passing availability probes over all
availability probes taken in the fault window ``[t_inject, t_recovered]`` (or to the end of
observation when never recovered).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultRun", "ProbeSample", "percentile"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSample:
    """One probe result: ``t`` (monotonic seconds), whether it passed, what it saw."""

    t: float
    ok: bool
    probe: str
    detail: str = ""


@dataclass(slots=True, kw_only=True)
class FaultRun:
    """One injected fault and what was observed of it (times are monotonic seconds)."""

    name: str
    kind: str
    severity: str
    sla: float
    """The recovery-time objective for this fault, seconds (DESIGN §6 category 9)."""
    healed_by_failover: bool = False
    t_inject: float | None = None
    t_detect: float | None = None
    t_heal: float | None = None
    t_recovered: float | None = None
    samples: list[ProbeSample] = field(default_factory=list)
    """Availability and recovery probe results, in time order."""
    rates: list[tuple[float, float]] = field(default_factory=list)
    """``(t, ticks/s)`` ingest-rate samples through the fault window, for the timeline."""
    skipped: str | None = None
    """Why the fault could not run here (a missing capability); ``None`` when it ran."""
    error: str | None = None
    """What went wrong in the lab itself (not in the system under test), if anything."""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def recovered(self) -> bool:
        return self.skipped is None and self.error is None and self.t_recovered is not None

    @property
    def recovery_time(self) -> float | None:
        """Seconds from the heal (or, for failover, the inject) to recovery; ``None`` if never."""
        if self.t_recovered is None:
            return None
        start = self.t_inject if self.healed_by_failover else self.t_heal
        if start is None:
            return None
        return max(0.0, self.t_recovered - start)

    @property
    def detection_time(self) -> float | None:
        if self.t_detect is None or self.t_inject is None:
            return None
        return max(0.0, self.t_detect - self.t_inject)

    @property
    def within_sla(self) -> bool:
        rt = self.recovery_time
        return rt is not None and rt <= self.sla

    def availability(self, probe: str = "availability") -> float | None:
        """Passing ``probe`` samples over all ``probe`` samples in the fault window (0..1);
        ``None`` when the window holds none."""
        if self.t_inject is None:
            return None
        end = self.t_recovered if self.t_recovered is not None else float("inf")
        window = [s for s in self.samples if s.probe == probe and self.t_inject <= s.t <= end]
        if not window:
            return None
        return sum(s.ok for s in window) / len(window)

    def to_json(self, origin: float = 0.0) -> dict[str, Any]:
        """This fault as report JSON; times relative to ``origin`` (the run's start)."""

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - origin, 6)

        rt = self.recovery_time
        return {
            "name": self.name,
            "kind": self.kind,
            "severity": self.severity,
            "sla_s": self.sla,
            "healed_by_failover": self.healed_by_failover,
            "t_inject": rel(self.t_inject),
            "t_detect": rel(self.t_detect),
            "t_heal": rel(self.t_heal),
            "t_recovered": rel(self.t_recovered),
            "recovered": self.recovered,
            "recovery_time_s": None if rt is None else round(rt, 6),
            "detection_time_s": self.detection_time,
            "within_sla": self.within_sla,
            "availability": self.availability(),
            "skipped": self.skipped,
            "error": self.error,
            "notes": list(self.notes),
            "extra": dict(self.extra),
            "samples": [
                {"t": round(s.t - origin, 6), "ok": s.ok, "probe": s.probe, "detail": s.detail}
                for s in self.samples
            ],
            "rates": [[round(t - origin, 6), r] for t, r in self.rates],
        }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation between closest ranks
    (numpy's default ``linear`` method); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = min(max(q, 0.0), 1.0) * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
