"""The kill switch: ordered steps with deadlines on the clock, snapshot, stops, marker last."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from strategylab._layout import DataLayout
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance._audit import AuditLog
from strategylab.fault_tolerance._components import ComponentRegistry
from strategylab.fault_tolerance._kill_switch import (
    EXIT_EMERGENCY,
    KillStep,
    KillSwitch,
    StepOutcome,
    TriggerSource,
)
from strategylab.fault_tolerance._snapshot import (
    StateSnapshot,
    read_snapshot,
    unclean_marker,
)
from strategylab.testing import FakeClock


class _Part:
    """A component that records when it was stopped and what was on disk at that moment."""

    def __init__(self, name: str, log: list[str], layout: DataLayout) -> None:
        self.name = name
        self._log = log
        self._layout = layout
        self.saw_snapshot = False
        self.saw_marker = True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.saw_snapshot = self._layout.snapshot.exists()
        self.saw_marker = self._layout.unclean_marker.exists()
        self._log.append(f"stop:{self.name}")

    async def health(self) -> bool:
        return True


def _source(log: list[str]) -> StateSnapshot:
    log.append("snapshot")
    return StateSnapshot.create(
        reason="placeholder",
        positions={"BTC-USD": 2.0},
        open_orders=[{"order_id": "o-1"}],
        last_sequence={"BTC-USD": 77},
        clock=FakeClock(0),
    )


def _switch(
    tmp_path: Path,
    log: list[str],
    clock: FakeClock,
    *,
    steps: list[KillStep] | None = None,
    registry: ComponentRegistry[_Part] | None = None,
    audit: AuditLog | None = None,
    exit_codes: list[int] | None = None,
) -> KillSwitch:
    async def halt() -> None:
        log.append("halt")

    async def cancel() -> None:
        log.append("cancel")

    def flush() -> None:
        log.append("flush")

    default = [KillStep("halt", halt, 0.05), KillStep("cancel", cancel, 1.0)]
    default.append(KillStep("flush", flush, 1.0))
    return KillSwitch(
        default if steps is None else steps,
        layout=DataLayout(tmp_path),
        snapshot_source=lambda: _source(log),
        registry=registry,
        clock=clock,
        audit=audit,
        exit=None if exit_codes is None else exit_codes.append,
    )


async def test_steps_run_in_order_then_snapshot_stops_and_marker(tmp_path: Path) -> None:
    """Caller's steps, then the snapshot, then stops in reverse dependency order, marker last."""
    log: list[str] = []
    layout = DataLayout(tmp_path)
    registry: ComponentRegistry[_Part] = ComponentRegistry()
    parts = {name: _Part(name, log, layout) for name in ("store", "ingest", "feed")}
    registry.register("store", parts["store"])
    registry.register("ingest", parts["ingest"], depends_on=["store"])
    registry.register("feed", parts["feed"], depends_on=["ingest"])
    exits: list[int] = []
    switch = _switch(tmp_path, log, FakeClock(), registry=registry, exit_codes=exits)

    report = await switch.trigger("bad signature", TriggerSource.SECURITY_VIOLATION)

    assert log == ["halt", "cancel", "flush", "snapshot", "stop:feed", "stop:ingest", "stop:store"]
    names = [step.name for step in report.steps]
    assert names == [
        "halt",
        "cancel",
        "flush",
        "snapshot",
        "stop:feed",
        "stop:ingest",
        "stop:store",
        "marker",
    ]
    assert report.ok
    assert report.exit_code == EXIT_EMERGENCY
    assert EXIT_EMERGENCY != 0  # type: ignore[comparison-overlap]  # documented: non-zero
    assert exits == [EXIT_EMERGENCY]
    # The snapshot was on disk while the components stopped; the marker only after.
    assert all(part.saw_snapshot and not part.saw_marker for part in parts.values())
    marker = unclean_marker(layout)
    assert marker is not None
    assert marker.reason == "bad signature"
    snapshot = read_snapshot(layout)
    assert marker.snapshot_sha256 == snapshot.digest == report.snapshot_sha256
    assert snapshot.reason == "bad signature"
    assert snapshot.last_sequence == {"BTC-USD": 77}
    assert report.marker_path == layout.unclean_marker


async def test_a_hanging_step_is_cut_at_its_deadline_on_the_clock(tmp_path: Path) -> None:
    """A step that never returns is cancelled at its deadline (fake time) and the rest runs."""
    log: list[str] = []
    clock = FakeClock()
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def after() -> None:
        log.append("after")

    steps = [KillStep("cancel", hang, 2.5), KillStep("after", after, 1.0)]
    switch = _switch(tmp_path, log, clock, steps=steps)
    report = await asyncio.wait_for(switch.trigger("x", TriggerSource.CLI), timeout=10)

    hung = report.step("cancel")
    assert hung.outcome is StepOutcome.TIMED_OUT
    assert hung.duration == pytest.approx(2.5)
    assert "2.5s" in (hung.error or "")
    assert cancelled.is_set()
    assert report.step("after").outcome is StepOutcome.OK
    assert log == ["after", "snapshot"]
    assert report.marker_path is not None
    assert clock.monotonic() == pytest.approx(2.5)


async def test_a_failing_step_is_recorded_and_the_sequence_goes_on(tmp_path: Path) -> None:
    """A step that raises is FAILED with its error; the snapshot and marker still follow."""
    log: list[str] = []

    async def broken() -> None:
        raise ConnectionError("exchange unreachable")

    switch = _switch(tmp_path, log, FakeClock(), steps=[KillStep("cancel", broken, 1.0)])
    report = await switch.trigger("x")
    step = report.step("cancel")
    assert step.outcome is StepOutcome.FAILED
    assert step.error == "ConnectionError: exchange unreachable"
    assert not report.ok
    assert report.step("snapshot").outcome is StepOutcome.OK
    assert report.step("marker").outcome is StepOutcome.OK


async def test_a_slow_synchronous_step_counts_as_timed_out(tmp_path: Path) -> None:
    """A sync step cannot be cut, but one that overran its deadline is TIMED_OUT."""
    clock = FakeClock()
    switch = _switch(tmp_path, [], clock, steps=[KillStep("flush", lambda: clock.advance(3), 1.0)])
    report = await switch.trigger("x")
    assert report.step("flush").outcome is StepOutcome.TIMED_OUT


async def test_second_trigger_joins_the_first(tmp_path: Path) -> None:
    """Two triggers, concurrent or later, run the shutdown once and get the same report."""
    log: list[str] = []
    switch = _switch(tmp_path, log, FakeClock())
    first, second = await asyncio.gather(
        switch.trigger("one", TriggerSource.HTTP), switch.trigger("two", TriggerSource.CLI)
    )
    third = await switch.trigger("three", TriggerSource.CRASH_LOOP)
    assert first is second is third
    assert first.reason == "one"
    assert first.source is TriggerSource.HTTP
    assert log.count("halt") == 1
    assert switch.joined == 2
    assert switch.report is first


async def test_cancelling_a_caller_does_not_stop_the_shutdown(tmp_path: Path) -> None:
    """The shutdown runs in the switch's own task: a cancelled caller leaves it running."""
    log: list[str] = []
    clock = FakeClock(autojump_threshold=None)
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()
        log.append("slow done")

    switch = _switch(tmp_path, log, clock, steps=[KillStep("halt", slow, 5.0)])
    caller = asyncio.ensure_future(switch.trigger("x"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    report = await asyncio.wait_for(switch.trigger("again"), timeout=10)
    assert log == ["slow done", "snapshot"]
    assert report.ok


async def test_trigger_to_halt_is_measured(tmp_path: Path) -> None:
    """report.elapsed('halt') is the time from the trigger to trading halted, on the clock."""
    clock = FakeClock()

    async def halt() -> None:
        await clock.asleep(0.02)

    switch = _switch(tmp_path, [], clock, steps=[KillStep("halt", halt, 0.05)])
    report = await switch.trigger("x")
    assert report.elapsed("halt") == pytest.approx(0.02)
    assert report.step("halt").outcome is StepOutcome.OK
    steps = report.to_dict()["steps"]
    assert isinstance(steps, list)
    assert steps[0]["name"] == "halt"
    assert steps[0]["elapsed_ms"] == pytest.approx(20.0)


async def test_snapshot_source_failure_leaves_marker_without_snapshot(tmp_path: Path) -> None:
    """When the snapshot cannot be taken, the marker is still written and names no snapshot."""

    def broken() -> StateSnapshot:
        raise RuntimeError("positions unavailable")

    layout = DataLayout(tmp_path)
    switch = KillSwitch([], layout=layout, snapshot_source=broken, clock=FakeClock())
    report = await switch.trigger("x")
    assert report.step("snapshot").outcome is StepOutcome.FAILED
    assert report.snapshot_path is None
    marker = unclean_marker(layout)
    assert marker is not None
    assert marker.snapshot_sha256 is None
    assert not layout.snapshot.exists()


async def test_symlink_at_snapshot_fails_that_step_only(tmp_path: Path) -> None:
    """A symlink planted at snapshot.json fails the snapshot step; its target is untouched."""
    layout = DataLayout(tmp_path / "data")
    layout.root.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    layout.snapshot.symlink_to(victim)
    switch = _switch(layout.root, [], FakeClock())
    report = await switch.trigger("x")
    step = report.step("snapshot")
    assert step.outcome is StepOutcome.FAILED
    assert "symlink" in (step.error or "")
    assert victim.read_text() == "keep"
    assert report.marker_path == layout.unclean_marker


async def test_a_hanging_component_stop_is_cut(tmp_path: Path) -> None:
    """A component whose stop() hangs is cut at stop_deadline; the next one is still stopped."""
    log: list[str] = []
    layout = DataLayout(tmp_path)

    class Stuck(_Part):
        async def stop(self) -> None:
            await asyncio.Event().wait()

    registry: ComponentRegistry[_Part] = ComponentRegistry()
    registry.register("store", _Part("store", log, layout))
    registry.register("feed", Stuck("feed", log, layout), depends_on=["store"])
    clock = FakeClock()
    switch = KillSwitch(
        [],
        layout=layout,
        snapshot_source=lambda: _source(log),
        registry=registry,
        clock=clock,
        stop_deadline=0.5,
    )
    report = await asyncio.wait_for(switch.trigger("x"), timeout=10)
    assert report.step("stop:feed").outcome is StepOutcome.TIMED_OUT
    assert report.step("stop:store").outcome is StepOutcome.OK
    assert log[-1] == "stop:store"


async def test_every_step_is_audited(tmp_path: Path) -> None:
    """The audit log holds the trigger, each step (name, outcome, duration) and the end."""
    log: list[str] = []
    audit = AuditLog(tmp_path / "audit.jsonl")
    try:
        switch = _switch(tmp_path, log, FakeClock(), audit=audit)
        await switch.trigger("bad signature", TriggerSource.SECURITY_VIOLATION)
        await switch.trigger("again", TriggerSource.CLI)
    finally:
        audit.close()
    records = [r.data for r in AuditLog.read(tmp_path / "audit.jsonl")]
    assert records[0] == {
        "event": "triggered",
        "reason": "bad signature",
        "source": "security_violation",
    }
    steps = [(r["step"], r["outcome"]) for r in records if r["event"] == "step"]
    assert steps == [
        ("halt", "ok"),
        ("cancel", "ok"),
        ("flush", "ok"),
        ("snapshot", "ok"),
        ("marker", "ok"),
    ]
    assert all("duration_ms" in r for r in records if r["event"] == "step")
    events = [r["event"] for r in records]
    assert events[-2:] == ["finished", "trigger_joined"]


def test_bad_construction_is_named(tmp_path: Path) -> None:
    """A bad deadline, a duplicate or reserved step name, or a zero exit code names the field."""

    async def noop() -> None:
        pass

    with pytest.raises(ConfigurationError, match="deadline=0"):
        KillStep("halt", noop, 0)
    layout = DataLayout(tmp_path)
    for steps in ([KillStep("a", noop, 1), KillStep("a", noop, 1)], [KillStep("marker", noop, 1)]):
        with pytest.raises(ConfigurationError, match="steps="):
            KillSwitch(steps, layout=layout, snapshot_source=lambda: _source([]))
    with pytest.raises(ConfigurationError, match="exit_code=0"):
        KillSwitch([], layout=layout, snapshot_source=lambda: _source([]), exit_code=0)


_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from strategylab._layout import DataLayout
    from strategylab.fault_tolerance._kill_switch import KillStep, KillSwitch, TriggerSource
    from strategylab.fault_tolerance._snapshot import StateSnapshot

    async def main() -> None:
        halted = []
        async def halt() -> None:
            halted.append(True)
        switch = KillSwitch(
            [KillStep("halt", halt, 0.05)],
            layout=DataLayout(Path(sys.argv[1])),
            snapshot_source=lambda: StateSnapshot.create(
                reason="x", last_sequence={"BTC-USD": 5}
            ),
            exit=lambda code: (sys.stdout.flush(), os._exit(code)),
        )
        await switch.trigger("integration", TriggerSource.CLI)

    asyncio.run(main())
    """
)


@pytest.mark.integration
def test_a_real_process_exits_non_zero_with_snapshot_and_marker(tmp_path: Path) -> None:
    """In a real process the switch writes snapshot and marker, then exits with code 3."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == EXIT_EMERGENCY, done.stderr.decode()
    layout = DataLayout(tmp_path)
    assert read_snapshot(layout).last_sequence == {"BTC-USD": 5}
    marker = json.loads(layout.unclean_marker.read_text())
    assert marker["reason"] == "integration"
