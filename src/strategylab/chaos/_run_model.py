"""The records of a whole lab run: its options, its progress events, and its report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._scenario import CategoryResult
from ._severity import Severity

__all__ = ["LabEvent", "LabOptions", "LabReport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LabOptions:
    """What ``strategylab lab`` was asked to do."""

    categories: tuple[int, ...] = tuple(range(1, 11))
    """Category ids 1..10, in run order."""
    severity: Severity = Severity.MEDIUM
    seed: int = 42
    """Seeds every random choice of the run (fault order, points, jitter): the same seed
    injects the same faults at the same points."""
    postgres: str | None = None
    """A PostgreSQL DSN for the node's store (server faults still use a throwaway instance)."""
    work_dir: Path | None = None
    """Where the pipeline's data directories go (a fresh temporary directory when ``None``)."""
    report_dir: Path | None = None
    junit: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LabEvent:
    """A progress event for the live view (``kind`` says which fields are set)."""

    kind: Literal["category", "fault", "healed", "recovered", "probe", "rate", "done", "note"]
    t: float
    """Monotonic seconds."""
    category: int | None = None
    category_name: str = ""
    fault: str = ""
    ok: bool | None = None
    ticks_per_s: float | None = None
    text: str = ""


@dataclass(slots=True, kw_only=True)
class LabReport:
    """A finished run: every category's result, and what the report files need."""

    options: LabOptions
    results: list[CategoryResult]
    started_wall: str
    """ISO-8601 UTC time the run started."""
    origin: float
    """The monotonic time the run started (every time in the report is relative to it)."""
    duration_s: float
    machine: dict[str, Any] = field(default_factory=dict)
    """CPU count, memory, Python, platform, root or not, store kind."""
    audit_log: Path | None = None
    """The node's recovery audit log (copied into the report directory)."""
    audit_verified: bool | None = None
    integrity_reports: list[Path] = field(default_factory=list)
    skipped_capabilities: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every category met the seed's criterion (the exit code's rule)."""
        return bool(self.results) and all(r.verdict == "pass" for r in self.results)
