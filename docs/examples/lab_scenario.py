"""A lab scenario of your own: the feed through 400 ms of latency for 2 s, on the lab's pipeline.

Run it with ``python docs/examples/lab_scenario.py``; ``tests/test_lab_user_scenario.py`` runs it
too. A scenario is a :class:`~strategylab.chaos.Scenario` with an id, a name and a criterion;
its ``run`` injects faults through ``lab.fault(...)`` (which probes, heals however the body ends,
and measures detection and recovery), records observations with ``lab.check(...)``, and ends
with ``lab.integrity()`` (the checker over the store against the exchange's log).
"""

# ruff: noqa: INP001, S101, T201 - an example script to copy, run as a file

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import ClassVar

from strategylab.chaos import (
    Criterion,
    Lab,
    LabOptions,
    LabRun,
    Latency,
    Scenario,
    run_lab,
)


class SlowFeed(Scenario):
    """400 ms each way on the feed for 2 s: the node must catch up within 2 s of the heal."""

    id: ClassVar[int] = 101
    name: ClassVar[str] = "slow feed"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0, availability=0.95, text="recovered within 2 s, >= 95 % available"
    )

    async def run(self, lab: Lab) -> None:
        assert isinstance(lab, LabRun)  # the built-in runner: it holds the running pipeline
        latency = Latency(
            lab.pipeline.ws_proxy, latency=400, severity=lab.severity, name="network.slow_feed"
        )
        run = await lab.fault(latency, hold=2.0, sla=2.0)
        lab.check("the fault ran", run.skipped is None and run.t_heal is not None)
        await lab.integrity()


async def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        options = LabOptions(categories=(SlowFeed.id,), work_dir=Path(work))
        report = await run_lab(options, [SlowFeed()])
    for result in report.results:
        verdict, reasons = result.judge(result.seed_criterion)
        figures = result.figures()
        print(f"{result.name}: {verdict}; recovery {figures['recovery_max_s']} s; {reasons}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
