"""The demo's report: the integrity tables, the node's and the trader's figures, and what an
interruption left behind.

Tables are laid out to fit the console (80 columns included) and never cut a number: columns
that do not fit move to a further table. Text that came from a child (a rejection reason, an
exception, a path) is printed with its control characters escaped and no markup.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.markup import escape as markup_escape
from rich.table import Table

from strategylab._demo_faults import FaultRecord
from strategylab._layout import DataLayout
from strategylab._logging import escape
from strategylab.chaos import IntegrityReport

__all__ = [
    "faults_table",
    "fitted_tables",
    "integrity_tables",
    "print_interrupted",
    "print_report",
    "print_trading",
]


def _width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update_width(10_000)).maximum


def fitted_tables(
    console: Console,
    title: str,
    labels: Sequence[str],
    columns: Sequence[tuple[str, Sequence[str]]],
) -> list[Table]:
    """``labels`` down the side and ``columns`` across, as as many tables as it takes to fit the
    console's width: columns move to a further table rather than being squeezed, so a number is
    never wrapped or cut (``no_wrap``). Each column is ``(heading, one cell per label)``."""

    def build(part: Sequence[tuple[str, Sequence[str]]], heading: str) -> Table:
        table = Table(title=heading, box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("", no_wrap=True)
        for name, _cells in part:
            table.add_column(name, justify="right", no_wrap=True)
        for i, label in enumerate(labels):
            table.add_row(label, *(cells[i] for _name, cells in part))
        return table

    tables: list[Table] = []
    part: list[tuple[str, Sequence[str]]] = []
    for column in columns:
        wider = [*part, column]
        if part and _width(console, build(wider, title)) > console.width:
            tables.append(build(part, title if not tables else f"{title} (continued)"))
            part = [column]
        else:
            part = wider
    if part or not tables:
        tables.append(build(part, title if not tables else f"{title} (continued)"))
    return tables


_MEASURES: Final = (
    ("emitted", "emitted"),
    ("stored", "stored"),
    ("acknowledged", "acknowledged"),
    ("lost", "lost"),
    ("missing", "missing"),
    ("duplicated", "duplicated"),
    ("unexpected", "unexpected"),
    ("corrupted", "corrupted"),
    ("quarantined", "quarantined"),
    ("gaps", "gap_count"),
)


def integrity_tables(console: Console, report: IntegrityReport) -> list[Table]:
    """The integrity report, a row per measure and a column per symbol, fitted to the console."""
    columns: list[tuple[str, Sequence[str]]] = [
        (row.symbol, [f"{getattr(row, attr):,}" for _label, attr in _MEASURES])
        for row in report.symbols
    ]
    totals = [report.emitted, report.stored, report.acknowledged, report.lost.count,
              report.missing.count, report.duplicated.count, report.unexpected.count,
              report.corrupted.count, report.quarantined.count, report.gap_count]  # fmt: skip
    columns.append(("total", [f"{n:,}" for n in totals]))
    title = f"integrity: exchange log vs store ({report.elapsed_s:.2f} s)"
    return fitted_tables(console, title, [label for label, _attr in _MEASURES], columns)


def _two_columns(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right", no_wrap=True)
    for label, value in rows:
        table.add_row(label, value)
    return table


def print_report(
    console: Console, report: IntegrityReport, stopped: dict[str, Any], faults: list[str]
) -> None:
    for table in integrity_tables(console, report):
        console.print(table)
    console.print(
        _two_columns(
            "feed and node",
            [
                (label, f"{stopped.get(key, 0):,}")
                for label, key in (
                    ("ticks stored", "ticks_stored"),
                    ("reconnects", "reconnects"),
                    ("CRC errors (frames dropped, then replayed)", "crc_errors"),
                    ("gaps detected and replayed", "gaps"),
                    ("duplicates dropped", "duplicates"),
                    ("invalid ticks quarantined", "invalid_ticks"),
                    ("ticks declared lost by the feed", "lost_ticks"),
                )
            ],
        )
    )
    console.print(f"faults injected: {', '.join(faults) or 'none'}")
    recovery = stopped.get("recovery", {})
    console.print(
        _two_columns(
            "recovery statistics (the node's ErrorRecoveryManager)",
            [
                ("errors reported", f"{recovery.get('errors', 0):,}"),
                (
                    "recoveries succeeded / failed",
                    f"{recovery.get('succeeded', 0):,} / {recovery.get('failed', 0):,}",
                ),
                ("success rate", f"{recovery.get('success_rate', 0.0):.0%}"),
                (
                    "recovery time p50 / p95 / p99 (ms)",
                    " / ".join(
                        f"{recovery.get(k, 0):,.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")
                    ),
                ),
            ],
        )
    )
    for label, counts in (
        ("recoveries by error type", recovery.get("by_type", {})),
        ("recoveries by strategy", recovery.get("by_strategy", {})),
    ):
        console.print(f"{label}: {_pairs(counts)}")
    sla = recovery.get("sla_compliance", {})
    console.print(
        "SLA compliance: " + (", ".join(f"{k} {v:.0%}" for k, v in sla.items()) or "none")
    )


def faults_table(seed: int, records: Sequence[FaultRecord]) -> Table:
    """The faults as planned (from ``--seed``) beside what the run observed: the point each was
    injected at (ticks stored by the node, or orders sent by the trader), how long it was held,
    and, for the order API, how many orders the exchange struck."""
    table = Table(
        title=f"faults (schedule from --seed {seed})", box=box.SIMPLE_HEAD, title_justify="left"
    )
    table.add_column("fault")
    table.add_column("planned at", justify="right", no_wrap=True)
    table.add_column("injected at", justify="right", no_wrap=True)
    table.add_column("held s", justify="right", no_wrap=True)
    table.add_column("struck", justify="right", no_wrap=True)
    for record in records:
        planned = record.planned
        unit = "ticks" if planned.track == "feed" else "orders"
        at = record.note or "-" if record.injected_at is None else f"{record.injected_at:,}"
        table.add_row(
            markup_escape(planned.label),
            f"{planned.at:,} {unit}",
            markup_escape(at),
            "-" if record.held_s is None else f"{record.held_s:.1f}",
            "" if record.struck is None else str(record.struck),
        )
    return table


def print_trading(console: Console, traded: dict[str, Any]) -> None:
    rows = [
        (label, str(traded.get(key, "?")))
        for label, key in (
            ("orders sent", "orders_sent"),
            ("orders filled", "orders_filled"),
            ("refused by the risk engine", "orders_rejected"),
            ("ambiguous outcomes (each resolved by asking the exchange)", "ambiguous"),
            ("resent with the same client order id", "resent"),
            ("still in flight at the end", "inflight"),
            ("open orders at the end", "open_orders"),
            ("orders at the exchange", "exchange_orders"),
            ("duplicate orders at the exchange", "duplicate_orders"),
        )
    ]
    console.print(_two_columns("trading (moving-average crossover on AAPL)", rows))
    risk = f"{traded.get('risk_state', '?')} {traded.get('risk_reason', '')}".rstrip()
    positions = traded.get("positions", {})
    held = ", ".join(f"{s}: {q:g}" for p in positions.values() for s, q in p.items()) or "flat"
    lines = [f"risk state: {risk}", f"positions: {held}"]
    for strategy in traded.get("strategies", []):
        state = (
            "enabled"
            if strategy.get("enabled")
            else f"disabled ({strategy.get('disabled_reason')})"
        )
        lines.append(
            f"strategy {strategy.get('name')}: {state}, {strategy.get('failures', 0)} failures"
        )
    for line in lines:
        # Text from a child (a rejection reason, an exception): no markup, no control characters.
        console.print(markup_escape(escape(line)))


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "none"


def _shown(path: Path) -> str:
    """A path for the console: control characters escaped, no markup."""
    return markup_escape(escape(str(path)))


def print_interrupted(
    console: Console,
    data_dir: Path,
    *,
    phase: str,
    stopped: Sequence[tuple[str, int]],
    received: Sequence[signal.Signals],
) -> None:
    """What a signal interrupted (``phase``), which children stopped how (``(name, exit status)``
    in stop order), and what state is safe, with the command that checks it."""
    console.line()  # the live display's last line may not end one
    console.print(f"[yellow]interrupted by {received[0].name} while {phase}")
    if not stopped:
        console.print("no process had been started yet: nothing to stop, nothing to check")
        return
    stops = ", ".join(f"{name} (exit {code})" for name, code in stopped)
    console.print(f"stopped, in this order: {stops}")
    started = {name for name, _code in stopped}
    killed = [name for name, code in stopped if code == -signal.SIGKILL]
    if killed:
        console.print(f"killed without a clean stop: {', '.join(killed)}")
    if "node" not in started:
        console.print("the node had not started: no tick was stored, nothing to check")
        return
    layout = DataLayout(data_dir)
    node = layout.node_dir
    console.print(
        f"safe: every tick the node acknowledged is committed in {_shown(node.ticks_db)} "
        "(it acknowledges only after the commit, even when killed). The run is incomplete, so "
        "nothing was verified; check what was stored with:"
    )
    console.print(
        f"  strategylab check {_shown(layout.exchange_dir.emitted_log)} "
        f"{_shown(node.ticks_db)} --acks {_shown(node.acks)}",
        soft_wrap=True,
    )
    if "trader" in started:
        console.print(
            "safe: the trading book is reconciled with the exchange's orders when a trader "
            "next starts."
        )
    console.print("The next demo run clears only what the demo created.")
