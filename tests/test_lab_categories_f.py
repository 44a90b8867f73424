"""Categories 2 (cascade), 4 (database failover), 8 (data integrity) and 9 (recovery-time SLA)
run for real through run_lab; category 4 fails when the node runs without its spool."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from strategylab.chaos._harness import PipelineConfig
from strategylab.chaos._lab import run_lab
from strategylab.chaos._measure import FaultRun
from strategylab.chaos._run_model import LabOptions
from strategylab.chaos._scenario import CategoryResult
from strategylab.chaos._throwaway_pg import ThrowawayPostgres
from strategylab.chaos.scenarios import SCENARIOS, scenarios_for
from strategylab.chaos.scenarios._c08_races import BookView, ExchangeView, compare
from strategylab.chaos.scenarios._c09_sla import SLAS, _class_figures

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals"),
]

CATEGORY_BUDGET_S = 15.0
"""Seconds a category may take at medium severity (11 s targeted, slack for a busy CI)."""
SERVER_FAULTS_S = 8.0
"""Category 4's extra seconds: a throwaway PostgreSQL server and a second node on it, two
server faults (pause, kill) and the checker over that store too."""


def _checks(result: CategoryResult) -> dict[str, bool]:
    return {c.name: c.ok for c in result.checks}


def test_categories_2_4_8_9_are_registered() -> None:
    """The registry maps 2, 4, 8 and 9 to the scenarios that declare those ids."""
    assert [s.id for s in scenarios_for((2, 4, 8, 9))] == [2, 4, 8, 9]
    assert all(SCENARIOS[i].id == i for i in (2, 4, 8, 9))


def test_class_figures_are_per_class_percentiles() -> None:
    """Each run of a class carries that class's p50/p95/max against its SLA."""
    runs = []
    for cls, rt in (("api", 1.0), ("api", 3.0), ("database", 2.0)):
        run = FaultRun(name=cls, kind=cls, severity="medium", sla=SLAS[cls])
        run.t_inject, run.t_heal, run.t_recovered = 0.0, 1.0, 1.0 + rt
        run.extra["sla_class"] = cls
        runs.append(run)
    _class_figures(runs)
    api = runs[0].extra["class_figures"]
    assert (api["p50_s"], api["max_s"], api["faults"], api["within_sla"]) == (2.0, 3.0, 2, 2)
    assert runs[2].extra["class_figures"]["p95_s"] == 2.0


@pytest.mark.timeout(240)
async def test_categories_2_4_8_9_recover_for_real(tmp_path: Path) -> None:
    """On a healthy pipeline the four categories pass the seed's criterion, lose nothing, and
    each cross-check against the file system, the process table and the exchange holds."""
    options = LabOptions(categories=(2, 4, 8, 9), work_dir=tmp_path / "lab", seed=11)
    report = await run_lab(options, scenarios_for(options.categories))
    by_id = {r.id: r for r in report.results}
    for result in report.results:
        assert result.error is None, result.error
        assert result.judge(result.seed_criterion) == ("pass", []), result.id
        assert result.integrity is not None
        assert (result.integrity.lost, result.integrity.duplicated) == (0, 0)
        assert result.integrity.corrupted == 0
        budget = CATEGORY_BUDGET_S + (SERVER_FAULTS_S if result.id == 4 else 0.0)
        assert result.ended - result.started < budget, result.id
        assert all(c.ok for c in result.checks), [c for c in result.checks if not c.ok]

    cascade = by_id[2]
    assert [f.name for f in cascade.faults] == [
        "database.sqlite_lock",
        "network.partition_feed",
        "process.kill_trader",
    ]
    names = _checks(cascade)
    assert names["cascade: each stage started while the previous one was in force"]
    assert names["cascade: the trader came back as a new process, its exit recorded"]
    assert names["cascade: the backtest completed with a result during the cascade"]

    database = by_id[4]
    # The server faults run on a throwaway server under a second node wherever one can start.
    server_faults = ["database.pg_pause", "database.pg_kill"]
    throwaway = ThrowawayPostgres().capability() is None
    assert [f.name for f in database.ran] == [
        "database.sqlite_lock",
        "disk.fill",
        *(server_faults if throwaway else []),
    ]
    assert all(f.recovered and f.within_sla for f in database.ran)
    skipped = {f.name: f.skipped or "" for f in database.faults if f.skipped is not None}
    assert set(skipped) == {
        "database.pg_lock",
        "database.pg_pool_exhaustion",
        "database.pg_statement_timeout",
        "database.pg_storage_full",
        *([] if throwaway else server_faults),
    }
    assert all("--postgres" in skipped[n] for n in skipped if n.endswith(("lock", "on", "out")))
    if throwaway:
        assert all(f.extra["node"] == "pgnode" for f in database.ran[2:])
        assert database.integrity is not None
        assert set(database.integrity.report["stores"]) == {"main", "pgnode"}

    _assert_integrity(by_id[8])

    sla = by_id[9]
    classes = {f.extra["sla_class"]: f for f in sla.faults}
    assert set(classes) == set(SLAS)
    for cls in SLAS:
        run = classes[cls]
        if cls == "memory" and run.skipped is not None:
            assert "--chaos-agent" in run.skipped  # a node without its chaos agent
            continue
        assert run.within_sla, (cls, run.recovery_time, run.notes)
        assert run.extra["class_figures"]["max_s"] == run.recovery_time
    assert report.audit_verified is True
    assert not psutil.Process().children(recursive=True)


def _assert_integrity(integrity: CategoryResult) -> None:
    """Category 8: its four faults ran, the checker found the store consistent, and the order
    races struck the trader's real orders and its book ended as the exchange's."""
    assert [f.name for f in integrity.ran] == [
        "integrity.rollback",
        "integrity.partial_spool_write",
        "corruption.bit_flip",
        "orders.races",
    ]
    assert integrity.figures()["consistency"] == 1.0
    names = _checks(integrity)
    assert names[
        "integrity.partial_spool_write: damaged segment detected and moved aside (file system)"
    ]
    races = integrity.ran[3]
    assert races.recovered, races.notes
    assert races.within_sla, races.notes
    assert races.extra["orders_in_window"] > 0  # the trader really ordered under the races
    assert races.extra["races"]["partial_fills"] > 0  # and the exchange really split them
    assert races.extra["killed_pid"] is not None
    assert names[
        "orders.races: the killed trader came back as a new process that reconciled while the "
        "races were on"
    ]
    assert names["orders.races: the book's positions equal the exchange's (/api/positions, direct)"]


@pytest.mark.timeout(120)
async def test_database_failover_fails_when_the_node_has_no_spool(tmp_path: Path) -> None:
    """A node started with --no-spool cannot fail over: category 4 FAILS, naming the failover
    the file system never saw."""
    work = tmp_path / "lab"
    report = await run_lab(
        LabOptions(categories=(4,), work_dir=work),
        scenarios_for((4,)),
        pipeline_config=PipelineConfig(work_dir=work, extra_node_args=("--no-spool",)),
    )
    result = report.results[0]
    verdict, reasons = result.judge(result.seed_criterion)
    assert verdict == "fail"
    assert any("failed over to the spool" in r for r in reasons), reasons
    assert result.integrity is not None
    assert result.integrity.lost == 0


def _views(
    book_fills: dict[str, float], book_position: float, exchange_fills: dict[str, float]
) -> tuple[ExchangeView, BookView]:
    """An exchange whose fills (id -> signed qty) are old, and a book of the trader's (prefix
    ``e1-``) holding ``book_fills`` and ``book_position`` in AAPL."""
    old = int((time.time() - 10.0) * 1e9)
    fills = {k: (f"e1-ma-{k}", "AAPL", q, old) for k, q in exchange_fills.items()}
    exchange = ExchangeView(fills, {}, {"AAPL": sum(exchange_fills.values())})
    book = BookView(
        "e1-",
        {k: (f"e1-ma-{k}", "AAPL", q) for k, q in book_fills.items()},
        {"AAPL": book_position},
        {},
        time.time(),
    )
    return exchange, book


def test_book_comparison_catches_double_counted_missing_and_unexpected_fills() -> None:
    """The races' recovery probe fails on each way a book can disagree with the venue: a fill
    counted twice, an old fill never booked, a fill the venue never made; it passes on a book
    that agrees, and only then sets positions side by side."""
    exchange, book = _views({"F1": 1.0, "F2": -2.0}, -1.0, {"F1": 1.0, "F2": -2.0})
    agreed = compare(exchange, book, exchange)
    assert agreed.ok
    assert agreed.exact
    assert not agreed.position_diff

    exchange, book = _views({"F1": 1.0, "F2": -2.0}, 0.0, {"F1": 1.0, "F2": -2.0})
    doubled = compare(exchange, book, exchange)  # F1 moved the position twice
    assert not doubled.ok
    assert doubled.double == {"AAPL": 1.0}

    exchange, book = _views({"F1": 1.0}, 1.0, {"F1": 1.0, "F2": -2.0})
    missing = compare(exchange, book, exchange)
    assert (missing.ok, missing.missing, missing.exact) == (False, ["F2"], False)

    exchange, book = _views({"F1": 1.0, "F9": 1.0}, 2.0, {"F1": 1.0})
    unexpected = compare(exchange, book, exchange)
    assert (unexpected.ok, unexpected.unexpected) == (False, ["F9"])
