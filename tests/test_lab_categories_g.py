"""Categories 6 (circuit breaker) and 10 (emergency shutdown) run for real through run_lab."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

from strategylab.chaos._harness import PipelineConfig
from strategylab.chaos._lab import run_lab
from strategylab.chaos._run_model import LabOptions
from strategylab.chaos.scenarios import SCENARIOS, scenarios_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals"),
]


def test_registry_holds_categories_6_and_10() -> None:
    """SCENARIOS names the breaker and the shutdown categories by their ids."""
    assert SCENARIOS[6].id == 6
    assert SCENARIOS[10].id == 10


@pytest.mark.timeout(150)
async def test_breaker_and_shutdown_categories_pass(tmp_path: Path) -> None:
    """On a healthy pipeline the breaker opens and protects, and three emergency shutdowns each
    stop with state preserved and resume; nothing acknowledged is lost."""
    options = LabOptions(categories=(6, 10), work_dir=tmp_path / "lab", seed=7)
    report = await run_lab(options, scenarios_for(options.categories))
    breaker, shutdown = report.results
    assert breaker.judge(breaker.seed_criterion) == ("pass", [])
    assert shutdown.judge(shutdown.seed_criterion) == ("pass", [])
    for run in breaker.ran:
        assert run.extra["breaker_rejected_calls"] > 0
        assert (
            0
            < run.extra["exchange_strikes"]
            <= (run.extra["breaker_failed_calls"] + run.extra["breaker_ignored_calls"])
        )
    assert shutdown.shutdowns_asked == 3
    assert shutdown.shutdowns_done == 3
    assert [r.extra["shutdown"]["exit_code"] for r in shutdown.ran[:3]] == [3, 3, 3]
    assert shutdown.ran[3].extra["admin_calls"]["held"] is True
    for result in report.results:
        assert result.integrity is not None
        assert result.integrity.lost == 0
        assert result.integrity.duplicated == 0
    assert not psutil.Process().children(recursive=True)


@pytest.mark.timeout(150)
async def test_shutdown_category_fails_when_the_shutdown_has_no_time(tmp_path: Path) -> None:
    """A node whose emergency shutdown may take 1 ms (``--shutdown-deadline``) cannot finish
    its kill steps: category 10 FAILS."""
    work = tmp_path / "lab"
    config = PipelineConfig(work_dir=work, extra_node_args=("--shutdown-deadline", "0.001"))
    options = LabOptions(categories=(10,), work_dir=work, seed=7)
    report = await run_lab(options, scenarios_for(options.categories), pipeline_config=config)
    (result,) = report.results
    verdict, reasons = result.judge(result.seed_criterion)
    assert verdict == "fail", reasons
    assert result.shutdowns_done < result.shutdowns_asked
    assert not psutil.Process().children(recursive=True)
