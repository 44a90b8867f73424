"""``run_backtest(spec)``: one backtest as a plain function of a picklable record.

This is the optimiser's unit of work: a worker process receives a :class:`BacktestSpec`, reads
the ticks itself, read-only, runs the event-driven engine (with checkpoints, if asked) or the
vectorised path, and returns the :class:`BacktestResult` (also picklable).

Where the ticks come from: for an SQLite file, by default its columnar snapshot
(:mod:`._columnar`: synced first, then memory-mapped; the SQLite read where no snapshot can be
kept, e.g. a read-only directory); with ``columnar=False`` straight from SQLite; for a
``postgresql://`` URL (its ``pg_table`` in ``pg_schema``) as numpy columns in a read-only snapshot
(:func:`~._pg_data.load_postgres_arrays`), or, with ``shared_ticks``, from the memory-mapped copy
of one such read that the optimiser's parent made for all its jobs. The result is the same
(``==``) whichever way the ticks were read.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from strategylab.market import is_postgres_url
from strategylab.strategy import BUILTIN_STRATEGIES, JSONValue, Strategy, make_strategy

from ._backtest import BacktestConfig, BacktestEngine
from ._columnar import load_research_arrays
from ._data import ArraySource, TickArrays
from ._result import BacktestResult

__all__ = ["BacktestSpec", "StrategyName", "build_strategy", "run_backtest"]

StrategyName = Literal["ma_crossover", "mean_reversion"]
"""The built-in strategies' names (``BacktestSpec.strategy`` may also be ``module:Class``)."""


def _strategy_class(name: str) -> type[Strategy]:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"strategy={name!r}: expected one of {sorted(BUILTIN_STRATEGIES)} or module:Class"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise ValueError(f"strategy={name!r}: cannot import it: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        # ValueError, as every other refusal of the name: callers report them as bad input.
        raise ValueError(f"strategy={name!r}: not a Strategy subclass")  # noqa: TRY004
    return cls


def build_strategy(name: str, symbol: str, parameters: Mapping[str, JSONValue]) -> Strategy:
    """The strategy ``name`` on ``symbol`` with ``parameters`` (a ``"symbol"`` key is ignored).

    ``name`` is a built-in (``ma_crossover``, ``mean_reversion``) or ``module:Class``, a
    :class:`~strategylab.strategy.Strategy` subclass, built as ``trade`` builds it: a class whose
    first parameter is ``symbol`` (as the built-ins) as ``Class(symbol, **parameters)``, any
    other as ``Class("Class", (symbol,), **parameters)``. Raises ``ValueError`` naming the
    strategy or the parameters.
    """
    if ":" not in name:
        return make_strategy(name, symbol, parameters)
    cls: Callable[..., Strategy] = _strategy_class(name)
    params = {k: v for k, v in parameters.items() if k != "symbol"}
    first = next(iter(inspect.signature(cls).parameters), "")
    try:
        if first == "symbol":
            return cls(symbol, **params)
        return cls(name.partition(":")[2], (symbol,), **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameters={dict(parameters)!r} for {name!r}: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestSpec:
    """Everything one backtest needs, as plain values (picklable, for worker processes)."""

    db_path: str
    """The tick store: an SQLite file, or a ``postgresql://`` / ``postgres://`` URL."""
    strategy: StrategyName | str
    """A built-in strategy's name, or ``module:Class`` (see :func:`build_strategy`)."""
    symbol: str
    parameters: Mapping[str, JSONValue] = field(default_factory=dict)
    from_seq: int = 1
    to_seq: int | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    fee_bps: float = 0.0
    slippage_bps: float = 0.0
    initial_cash: float = 0.0
    sample_every: int = 1_000
    vectorized: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1_000_000
    columnar: bool = True
    """Read an SQLite store through its columnar snapshot (False: straight from SQLite)."""
    pinned: bool = False
    """The snapshot was synced by the caller (:func:`~strategylab.research.sync_columnar`, as the
    optimiser's parent does once for all its jobs): read it as it stands, without syncing it
    again, so that every job reads the same ticks from the same mapped files. A missing or invalid
    snapshot is synced after all."""
    pg_table: str = "ticks"
    """A PostgreSQL store's tick table (as :class:`~strategylab.market.PostgresTickStore`'s
    ``table``); an SQLite store's is always ``ticks``."""
    pg_schema: str | None = None
    """A PostgreSQL store's schema (None: the connection's ``search_path``)."""
    shared_ticks: str | None = None
    """A directory of :func:`~._pg_data.share_arrays` holding this spec's ticks, read once for
    every job by the optimiser's parent (:func:`~strategylab.research.shared_backtest_read`):
    the job maps it instead of querying the server. Missing: the job reads the server."""

    def __post_init__(self) -> None:
        if self.strategy not in BUILTIN_STRATEGIES and ":" not in self.strategy:
            raise ValueError(
                f"strategy={self.strategy!r}: expected one of {sorted(BUILTIN_STRATEGIES)} "
                "or module:Class"
            )
        if not self.symbol:
            raise ValueError("symbol='': a backtest needs a symbol")
        object.__setattr__(self, "parameters", dict(self.parameters))
        self.config()  # validates the range, costs and sampling
        if not self.pg_table.strip():
            raise ValueError(f"pg_table={self.pg_table!r}: must not be empty")
        if self.pg_schema is not None and not self.pg_schema.strip():
            raise ValueError(f"pg_schema={self.pg_schema!r}: must not be empty (None: search_path)")
        if not is_postgres_url(self.db_path) and (
            self.pg_table != "ticks" or self.pg_schema is not None
        ):
            raise ValueError(
                f"pg_table={self.pg_table!r}, pg_schema={self.pg_schema!r}: only a PostgreSQL "
                "store has a table and a schema to choose"
            )

    def config(self) -> BacktestConfig:
        """The engine configuration this spec stands for."""
        return BacktestConfig(
            from_seq=self.from_seq,
            to_seq=self.to_seq,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            fee_bps=self.fee_bps,
            slippage_bps=self.slippage_bps,
            initial_cash=self.initial_cash,
            sample_every=self.sample_every,
            checkpoint_every=self.checkpoint_every,
            checkpoint_dir=None if self.checkpoint_dir is None else Path(self.checkpoint_dir),
        )


def run_backtest(spec: BacktestSpec) -> BacktestResult:
    """Run ``spec`` to completion in this process (blocking) and return its result.

    The store is only read. Raises ``FileNotFoundError`` for a missing SQLite file,
    :class:`~strategylab.market.StoreUnusableError` /
    :class:`~strategylab.market.StoreUnreachableError` for a store that cannot be read, and
    :class:`~strategylab.research.BacktestError` for a run that failed.
    """
    strategy = build_strategy(spec.strategy, spec.symbol, spec.parameters)
    if is_postgres_url(spec.db_path):
        ticks = _postgres_ticks(spec)
    else:
        if not Path(spec.db_path).exists():
            raise FileNotFoundError(f"db_path={spec.db_path!r}: no such tick database")
        ticks, _ = load_research_arrays(
            spec.db_path,
            spec.symbol,
            spec.from_seq,
            spec.to_seq,
            columnar=spec.columnar,
            sync=not spec.pinned,
        )
    if spec.vectorized:
        from ._vectorized import run_vectorized  # noqa: PLC0415 - numpy path only when asked

        return run_vectorized(strategy, ticks, spec.config())
    engine = BacktestEngine(strategy, ArraySource(ticks), spec.config())
    return engine.run_blocking()


def _postgres_ticks(spec: BacktestSpec) -> TickArrays:
    from ._pg_data import load_postgres_arrays, load_shared_arrays  # noqa: PLC0415 - psycopg

    if spec.shared_ticks is not None:
        try:
            return load_shared_arrays(spec.shared_ticks, spec.symbol, spec.from_seq, spec.to_seq)
        except FileNotFoundError:
            pass  # the parent is gone or done with it: read the server
    return load_postgres_arrays(
        spec.db_path,
        spec.symbol,
        spec.from_seq,
        spec.to_seq,
        table=spec.pg_table,
        schema=spec.pg_schema,
    )
