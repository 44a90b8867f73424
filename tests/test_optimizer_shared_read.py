"""The optimiser's workers share one read: the parent syncs the snapshot once, each worker maps
it once and keeps it for all its jobs; no job syncs or reads SQLite again."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import pytest

from strategylab.market import SQLiteTickStore, Tick
from strategylab.research import (
    BacktestSpec,
    JobStatus,
    Optimizer,
    backtest_metrics,
    columnar_statistics,
    grid,
    scoped_backtest_spec,
    share_backtest_read,
)

T0 = 1_700_000_000_000_000_000


async def _write(db: Path, first: int, n: int) -> None:
    rng = np.random.default_rng(first)
    mids = np.round(100 + np.cumsum(rng.normal(0, 0.05, n)), 2).tolist()
    store = SQLiteTickStore(db, synchronous="NORMAL")
    await store.open()
    try:
        await store.write(
            [
                Tick("AAA", first + i, T0 + (first + i) * 1_000_000, m - 0.01, m + 0.01, 1.0, 1.0)
                for i, m in enumerate(mids)
            ]
        )
    finally:
        await store.aclose()


def counting_job(spec: BacktestSpec) -> dict[str, float]:
    """The CLI's job, plus what this worker process did with the snapshot so far."""
    metrics = backtest_metrics(spec)
    stats = columnar_statistics()
    return {
        **metrics,
        "pid": float(os.getpid()),
        "syncs": float(stats.syncs),
        "mapped": float(stats.segments_mapped),
    }


@pytest.mark.timeout(60)
async def test_workers_read_the_parents_snapshot_once_each(tmp_path: Path) -> None:
    """Six jobs on two workers: no job syncs, each worker maps the one segment once, and every
    job sees the ticks of the parent's sync even though the store grew afterwards."""
    db = tmp_path / "ticks.db"
    await _write(db, 1, 5_000)
    base = BacktestSpec(
        db_path=str(db), strategy="ma_crossover", symbol="AAA", from_seq=1, to_seq=5_000
    )
    shared = await asyncio.to_thread(share_backtest_read, base)
    assert shared.pinned
    await _write(db, 5_001, 1_000)  # after the parent's sync: the jobs must not see these
    optimizer: Optimizer[BacktestSpec] = Optimizer(
        counting_job,
        functools.partial(scoped_backtest_spec, dataclasses.replace(shared, to_seq=6_000)),
        max_workers=2,
        timeout=30,
    )
    sets = grid({"fast": [5, 10, 20], "slow": [50, 100]})
    async with asyncio.timeout(50):
        report = await optimizer.arun(sets)
    assert [r.status for r in report.results] == [JobStatus.OK] * 6, report.results
    assert {r.metrics["ticks"] for r in report.results} == {5_000.0}
    assert {r.metrics["syncs"] for r in report.results} == {0.0}
    assert {r.metrics["mapped"] for r in report.results} == {1.0}
    assert len({r.metrics["pid"] for r in report.results}) <= 2


def test_share_leaves_a_spec_alone_where_no_snapshot_can_be_kept(tmp_path: Path) -> None:
    """columnar=False, or a place that is not ours: the spec is returned unchanged (unpinned)."""
    db = tmp_path / "ticks.db"
    asyncio.run(_write(db, 1, 100))
    base = BacktestSpec(db_path=str(db), strategy="ma_crossover", symbol="AAA", columnar=False)
    assert share_backtest_read(base) is base
    (tmp_path / "ticks.db.columnar").write_text("someone else's")
    columnar = dataclasses.replace(base, columnar=True)
    assert share_backtest_read(columnar) is columnar
