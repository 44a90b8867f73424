"""The lab's harness and fault runner against a real pipeline: exchange, proxies, node, trader.

Every test runs real processes and real faults, bounded by a timeout; nothing waits on a clock
for a state change that the pipeline could report instead (the lab's own probe loops do the
waiting, as in a real run).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from lab_support import stray_children
from strategylab.chaos import Severity
from strategylab.chaos._harness import Pipeline, PipelineConfig
from strategylab.chaos._lab import LabRun
from strategylab.chaos._probes import http_ok, tcp_connect
from strategylab.chaos._scenario import Criterion, Lab, Scenario
from strategylab.chaos.scenarios._c01_basic import ToxicInjector

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals"),
]


class _Probe(Scenario):
    """A scenario object for a LabRun driven by the test itself."""

    id: ClassVar[int] = 99
    name: ClassVar[str] = "test"
    seed_criterion: ClassVar[Criterion] = Criterion(recovered=1.0, text="all recovered")

    async def run(self, lab: Lab) -> None:
        raise NotImplementedError


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with Pipeline(PipelineConfig(work_dir=tmp_path / "lab")) as running:
        yield running


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(60)
async def test_pipeline_starts_and_leaves_no_child(tmp_path: Path) -> None:
    """A started pipeline runs exchange, node and trader; leaving it leaves no child behind."""
    async with Pipeline(PipelineConfig(work_dir=tmp_path / "lab")) as p:
        trader = await p.trader_pid()
        pids = [p.exchange_pid, p.node_pid, trader]
        assert all(_alive(pid) for pid in pids), pids
        assert (await p.live())[0]
        assert (await tcp_connect("127.0.0.1", p.ws_proxy.listen_port)())[0]
        assert (await http_ok(f"{p.exchange_url}/api/status")())[0]
    assert not any(_alive(pid) for pid in pids)
    assert not stray_children()
    assert [line.event for line in p.lines][-1] == "stopped"


@pytest.mark.timeout(60)
async def test_killed_node_restarts_and_resumes(pipeline: Pipeline) -> None:
    """A SIGKILLed node is started again on its data directory, catches up and loses nothing."""
    old = pipeline.node_pid
    assert await pipeline.kill_node() == -9
    assert not pipeline.node_running
    await pipeline.start_node()
    assert pipeline.node_pid not in {None, old}
    assert [line.event for line in pipeline.lines].count("started") == 2
    lab = LabRun(pipeline, _Probe())
    integrity = await lab.integrity()
    assert integrity.lost == 0
    assert integrity.report["caught_up"]


@pytest.mark.timeout(60)
async def test_reset_fault_is_measured_in_order(pipeline: Pipeline) -> None:
    """A real connection reset, held 1 s: t_inject <= t_detect and t_heal <= t_recovered."""
    lab = LabRun(pipeline, _Probe(), severity=Severity.MEDIUM)
    reset = ToxicInjector("network.reset", lambda: pipeline.ws_proxy, "reset_peer", timeout=0)
    run = await lab.fault(reset, hold=1.0, sla=5.0, recover_timeout=15.0)
    assert run.t_inject is not None
    assert run.t_detect is not None
    assert run.t_heal is not None
    assert run.t_recovered is not None
    assert run.t_inject <= run.t_detect
    assert run.t_inject <= run.t_heal <= run.t_recovered
    assert not pipeline.ws_proxy.toxics  # healed
    assert run.extra["node_errors"] >= 1
    assert any(not s.ok for s in run.samples if s.t >= run.t_inject)
    assert run.rates


class _NeverHealed(ToxicInjector):
    """A feed partition whose heal is broken on purpose: the proxy stays disabled."""

    async def _inject(self) -> None:
        await self._proxy().disable()

    async def _heal(self) -> None:
        """Broken on purpose: nothing is switched back on."""


class _BrokenRecovery(Scenario):
    id: ClassVar[int] = 98
    name: ClassVar[str] = "broken recovery"
    seed_criterion: ClassVar[Criterion] = Criterion(recovered=0.8, text="≥ 80 % recovered")

    async def run(self, lab: Lab) -> None:
        assert isinstance(lab, LabRun)
        proxy = lab.pipeline.ws_proxy
        cut = _NeverHealed("network.cut_for_good", lambda: proxy, "blackhole")
        await lab.fault(cut, hold=0.5, sla=1.0, recover_timeout=3.0)


@pytest.mark.timeout(60)
async def test_broken_recovery_fails_the_category(pipeline: Pipeline) -> None:
    """A fault the system cannot recover from (its feed never comes back) makes a FAIL."""
    scenario = _BrokenRecovery()
    lab = LabRun(pipeline, scenario)
    try:
        await scenario.run(lab)
    finally:
        await pipeline.ws_proxy.enable()
    run = lab.result.faults[0]
    assert run.t_detect is not None
    assert run.t_recovered is None
    assert not run.recovered
    verdict, reasons = lab.result.judge(scenario.seed_criterion)
    assert verdict == "fail"
    assert any(r.startswith("recovered 0.0%") for r in reasons)
