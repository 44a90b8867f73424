"""Categories 6 (circuit breaker) and 10 (emergency shutdown) run for real through run_lab."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lab_support import stray_children
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
    assert not stray_children()
