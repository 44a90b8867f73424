"""The documented example of a user's own lab scenario runs and passes (docs/examples)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "lab_scenario.py"


@pytest.mark.timeout(120)
def test_the_documented_user_scenario_runs_and_passes() -> None:
    """``python docs/examples/lab_scenario.py`` runs a real pipeline, injects its latency, and
    exits 0 with the category's verdict ``pass`` and a measured recovery."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and file
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=110, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slow feed: pass; recovery " in done.stdout
    assert "recovery None" not in done.stdout
