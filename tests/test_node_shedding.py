"""The node's degradation: real memory ballast and a real tick flood shed, and calm restores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import Feature, rss_bytes
from strategylab.market import Ingestor, IngestorConfig, SQLiteTickStore, Tick
from strategylab.node._config import NodeConfig
from strategylab.node._shedding import (
    MEMORY_RESTORE_AT,
    MEMORY_SHED_AT,
    NodeDegradation,
    build_degradation,
    node_features,
)
from strategylab.testing import FakeClock

MiB = 1024 * 1024
HOLD = 5.0


class Switches:
    """The node's two feature switches, recorded in the order they were flipped."""

    def __init__(self) -> None:
        self.flips: list[tuple[str, bool]] = []

    def chart(self, on: bool) -> None:
        self.flips.append(("live_chart", on))

    def events(self, on: bool) -> None:
        self.flips.append(("events", on))

    def features(self) -> tuple[Feature, ...]:
        return node_features(self.chart, self.events)


def _config(tmp_path: Path, budget: int | None = None) -> NodeConfig:
    return NodeConfig(
        exchange_url="ws://127.0.0.1:1/ws",
        symbols=("A",),
        data_dir=tmp_path,
        memory_budget=budget,
    )


async def _step(ctl: NodeDegradation, clock: FakeClock) -> None:
    """One evaluation that starts a hold, then one a hold later that may act."""
    await ctl.evaluate()
    clock.advance(HOLD)
    await ctl.evaluate()


def test_node_features_chart_goes_first() -> None:
    """live_chart has the lowest priority; neither feature is essential."""
    chart, events = Switches().features()
    assert (chart.name, events.name) == ("live_chart", "events")
    assert chart.priority < events.priority
    assert not chart.essential
    assert not events.essential


def test_triggers_and_marks(tmp_path: Path) -> None:
    """Memory (when budgeted), loop lag, ingest queue and CPU, each with a hysteresis gap."""
    without = build_degradation(
        _config(tmp_path),
        queue_depth=lambda: 0,
        queue_capacity=lambda: 10,
        features=Switches().features(),
    )
    assert [t.name for t in without.snapshot().triggers] == ["loop_lag", "ingest_queue", "cpu"]
    ctl = build_degradation(
        _config(tmp_path, budget=1000 * MiB),
        queue_depth=lambda: 0,
        queue_capacity=lambda: 10,
        features=Switches().features(),
    )
    marks = {t.name: (t.shed_above, t.restore_below) for t in ctl.snapshot().triggers}
    assert marks["memory"] == (1000 * MiB * MEMORY_SHED_AT, 1000 * MiB * MEMORY_RESTORE_AT)
    assert marks["ingest_queue"] == (0.8, 0.5)
    assert all(shed > restore for shed, restore in marks.values())


def test_ingestion_is_never_a_feature(tmp_path: Path) -> None:
    """A feature named for ingestion or risk checks is refused."""
    ingest = Feature("ingest", 99, shed=lambda: None, restore=lambda: None)
    with pytest.raises(ConfigurationError, match="ingest"):
        build_degradation(
            _config(tmp_path), queue_depth=lambda: 0, queue_capacity=lambda: 1, features=[ingest]
        )


async def test_memory_ballast_sheds_chart_then_events_and_restores_in_reverse(
    tmp_path: Path,
) -> None:
    """Real ballast over the budget sheds live_chart then events; a reading in the band holds;
    freed ballast restores events then live_chart."""
    switches = Switches()
    clock = FakeClock(autojump_threshold=None)
    baseline = rss_bytes()
    # The band (75 %..90 % of the budget) is >= 64 MiB wide and sits above the baseline.
    budget = max(int(baseline / 0.6), 512 * MiB)
    shed_mark, restore_mark = budget * MEMORY_SHED_AT, budget * MEMORY_RESTORE_AT
    ctl = build_degradation(
        _config(tmp_path, budget=budget),
        queue_depth=lambda: 0,
        queue_capacity=lambda: 100,
        features=switches.features(),
        clock=clock,
        hold=HOLD,
    )
    await _step(ctl, clock)
    assert ctl.level == 0
    ballast = bytearray(b"\x01") * int(shed_mark - rss_bytes() + 32 * MiB)  # resident pages
    await _step(ctl, clock)
    assert ctl.snapshot().shed == ("live_chart",)
    clock.advance(HOLD)
    await ctl.evaluate()
    assert ctl.snapshot().shed == ("live_chart", "events")
    assert ballast[-1] == 1
    del ballast
    # In the dead band: neither shed nor restore, however long it lasts.
    middle = bytearray(b"\x01") * int((shed_mark + restore_mark) / 2 - rss_bytes())
    for _ in range(3):
        await _step(ctl, clock)
    assert restore_mark < rss_bytes() < shed_mark
    assert ctl.level == 2
    assert middle[-1] == 1
    del middle
    await _step(ctl, clock)
    assert ctl.snapshot().shed == ("live_chart",)
    clock.advance(HOLD)
    await ctl.evaluate()
    assert ctl.level == 0
    assert switches.flips == [
        ("live_chart", False),
        ("events", False),
        ("events", True),
        ("live_chart", True),
    ]
    history = ctl.history()
    assert [(e.action, e.feature, e.trigger) for e in history[:2]] == [
        ("shed", "live_chart", "memory"),
        ("shed", "events", "memory"),
    ]
    assert all(e.reading is not None and e.reading > shed_mark for e in history[:2])
    assert [(e.action, e.feature) for e in history[2:]] == [
        ("restore", "events"),
        ("restore", "live_chart"),
    ]


def _ticks(first: int, count: int) -> list[Tick]:
    return [Tick("A", s, s, 1.0, 1.1, 1.0, 1.0) for s in range(first, first + count)]


@pytest.mark.timeout(30)
async def test_tick_flood_on_a_locked_store_sheds_and_drain_restores(tmp_path: Path) -> None:
    """A real ingestor over a real SQLite store held by another connection's write lock fills
    its queue: the queue trigger sheds; releasing the lock drains it and restores."""
    store = SQLiteTickStore(tmp_path / "ticks.db", synchronous="NORMAL", busy_timeout=20.0)
    await store.open()
    capacity = 10_000
    ingestor = Ingestor(store, IngestorConfig(max_queue=capacity, batch_size=1_000, linger=0))
    await ingestor.start()
    switches = Switches()
    clock = FakeClock(autojump_threshold=None)
    ctl = build_degradation(
        _config(tmp_path),
        queue_depth=lambda: ingestor.statistics().queued,
        queue_capacity=lambda: capacity,
        features=switches.features(),
        clock=clock,
        hold=HOLD,
    )
    blocker = sqlite3.connect(tmp_path / "ticks.db", timeout=0)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        seq = 1
        while ingestor.statistics().queued < 0.9 * capacity:  # faster than it can drain
            await ingestor.put(_ticks(seq, 500))
            seq += 500
        await _step(ctl, clock)
        clock.advance(HOLD)
        await ctl.evaluate()
        assert ctl.snapshot().shed == ("live_chart", "events")
        reading = next(t for t in ctl.snapshot().triggers if t.name == "ingest_queue").reading
        assert reading is not None
        assert reading >= 0.8
        assert ingestor.statistics().acknowledged == 0  # the lock holds the writer up
    finally:
        blocker.rollback()
        blocker.close()
    try:
        await ingestor.wait_accounted({"A": seq - 1}, timeout=20)
        assert ingestor.statistics().queued == 0
        await _step(ctl, clock)
        clock.advance(HOLD)
        await ctl.evaluate()
        assert ctl.level == 0
        events = [(e.action, e.feature, e.trigger) for e in ctl.history()]
        assert events[:2] == [
            ("shed", "live_chart", "ingest_queue"),
            ("shed", "events", "ingest_queue"),
        ]
        assert [e[:2] for e in events[2:]] == [("restore", "events"), ("restore", "live_chart")]
        assert switches.flips[-1] == ("live_chart", True)
        assert await store.count() == seq - 1
    finally:
        await ingestor.aclose(timeout=5)
        await store.aclose()


async def test_start_runs_the_loop_lag_sampler(tmp_path: Path) -> None:
    """start() runs the loop-lag sampler the loop_lag trigger reads; stop() stops it."""
    clock = FakeClock()
    ctl = build_degradation(
        _config(tmp_path),
        queue_depth=lambda: 0,
        queue_capacity=lambda: 1,
        features=Switches().features(),
        clock=clock,
    )
    await ctl.start()
    try:
        assert ctl.sampler.running
        await clock.asleep(1.0)
        assert ctl.sampler.samples > 0
    finally:
        await ctl.stop()
    assert (ctl.sampler.running, ctl.running) == (False, False)
