"""The trader's kill switch and its resumption after an unclean shutdown.

:func:`trader_kill_switch` builds the library :class:`~strategylab.fault_tolerance.KillSwitch`
for one :class:`~strategylab.trading.StrategyEngine` and its feed. Its steps, in order, each with
a deadline (seconds):

1. ``halt`` (:data:`HALT_DEADLINE`): the risk engine goes HALTED (every new order is refused) and
   the strategies are no longer called; the last sequence per symbol the engine processed is
   taken at this moment;
2. ``cancel_orders`` (the engine's ``close_deadline`` + 1): every open order of this engine
   cancelled at the exchange (list, cancel, list again: up to three rounds); a step that cannot
   confirm that none is left ends ``failed``, naming the orders still open;
3. ``flush`` (:data:`FLUSH_DEADLINE`): the strategies' states saved to the book, the book and its
   write-ahead log fsynced;
4. the library's ``snapshot`` (``snapshot.json``: positions, open orders, last sequence per
   symbol, reason, time), ``stop:feed``, ``stop:strategy_engine``, ``stop:order_client`` (reverse
   dependency order) and ``marker`` (``UNCLEAN_SHUTDOWN``), in the book's directory.

:func:`resume_state` is the other half, at the next start: the marker and the verified snapshot
(:class:`Resumption`), or None after a clean shutdown. The trader then keeps the risk engine
HALTED (the hold :data:`RESUME_HOLD`) until reconciliation has finished, prints what it
restored, and only then removes the marker and trades.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Protocol

from strategylab._durable import fsync_file
from strategylab._layout import DataLayout
from strategylab.fault_tolerance import (
    AuditSink,
    ComponentRegistry,
    KillReport,
    KillStep,
    KillSwitch,
    SnapshotError,
    StateSnapshot,
    TriggerSource,
    UncleanMarker,
    read_snapshot,
    unclean_marker,
)
from strategylab.trading import EXIT_KILL_SWITCH, StrategyEngine

__all__ = [
    "FLUSH_DEADLINE",
    "HALT_DEADLINE",
    "RESUME_HOLD",
    "Resumption",
    "TraderEmergency",
    "TraderKill",
    "resume_state",
    "snapshot_differences",
    "trader_kill_switch",
]

_log = logging.getLogger("strategylab.market.engine")

HALT_DEADLINE: Final = 0.05
"""Seconds from the trigger to trading halted (the goal; a synchronous step is not cut)."""
FLUSH_DEADLINE: Final = 2.0
"""Seconds the flush of the book may take."""
RESUME_HOLD: Final = "unclean_shutdown"
"""The risk engine's hold key while an unclean shutdown is being reconciled."""
_OPEN: Final = frozenset({"inflight", "open"})


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


@dataclasses.dataclass(slots=True)
class TraderEmergency:
    """What the trader's kill switch did beyond the library's report: the reason of the halt,
    the last sequence per symbol at the halt, and the cancel step's result (``cancelled`` orders,
    client ids ``left_open`` at the last look, ``complete``: the exchange confirmed none left)."""

    reason: str = "kill switch"
    last_sequence: dict[str, int] = dataclasses.field(default_factory=dict)
    cancelled: int = 0
    left_open: list[str] = dataclasses.field(default_factory=list)
    complete: bool = False

    def line(self, report: KillReport) -> dict[str, object]:
        """The ``kill_switch`` line's fields: the report's :meth:`~KillReport.to_dict`, the
        cancel step's result and ``halted_ms`` (trigger to trading halted, milliseconds)."""
        return {
            **report.to_dict(),
            "cancelled": self.cancelled,
            "left_open": list(self.left_open),
            "complete": self.complete,
            "halted_ms": round(report.elapsed("halt") * 1000, 3),
        }


class TraderKill:
    """A built kill switch (:attr:`switch`) and its :attr:`record`; :meth:`pull` triggers it."""

    __slots__ = ("pulled", "record", "switch", "task")

    def __init__(self, switch: KillSwitch, record: TraderEmergency) -> None:
        self.switch = switch
        self.record = record
        self.task: asyncio.Task[KillReport] | None = None
        self.pulled = asyncio.Event()
        """Set by the first :meth:`pull`."""

    def pull(self, reason: str, source: TriggerSource) -> asyncio.Task[KillReport]:
        """Start the emergency shutdown (once; a later pull joins it) from the event loop's
        thread; its task. ``reason`` must be a non-empty str (``ValueError``)."""
        if self.task is None:
            self.record.reason = reason
        self.task = self.switch.trigger_soon(reason, source)
        self.pulled.set()
        return self.task


def trader_kill_switch(
    engine: StrategyEngine,
    feed: _Stoppable,
    *,
    layout: DataLayout,
    audit: AuditSink | None = None,
) -> TraderKill:
    """The kill switch of ``engine`` fed by ``feed`` (see the module docstring), writing into
    ``layout``, each step audited to ``audit``, with the record its steps fill in.

    The caller pulls it (:meth:`TraderKill.pull`) and exits with the report's ``exit_code``
    (:data:`~strategylab.trading.EXIT_KILL_SWITCH`).
    """
    state = TraderEmergency()
    close = engine.config.close_deadline
    book = engine.store.path

    async def halt() -> None:
        # Synchronous up to the first await: nothing trades between the trigger and here.
        engine.trading = False
        engine.risk.halt(f"kill switch: {state.reason}")
        state.last_sequence = await engine.last_seqs()

    async def cancel_orders() -> None:
        state.cancelled, state.left_open, state.complete = await engine.cancel_everything(close)
        if not state.complete:
            left = ", ".join(state.left_open) or "unknown (the exchange could not be asked)"
            raise RuntimeError(f"not confirmed cancelled at the exchange: {left}")

    def flush() -> None:
        engine.persist_states()
        for path in (book, Path(f"{book}-wal")):
            fsync_file(path)

    def snapshot() -> StateSnapshot:
        positions: dict[str, dict[str, float]] = {}
        for position in engine.store.positions():
            positions.setdefault(position.strategy, {})[position.symbol] = position.qty
        orders = [
            {
                "cid": o.cid,
                "order_id": o.order_id,
                "strategy": o.strategy,
                "symbol": o.symbol,
                "side": o.side.value,
                "type": o.type.value,
                "qty": o.qty,
                "price": o.price,
                "filled_qty": o.filled_qty,
                "status": o.status,
            }
            for o in engine.store.orders(_OPEN)
        ]
        return StateSnapshot.create(
            reason=state.reason,
            positions=positions,
            open_orders=orders,
            last_sequence=state.last_sequence,
        )

    registry: ComponentRegistry[_Stoppable] = ComponentRegistry()
    registry.register("order_client", engine.client)
    registry.register("strategy_engine", engine, depends_on=("order_client",))
    registry.register("feed", feed, depends_on=("strategy_engine",))
    switch = KillSwitch(
        [
            KillStep("halt", halt, HALT_DEADLINE),
            KillStep("cancel_orders", cancel_orders, close + 1.0),
            KillStep("flush", flush, FLUSH_DEADLINE),
        ],
        layout=layout,
        snapshot_source=snapshot,
        registry=registry,
        audit=audit,
        exit_code=EXIT_KILL_SWITCH,
        stop_deadline=close + 1.0,
    )
    return TraderKill(switch, state)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Resumption:
    """An unclean shutdown to resume from: its ``marker`` and its verified ``snapshot`` (None
    when the kill switch could not write one and the marker says so)."""

    marker: UncleanMarker
    snapshot: StateSnapshot | None


def resume_state(layout: DataLayout) -> Resumption | None:
    """The unclean shutdown left in ``layout``, verified; None when the last stop was clean.

    Raises :class:`~strategylab.fault_tolerance.SnapshotError` naming ``snapshot.json`` when it
    is damaged, missing while the marker names one, or not the one the marker names;
    :class:`~strategylab._files.UnsafePathError` when a link or special file is at either name.
    """
    marker = unclean_marker(layout)
    if marker is None:
        return None
    if marker.problem is not None:
        _log.warning("unclean-shutdown marker %s is damaged: %s", marker.path, marker.problem)
    try:
        snapshot = read_snapshot(layout)
    except FileNotFoundError:
        if marker.snapshot_sha256 is None and marker.problem is None:
            return Resumption(marker=marker, snapshot=None)  # the kill switch wrote none
        raise SnapshotError(
            layout.snapshot, f"missing, but the unclean-shutdown marker {marker.path} needs it"
        ) from None
    if marker.snapshot_sha256 is not None and marker.snapshot_sha256 != snapshot.digest:
        raise SnapshotError(
            layout.snapshot,
            f"its sha256 {snapshot.digest} is not {marker.snapshot_sha256}, the one the "
            f"unclean-shutdown marker {marker.path} names",
        )
    return Resumption(marker=marker, snapshot=snapshot)


def snapshot_differences(
    snapshot: StateSnapshot | None, positions: Mapping[str, Mapping[str, float]]
) -> list[dict[str, object]]:
    """Where the snapshot's positions and the reconciled book's ``positions`` (strategy →
    symbol → units) differ: ``{"strategy", "symbol", "snapshot", "book"}`` each, sorted."""
    if snapshot is None:
        return []
    saved: dict[tuple[str, str], float] = {}
    for strategy, symbols in snapshot.positions.items():
        if isinstance(symbols, Mapping):
            for symbol, qty in symbols.items():
                if isinstance(qty, int | float) and not isinstance(qty, bool):
                    saved[(strategy, symbol)] = float(qty)
    now = {(s, y): float(q) for s, by in positions.items() for y, q in by.items()}
    close: Callable[[float, float], bool] = lambda a, b: abs(a - b) <= 1e-9  # noqa: E731
    return [
        {
            "strategy": s,
            "symbol": y,
            "snapshot": saved.get((s, y), 0.0),
            "book": now.get((s, y), 0.0),
        }
        for s, y in sorted(saved.keys() | now.keys())
        if not close(saved.get((s, y), 0.0), now.get((s, y), 0.0))
    ]
