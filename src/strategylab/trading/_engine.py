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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from strategylab._clock_wait import wait_within
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import (
    ErrorContext,
    ErrorRecoveryManager,
    ErrorType,
)
from strategylab.strategy import Fill, OrderRequest, OrderType, Side

from ._orders import (
    AmbiguousOrderError,
    ExchangeOrder,
    OrderApiError,
    OrderClient,
    OrderRefusedError,
)
from ._positions import PositionStore
from ._reconcile import ReconciliationItem, reconcile
from ._risk import RiskEngine, RiskRejection, exposure
from ._runner import StrategyFactory, StrategyFailingError, StrategyRunner, StrategyStatus
from ._security import SECURITY_HOLD, SecurityGuard

if TYPE_CHECKING:
    from strategylab.fault_tolerance import AuditSink
    from strategylab.market import QuarantinedTick, Tick

__all__ = [
    "EXIT_KILL_SWITCH",
    "SECURITY_HOLD",
    "EngineConfig",
    "EngineStatus",
    "StrategyEngine",
]

_log = logging.getLogger("strategylab.market.engine")
_LOOKUP_ERRORS = (OrderApiError, aiohttp.ClientError, TimeoutError, CircuitOpenError)
_FINAL = frozenset({"filled", "cancelled", "rejected", "void"})

EXIT_KILL_SWITCH: Final = 3
"""The exit code of a trader whose kill switch was pulled (the node's EXIT_EMERGENCY too)."""
_CANCEL_ROUNDS = 3
"""Kill switch: list and cancel, list and cancel, list to confirm (bounded by a deadline)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Engine options; validated on construction (errors name the option)."""

    max_failures: int = 3
    """Failures within ``failure_window`` after which a strategy is disabled, not restarted."""
    failure_window: float = 60.0
    fill_poll_interval: float = 0.1
    resolve_interval: float = 0.2
    """Seconds between rounds of the resolver while every round reaches the exchange."""
    resolve_max_interval: float = 0.5
    """The longest wait between rounds while the exchange fails (backoff doubles up to it), so an
    ambiguous outcome is resolved within about this long after the API answers again."""
    state_interval: float = 1.0
    """Seconds between saves of state that changed without an order (with an order it is saved
    in the order's own transaction)."""
    close_deadline: float = 5.0
    """Seconds a stop, or the kill switch's cancels, may take."""
    security_hold: float = 60.0
    """Seconds without a forged frame before the security hold may lift (the feed's
    ``violation_window`` by default)."""

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ConfigurationError("max_failures", self.max_failures, "must be >= 1")
        for key in (
            "failure_window",
            "fill_poll_interval",
            "resolve_interval",
            "resolve_max_interval",
            "state_interval",
            "close_deadline",
            "security_hold",
        ):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(key, value, "must be a finite number of seconds > 0")
        if self.resolve_max_interval < self.resolve_interval:
            raise ConfigurationError(
                "resolve_max_interval",
                self.resolve_max_interval,
                f"must be >= resolve_interval ({self.resolve_interval!r})",
            )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EngineStatus:
    """A frozen snapshot for the demo and the process's status lines."""

    risk_state: str
    risk_reason: str
    positions: dict[str, dict[str, float]]
    open_orders: int
    inflight: int
    orders_sent: int
    orders_filled: int
    orders_rejected: int
    """Refused by the risk engine."""
    orders_refused: int
    """Refused by the exchange (4xx)."""
    ambiguous: int
    """Outcomes that were ambiguous (each then resolved by asking the exchange)."""
    unresolved: int
    """Ambiguous outcomes not yet resolved (the resolver is still asking)."""
    resent: int
    security_violations: int
    """Forged frames seen (each one held trading; see the module docstring)."""
    strategies: tuple[StrategyStatus, ...]
    reconciliation: tuple[ReconciliationItem, ...]

    def to_dict(self) -> dict[str, object]:
        """For JSON."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["strategies"] = [dataclasses.asdict(s) for s in self.strategies]
        data["reconciliation"] = [i.to_dict() for i in self.reconciliation]
        return data


class _Live:
    """An order the engine still tracks (in flight, open, or filled but its fill not yet seen)."""

    __slots__ = ("cancel_requested", "filled", "order_id", "request", "status", "strategy")

    def __init__(self, strategy: str, request: OrderRequest, status: str) -> None:
        self.strategy = strategy
        self.request = request
        self.status = status
        self.order_id: str | None = None
        self.filled = 0.0
        self.cancel_requested = False

    @property
    def remaining_signed(self) -> float:
        if self.status in {"cancelled", "rejected", "void"}:
            return 0.0
        return (self.request.qty - self.filled) * self.request.side.sign


class StrategyEngine:
    """Runs strategies live (see the module docstring). ``await start()`` reconciles first."""

    def __init__(
        self,
        factories: Iterable[StrategyFactory],
        *,
        client: OrderClient,
        db: Path | str,
        risk: RiskEngine | None = None,
        manager: ErrorRecoveryManager | None = None,
        config: EngineConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "strategy-engine",
        audit: AuditSink | None = None,
    ) -> None:
        self.config = config if config is not None else EngineConfig()
        self._audit = audit
        self.client = client
        self.store = PositionStore(db)
        self._clock = clock
        self._manager = manager
        self._name = name
        self.runners: dict[str, StrategyRunner] = {}
        for factory in factories:
            runner = StrategyRunner(
                self,
                factory,
                max_failures=self.config.max_failures,
                failure_window=self.config.failure_window,
            )
            if runner.name in self.runners:
                raise ConfigurationError("factories", runner.name, "two strategies share a name")
            self.runners[runner.name] = runner
            self.store.ensure_strategy(runner.name)
        symbols = sorted({s for r in self.runners.values() for s in r.symbols})
        self.risk = risk if risk is not None else RiskEngine(clock=clock)
        self.risk.watch(symbols)
        self._by_symbol: dict[str, list[StrategyRunner]] = {s: [] for s in symbols}
        for runner in self.runners.values():
            for symbol in runner.symbols:
                self._by_symbol[symbol].append(runner)
        self._quotes: dict[str, tuple[float, float]] = {}
        self._last_seq: dict[str, int] = {}
        self._now_ns = 0
        self._positions: dict[tuple[str, str], float] = {}
        self._live: dict[str, _Live] = {}
        self._ambiguous: dict[str, str] = {}
        """Client order id → the request whose outcome is unknown: ``submit`` or ``cancel`` (or
        ``late``: voided at reconciliation and watched, see :meth:`_watch_late_arrivals`)."""
        self._late: dict[str, float] = {}
        """Voided at reconciliation: watched until this monotonic time."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._resolve_wake = asyncio.Event()
        self._resolve_failures = 0
        self._fill_cursor = 0
        self._rejected_ids = 0
        self.rejections: deque[tuple[str, RiskRejection]] = deque(maxlen=1000)
        self.reconciliation: tuple[ReconciliationItem, ...] = ()
        self.reconcile_seconds = 0.0
        """How long the last reconciliation took (seconds on ``clock``)."""
        self.trading = False
        self.orders_sent = 0
        self.orders_filled = 0
        self.orders_refused = 0
        self.ambiguous_total = 0
        self.resent = 0
        self.quarantined = 0
        self._security = SecurityGuard(
            risk=self.risk,
            clock=clock,
            hold=self.config.security_hold,
            name=name,
            record=self._record,
            shutdown=self._shutdown,
            audit=audit,
        )

    # ------------------------------------------------------------------ Component

    @property
    def name(self) -> str:
        """The component name."""
        return self._name

    async def start(self) -> None:
        """Open the client, reconcile with the exchange, start the strategies, then trade."""
        if self.trading:
            return
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

    # ------------------------------------------------------------------ context

    @property
    def now_ns(self) -> int:
        """Exchange time of the last tick (the clock's before the first)."""
        return self._now_ns or int(self._clock.time() * 1e9)

    def position(self, strategy: str, symbol: str) -> float:
        """A strategy's filled position in ``symbol``."""
        return self._positions.get((strategy, symbol), 0.0)

    def working_position(self, strategy: str, symbol: str) -> float:
        """The filled position plus market orders still travelling: what a strategy sees.

        A market order fills at once at the exchange; until its fill comes back it is in flight.
        Counting it here keeps a strategy that trades toward a target from sending the same
        order again on every tick in between (a backtest fills at once, so it sees the same).
        Resting limit orders are not counted: they may never fill.
        """
        return self.position(strategy, symbol) + sum(
            o.remaining_signed
            for o in self._live.values()
            if o.strategy == strategy
            and o.request.symbol == symbol
            and o.request.type is OrderType.MARKET
        )

    def _pending(self, strategy: str, symbol: str) -> float:
        return sum(
            o.remaining_signed
            for o in self._live.values()
            if o.strategy == strategy and o.request.symbol == symbol
        )

    def submit_for(self, runner: StrategyRunner, request: OrderRequest) -> str:
        """Risk-check and name the order; returns its client order id.

        Inside a strategy callback the order is recorded (with the strategy's state) and sent
        when the callback returns (:meth:`commit_intents`); outside one, at once. A refused order
        gets an id ending in ``-rN`` that is never sent; its :class:`RiskRejection` is in
        :attr:`rejections`.
        """
        name, symbol = runner.name, request.symbol
        # Per side over the account, never netted: a working order may never fill (see check).
        position, working_buy, working_sell = exposure(symbol, self._positions, self._live.values())
        quote = self._quotes.get(symbol)
        mark = None if quote is None else (quote[1] if request.side is Side.BUY else quote[0])
        rejection = self.risk.check(request, position, mark, working_buy, working_sell)
        if rejection is not None:
            self._rejected_ids += 1
            cid = f"{self.store.engine_id}-{name}-r{self._rejected_ids}"
            self.rejections.append((cid, rejection))
            _log.info("risk refused %s %s: %s", name, request, rejection.reason)
            return cid
        if runner.next_order == 0:
            runner.next_order = self.store.next_order(name)
        cid = f"{self.store.engine_id}-{name}-{runner.next_order}"
        runner.next_order += 1
        # Working from now on (the risk check of the next order in this callback counts it).
        self._live[cid] = _Live(name, request, "inflight")
        runner.intents.append((cid, request))
        if not runner.in_callback:
            self.commit_intents(runner)
        return cid

    def commit_intents(self, runner: StrategyRunner) -> bool:
        """Record the runner's decided orders and its state in one transaction, then send them.

        False (nothing sent; the strategy is recovered as after a failure, from the state
        recorded with its last orders) when its ``state()`` raises or the book cannot be written.
        """
        intents, runner.intents = runner.intents, []
        if not intents:
            return True
        try:
            state = runner.strategy.state()
            self.store.record_intents(runner.name, intents, state, next_order=runner.next_order)
        except Exception as exc:  # the strategy's state() or the book (sqlite3.Error, OSError)
            for cid, _request in intents:
                self._live.pop(cid, None)
            _log.error("%s: %d order(s) not recorded, not sent: %r", runner.name, len(intents), exc)
            self._fail(runner, exc)
            return False
        runner.dirty = False
        for cid, request in intents:
            self.orders_sent += 1
            self._spawn(self._send(cid, request), f"send {cid}")
        return True

    def drop_intents(self, runner: StrategyRunner) -> None:
        """Forget the orders of a callback that raised: they were never recorded nor sent."""
        intents, runner.intents = runner.intents, []
        for cid, _request in intents:
            self._live.pop(cid, None)

    def cancel_all_for(self, strategy: str, symbol: str | None) -> None:
        """Cancel the strategy's open orders (cancels pass the risk engine in every state)."""
        self.risk.check_cancel()
        for cid, order in list(self._live.items()):
            if order.strategy != strategy or (
                symbol is not None and order.request.symbol != symbol
            ):
                continue
            order.cancel_requested = True
            if order.status == "open" and order.order_id is not None:
                self._spawn(self._cancel(cid, order.order_id), f"cancel {cid}")

    def rejection(self, cid: str) -> RiskRejection | None:
        """The risk engine's reason for refusing ``cid`` (None if it was not refused)."""
        for key, rejection in reversed(self.rejections):
            if key == cid:
                return rejection
        return None

    # ------------------------------------------------------------------ security

    @property
    def security_violations(self) -> int:
        """Forged frames seen (each one held trading)."""
        return self._security.violations

    @property
    def security_hold_until(self) -> float | None:
        """Monotonic time before which the security hold cannot lift (None: no hold)."""
        security = self._security
        return None if security.held_since is None else security.hold_until

    @property
    def feed_health(self) -> Callable[[], Awaitable[bool]] | None:
        """Asked before the security hold lifts (:func:`run_engine` sets its feed's ``health``);
        None: not asked."""
        return self._security.feed_health

    @feed_health.setter
    def feed_health(self, probe: Callable[[], Awaitable[bool]] | None) -> None:
        self._security.feed_health = probe

    @property
    def killed(self) -> asyncio.Event:
        """Set once the kill switch's emergency shutdown has run (see :meth:`kill_switch`)."""
        return self._security.killed

    @property
    def kill_report(self) -> dict[str, object]:
        """What the kill switch did: ``reason``, ``cancelled``, ``left_open``, ``complete``."""
        return dict(self._security.report)

    def on_security_violation(self, error: BaseException) -> None:
        """A forged frame (the feed's ``on_violation``): hold trading at once, audit it.

        Every new order is refused until the hold lifts (see :mod:`strategylab.trading._security`);
        another violation restarts the hold. Synchronous, so nothing is sent between the forged
        frame and the halt.
        """
        self._security.on_violation(error)

    async def kill_switch(self, error: BaseException) -> None:
        """Forged frames past the threshold (the feed's ``kill_switch``): emergency shutdown.

        Risk HALTED (a manual halt: no hold's expiry lifts it), strategies no longer called,
        every open order of this engine cancelled at the exchange within ``close_deadline``,
        strategy states persisted, an audit record; then :attr:`killed` is set (the process
        exits with :data:`EXIT_KILL_SWITCH`). Runs in a task the engine owns, so cancelling the
        caller cannot stop it half-way; a second call waits for the first.
        """
        self.trading = False
        await self._security.kill_switch(error)

    async def _shutdown(self) -> tuple[int, list[str], bool]:
        result = await self.cancel_everything(self.config.close_deadline)
        self._flush_states(force=True)
        return result

    async def cancel_everything(self, deadline: float) -> tuple[int, list[str], bool]:
        """Cancel every open order of this engine at the exchange within ``deadline`` seconds.

        Orders still in flight are marked so that they are cancelled as soon as they come back
        open (and the sends are waited for); orders open at the exchange under this engine's ids
        are cancelled whether the book still tracks them or not. Returns (orders cancelled,
        client ids still open at the exchange at the last look, whether the exchange confirmed
        that none is left).
        """
        self.risk.check_cancel()
        prefix = f"{self.store.engine_id}-"
        cancelled = 0
        left: list[str] = []
        for order in self._live.values():
            order.cancel_requested = True
        try:
            async with asyncio.timeout(deadline):
                for attempt in range(_CANCEL_ROUNDS):
                    pending = [t for t in self._tasks if not t.done()]
                    if pending:  # sends in flight: an order they open is cancelled by _apply
                        await asyncio.wait(pending)
                    found = [
                        o
                        for o in await self.client.orders("open")
                        if o.client_order_id.startswith(prefix)
                    ]
                    left = [o.client_order_id for o in found]
                    if not found:
                        return cancelled, left, True
                    if attempt < _CANCEL_ROUNDS - 1:
                        cancelled += await self._cancel_listed(found)
        except TimeoutError:
            _log.error("kill switch: cancels not confirmed within %.1fs", deadline)
        except (*_LOOKUP_ERRORS, OrderRefusedError) as exc:
            _log.error("kill switch: cannot list open orders at the exchange: %r", exc)
        return cancelled, left, False

    async def _cancel_listed(self, found: Sequence[ExchangeOrder]) -> int:
        """Cancel ``found`` (open at the exchange) concurrently; how many are now cancelled."""
        results = await asyncio.gather(
            *(self.client.cancel(o.id) for o in found), return_exceptions=True
        )
        cancelled = 0
        for order, result in zip(found, results, strict=True):
            if isinstance(result, ExchangeOrder):
                if result.status == "cancelled":
                    cancelled += 1
                self._ambiguous.pop(order.client_order_id, None)
                self._apply(order.client_order_id, result)
            elif isinstance(result, Exception):
                _log.warning("kill switch: cancel of %s: %r", order.id, result)
        return cancelled

    def _record(self, kind: str, data: dict[str, object]) -> None:
        """Append to the audit log from synchronous code (in an owned task)."""
        audit = self._audit
        if audit is None:
            return

        async def append() -> None:
            try:
                await audit.aappend(kind, data)
            except Exception:
                _log.exception("could not append %s to the audit log", kind)

        self._spawn(append(), f"audit {kind}")

    # ------------------------------------------------------------------ orders

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, cid: str, request: OrderRequest) -> None:
        try:
            order = await self.client.submit(cid, request)
        except OrderRefusedError as exc:
            self.orders_refused += 1
            self.store.update_order(cid, status="rejected", reason=str(exc))
            self._set_status(cid, "rejected")
            _log.warning("exchange refused %s: %s", cid, exc)
            return
        except AmbiguousOrderError as exc:
            self._unresolved(cid, "submit")
            _log.warning("%s; kept in flight until the exchange says", exc)
            return
        self._apply(cid, order)

    def _watch_late_arrivals(self, items: Sequence[ReconciliationItem]) -> None:
        """Keep watching in-flight orders that reconciliation voided as never accepted.

        The crashed run may have sent one a moment before it died: it can still be on its way and
        reach the exchange after reconciliation asked. Each such order counts as working exposure
        and is asked about in the background until the time a request of the client may take has
        passed twice over; if it turns up open it is cancelled (its decision is stale), if it
        turned up filled or cancelled its status is taken; if it never turns up it stays void.
        """
        until = self._clock.monotonic() + 2.0 * self.client.timeout
        for item in items:
            if item.what != "inflight_order" or not item.action.startswith("voided"):
                continue
            order = self.store.order(item.key)
            if order is None:
                continue
            self._live[item.key] = _Live(order.strategy, order.request, "inflight")
            self._late[item.key] = until
            self._ambiguous[item.key] = "late"
        if self._late:
            self._resolve_wake.set()

    def _unresolved(self, cid: str, request: str) -> None:
        if cid not in self._ambiguous:
            self.ambiguous_total += 1
        self._ambiguous[cid] = request
        self._resolve_wake.set()

    def _set_status(self, cid: str, status: str) -> None:
        live = self._live.get(cid)
        if live is None:
            return
        live.status = status
        if status in _FINAL and live.remaining_signed == 0.0:
            del self._live[cid]

    def _apply(self, cid: str, order: ExchangeOrder) -> None:
        """Take the exchange's word for an order."""
        self.store.update_order(cid, status=order.status, order_id=order.id, reason=order.reason)
        live = self._live.get(cid)
        if live is not None:
            live.order_id = order.id
            if live.cancel_requested and order.status == "open":
                self._spawn(self._cancel(cid, order.id), f"cancel {cid}")
        self._set_status(cid, order.status)

    async def _cancel(self, cid: str, order_id: str) -> None:
        try:
            order = await self.client.cancel(order_id)
        except OrderRefusedError as exc:
            _log.warning("exchange refused the cancel of %s: %s", cid, exc)
            return
        except _LOOKUP_ERRORS as exc:
            # Carried out or not: only the exchange knows. Working exposure until it says.
            self._unresolved(cid, "cancel")
            _log.warning("cancel of %s: outcome unknown (%r); asking the exchange", cid, exc)
            return
        if order is None:
            self._unresolved(cid, "cancel")  # 404 by exchange id: ask by client id
        else:
            self._ambiguous.pop(cid, None)
            self._apply(cid, order)

    async def _resolve_loop(self) -> None:
        wait = self.config.resolve_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_within(self._clock, self._resolve_wake.wait(), wait)
            self._resolve_wake.clear()
            wait = await self._resolve_round()

    async def _resolve_round(self) -> float:
        """One round; the seconds to wait before the next (backing off while the API fails)."""
        try:
            await self.resolve_ambiguous(raise_errors=True)
        except CircuitOpenError as exc:
            self._resolve_failures += 1
            # The breaker admits a trial after retry_after: ask right then, not a backoff later.
            return max(min(self._resolve_backoff(), exc.retry_after), 0.01)
        except _LOOKUP_ERRORS:
            self._resolve_failures += 1
            return max(self._resolve_backoff(), self.client.rate_limited_for())
        self._resolve_failures = 0
        return max(self.config.resolve_interval, self.client.rate_limited_for())

    def _resolve_backoff(self) -> float:
        config = self.config
        exponent = min(self._resolve_failures, 16)
        return min(config.resolve_interval * 2.0**exponent, config.resolve_max_interval)

    async def resolve_ambiguous(self, *, raise_errors: bool = False) -> int:
        """Ask the exchange about every unresolved order once (one bulk lookup) and act on the
        answers; returns how many remain unresolved.

        With ``raise_errors`` a lookup that fails raises the client's error (an
        :class:`OrderApiError`, aiohttp's, ``TimeoutError``, :class:`CircuitOpenError`);
        otherwise it leaves them unresolved.
        """
        cids = sorted(self._ambiguous)
        if not cids:
            return 0
        try:
            found = await self.client.lookup_many(cids)
        except _LOOKUP_ERRORS:
            if raise_errors:
                raise
            return len(self._ambiguous)
        limit = asyncio.Semaphore(self.client.lookup_concurrency)
        actions = [
            self._bounded(limit, action)
            for cid in cids
            if (action := self._settle(cid, found.get(cid))) is not None
        ]
        if actions:
            await asyncio.gather(*actions)
        return len(self._ambiguous)

    def _settle(self, cid: str, order: ExchangeOrder | None) -> Coroutine[Any, Any, None] | None:
        """Take the exchange's answer about ``cid``; a request to send again, if one is needed."""
        request = self._ambiguous.get(cid)
        if request is None:
            return None  # resolved meanwhile (an answer arrived)
        if request == "late":
            return self._settle_late(cid, order)
        if request == "cancel" and order is not None and order.status == "open":
            # The cancel never happened: send it again (a repeated cancel is harmless).
            return self._cancel(cid, order.id)
        if order is not None:
            del self._ambiguous[cid]
            self._apply(cid, order)
            return None
        if request == "submit" and cid in self._live:
            # Never accepted: the same id can be sent again without risk of a second order.
            return self._resend(cid)
        del self._ambiguous[cid]
        if request == "cancel":
            self.store.update_order(cid, status="void", reason="unknown at the exchange")
            self._set_status(cid, "void")
        return None

    def _settle_late(
        self, cid: str, order: ExchangeOrder | None
    ) -> Coroutine[Any, Any, None] | None:
        """An order voided at reconciliation: cancel it if it arrived late, else wait it out."""
        if order is not None:
            del self._ambiguous[cid]
            self._late.pop(cid, None)
            self.store.update_order(cid, status=order.status, order_id=order.id)
            live = self._live.get(cid)
            if live is not None:
                live.order_id = order.id
                live.status = order.status
            if order.status == "open":
                _log.warning("%s arrived at the exchange after it was voided: cancelling it", cid)
                return self._cancel(cid, order.id)
            self._set_status(cid, order.status)
            return None
        if self._clock.monotonic() >= self._late.get(cid, 0.0):
            del self._ambiguous[cid]
            self._late.pop(cid, None)
            self._set_status(cid, "void")
        return None

    @staticmethod
    async def _bounded(limit: asyncio.Semaphore, action: Awaitable[None]) -> None:
        async with limit:
            await action

    async def _resend(self, cid: str) -> None:
        live = self._live.get(cid)
        if live is None:
            self._ambiguous.pop(cid, None)
            return
        self.resent += 1
        try:
            order = await self.client.submit(cid, live.request)
        except OrderRefusedError as exc:
            self._ambiguous.pop(cid, None)
            self.orders_refused += 1
            self.store.update_order(cid, status="rejected", reason=str(exc))
            self._set_status(cid, "rejected")
        except AmbiguousOrderError:
            return  # still unknown: asked again next round
        else:
            self._ambiguous.pop(cid, None)
            self._apply(cid, order)

    @property
    def ambiguous(self) -> frozenset[str]:
        """Client ids whose outcome (of a submit or a cancel) is not yet known."""
        return frozenset(self._ambiguous)

    # ------------------------------------------------------------------ fills

    async def _fill_loop(self) -> None:
        while True:
            try:
                await self.poll_fills()
            except _LOOKUP_ERRORS as exc:
                _log.info("fill poll failed: %r", exc)
            await self._clock.asleep(self.config.fill_poll_interval)

    async def poll_fills(self) -> int:
        """Record new fills of this engine's orders and deliver them; returns how many."""
        fills = await self.client.fills()
        new = 0
        for fill in fills[self._fill_cursor :]:
            if self.store.has_fill(fill.id):
                continue
            live = self._live.get(fill.client_order_id)
            strategy = live.strategy if live is not None else None
            if strategy is None:
                known = self.store.order(fill.client_order_id)
                if known is None:
                    continue  # another client's order
                strategy = known.strategy
            side = Side(fill.side)
            if not self.store.record_fill(
                fill_id=fill.id,
                cid=fill.client_order_id,
                strategy=strategy,
                symbol=fill.symbol,
                side=side,
                qty=fill.qty,
                price=fill.price,
                ts=fill.ts,
                order_status="filled",
            ):
                continue
            new += 1
            self.orders_filled += 1
            key = (strategy, fill.symbol)
            self._positions[key] = self._positions.get(key, 0.0) + fill.qty * side.sign
            if live is not None:
                live.filled += fill.qty
                self._set_status(fill.client_order_id, "filled")
            runner = self.runners.get(strategy)
            if runner is not None and runner.running:
                self._deliver_fill(
                    runner,
                    Fill(
                        order_id=fill.order_id,
                        client_order_id=fill.client_order_id,
                        symbol=fill.symbol,
                        side=side,
                        qty=fill.qty,
                        price=fill.price,
                        fee=0.0,
                        ts=fill.ts,
                    ),
                )
        self._fill_cursor = len(fills)
        return new

    def _deliver_fill(self, runner: StrategyRunner, event: Fill) -> None:
        self._callback(runner, runner.strategy.on_fill, event)

    def _callback(
        self, runner: StrategyRunner, callback: Callable[[Any, Any], object], event: object
    ) -> None:
        """Run one strategy callback; commit the orders it decided with its state, or, if it
        raised, drop them and recover the strategy."""
        runner.in_callback = True
        try:
            callback(event, runner.ctx)
        except Exception as exc:
            runner.in_callback = False
            self.drop_intents(runner)
            self._fail(runner, exc)
        else:
            runner.in_callback = False
            runner.dirty = True
            if runner.intents:
                self.commit_intents(runner)

    # ------------------------------------------------------------------ isolation

    def _fail(self, runner: StrategyRunner, exc: Exception) -> None:
        runner.record_failure(exc, self._clock.monotonic())
        _log.warning("strategy %s raised %r; recovering", runner.name, exc)
        self._spawn(self._recover(runner, exc), f"recover {runner.name}")

    async def _recover(self, runner: StrategyRunner, exc: Exception) -> None:
        if self._manager is not None:
            context = ErrorContext.from_exception(
                exc,
                component=runner.name,
                error_type=ErrorType.STRATEGY_EXECUTION_ERROR,
                capture_state=False,
                clock=self._clock,
            )
            outcome = await self._manager.handle(context)
            if not outcome.success and runner.enabled and not runner.running:
                runner.disable(f"recovery failed: {outcome.error}")
            return
        try:
            await runner.restart()
        except StrategyFailingError as failing:
            runner.disable(str(failing))
        except Exception as again:
            runner.record_failure(again, self._clock.monotonic())
            runner.disable(f"restart failed: {type(again).__name__}: {again}")

    # ------------------------------------------------------------------ state

    async def _state_loop(self) -> None:
        while True:
            await self._clock.asleep(self.config.state_interval)
            self._flush_states(force=False)

    def _flush_states(self, *, force: bool) -> None:
        for runner in self.runners.values():
            if runner.running and (runner.dirty or force):
                try:
                    state = runner.strategy.state()
                except Exception as exc:
                    self._fail(runner, exc)
                    continue
                self.store.save_state(runner.name, state)
                runner.dirty = False

    def persist_states(self) -> None:
        """Persist every running strategy's state now."""
        self._flush_states(force=True)

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
        )


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
