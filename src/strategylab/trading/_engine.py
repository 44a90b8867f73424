"""The live strategy engine: strategies on ticks, risk in front, orders to the exchange, fills back.

Seam: the engine is a :class:`~strategylab.market.TickSink` (``put``, ``quarantine``,
``last_seqs``). Live, a second :class:`Feed` subscribes to the exchange with the engine as its sink
(see :func:`run_engine`), so strategies see exactly the validated, in-order, de-duplicated ticks a
node stores, and a slow strategy back-pressures only its own feed, never the node's ingestion. Any
other source calls ``await engine.put(ticks)``. ``last_seqs`` starts at the exchange's current
sequence, so a (re)started engine trades on live data, never on a replay of history.

Orders: ``ctx.submit`` runs the :class:`RiskEngine` check synchronously and gives the order its
client order id. When the strategy's callback returns, the orders it decided and the strategy's
state after deciding them are recorded in ONE durable transaction (orders ``inflight``), and only
then sent, each in an owned task, through the :class:`OrderClient`: a crash can never keep the
orders and lose the decision (a restarted strategy would repeat it), nor the reverse. A callback
that raises sends nothing: its decisions are dropped with its state, and the strategy restarts from
the state recorded with its last orders.

Parameters: the book records each strategy's :meth:`~strategylab.strategy.Strategy.parameters`.
A start with other parameters than the book was written with is refused before anything
trades (:class:`~strategylab.errors.ConfigurationError` naming ``--param``), unless the
strategy's :meth:`~strategylab.strategy.Strategy.migrate_state` converts its recorded state
(then saved and audited): a strategy is never restored into a state it does not understand.

Ambiguity: a request that changes state at the exchange (a submit, a cancel) whose outcome is
unknown (timeout, reset, 5xx, breaker open, past the retry budget) is marked unresolved and
resolved in the background: every ``resolve_interval`` seconds (backing off to
``resolve_max_interval`` while the exchange fails, never sooner than its Retry-After) the resolver
asks the exchange about every unresolved client order id in one bulk lookup, then takes the
exchange's word (a submit found: its status; not found: resent with the same id; a cancel whose
order is still open: cancelled again). Until the exchange says an order is cancelled, it counts as
working exposure. Fills are polled from ``GET /api/fills`` and recorded once each; positions are
per strategy and symbol.

Time: the fill poll, the resolver's rounds and the state flush wait on the injected ``clock`` (a
test on :class:`~strategylab.testing.FakeClock` drives them by moving it); ``close_deadline``
bounds calls to the exchange, so, like :class:`~strategylab.fault_tolerance.Timeout`, it follows
the event loop's timer.

Isolation: an exception in a strategy's callback stops delivery to that strategy alone and is
reported as STRATEGY_EXECUTION_ERROR with component = the strategy's name; the recovery (manager
chain, or the same steps without a manager) restarts it from its persisted state, or disables it
once it failed ``max_failures`` times within ``failure_window`` seconds.

Forged market data (a frame with a missing or wrong signature; the feed drops the connection it
came on and reconnects) halts trading at once through a *security hold* on the risk engine
(:meth:`StrategyEngine.on_security_violation`): every new order is refused (HALTED, reason
``security: forged frame ... (hold until ...)``), cancels still pass, and the violation is audited.
The hold lifts by itself, so that a peer without the key cannot stop trading for good with one
frame, but only once ``security_hold`` seconds have passed without another violation AND
authenticated ticks have been delivered since the last one (so on a fresh connection) AND the
feed reports itself healthy; a hold never lifts a halt put in place by an operator or an
emergency (:meth:`RiskEngine.halt`). ``max_violations`` forged frames within
``violation_window`` seconds pull the kill switch (:meth:`StrategyEngine.kill_switch`): risk
HALTED for good, every open order of this engine cancelled at the exchange within
``close_deadline``, strategy states persisted, an audit record, and the process ends with
:data:`EXIT_KILL_SWITCH`.

Run as a process: ``python -m strategylab.node._trader --exchange-url http://127.0.0.1:P --db
PATH --strategy NAME=module:Class --symbols A,B``; it prints JSON lines: ``reconciled`` (the
items and the ``seconds`` it took), ``trading``, a ``status`` every ``--status-interval`` seconds,
``security_violation`` for each forged frame, and ``stopped`` on SIGTERM (exit 0), or
``kill_switch`` when forged frames crossed the threshold (exit 3).

The engine is built in layers, one concept per module (see :mod:`._engine_base`); this module
is the facade: start and stop, the tick dispatch and the status.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from strategylab.errors import ConfigurationError
from strategylab.strategy import JSONValue

from ._engine_base import EXIT_KILL_SWITCH, _log
from ._engine_config import EngineConfig, EngineStatus, _Live
from ._engine_params import (
    canonical,
    loaded,
    parameters_refused,
    read_parameters,
    write_parameters,
)
from ._engine_security import _EngineSecurity
from ._orders import OrderClient
from ._positions import PositionStore
from ._reconcile import ReconciliationItem, reconcile
from ._security import SECURITY_HOLD

if TYPE_CHECKING:
    from strategylab.market import QuarantinedTick, Tick

__all__ = [
    "EXIT_KILL_SWITCH",
    "SECURITY_HOLD",
    "EngineConfig",
    "EngineStatus",
    "StrategyEngine",
]


class StrategyEngine(_EngineSecurity):
    """Runs strategies live (see the module docstring). ``await start()`` reconciles first."""

    # ------------------------------------------------------------------ Component

    async def start(self) -> None:
        """Open the client, reconcile with the exchange, start the strategies, then trade."""
        if self.trading:
            return
        self._check_parameters()  # before anything trades: no connection, no reconciliation yet
        await self.client.start()
        began = self._clock.monotonic()
        items, exchange_last = await _reconcile_and_last_seqs(self.client, self.store)
        self.reconciliation = tuple(items)
        self.reconcile_seconds = self._clock.monotonic() - began
        self._positions = {(p.strategy, p.symbol): p.qty for p in self.store.positions()}
        for order in self.store.orders(frozenset({"inflight", "open"})):
            live = _Live(order.strategy, order.request, order.status)
            live.order_id, live.filled = order.order_id, order.filled_qty
            self._live[order.cid] = live
        self._watch_late_arrivals(items)
        self._fill_cursor = 0
        self._last_seq = {s: exchange_last.get(s, 0) for s in self._by_symbol}
        for runner in self.runners.values():
            if self._manager is not None and runner.name not in {
                c.name for c in self._manager.components()
            }:
                self._manager.register(runner)
            _failures, enabled = self.store.strategy_health(runner.name)
            if not enabled:
                runner.enabled = False
                runner.disabled_reason = "disabled in a previous run"
                continue
            try:
                runner.launch(runner.strategy)
            except Exception as exc:
                self._fail(runner, exc)
        self.trading = True
        if self._security.held_since is not None:  # held when stopped: the hold goes on
            self._security.arm()
        self._loops = [
            asyncio.create_task(self._fill_loop(), name=f"{self._name}.fills"),
            asyncio.create_task(self._resolve_loop(), name=f"{self._name}.resolver"),
            asyncio.create_task(self._state_loop(), name=f"{self._name}.state"),
        ]

    def _check_parameters(self) -> None:
        """Compare every strategy's parameters with those its order book was written with.

        A book without a record takes the current parameters. Other parameters are refused
        (:class:`ConfigurationError` naming ``--param``, and nothing is written) unless the
        strategy's :meth:`~strategylab.strategy.Strategy.migrate_state` converts its recorded
        state: then the new state and parameters are saved and the migration is audited. Every
        strategy is checked before anything is written, so a refusal leaves the book as it was.
        """
        book = self.store.path
        current = {name: canonical(r.strategy.parameters()) for name, r in self.runners.items()}
        record: dict[str, str] = {}
        migrated: list[tuple[str, str, dict[str, JSONValue]]] = []
        for name, new in current.items():
            old = read_parameters(book, name)
            if old == new:
                continue
            record[name] = new
            if old is None:
                continue
            strategy = self.runners[name].strategy
            try:
                state = strategy.migrate_state(
                    loaded(old), loaded(new), self.store.load_state(name)
                )
            except Exception as exc:
                refused = parameters_refused(name, book, old, new)
                raise ConfigurationError(
                    refused.key, refused.value, f"{refused.reason} (migrate_state raised {exc!r})"
                ) from exc
            if state is None:
                raise parameters_refused(name, book, old, new)
            migrated.append((name, old, state))
        for name, _old, state in migrated:
            self.store.save_state(name, state)
        if record:
            write_parameters(book, record)
        for name, old, _state in migrated:
            _log.warning(
                "strategy %s: state migrated from parameters %s to %s", name, old, current[name]
            )
            self._record(
                "strategy_parameters_migrated",
                {"strategy": name, "book": str(book), "old": old, "new": current[name]},
            )

    async def stop(self) -> None:
        """Stop trading: finish sends within ``close_deadline`` (cancel the rest), persist state."""
        self.trading = False
        kill = self._security.kill_task
        if kill is not None and not kill.done():
            # The emergency shutdown cancels orders through the client: let it finish first.
            await asyncio.wait({kill}, timeout=self.config.close_deadline + 1.0)
        hold = self._security.hold_task
        self._security.hold_task = None
        for task in (*self._loops, *([hold] if hold is not None else [])):
            task.cancel()
        if self._loops or hold is not None:
            await asyncio.wait([*self._loops, *([hold] if hold is not None else [])])
        self._loops = []
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=self.config.close_deadline)
            for task in pending:
                _log.warning("engine stop: cancelling straggler %s", task.get_name())
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self._flush_states(force=True)
        for runner in self.runners.values():
            await runner.stop()
        await self.client.stop()

    async def aclose(self) -> None:
        """Stop and close the book."""
        await self.stop()
        self.store.close()

    async def health(self) -> bool:
        """True while trading with every loop alive."""
        return self.trading and all(not t.done() for t in self._loops)

    # ------------------------------------------------------------------ TickSink

    async def put(self, ticks: list[Tick]) -> None:
        """Deliver ticks to the strategies of their symbols (in order), after the risk engine."""
        risk_tick = self.risk.on_tick
        quotes, last_seq, by_symbol = self._quotes, self._last_seq, self._by_symbol
        for tick in ticks:
            symbol = tick.symbol
            quotes[symbol] = (tick.bid, tick.ask)
            last_seq[symbol] = tick.seq
            self._now_ns = tick.ts
            risk_tick(symbol)
            if not self.trading:
                continue
            for runner in by_symbol.get(symbol, ()):
                if runner.running:
                    self._callback(runner, runner.strategy.on_tick, tick)
        # Only authenticated ticks reach a sink: the feed verified them on a connection that
        # carried no forgery (a forged frame drops its connection).
        self._security.delivered(len(ticks))

    async def quarantine(self, entries: list[QuarantinedTick]) -> None:
        """Refused input is counted; strategies never see it."""
        self.quarantined += len(entries)

    async def last_seqs(self) -> dict[str, int]:
        """The last sequence delivered per symbol (the exchange's own at start: trade live)."""
        return dict(self._last_seq)

    # ------------------------------------------------------------------ views

    def status(self) -> EngineStatus:
        """Risk state, positions, orders and strategies, now."""
        positions: dict[str, dict[str, float]] = {}
        for (strategy, symbol), qty in sorted(self._positions.items()):
            positions.setdefault(strategy, {})[symbol] = qty
        open_orders = sum(1 for o in self._live.values() if o.status == "open")
        inflight = sum(1 for o in self._live.values() if o.status == "inflight")
        return EngineStatus(
            risk_state=self.risk.state.value,
            risk_reason=self.risk.reason,
            positions=positions,
            open_orders=open_orders,
            inflight=inflight,
            orders_sent=self.orders_sent,
            orders_filled=self.orders_filled,
            orders_rejected=len(self.rejections),
            orders_refused=self.orders_refused,
            ambiguous=self.ambiguous_total,
            unresolved=len(self._ambiguous),
            resent=self.resent,
            security_violations=self.security_violations,
            strategies=tuple(r.status() for r in self.runners.values()),
            reconciliation=self.reconciliation,
            breaker=_breaker(self.client),
        )


def _breaker(client: object) -> dict[str, object] | None:
    """The order client's breaker state and counters (None for a client without one)."""
    breaker = getattr(client, "breaker", None)
    if breaker is None:
        return None
    metrics = breaker.metrics()
    return {
        "state": metrics.state.value,
        "failed_calls": metrics.failed_calls,
        "rejected_calls": metrics.rejected_calls,
        "ignored_calls": metrics.ignored_calls,
        "successful_calls": metrics.successful_calls,
        "not_permitted": metrics.not_permitted,
    }


async def _reconcile_and_last_seqs(
    client: OrderClient, store: PositionStore
) -> tuple[list[ReconciliationItem], dict[str, int]]:
    """Reconciliation and the exchange's last sequences, concurrently (one round trip less)."""
    items = asyncio.ensure_future(reconcile(client, store))
    last = asyncio.ensure_future(client.last_seqs())
    try:
        await asyncio.gather(items, last)
    except BaseException:
        for task in (items, last):
            task.cancel()
        await asyncio.gather(items, last, return_exceptions=True)
        raise
    return items.result(), last.result()
