"""`strategylab demo --seed`: two real runs with one seed inject the same faults at the same
points and end with the same ambiguous-order count (the one the schedule plans)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from strategylab._demo_faults import plan_faults

# 10 s of ticks: the trader (started last) still sees most of them and sends 100+ orders.
TICKS, RATE = 100_000, 10_000


def _demo(data: Path, seed: int) -> tuple[str, dict[str, Any]]:
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable, "-m", "strategylab", "demo", "--data-dir", str(data),
            "--ticks", str(TICKS), "--tick-rate", str(RATE), "--seed", str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads((data / "faults.json").read_text())


def _schedule(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("fault schedule"))
    return [line for line in lines[start + 1 :] if line.startswith("  ")][:7]


def _planned(report: dict[str, Any]) -> list[tuple[object, ...]]:
    keys = ("kind", "track", "at", "hold_s", "rate", "count")
    return sorted(tuple(f[k] for k in keys) for f in report["faults"])


@pytest.mark.timeout(330)
def test_two_runs_with_one_seed_inject_the_same_faults_and_count_the_same_ambiguity(
    tmp_path: Path,
) -> None:
    """Same printed schedule, same planned faults in faults.json, every fault injected, each
    order window striking its count, and ambiguous orders = the planned count, twice."""
    runs = [_demo(tmp_path / f"run{i}", 42) for i in range(2)]
    plan = plan_faults(42, TICKS)
    expected = [f"  {line}" for line in plan.lines()]
    for stdout, report in runs:
        assert _schedule(stdout) == expected
        assert report["seed"] == 42
        assert report["ambiguous_planned"] == plan.ambiguous
        assert report["ambiguous_counted"] == plan.ambiguous, report
        assert all(f["injected_at"] is not None for f in report["faults"]), report
        assert [f["struck"] for f in report["faults"] if f["track"] == "orders"] == [
            f.count for f in plan.orders
        ]
    assert _planned(runs[0][1]) == _planned(runs[1][1])
    assert plan_faults(7, TICKS).lines() != plan.lines()  # another seed, another schedule
