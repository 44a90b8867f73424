"""The engine's state, shared by its layers, and what every layer needs: owned tasks, the audit
log, a strategy's isolation (a failing callback stops that strategy alone, then recovers it)
and the persistence of the strategies' states.

The engine is built in layers, one concept per module, each a class on top of the one below:
this state, order intents and their lifecycle (:mod:`._engine_orders`: risk check, write-ahead,
send, cancel, fills), the resolver of ambiguous outcomes (:mod:`._engine_resolve`), the
security hold and kill switch (:mod:`._engine_security`), and the facade
(:mod:`._engine`: start, stop, tick dispatch, status). Inheritance, not delegation: a call
on the tick path costs what it cost when the engine was one class."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import aiohttp

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import ErrorContext, ErrorRecoveryManager, ErrorType

from ._engine_config import EngineConfig, _Live
from ._orders import OrderApiError, OrderClient
from ._positions import PositionStore
from ._reconcile import ReconciliationItem
from ._risk import RiskEngine, RiskRejection
from ._runner import EnginePort, StrategyFactory, StrategyFailingError, StrategyRunner
from ._security import SecurityGuard

if TYPE_CHECKING:
    from strategylab.fault_tolerance import AuditSink

_log = logging.getLogger("strategylab.market.engine")
_LOOKUP_ERRORS = (OrderApiError, aiohttp.ClientError, TimeoutError, CircuitOpenError)
_FINAL = frozenset({"filled", "cancelled", "rejected", "void"})

EXIT_KILL_SWITCH: Final = 3
"""The exit code of a trader whose kill switch was pulled (the node's EXIT_EMERGENCY too)."""
_CANCEL_ROUNDS = 3
"""Kill switch: list and cancel, list and cancel, list to confirm (bounded by a deadline)."""


class _EngineBase:
    """The engine's state (see :class:`~strategylab.trading.StrategyEngine`)."""

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
                # The layers above this one give the port's methods: ``self`` is a
                # StrategyEngine.
                cast("EnginePort", self),
                factory,
                max_failures=self.config.max_failures,
                failure_window=self.config.failure_window,
            )
            if runner.name in self.runners:
                raise ConfigurationError(
                    "--strategy",
                    runner.name,
                    "two strategies share this name; give each its own NAME= (NAME=STRATEGY)",
                )
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

    if TYPE_CHECKING:

        async def _shutdown(self) -> tuple[int, list[str], bool]:
            """The kill switch's emergency shutdown (:mod:`._engine_security`)."""
            ...

    @property
    def name(self) -> str:
        """The component name."""
        return self._name

    # ------------------------------------------------------------------ orders

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
