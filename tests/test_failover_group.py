"""FailoverGroup: switch on failure, probe with backoff, fail back with hysteresis and a drain;
and the tick store's FailoverStore on it, against a real SQLite file locked by a second
connection."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    FailoverEvent,
    FailoverGroup,
    FailoverMember,
    SwitchReason,
)
from strategylab.market import FailoverState, FailoverStore, SpoolStore, SQLiteTickStore, Tick
from strategylab.testing import FakeClock


class Endpoint:
    """A member whose health a test sets; records when it was probed (fake time)."""

    def __init__(self, clock: FakeClock, *, healthy: bool = True) -> None:
        self.clock = clock
        self.healthy = healthy
        self.probed_at: list[float] = []

    async def health(self) -> bool:
        self.probed_at.append(self.clock.monotonic())
        return self.healthy


def group_of(clock: FakeClock, *endpoints: Endpoint, **options: object) -> FailoverGroup[Endpoint]:
    members = [
        FailoverMember(name=f"m{i}", target=e, health=e.health) for i, e in enumerate(endpoints)
    ]
    return FailoverGroup(members, clock=clock, **options)  # type: ignore[arg-type]


async def until(predicate: object, clock: FakeClock, limit: float = 100.0) -> None:
    """Let fake time run (autojump) until ``predicate()``; fails after ``limit`` fake seconds."""
    assert callable(predicate)
    start = clock.monotonic()
    while not predicate():
        assert clock.monotonic() - start < limit, "condition not reached in fake time"
        await clock.asleep(0.01)


def test_report_failure_moves_to_the_first_member_not_known_down() -> None:
    """Primary fails -> backup 1; backup 1 fails while primary is known down -> backup 2."""
    clock = FakeClock()
    group = group_of(clock, Endpoint(clock), Endpoint(clock), Endpoint(clock))
    assert group.report_failure().name == "m1"
    assert group.report_failure().name == "m2"
    stats = group.statistics()
    assert (stats.active, stats.failovers, stats.switches) == ("m2", 2, 2)
    assert [m.healthy for m in stats.members] == [False, False, None]


def test_when_every_other_member_is_down_the_group_rotates() -> None:
    """With both members known down, a failure still moves on (wrapping to the primary)."""
    clock = FakeClock()
    group = group_of(clock, Endpoint(clock), Endpoint(clock))
    group.report_failure()
    assert group.report_failure().name == "m0"
    assert group.statistics().failbacks == 1


def test_a_group_of_one_stays_on_its_member() -> None:
    """report_failure on a single member only marks it down."""
    clock = FakeClock()
    group = group_of(clock, Endpoint(clock))
    assert group.report_failure().name == "m0"
    assert group.statistics().switches == 0


async def test_failback_needs_n_consecutive_healthy_probes() -> None:
    """Hysteresis: a failed probe in between starts the count over."""
    clock = FakeClock()
    primary, backup = Endpoint(clock, healthy=False), Endpoint(clock)
    group = group_of(clock, primary, backup, probe_interval=1.0, failback_after=3)
    group.report_failure()
    assert await group.probe_once() is None
    primary.healthy = True
    assert await group.probe_once() is False
    assert await group.probe_once() is False
    primary.healthy = False
    assert await group.probe_once() is None
    primary.healthy = True
    assert await group.probe_once() is False
    assert await group.probe_once() is False
    assert not group.on_primary
    assert await group.probe_once() is True
    assert group.statistics().on_primary
    assert group.statistics().failed_probes == 2


async def test_probes_back_off_while_the_primary_stays_down() -> None:
    """The interval doubles after each pass without a healthy member, up to the cap."""
    clock = FakeClock()
    primary = Endpoint(clock, healthy=False)
    group = group_of(
        clock, primary, Endpoint(clock), probe_interval=1.0, max_probe_interval=4.0, backoff=2.0
    )
    group.report_failure()
    task = asyncio.create_task(group.run())
    try:
        await until(lambda: len(primary.probed_at) >= 6, clock)
    finally:
        task.cancel()
        await asyncio.wait([task])
    gaps = [b - a for a, b in zip(primary.probed_at, primary.probed_at[1:], strict=False)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 4.0, 4.0]


async def test_run_fails_back_after_the_drain_and_tells_listeners() -> None:
    """The drain hook runs with (source, target) before the switch; listeners see both switches."""
    clock = FakeClock()
    primary = Endpoint(clock, healthy=False)
    drains: list[tuple[str, str, str]] = []
    events: list[FailoverEvent] = []

    async def drain(source: FailoverMember[Endpoint], target: FailoverMember[Endpoint]) -> bool:
        drains.append((source.name, target.name, group.active.name))
        return True

    group = group_of(clock, primary, Endpoint(clock), failback_after=2, drain=drain)
    group.add_listener(events.append)
    task = asyncio.create_task(group.run())
    try:
        group.report_failure()
        await clock.asleep(3.0)
        assert not group.on_primary
        primary.healthy = True
        await until(lambda: group.on_primary, clock)
    finally:
        task.cancel()
        await asyncio.wait([task])
    assert drains == [("m1", "m0", "m1")]  # drained while still on the backup
    assert [(e.previous, e.active, e.reason) for e in events] == [
        ("m0", "m1", SwitchReason.FAILURE),
        ("m1", "m0", SwitchReason.FAILBACK),
    ]
    stats = group.statistics()
    assert (stats.failovers, stats.failbacks, stats.last_switch_at) == (1, 1, events[-1].at)


async def test_a_failed_drain_keeps_the_backup_and_restarts_the_count() -> None:
    """A drain that returns False (or raises) is counted and the group stays put."""
    clock = FakeClock()
    outcomes: list[bool | Exception] = [False, RuntimeError("boom"), True]

    async def drain(_s: FailoverMember[Endpoint], _t: FailoverMember[Endpoint]) -> bool:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    group = group_of(clock, Endpoint(clock), Endpoint(clock), failback_after=1, drain=drain)
    group.report_failure()
    assert await group.probe_once() is False
    assert await group.probe_once() is False
    assert group.statistics().failed_drains == 2
    assert await group.probe_once() is True
    assert group.on_primary


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"probe_interval": 0}, "probe_interval"),
        ({"probe_interval": 2.0, "max_probe_interval": 1.0}, "max_probe_interval"),
        ({"failback_after": 0}, "failback_after"),
        ({"backoff": 0.5}, "backoff"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], key: str) -> None:
    """A bad number raises ConfigurationError naming it."""
    clock = FakeClock()
    with pytest.raises(ConfigurationError) as info:
        group_of(clock, Endpoint(clock), **options)
    assert info.value.key == key


def test_repeated_member_names_are_refused() -> None:
    """Member names identify members in statistics and events: they must be unique."""
    clock = FakeClock()
    e = Endpoint(clock)
    with pytest.raises(ConfigurationError, match="unique"):
        FailoverGroup([FailoverMember(name="x", target=e, health=e.health)] * 2)


# ------------------------------------------------------------------ FailoverStore on real SQLite


def batch(first: int, count: int) -> list[Tick]:
    return [
        Tick(symbol, seq, seq * 1_000, 100.0, 100.5, 1.0, 2.0)
        for symbol in ("AAA", "BBB")
        for seq in range(first, first + count)
    ]


def rows(path: Path) -> tuple[int, int]:
    """(rows, distinct (symbol, seq)) in the ticks table, read by a fresh connection."""
    conn = sqlite3.connect(path)
    try:
        total = conn.execute("SELECT count(*) FROM ticks").fetchone()[0]
        distinct = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT symbol, seq FROM ticks)"
        ).fetchone()[0]
    finally:
        conn.close()
    return int(total), int(distinct)


@pytest.mark.timeout(30)
async def test_a_locked_sqlite_spools_then_fails_back_and_drains_exactly_once(
    tmp_path: Path,
) -> None:
    """A second connection holds the write lock: batches go to the spool; once it lets go the
    group fails back after N probes, drains, and every tick is in SQLite exactly once."""
    path = tmp_path / "ticks.db"
    primary = SQLiteTickStore(path, busy_timeout=0.05)
    store = FailoverStore(
        primary,
        SpoolStore(tmp_path / "spool"),
        probe_interval=0.02,
        failback_after=3,
    )
    events: list[FailoverEvent] = []
    store.group.add_listener(events.append)
    await store.open()
    try:
        await store.write(batch(1, 50))
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # a real write lock held by another connection
        try:
            for first in range(51, 251, 50):
                await store.write(batch(first, 50))
            assert store.state is FailoverState.SPOOLING
            stats = store.statistics()
            assert stats.batches_to_spool == 4
            assert stats.group is not None
            assert stats.group.active == "spool"
            await asyncio.sleep(0.2)  # probes keep failing while the lock is held
            assert store.state is FailoverState.SPOOLING
            assert store.statistics().failed_probes > 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        async with asyncio.timeout(10):
            await store.wait_for_state(FailoverState.PRIMARY)
        await store.write(batch(251, 50))
        stats = store.statistics()
        assert (stats.failovers, stats.failbacks, stats.spool_pending) == (1, 1, 0)
        assert stats.batches_drained >= 1
        assert [e.reason for e in events] == [SwitchReason.FAILURE, SwitchReason.FAILBACK]
        assert stats.group is not None
        assert stats.group.members[0].consecutive_healthy >= 3
    finally:
        await store.aclose()
    assert rows(path) == (600, 600)  # 2 symbols x 300: zero lost, zero duplicated
