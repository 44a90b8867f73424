"""One strategy inside the live engine: its context, its failures, its restart and its disabling.

A :class:`StrategyRunner` is a fault-tolerance ``Component`` named after the strategy, so a
``STRATEGY_EXECUTION_ERROR`` reported for it is recovered by the manager's chain: COMPONENT_RESTART
(:meth:`StrategyRunner.restart`: a fresh instance from the factory, ``restore`` of the persisted
state, ``on_start``) and, when the strategy failed ``max_failures`` times within
``failure_window`` seconds, GRACEFUL_DEGRADATION (:meth:`StrategyRunner.degrade`: disabled).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from strategylab.errors import StrategyLabError
from strategylab.strategy import OrderRequest, Strategy

from ._positions import PositionStore

__all__ = [
    "EnginePort",
    "StrategyFactory",
    "StrategyFailingError",
    "StrategyRunner",
    "StrategyStatus",
]


class EnginePort(Protocol):
    """What a runner needs from its engine (:class:`~strategylab.trading.StrategyEngine` is one).

    Naming only this, instead of the engine class, keeps the runner free of an import cycle.
    """

    @property
    def store(self) -> PositionStore: ...

    @property
    def now_ns(self) -> int: ...

    def working_position(self, strategy: str, symbol: str) -> float: ...

    def submit_for(self, runner: StrategyRunner, request: OrderRequest) -> str: ...

    def cancel_all_for(self, strategy: str, symbol: str | None) -> None: ...

    def commit_intents(self, runner: StrategyRunner) -> bool: ...

    def drop_intents(self, runner: StrategyRunner) -> None: ...


_log = logging.getLogger("strategylab.market.engine")

StrategyFactory = Callable[[], Strategy]
"""Makes a fresh strategy instance (same name and symbols every time)."""


class StrategyFailingError(StrategyLabError):
    """A strategy failed too often to be restarted again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyStatus:
    """One strategy as :meth:`StrategyEngine.status` shows it."""

    name: str
    symbols: tuple[str, ...]
    running: bool
    enabled: bool
    failures: int
    restarts: int
    last_error: str | None
    disabled_reason: str | None


class _Context:
    """The :class:`~strategylab.strategy._strategy.StrategyContext` of one runner."""

    __slots__ = ("_engine", "_runner")

    def __init__(self, engine: EnginePort, runner: StrategyRunner) -> None:
        self._engine = engine
        self._runner = runner

    @property
    def now_ns(self) -> int:
        return self._engine.now_ns

    def position(self, symbol: str) -> float:
        return self._engine.working_position(self._runner.name, symbol)

    def submit(self, request: OrderRequest) -> str:
        return self._engine.submit_for(self._runner, request)

    def cancel_all(self, symbol: str | None = None) -> None:
        self._engine.cancel_all_for(self._runner.name, symbol)


class StrategyRunner:
    """Runs one strategy for the engine (see the module docstring)."""

    def __init__(
        self,
        engine: EnginePort,
        factory: StrategyFactory,
        *,
        max_failures: int,
        failure_window: float,
    ) -> None:
        self._engine = engine
        self._factory = factory
        self.strategy: Strategy = factory()
        self.ctx = _Context(engine, self)
        self._name = self.strategy.name
        self.symbols = self.strategy.symbols
        self.running = False
        self.enabled = True
        self.disabled_reason: str | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.restarts = 0
        self.dirty = False
        self.in_callback = False
        """True while a callback of the strategy runs: its orders wait for it to return."""
        self.intents: list[tuple[str, OrderRequest]] = []
        """Orders decided in the running callback: (client order id, request)."""
        self.next_order = 0
        """The number of the next client order id (0: not read from the book yet)."""
        self._max_failures = max_failures
        self._window = failure_window
        self._recent: deque[float] = deque()

    # ------------------------------------------------------------------ Component

    @property
    def name(self) -> str:
        """The strategy's name."""
        return self._name

    async def start(self) -> None:
        """Start the current instance with its persisted state."""
        self.launch(self.strategy)

    async def stop(self) -> None:
        """Stop delivering ticks and fills."""
        self.running = False

    async def health(self) -> bool:
        """True while running, or while deliberately disabled (degraded, stable, not trading)."""
        return self.running or not self.enabled

    async def restart(self) -> None:
        """A fresh instance, restored from the persisted state and started.

        Raises :class:`StrategyFailingError` instead when the failure budget is spent, so the
        manager escalates to :meth:`degrade`.
        """
        if not self.enabled:
            return
        if self.over_budget():
            raise StrategyFailingError(
                f"{self._name}: {len(self._recent)} failures within {self._window:g}s "
                f"(max_failures {self._max_failures}); last: {self.last_error}"
            )
        self.launch(self._factory())
        self.restarts += 1
        _log.warning("strategy %s restarted (restart %d)", self._name, self.restarts)

    async def degrade(self, level: int) -> bool:
        """Disable the strategy (every level means the same: stop trading it)."""
        self.disable(f"degraded at level {level} after {self.failures} failure(s)")
        return True

    async def restore(self) -> bool:
        """Re-enable a disabled strategy with a fresh instance and its persisted state."""
        self.enabled = True
        self.disabled_reason = None
        self._recent.clear()
        self._engine.store.set_strategy_health(self._name, failures=self.failures, enabled=True)
        self.launch(self._factory())
        return True

    # ------------------------------------------------------------------ engine side

    def launch(self, instance: Strategy) -> None:
        """Restore ``instance`` from the store, call ``on_start``, and deliver to it from now on."""
        if instance.name != self._name:
            raise StrategyLabError(
                f"factory made a strategy named {instance.name!r}, expected {self._name!r}"
            )
        self.running = False
        state = self._engine.store.load_state(self._name)
        if state:
            instance.restore(state)
        self.strategy = instance
        self.in_callback = True
        try:
            instance.on_start(self.ctx)
        except BaseException:
            self._engine.drop_intents(self)
            raise
        finally:
            self.in_callback = False
        self.running = True
        if self.intents:
            self._engine.commit_intents(self)

    def record_failure(self, exc: BaseException, now: float) -> None:
        """Count a failure (the caller has stopped delivering to this runner)."""
        self.running = False
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self._window:
            self._recent.popleft()
        self._engine.store.set_strategy_health(self._name, failures=self.failures, enabled=True)

    def over_budget(self) -> bool:
        """Whether the last ``failure_window`` seconds hold ``max_failures`` failures."""
        return len(self._recent) >= self._max_failures

    def disable(self, reason: str) -> None:
        """Stop trading this strategy for good (until :meth:`restore`); says so loudly."""
        self.running = False
        if not self.enabled:
            return
        self.enabled = False
        self.disabled_reason = reason
        self._engine.store.set_strategy_health(self._name, failures=self.failures, enabled=False)
        _log.error("strategy %s DISABLED: %s; last error: %s", self._name, reason, self.last_error)
        self._engine.cancel_all_for(self._name, None)

    def status(self) -> StrategyStatus:
        """A frozen snapshot."""
        return StrategyStatus(
            name=self._name,
            symbols=self.symbols,
            running=self.running,
            enabled=self.enabled,
            failures=self.failures,
            restarts=self.restarts,
            last_error=self.last_error,
            disabled_reason=self.disabled_reason,
        )
