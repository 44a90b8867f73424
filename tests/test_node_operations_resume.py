"""Resume after an unclean shutdown, without an exchange: the marker, the snapshot, refusal."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from strategylab._layout import DataLayout
from strategylab.fault_tolerance import (
    ErrorRecoveryManager,
    StateSnapshot,
    mark_unclean,
    write_snapshot,
)
from strategylab.market import Ingestor, IngestorConfig, SQLiteTickStore, Tick
from strategylab.node import NodeConfig, run_node_process
from strategylab.node._operations import HealthReports, PriceTap
from strategylab.node._resume import prepare_resume
from strategylab.testing import FakeClock


def snapshot(last: dict[str, int]) -> StateSnapshot:
    return StateSnapshot.create(reason="drill", last_sequence=last, clock=FakeClock(1e9))


def test_no_marker_means_no_resume(tmp_path: Path) -> None:
    """A clean data directory resumes nothing."""
    assert prepare_resume(DataLayout(tmp_path)) is None


def test_marker_and_snapshot_are_restored_and_the_store_compared(tmp_path: Path) -> None:
    """The snapshot's last sequences are reported; a store behind them is named per symbol."""
    layout = DataLayout(tmp_path)
    written = snapshot({"A": 10, "B": 5})
    write_snapshot(layout, written)
    mark_unclean(layout, "drill", snapshot_sha256=written.digest)
    resume = prepare_resume(layout)
    assert resume is not None
    resume.compare({"A": 12, "B": 4})
    line = resume.line()
    assert line["last_seq"] == {"A": 10, "B": 5}
    assert line["behind"] == {"B": {"snapshot": 5, "store": 4}}
    assert line["resume_from"] == {"A": 13, "B": 5}
    assert line["snapshot_time"] == written.time
    assert resume.clear()
    assert not layout.unclean_marker.exists()


def test_marker_without_snapshot_resumes_with_a_warning(tmp_path: Path) -> None:
    """A marker alone: resume from the store, and say the snapshot is missing."""
    layout = DataLayout(tmp_path)
    mark_unclean(layout, "drill")
    resume = prepare_resume(layout)
    assert resume is not None
    assert resume.snapshot is None
    assert any("no snapshot" in w for w in resume.line()["warnings"])


def test_a_damaged_snapshot_refuses_the_start_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flipped byte in snapshot.json: the node does not start; one line names the file."""
    data_dir = tmp_path / "node"
    layout = DataLayout(data_dir)
    written = snapshot({"A": 3})
    write_snapshot(layout, written)
    mark_unclean(layout, "drill", snapshot_sha256=written.digest)
    raw = bytearray(layout.snapshot.read_bytes())
    raw[raw.index(b'"A":3') + 4] = ord("4")
    layout.snapshot.write_bytes(bytes(raw))
    config = NodeConfig(exchange_url="ws://127.0.0.1:9/ws", symbols=("A",), data_dir=data_dir)
    started = time.monotonic()
    code = run_node_process(config)
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "snapshot.json" in err
    assert "damaged" in err
    assert time.monotonic() - started < 10
    assert layout.unclean_marker.exists()  # kept: nothing was restored


async def test_price_tap_shows_only_acknowledged_prices(tmp_path: Path) -> None:
    """The last price per symbol is the mid of the newest tick the ingestor acknowledged."""
    store = SQLiteTickStore(tmp_path / "ticks.db")
    await store.open()
    ingestor = Ingestor(store, IngestorConfig(batch_size=10, linger=0.0))
    tap = PriceTap(ingestor)
    try:
        await tap.put([Tick("A", 1, 1, 10.0, 12.0, 1.0, 1.0), Tick("B", 1, 1, 20.0, 20.0, 1, 1)])
        assert tap.last_prices() == {}  # queued, not yet acknowledged
        await ingestor.start()
        await ingestor.wait_accounted({"A": 1, "B": 1}, timeout=10)
        await tap.put([Tick("A", 2, 2, 30.0, 32.0, 1.0, 1.0)])
        await ingestor.wait_accounted({"A": 2}, timeout=10)
        assert tap.last_prices() == {"A": 31.0, "B": 20.0}
        assert tap.accounted() == {"A": 2, "B": 1}
        assert await tap.last_seqs() == {"A": 2, "B": 1}
    finally:
        await ingestor.aclose(5)
        await store.aclose()


async def test_health_reports_skip_a_component_already_recovering() -> None:
    """An unhealthy episode of a component with a recovery running is not reported again."""
    manager = ErrorRecoveryManager(clock=FakeClock())
    reports = HealthReports(manager)
    release = asyncio.Event()

    class Slow:
        name = "store"

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def health(self) -> bool:
            await release.wait()
            return True

    manager.register(Slow())
    first = asyncio.create_task(reports.handle(ConnectionError("down"), component="store"))
    async with asyncio.timeout(5):
        while not manager.active_recoveries():  # noqa: ASYNC110 - no event for "started"
            await asyncio.sleep(0)
    assert await reports.handle(ConnectionError("again"), component="store") is None
    assert reports.skipped == 1
    release.set()
    async with asyncio.timeout(5):
        await first
