"""The optimiser: parameter spaces, ranking, and real workers that overrun, crash and raise."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import psutil
import pytest

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.research._optimizer import (
    JobResult,
    JobStatus,
    Optimizer,
    ParamValue,
    grid,
    random_search,
    rank,
)

Spec = dict[str, object]

# ------------------------------------------------------------------ jobs run in worker processes
# Module-level, so that a spawned worker can unpickle them by reference.


def make_spec(parameters: Mapping[str, ParamValue], scope: float) -> Spec:
    """The spec the test jobs take: the parameters plus the scope."""
    return {**parameters, "scope": scope}


def metrics_job(spec: Spec) -> dict[str, float]:
    """A deterministic 'backtest': metrics computed from the parameters."""
    fast, slow = float(spec["fast"]), float(spec["slow"])  # type: ignore[arg-type]
    return {"pnl": slow - fast, "sharpe": fast / slow, "max_drawdown": -fast, "pid": os.getpid()}


def behaving_job(spec: Spec) -> dict[str, float]:
    """Overruns, crashes or raises as the spec says; otherwise returns quickly."""
    scope = float(spec["scope"])  # type: ignore[arg-type]
    kind = spec.get("kind", "ok")
    if kind == "overrun" or (kind == "overrun_full" and scope > 0.6):
        time.sleep(30)  # a REAL overrun: the optimiser has to kill this process
    elif kind == "crash_always":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "crash_once":
        marker = Path(str(spec["marker"]))
        if not marker.exists():
            marker.write_text("crashed")
            os._exit(3)
    elif kind == "raise":
        raise ValueError("fast must be < slow")
    elif kind == "sleep":
        time.sleep(30)
    return {"pnl": float(spec.get("pnl", 1.0)), "scope": scope, "pid": os.getpid()}  # type: ignore[arg-type]


def _gone(pid: int) -> bool:
    """True when no process (not even a zombie) has ``pid``: the worker was reaped."""
    return not psutil.pid_exists(pid)


def _row(index: int, status: JobStatus, **metrics: float) -> JobResult:
    return JobResult(index=index, parameters={"i": index}, status=status, metrics=metrics)


# ------------------------------------------------------------------ parameter spaces and ranking


def test_grid_is_the_cartesian_product() -> None:
    """A grid yields every combination exactly once, in a stable order."""
    sets = grid({"fast": [5, 10, 20], "slow": [50, 100]})
    assert sets == [
        {"fast": 5, "slow": 50},
        {"fast": 5, "slow": 100},
        {"fast": 10, "slow": 50},
        {"fast": 10, "slow": 100},
        {"fast": 20, "slow": 50},
        {"fast": 20, "slow": 100},
    ]


def test_grid_refuses_an_empty_value_list() -> None:
    """An empty list would silently make the grid empty: it is an error naming the parameter."""
    with pytest.raises(ValueError, match="slow"):
        grid({"fast": [5], "slow": []})


def test_random_search_is_seeded_in_range_and_distinct() -> None:
    """The same seed gives the same samples; ints stay ints, floats floats, all inside bounds."""
    ranges = {"fast": (5, 50), "band": (0.5, 3.0)}
    first = random_search(ranges, 20, rng=7, fixed={"slow": 100})
    assert first == random_search(ranges, 20, rng=7, fixed={"slow": 100})
    assert first != random_search(ranges, 20, rng=8, fixed={"slow": 100})
    assert len(first) == 20
    assert len({(s["fast"], s["band"]) for s in first}) == 20
    for sample in first:
        assert isinstance(sample["fast"], int)
        assert 5 <= sample["fast"] <= 50
        assert isinstance(sample["band"], float)
        assert 0.5 <= sample["band"] <= 3.0
        assert sample["slow"] == 100


def test_random_search_stops_at_the_size_of_an_integer_space() -> None:
    """Asking for more samples than the integer space holds yields each point once."""
    samples = random_search({"fast": (1, 3), "slow": (10, 11)}, 50, rng=1)
    assert sorted((s["fast"], s["slow"]) for s in samples) == [
        (f, s) for f in (1, 2, 3) for s in (10, 11)
    ]


def test_random_search_refuses_an_inverted_range() -> None:
    """A range with low > high names the parameter."""
    with pytest.raises(ValueError, match="fast=50:5"):
        random_search({"fast": (50, 5)}, 3)


def test_rank_orders_by_metric_with_drawdown_ascending_and_missing_last() -> None:
    """Higher PnL ranks first; the smallest drawdown magnitude ranks first; no metric goes last."""
    rows = [
        _row(0, JobStatus.OK, pnl=1.0, max_drawdown=-0.30),
        _row(1, JobStatus.SKIPPED),
        _row(2, JobStatus.OK, pnl=5.0, max_drawdown=-0.10),
        _row(3, JobStatus.RETRIED_SMALLER, pnl=3.0, max_drawdown=-0.20),
    ]
    assert [r.index for r in rank(rows, "pnl")] == [2, 3, 0, 1]
    assert [r.index for r in rank(rows, "max_drawdown")] == [2, 3, 0, 1]
    assert [r.index for r in rank(rows, "pnl", descending=False)] == [0, 3, 2, 1]


def test_optimizer_validates_its_settings() -> None:
    """Bad settings are refused with the field named."""
    with pytest.raises(ValueError, match="timeout"):
        Optimizer(metrics_job, make_spec, timeout=0)
    with pytest.raises(ValueError, match="max_workers"):
        Optimizer(metrics_job, make_spec, max_workers=0)
    with pytest.raises(ValueError, match="shrink"):
        Optimizer(metrics_job, make_spec, shrink=1.0)


# ------------------------------------------------------------------ real worker processes


@pytest.mark.timeout(20)
async def test_grid_runs_in_worker_processes_and_reports_progress() -> None:
    """Every parameter set runs once in a worker process; progress counts up to the total."""
    seen: list[tuple[int, int]] = []
    optimizer = Optimizer(
        metrics_job,
        make_spec,
        max_workers=2,
        timeout=10,
        progress=lambda _result, done, total: seen.append((done, total)),
    )
    sets = grid({"fast": [5, 10, 20], "slow": [50, 100]})
    async with asyncio.timeout(15):
        report = await optimizer.arun(sets)
    assert [r.status for r in report.results] == [JobStatus.OK] * 6
    assert [dict(r.parameters) for r in report.results] == sets
    assert report.results[2].metrics["pnl"] == 40.0
    assert all(r.attempts == 1 for r in report.results)
    assert {r.metrics["pid"] for r in report.results} <= set(report.worker_pids)
    assert os.getpid() not in {r.metrics["pid"] for r in report.results}
    assert len(report.worker_pids) == 2
    assert seen == [(i, 6) for i in range(1, 7)]
    assert report.ranked("pnl")[0].parameters == {"fast": 5, "slow": 100}
    assert not report.cancelled
    assert all(_gone(pid) for pid in report.worker_pids)


@pytest.mark.timeout(20)
async def test_overrun_kills_the_worker_retries_smaller_then_skips() -> None:
    """An overrun is OPTIMIZATION_TIMEOUT: worker killed, retried at half scope, else skipped."""
    manager = ErrorRecoveryManager()
    optimizer: Optimizer[Spec] = Optimizer(
        behaving_job, make_spec, max_workers=2, timeout=0.5, manager=manager
    )
    manager.register(optimizer)
    sets: list[dict[str, ParamValue]] = [
        {"kind": "overrun_full"},
        {"kind": "overrun"},
        {"kind": "ok", "pnl": 2.0},
    ]
    async with asyncio.timeout(15):
        report = await optimizer.arun(sets)
    smaller, skipped, ok = report.results
    assert smaller.status is JobStatus.RETRIED_SMALLER
    assert (smaller.attempts, smaller.scope, smaller.metrics["scope"]) == (2, 0.5, 0.5)
    assert "overran 0.5s at scope 1" in smaller.reason
    assert skipped.status is JobStatus.SKIPPED
    assert skipped.attempts == 2
    assert skipped.metrics == {}
    assert "overran 0.5s at scope 1" in skipped.reason
    assert "overran 0.5s at scope 0.5" in skipped.reason
    assert ok.status is JobStatus.OK
    assert ok.metrics["pnl"] == 2.0
    # Two initial workers, and a new one for each retry after a kill (a slot starts a new
    # worker only when it has a job for it).
    assert len(report.worker_pids) >= 4
    assert all(_gone(pid) for pid in report.worker_pids)
    stats = manager.statistics()
    assert stats.error_type_distribution[ErrorType.OPTIMIZATION_TIMEOUT] == 3


@pytest.mark.timeout(20)
async def test_crashed_worker_is_replaced_and_only_its_job_retried(tmp_path: Path) -> None:
    """A worker that dies loses only its job: retried on a new worker, others unaffected."""
    manager = ErrorRecoveryManager()
    optimizer: Optimizer[Spec] = Optimizer(
        behaving_job, make_spec, max_workers=2, timeout=10, manager=manager
    )
    oks: list[dict[str, ParamValue]] = [{"kind": "ok", "pnl": float(i)} for i in range(4)]
    sets: list[dict[str, ParamValue]] = [
        {"kind": "crash_once", "marker": str(tmp_path / "crashed")},
        {"kind": "crash_always"},
        *oks,
    ]
    async with asyncio.timeout(15):
        report = await optimizer.arun(sets)
    once, always, *others = report.results
    assert once.status is JobStatus.OK
    assert once.attempts == 2
    assert "worker died (exit code 3)" in once.reason
    assert always.status is JobStatus.FAILED
    assert always.attempts == 2
    assert "killed by SIGKILL" in always.reason
    assert [r.status for r in others] == [JobStatus.OK] * 4
    assert [r.metrics["pnl"] for r in others] == [0.0, 1.0, 2.0, 3.0]
    assert all(r.attempts == 1 for r in others)
    assert all(_gone(pid) for pid in report.worker_pids)
    assert manager.statistics().error_type_distribution[ErrorType.BACKTEST_ENGINE_FAILURE] == 3


@pytest.mark.timeout(20)
async def test_a_job_that_raises_fails_once_with_its_message() -> None:
    """An exception inside the job is FAILED at once, naming the exception; the worker survives."""
    optimizer: Optimizer[Spec] = Optimizer(behaving_job, make_spec, max_workers=1, timeout=10)
    async with asyncio.timeout(15):
        report = await optimizer.arun([{"kind": "raise"}, {"kind": "ok"}])
    failed, ok = report.results
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 1
    assert "ValueError: fast must be < slow" in failed.reason
    assert ok.status is JobStatus.OK
    assert len(report.worker_pids) == 1


@pytest.mark.timeout(20)
async def test_cancel_returns_partial_results_and_leaves_no_worker() -> None:
    """cancel() mid-run: finished rows kept, the rest CANCELLED, every worker pid gone."""
    optimizer: Optimizer[Spec]

    def on_progress(result: JobResult, done: int, total: int) -> None:
        optimizer.cancel()

    optimizer = Optimizer(behaving_job, make_spec, max_workers=2, timeout=10, progress=on_progress)
    sleeps: list[dict[str, ParamValue]] = [{"kind": "sleep"} for _ in range(4)]
    sets: list[dict[str, ParamValue]] = [{"kind": "sleep"}, {"kind": "ok", "pnl": 7.0}, *sleeps]
    async with asyncio.timeout(15):
        report = await optimizer.arun(sets)
    assert report.cancelled
    statuses = [r.status for r in report.results]
    assert statuses[1] is JobStatus.OK
    assert statuses.count(JobStatus.CANCELLED) == 5
    assert report.worker_pids
    assert all(_gone(pid) for pid in report.worker_pids)


@pytest.mark.timeout(20)
async def test_cancelling_the_run_task_reaps_every_worker() -> None:
    """A cancelled arun() task re-raises CancelledError and leaves no worker process behind."""
    first_done = asyncio.Event()
    optimizer: Optimizer[Spec] = Optimizer(
        behaving_job,
        make_spec,
        max_workers=2,
        timeout=10,
        progress=lambda _result, _done, _total: first_done.set(),
    )
    task = asyncio.create_task(
        optimizer.arun([{"kind": "ok"}, {"kind": "sleep"}, {"kind": "sleep"}, {"kind": "sleep"}])
    )
    async with asyncio.timeout(10):
        await first_done.wait()
    pids = optimizer.worker_pids
    assert len(pids) == 2
    assert not any(_gone(pid) for pid in pids)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task
    assert all(_gone(pid) for pid in pids)
