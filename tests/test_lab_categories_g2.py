"""Categories 5 (memory pressure) and 7 (graceful degradation) run for real through run_lab."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lab_support import stray_children
from strategylab.chaos._harness import PipelineConfig
from strategylab.chaos._lab import run_lab
from strategylab.chaos._run_model import LabOptions
from strategylab.chaos.scenarios import SCENARIOS, scenarios_for
from strategylab.chaos.scenarios._c07_degradation import CpuThrottle

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals"),
]


def test_registry_holds_categories_5_and_7() -> None:
    """SCENARIOS names the memory and the degradation categories by their ids."""
    assert SCENARIOS[5].id == 5
    assert SCENARIOS[7].id == 7


def test_throttle_refuses_a_quota_that_is_not_one() -> None:
    """A stop as long as the period is no quota: refused, naming both values."""
    with pytest.raises(ValueError, match=r"stopped=0\.5, period=0\.5"):
        CpuThrottle(lambda: 1, period=0.5, stopped=0.5)


@pytest.mark.timeout(150)
async def test_degradation_fails_when_the_node_never_sheds_in_time(tmp_path: Path) -> None:
    """A node that waits 60 s before shedding (``--degradation-hold 60``) sheds nothing within
    the overloads: category 7 FAILS."""
    work = tmp_path / "lab"
    config = PipelineConfig(work_dir=work, extra_node_args=("--degradation-hold", "60"))
    options = LabOptions(categories=(7,), work_dir=work, seed=7)
    report = await run_lab(options, scenarios_for(options.categories), pipeline_config=config)
    (result,) = report.results
    verdict, reasons = result.judge(result.seed_criterion)
    assert verdict == "fail", reasons
    assert any("degradation success" in r for r in reasons)
    assert all(run.extra["shed_order"] == [] for run in result.ran)
    assert not stray_children()
