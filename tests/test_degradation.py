"""Graceful degradation: features shed by priority under pressure and restored in reverse."""

from __future__ import annotations

import asyncio
import json

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance._component import Degradable
from strategylab.fault_tolerance._degradation import (
    DegradationController,
    DegradationEvent,
    Feature,
    Trigger,
    cpu_trigger,
    loop_lag_trigger,
    queue_depth_trigger,
    rss_trigger,
)
from strategylab.fault_tolerance._manager import ErrorRecoveryManager
from strategylab.fault_tolerance._resources import (
    CpuMeter,
    LoopLagSampler,
    process_cpu_seconds,
    rss_bytes,
)
from strategylab.fault_tolerance._taxonomy import RecoveryStrategyKind
from strategylab.testing import FakeClock

MiB = 1024 * 1024


class Gauge:
    """A reading a test sets by hand."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


class Board:
    """Features that record what was done to them, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def feature(self, name: str, priority: int, *, essential: bool = False) -> Feature:
        def shed() -> None:
            self.log.append(f"shed {name}")

        async def restore() -> None:
            self.log.append(f"restore {name}")

        return Feature(name, priority, shed, restore, essential=essential)

    def standard(self) -> list[Feature]:
        return [
            self.feature("ingestion", 100, essential=True),
            self.feature("notifications", 30),
            self.feature("risk_checks", 100, essential=True),
            self.feature("price_chart", 10),
            self.feature("batch_jobs", 20),
        ]


def controller(
    board: Board, gauge: Gauge, *, clock: FakeClock | None = None, hold: float = 0.0
) -> DegradationController:
    return DegradationController(
        board.standard(),
        [Trigger("load", gauge, 80.0, 50.0)],
        clock=clock or FakeClock(),
        hold=hold,
    )


async def test_sheds_lowest_priority_first_one_level_per_evaluation() -> None:
    """Chart, then batch jobs, then notifications; essential features never, however hard."""
    board, gauge = Board(), Gauge(99.0)
    ctl = controller(board, gauge)
    events = [await ctl.evaluate() for _ in range(5)]
    assert board.log == ["shed price_chart", "shed batch_jobs", "shed notifications"]
    assert [e.level for e in events if e is not None] == [1, 2, 3]
    assert events[3:] == [None, None]
    assert (ctl.level, ctl.max_level) == (3, 3)
    assert ctl.is_active("ingestion")
    assert ctl.is_active("risk_checks")


async def test_restores_in_reverse_order_once_calm() -> None:
    """Below every restore threshold: notifications, batch jobs, chart, one per evaluation."""
    board, gauge = Board(), Gauge(99.0)
    ctl = controller(board, gauge)
    for _ in range(3):
        await ctl.evaluate()
    gauge.value = 10.0
    for _ in range(4):
        await ctl.evaluate()
    assert board.log[3:] == [
        "restore notifications",
        "restore batch_jobs",
        "restore price_chart",
    ]
    assert ctl.level == 0


async def test_hysteresis_band_neither_sheds_nor_restores() -> None:
    """Between restore_below and shed_above nothing changes, in either direction."""
    board, gauge = Board(), Gauge(60.0)
    ctl = controller(board, gauge)
    assert await ctl.evaluate() is None
    gauge.value = 81.0
    await ctl.evaluate()
    gauge.value = 79.0  # below the shed threshold, above the restore one
    for _ in range(3):
        assert await ctl.evaluate() is None
    assert board.log == ["shed price_chart"]
    gauge.value = 49.0
    event = await ctl.evaluate()
    assert event is not None
    assert (event.action, event.feature, event.reading) == ("restore", "price_chart", 49.0)


async def test_each_level_waits_for_the_hold_time() -> None:
    """hold=5: pressure must last 5 s before a shed, and 5 s more before the next one."""
    clock = FakeClock(autojump_threshold=None)
    board, gauge = Board(), Gauge(90.0)
    ctl = controller(board, gauge, clock=clock, hold=5.0)
    assert await ctl.evaluate() is None
    clock.advance(4.9)
    assert await ctl.evaluate() is None
    clock.advance(0.1)
    assert (await ctl.evaluate()) is not None
    clock.advance(3.0)
    assert await ctl.evaluate() is None
    clock.advance(2.0)
    assert (await ctl.evaluate()) is not None
    assert board.log == ["shed price_chart", "shed batch_jobs"]


async def test_a_dip_into_the_band_restarts_the_hold_timers() -> None:
    """Pressure interrupted by a reading in the dead band must last a full hold again."""
    clock = FakeClock(autojump_threshold=None)
    board, gauge = Board(), Gauge(90.0)
    ctl = controller(board, gauge, clock=clock, hold=5.0)
    await ctl.evaluate()
    clock.advance(4.0)
    gauge.value = 70.0
    await ctl.evaluate()
    gauge.value = 90.0
    clock.advance(1.0)
    assert await ctl.evaluate() is None
    clock.advance(4.0)
    assert await ctl.evaluate() is None
    clock.advance(1.0)
    assert await ctl.evaluate() is not None
    gauge.value = 10.0
    assert await ctl.evaluate() is None  # calm must also hold
    clock.advance(5.0)
    event = await ctl.evaluate()
    assert event is not None
    assert event.action == "restore"


async def test_a_failing_shed_is_recorded_and_the_next_feature_is_shed() -> None:
    """The chart's shed raises: recorded with ok=False, batch jobs are shed instead."""
    board, gauge = Board(), Gauge(99.0)

    def broken() -> None:
        raise RuntimeError("chart server gone")

    features = [Feature("price_chart", 10, broken, lambda: None), board.feature("batch", 20)]
    ctl = DegradationController(features, [Trigger("load", gauge, 80, 50)], hold=0)
    event = await ctl.evaluate()
    assert event is not None
    assert (event.feature, event.ok) == ("batch", True)
    failed = ctl.history()[0]
    assert (failed.feature, failed.ok, failed.error) == (
        "price_chart",
        False,
        "RuntimeError: chart server gone",
    )
    assert ctl.is_active("price_chart")


async def test_a_hung_action_times_out_on_the_clock() -> None:
    """A shed action that never finishes is cancelled after action_timeout and recorded."""
    clock = FakeClock()

    async def hang() -> None:
        await asyncio.Event().wait()

    ctl = DegradationController(
        [Feature("chart", 1, hang, lambda: None)],
        [Trigger("load", Gauge(99), 80, 50)],
        clock=clock,
        hold=0,
        action_timeout=3,
    )
    async with asyncio.timeout(5):
        event = await ctl.evaluate()
    assert event is not None
    assert (event.ok, event.error, ctl.level) == (False, "timed out after 3s", 0)


async def test_an_unreadable_trigger_neither_sheds_nor_restores() -> None:
    """A reading that raises keeps shed features shed and is shown in the snapshot."""
    board, gauge = Board(), Gauge(99.0)

    def broken() -> float:
        raise OSError("no /proc")

    ctl2 = DegradationController(
        board.standard(),
        [Trigger("load", gauge, 80, 50), Trigger("rss", broken, 10, 5)],
        hold=0,
    )
    await ctl2.evaluate()  # "load" is over: one level shed
    gauge.value = 0.0
    assert await ctl2.evaluate() is None
    assert ctl2.level == 1
    status = {t.name: t for t in ctl2.snapshot().triggers}
    assert (status["rss"].reading, status["rss"].error) == (None, "OSError: no /proc")
    assert await ctl2.health() is False


async def test_operator_shed_is_pinned_until_the_operator_restores() -> None:
    """A feature shed by name stays shed through calm; essential features refuse."""
    board, gauge = Board(), Gauge(0.0)
    ctl = controller(board, gauge)
    assert await ctl.shed_feature("notifications") is True
    assert await ctl.evaluate() is None
    assert ctl.is_active("notifications") is False
    assert ctl.snapshot().features[1].pinned is True
    with pytest.raises(ConfigurationError, match="essential"):
        await ctl.shed_feature("risk_checks")
    with pytest.raises(KeyError, match="'nope'"):
        await ctl.shed_feature("nope")
    assert await ctl.restore_feature("notifications") is True
    assert ctl.is_active("notifications")
    assert [e.trigger for e in ctl.history()] == ["manual", "manual"]


async def test_history_is_bounded_and_listeners_hear_every_event() -> None:
    """history=2 keeps the last two events; a listener sees all, a broken one harms nothing."""
    board, gauge = Board(), Gauge(99.0)
    seen: list[DegradationEvent] = []
    ctl = DegradationController(
        board.standard(), [Trigger("load", gauge, 80, 50)], hold=0, history=2
    )
    ctl.add_listener(seen.append)
    ctl.add_listener(lambda _e: 1 / 0)
    for _ in range(3):
        await ctl.evaluate()
    assert [e.feature for e in seen] == ["price_chart", "batch_jobs", "notifications"]
    assert [e.feature for e in ctl.history()] == ["batch_jobs", "notifications"]
    snap = ctl.snapshot()
    assert (snap.level, snap.shed) == (3, ("price_chart", "batch_jobs", "notifications"))
    assert json.loads(json.dumps(snap.to_dict()))["triggers"][0]["over"] is True


async def test_the_evaluation_loop_runs_on_the_clock() -> None:
    """start(): evaluations every interval; hold=2, interval=1 sheds at t=2, then t=4."""
    clock = FakeClock()
    board, gauge = Board(), Gauge(99.0)
    shed_at: list[float] = []
    two = asyncio.Event()
    ctl = DegradationController(
        board.standard(), [Trigger("load", gauge, 80, 50)], clock=clock, hold=2, interval=1
    )

    def listen(event: DegradationEvent) -> None:
        shed_at.append(event.at)
        if len(shed_at) == 2:
            two.set()

    ctl.add_listener(listen)
    async with asyncio.timeout(5), ctl:
        await two.wait()
    assert shed_at == [2.0, 4.0]
    assert ctl.running is False


async def test_manager_graceful_degradation_drives_the_controller() -> None:
    """SYSTEM_OVERLOAD: the manager degrades, shedding relieves the load, health confirms it."""
    clock = FakeClock()
    load = Gauge(95.0)

    def shed_chart() -> None:
        load.value -= 30.0  # the chart's rendering was the load

    def restore_chart() -> None:
        load.value += 30.0

    ctl = DegradationController(
        [
            Feature("price_chart", 10, shed_chart, restore_chart),
            Feature("ingestion", 100, lambda: None, lambda: None, essential=True),
        ],
        [Trigger("load", load, 80, 50)],
        clock=clock,
        name="overload",
    )
    assert isinstance(ctl, Degradable)
    manager = ErrorRecoveryManager(clock=clock)
    manager.register(ctl)
    outcome = await manager.handle(asyncio.QueueFull(), component="overload")
    assert (outcome.success, outcome.strategy) == (
        True,
        RecoveryStrategyKind.GRACEFUL_DEGRADATION,
    )
    assert ctl.is_active("price_chart") is False
    assert ctl.history()[0].trigger == "manager"
    assert await ctl.restore() is False  # 65 is not below 50 yet
    load.value = 20.0
    assert await ctl.restore() is True
    assert ctl.is_active("price_chart")


async def test_degrade_with_nothing_to_shed_says_so() -> None:
    """Only essential features: degrade() returns False, nothing is shed."""
    ctl = DegradationController([Feature("ingestion", 1, print, print, essential=True)])
    assert await ctl.degrade(1) is False
    assert ctl.level == 0


@pytest.mark.integration
async def test_real_memory_ballast_sheds_and_freeing_it_restores() -> None:
    """64 MiB of real ballast pushes RSS over a budget just above baseline; freeing restores."""
    board = Board()
    baseline = rss_bytes()
    # shed above baseline + 32 MiB, restore below baseline + 16 MiB.
    budget = baseline + 64 * MiB
    trigger = rss_trigger(
        budget, shed_at=(baseline + 32 * MiB) / budget, restore_at=(baseline + 16 * MiB) / budget
    )
    ctl = DegradationController(board.standard(), [trigger], clock=FakeClock(), hold=0)
    assert await ctl.evaluate() is None
    ballast = bytearray(b"\x01") * (64 * MiB)  # written, so its pages are resident
    event = await ctl.evaluate()
    assert event is not None
    assert (event.action, event.feature, event.trigger) == ("shed", "price_chart", "memory")
    assert event.reading is not None
    assert event.reading > baseline + 32 * MiB
    assert ballast[-1] == 1
    del ballast
    event = await ctl.evaluate()
    assert event is not None
    assert (event.action, event.feature) == ("restore", "price_chart")
    assert ctl.level == 0


async def test_loop_lag_sampler_measures_a_late_wake_up() -> None:
    """The clock jumping 0.35 s past a 0.1 s sleep is 0.25 s of lag, and the trigger sees it."""
    clock = FakeClock(autojump_threshold=None)
    sampler = LoopLagSampler(clock=clock, interval=0.1)
    trigger = loop_lag_trigger(sampler, shed_above=0.2, restore_below=0.05)
    async with sampler:
        for _ in range(5):
            await asyncio.sleep(0)
        clock.advance(0.35)
        async with asyncio.timeout(5):
            while sampler.samples == 0:  # noqa: ASYNC110 - the sampler is the unit under test
                await asyncio.sleep(0)
    assert sampler.lag == pytest.approx(0.25)
    assert trigger.read() == pytest.approx(0.25)
    assert sampler.running is False


async def test_cpu_meter_is_cpu_seconds_over_elapsed_seconds() -> None:
    """0.5 CPU-seconds in 2 s of clock is 25 %; with no time passed the last reading stands."""
    clock = FakeClock(autojump_threshold=None)
    cpu = Gauge(10.0)
    meter = CpuMeter(clock=clock, cpu_seconds=cpu)
    trigger = cpu_trigger(meter, shed_above=90, restore_below=60)
    cpu.value = 10.5
    clock.advance(2.0)
    assert trigger.read() == pytest.approx(25.0)
    assert meter.read() == pytest.approx(25.0)


def test_real_process_cpu_seconds_grow_with_work() -> None:
    """Burning CPU makes the process's CPU seconds grow (a real reading, not a constant)."""
    before = process_cpu_seconds()
    total = 0
    while process_cpu_seconds() - before < 0.02:
        total += sum(range(10_000))
    assert process_cpu_seconds() > before
    assert total > 0


def test_real_rss_is_plausible() -> None:
    """RSS is a positive byte count of at least a megabyte for a Python process."""
    assert rss_bytes() > MiB


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: Trigger("t", Gauge(), 50, 50), "restore_below"),
        (lambda: Trigger("t", Gauge(), float("inf"), 1), "shed_above"),
        (lambda: Trigger("", Gauge(), 2, 1), "name"),
        (lambda: Feature("f", 1.5, print, print), "priority"),  # type: ignore[arg-type]
        (lambda: Feature("f", 1, "no", print), "shed"),  # type: ignore[arg-type]
        (lambda: rss_trigger(0), "budget_bytes"),
        (lambda: rss_trigger(100, shed_at=1.5), "shed_at"),
        (lambda: queue_depth_trigger(Gauge(), 0), "capacity"),
        (lambda: DegradationController([], hold=-1), "hold"),
        (lambda: DegradationController([], history=0), "history"),
    ],
)
def test_bad_settings_name_the_field(build: object, key: str) -> None:
    """Each invalid setting raises ConfigurationError naming its field."""
    with pytest.raises(ConfigurationError) as info:
        build()  # type: ignore[operator]
    assert info.value.key == key


def test_duplicate_features_are_refused() -> None:
    """Two features with one name is a configuration error naming it."""
    board = Board()
    with pytest.raises(ConfigurationError, match=r"'chart'.*listed twice"):
        DegradationController([board.feature("chart", 1), board.feature("chart", 2)])


def test_cpu_meter_keeps_the_interval_open_below_its_minimum() -> None:
    """CPU time comes in kernel ticks: a read sooner than min_interval returns the previous
    reading and keeps accumulating, instead of 0 % or several hundred per cent at random."""
    clock = FakeClock()
    cpu = [0.0]
    meter = CpuMeter(clock=clock, cpu_seconds=lambda: cpu[0], min_interval=0.5)
    clock.advance(0.01)
    cpu[0] = 0.01  # one 10 ms tick within 10 ms of wall time
    assert meter.read() == 0.0  # too soon: no reading yet, not 100 %
    clock.advance(0.99)
    cpu[0] = 0.25
    assert meter.read() == pytest.approx(25.0)  # 0.25 s of CPU over the whole 1.0 s
