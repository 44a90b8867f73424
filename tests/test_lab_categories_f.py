"""Categories 2 (cascade), 4 (database failover), 8 (data integrity) and 9 (recovery-time SLA)
run for real through run_lab; category 4 fails when the node runs without its spool."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from strategylab.chaos._harness import PipelineConfig
from strategylab.chaos._lab import run_lab
from strategylab.chaos._measure import FaultRun
from strategylab.chaos._run_model import LabOptions
from strategylab.chaos.scenarios import SCENARIOS, scenarios_for
from strategylab.chaos.scenarios._c08_races import BookView, ExchangeView, compare
from strategylab.chaos.scenarios._c09_sla import SLAS, _class_figures

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals"),
]


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


def test_book_comparison_is_exact_while_the_trader_still_books_a_young_fill() -> None:
    """A trader that keeps trading books each fill a poll after the venue made it: a fill younger
    than BOOK_LAG missing from the book neither fails the comparison nor keeps it from being
    exact, and the positions are set side by side less that fill; an order the book already
    marked final but whose young fill it has still to book is not compared yet. A book whose
    position is off is still caught."""
    exchange, book = _views({"F1": 1.0}, 1.0, {"F1": 1.0})
    young = time.time_ns()
    fills = exchange.fills | {"F2": ("e1-ma-F2", "AAPL", -2.0, young)}
    orders = {"e1-ma-F2": ("filled", 2.0)}
    moved = ExchangeView(fills, orders, {"AAPL": -1.0})
    book = BookView("e1-", book.fills, book.positions, {"e1-ma-F2": ("filled", 0.0)}, book.wall)
    lagging = compare(moved, book, moved)
    assert (lagging.ok, lagging.exact, lagging.missing, lagging.orders) == (True, True, [], [])
    assert lagging.position_diff == {}
    assert lagging.counts["unbooked"] == 1

    off = BookView("e1-", book.fills, {"AAPL": 3.0}, {}, book.wall)
    wrong = compare(moved, off, moved)
    assert not wrong.ok
    assert wrong.double == {"AAPL": 2.0}

    # The venue's position disagrees with its own fills plus nothing in flight: the book is
    # right by its fills but not by the account (another client's fill, say).
    skewed = ExchangeView(fills, {}, {"AAPL": 4.0})
    apart = compare(skewed, book, skewed)
    assert apart.exact
    assert apart.position_diff == {"AAPL": -5.0}

    # An old fill of a final order the book lacks is still missing, and the order compared.
    old = int((time.time() - 10.0) * 1e9)
    stale = ExchangeView(exchange.fills | {"F2": ("e1-ma-F2", "AAPL", -2.0, old)}, orders, {})
    late = compare(stale, book, stale)
    assert (late.ok, late.missing, late.exact) == (False, ["F2"], False)
    assert late.orders == ["e1-ma-F2: book filled 0.0, exchange ('filled', 2.0)"]
