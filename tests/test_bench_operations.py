"""bench/operations.py's helpers: its percentiles, its reading of the kill report the library
writes, its goal verdicts, and its supervisor case on a real child process (three crashes).

The benchmark itself runs in CI as ``bench/operations.py --quick``; these tests keep its parsing
pinned to the library's real shapes, so a changed report fails here and not as a silent
"no sample" in a benchmark nobody reads.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from strategylab.fault_tolerance import KillReport, StepOutcome, StepRecord, TriggerSource

BENCH = Path(__file__).resolve().parents[1] / "bench" / "operations.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_operations", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ops = _load()


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..10 is 5, p99 of 20 samples is their maximum, p100 the maximum."""
    assert ops.percentile(list(range(1, 11)), 50) == 5
    assert ops.percentile([float(i) for i in range(20)], 99) == 19.0
    assert ops.percentile([3.0, 1.0, 2.0], 100) == 3.0


def _step(name: str, started: float, finished: float) -> StepRecord:
    return StepRecord(
        name=name, outcome=StepOutcome.OK, started=started, finished=finished, deadline=1.0
    )


def test_halt_time_is_read_from_the_kill_reports_own_dict() -> None:
    """The steps up to and including ``halt`` of KillReport.to_dict(), nested in a node's line."""
    report = KillReport(
        reason="bench",
        source=TriggerSource.HTTP,
        triggered=10.0,
        triggered_time="2026-01-01T00:00:00+00:00",
        steps=(
            _step("drain_first", 10.0, 10.004),
            _step("halt", 10.004, 10.010),
            _step("snapshot", 10.010, 10.5),
        ),
        snapshot_path=None,
        snapshot_sha256=None,
        marker_path=None,
        finished=10.5,
        exit_code=3,
    )
    line = {"event": "kill_switch", "report": report.to_dict()}
    found = ops._kill_report(line)
    assert found is not None
    assert ops.halt_seconds(found) == pytest.approx(0.010, abs=1e-6)


def test_a_report_without_a_halt_step_gives_no_figure() -> None:
    """No ``halt`` step: None, never the whole shutdown's time."""
    assert ops.halt_seconds({"steps": [{"name": "snapshot", "duration_ms": 5.0}]}) is None
    assert ops._kill_report({"event": "status", "queued": 3}) is None


def test_goals_judge_both_directions_and_missing_figures() -> None:
    """At most / at least, and a case that was not available is MISSED with its reason."""
    assert ops.Goal("latency", 9.0, 10, "ms").met is True
    assert ops.Goal("latency", 11.0, 10, "ms").met is False
    assert ops.Goal("ratio", 96.0, 95, "%", at_least=True).met is True
    missing = ops.Goal("latency", None, 10, "ms", note="no /metrics")
    assert missing.met is None
    assert missing.row() == "| latency | not available: no /metrics | MISSED |"


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_supervisor_case_restarts_a_real_child_and_times_each_crash() -> None:
    """Three SIGKILLs of the supervised TCP server: three figures, each a real restart."""
    observed, recorded, notes = asyncio.run(ops.bench_supervisor(3))
    assert len(observed.samples) == 3
    assert len(recorded.samples) == 3
    assert notes == []
    assert all(0 < s < 10 for s in observed.samples)
