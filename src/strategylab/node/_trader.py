"""The trader process (``strategylab trade``): one strategy engine fed live from the exchange.

``python -m strategylab.node._trader --exchange-url http://127.0.0.1:P --db PATH --strategy
NAME=module:Class --symbols A,B`` prints JSON lines: ``reconciled`` (the items and the ``seconds``
it took), ``trading``, a ``status`` every ``--status-interval`` seconds, ``security_violation``
for each forged frame, and ``stopped`` on SIGTERM (exit 0), or ``kill_switch`` when forged frames
crossed the threshold (exit :data:`~strategylab.trading.EXIT_KILL_SWITCH`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import inspect
import json
import logging
import math
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from strategylab._files import UnsafePathError, make_private_dir
from strategylab._logging import configure_logging, escape
from strategylab._secrets import (
    AUDIT_KEY,
    SIGNING_KEY,
    add_secret_file_option,
    add_secret_options,
    resolve_secret,
)
from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import (
    AuditIntegrityError,
    AuditLog,
    ErrorRecoveryManager,
    load_audit_key,
)
from strategylab.market import Feed, FeedConfig, StoreCorruptedError, parse_signing_key
from strategylab.strategy import Strategy
from strategylab.trading import (
    EXIT_KILL_SWITCH,
    EngineConfig,
    OrderApiError,
    OrderClient,
    RiskEngine,
    RiskLimits,
    StrategyEngine,
    StrategyFactory,
)

__all__ = ["load_factory", "main", "run_engine"]

_log = logging.getLogger("strategylab.market.engine")


def load_factory(spec: str, symbols: tuple[str, ...], params: dict[str, Any]) -> StrategyFactory:
    """``NAME=module:Class`` → a factory calling ``Class(NAME, symbols, **params)`` (or
    ``Class(symbols[0], name=NAME, **params)`` for a class whose first parameter is ``symbol``,
    like the built-in strategies)."""
    name, sep, target = spec.partition("=")
    module_name, colon, attr = target.partition(":")
    if not sep or not colon or not name or not module_name or not attr:
        raise ConfigurationError("strategy", spec, "must look like NAME=module:Class")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigurationError("strategy", spec, f"{target} is not a Strategy subclass")

    # The built-ins take ``(symbol, ..., name=)``; the engine's examples ``(name, symbols, ...)``.
    first = next(iter(inspect.signature(cls).parameters), "")
    make: Callable[..., Strategy] = cls

    def factory() -> Strategy:
        if first == "symbol":
            return make(symbols[0], name=name, **params)
        return make(name, symbols, **params)

    return factory


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="seconds")


def _emit(event: str, **data: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def run_engine(
    engine: StrategyEngine,
    ws_url: str,
    *,
    stop: asyncio.Event | None = None,
    status_interval: float = 1.0,
    signing_key: bytes | None = None,
    max_violations: int = 5,
    violation_window: float = 60.0,
) -> int:
    """Start ``engine`` (reconcile), feed it from ``ws_url`` until ``stop``, SIGTERM/SIGINT or the
    kill switch. Returns the exit code: 0, or :data:`EXIT_KILL_SWITCH`.

    With ``signing_key``, market data whose HMAC does not verify never reaches a strategy: each
    forged frame holds trading (:meth:`StrategyEngine.on_security_violation`), and
    ``max_violations`` of them within ``violation_window`` seconds pull the kill switch.
    """
    done = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        await engine.start()
    except BaseException:
        await engine.aclose()  # the client session and the book, opened before reconciling
        raise
    _emit(
        "reconciled",
        items=[i.to_dict() for i in engine.reconciliation],
        seconds=round(engine.reconcile_seconds, 6),
    )
    try:
        feed = _guarded_feed(engine, ws_url, signing_key, max_violations, violation_window)
    except BaseException:
        await engine.aclose()
        raise
    killed = engine.killed
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, done.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                break
        await feed.start()
        _emit("trading", pid=os.getpid())
        while not done.is_set() and not killed.is_set():
            _emit("status", **engine.status().to_dict())
            waiters = (asyncio.ensure_future(done.wait()), asyncio.ensure_future(killed.wait()))
            try:
                await asyncio.wait(waiters, timeout=status_interval, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waiters:
                    waiter.cancel()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await feed.stop()
        await engine.aclose()
    if killed.is_set():
        _emit(
            "kill_switch",
            **engine.kill_report,
            exit_code=EXIT_KILL_SWITCH,
            status=engine.status().to_dict(),
        )
        return EXIT_KILL_SWITCH
    _emit("stopped", **engine.status().to_dict())
    return 0


def _guarded_feed(
    engine: StrategyEngine,
    ws_url: str,
    signing_key: bytes | None,
    max_violations: int,
    violation_window: float,
) -> Feed:
    """The engine's feed: each forged frame holds trading (and is printed); past the threshold,
    the kill switch stops the feed, then runs the engine's emergency shutdown."""

    def on_violation(error: BaseException) -> None:
        engine.on_security_violation(error)
        _emit(
            "security_violation",
            reason=str(error),
            violations=engine.security_violations,
            risk_reason=engine.risk.reason,
        )

    async def kill_switch(error: BaseException) -> None:
        # Trading is already held (every forged frame holds it): first stop taking data from a
        # link that is being forged, then the emergency shutdown. The feed runs this in its own
        # task, which its stop leaves running.
        await feed.stop()
        await engine.kill_switch(error)

    config = FeedConfig(
        urls=(ws_url,),
        symbols=tuple(engine._by_symbol),  # noqa: SLF001 - our own engine
        signing_key=signing_key,
        max_violations=max_violations,
        violation_window=violation_window,
    )
    feed = Feed(config, engine, kill_switch=kill_switch, on_violation=on_violation)
    engine.feed_health = feed.health
    return feed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strategylab trade", description="Trade strategies live.")
    p.add_argument("--exchange-url", required=True, help="http://HOST:PORT of the exchange")
    p.add_argument("--db", type=Path, required=True, help="the engine's SQLite book")
    p.add_argument("--strategy", action="append", required=True, help="NAME=module:Class")
    p.add_argument("--symbols", required=True, help="comma-separated")
    p.add_argument("--params", default="{}", help="JSON keyword arguments for every strategy")
    p.add_argument("--status-interval", type=float, default=1.0)
    p.add_argument(
        "--state-interval",
        type=float,
        default=1.0,
        help="seconds between saves of strategy state changed without an order",
    )
    p.add_argument(
        "--max-retry-after",
        type=float,
        default=30.0,
        help="the longest 429 Retry-After wait honoured, seconds",
    )
    p.add_argument("--max-order-notional", type=float, default=1_000_000.0)
    p.add_argument("--max-position", type=float, default=1_000.0)
    add_secret_options(p, SIGNING_KEY, "as given to the exchange; none of them = unsigned")
    add_secret_file_option(p, AUDIT_KEY)
    p.add_argument(
        "--feed-url",
        default=None,
        help="ws://HOST:PORT/ws of the market data (default: the exchange's /ws)",
    )
    p.add_argument(
        "--max-violations",
        type=int,
        default=5,
        help="forged frames within --violation-window that pull the kill switch (default 5)",
    )
    p.add_argument(
        "--violation-window",
        type=float,
        default=60.0,
        help="seconds over which forged frames are counted (default 60)",
    )
    p.add_argument(
        "--security-hold",
        type=float,
        default=None,
        help="seconds without a forged frame before trading may resume "
        "(default: --violation-window)",
    )
    return p


def _seconds(flag: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(flag, value, "must be a finite number of seconds > 0")
    return value


def _book_failure(exc: Exception, db: Path) -> str:
    """The one line for a damaged book or audit log."""
    if isinstance(exc, AuditIntegrityError):
        return f"audit log damaged: {exc}"
    if isinstance(exc, sqlite3.Error):
        return f"{db}: {exc}"
    return str(exc)


def _check_db(db: Path) -> None:
    """``--db`` must name a file (not ``.``, ``/``, or an existing directory)."""
    if not db.name or db.name in {".", ".."} or db.is_dir():
        raise ConfigurationError("--db", str(db), "must name a database file, not a directory")


def _factories(args: argparse.Namespace) -> list[StrategyFactory]:
    """The ``--strategy`` factories, each built once so that bad ``--params`` fail at start,
    not at the first tick; :class:`ConfigurationError` names the flag."""
    symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    if not symbols:
        raise ConfigurationError("--symbols", args.symbols, "must name at least one symbol")
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise ConfigurationError("--params", args.params, f"not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigurationError("--params", args.params, "must be a JSON object of arguments")
    factories = []
    for spec in args.strategy:
        try:
            factory = load_factory(spec, symbols, params)
        except (ConfigurationError, ImportError, AttributeError) as exc:
            reason = exc.reason if isinstance(exc, ConfigurationError) else str(exc)
            raise ConfigurationError("--strategy", spec, reason) from None
        try:
            factory()
        except (TypeError, ValueError) as exc:
            raise ConfigurationError("--params", args.params, f"{spec}: {exc}") from None
        factories.append(factory)
    return factories


def _urls(exchange_url: str, feed_url: str | None) -> tuple[str, str]:
    """The exchange's HTTP base and the feed's WebSocket URL (default: the exchange's ``/ws``)."""
    if not exchange_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            "--exchange-url",
            exchange_url,
            "must start with http:// or https:// (the feed's ws:// URL is --feed-url)",
        )
    base = exchange_url.rstrip("/")
    if feed_url is None:
        return base, base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
    if not feed_url.startswith(("ws://", "wss://")):
        raise ConfigurationError("--feed-url", feed_url, "must start with ws:// or wss://")
    return base, feed_url


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 after a clean shutdown, 1 when the exchange cannot be reached to
    reconcile or the book is damaged, 2 for bad options or a file planted where a book file
    belongs, :data:`EXIT_KILL_SWITCH` when the kill switch was pulled."""
    args = _parser().parse_args(argv)
    configure_logging(logging.WARNING, sys.stderr)
    try:
        factories = _factories(args)
        signing_key = parse_signing_key(resolve_secret(args, SIGNING_KEY, prog="strategylab trade"))
        audit_key = load_audit_key(args.audit_key_file)
        limits = RiskLimits(
            max_order_notional=args.max_order_notional, max_position=args.max_position
        )
        max_retry_after = _seconds("--max-retry-after", args.max_retry_after)
        _seconds("--status-interval", args.status_interval)
        _seconds("--state-interval", args.state_interval)
        if args.max_violations < 1:
            raise ConfigurationError(  # noqa: TRY301 - reported with the other bad options
                "--max-violations", args.max_violations, "must be an integer >= 1"
            )
        window = _seconds("--violation-window", args.violation_window)
        hold = window if args.security_hold is None else args.security_hold
        config = EngineConfig(
            state_interval=args.state_interval,
            security_hold=_seconds("--security-hold", hold),
        )
        _check_db(args.db)
        base, ws_url = _urls(args.exchange_url, args.feed_url)
    except ConfigurationError as exc:
        named = exc.as_option()  # the flag the user typed, not the field of RiskLimits
        sys.stderr.write(f"strategylab trade: error: {escape(str(named))}\n")
        return 2
    except ValueError as exc:  # a malformed signing key or audit key file
        sys.stderr.write(f"strategylab trade: error: {escape(str(exc))}\n")
        return 2

    async def run() -> int:
        make_private_dir(args.db.parent)  # 0700, every missing parent too; never a symlink
        # Keyed and anchored as the node's: the head goes to a second file and to stdout.
        with AuditLog(
            args.db.with_suffix(".audit.jsonl"),
            key=audit_key,
            anchor=args.db.with_suffix(".audit.anchor.jsonl"),
            on_anchor=lambda seq, digest: _emit("audit_anchor", seq=seq, hash=digest),
        ) as audit:
            manager = ErrorRecoveryManager(audit=audit)
            engine = StrategyEngine(
                factories,
                client=OrderClient(base, manager=manager, max_retry_after=max_retry_after),
                db=args.db,
                risk=RiskEngine(limits),
                manager=manager,
                config=config,
                audit=audit,
            )
            return await run_engine(
                engine,
                ws_url,
                status_interval=args.status_interval,
                signing_key=signing_key,
                max_violations=args.max_violations,
                violation_window=window,
            )

    try:
        return asyncio.run(run())
    except UnsafePathError as exc:  # something planted where a book file belongs: as the node
        sys.stderr.write(f"strategylab trade: error: {escape(str(exc))}\n")
        return 2
    except (StoreCorruptedError, AuditIntegrityError, sqlite3.Error) as exc:
        sys.stderr.write(f"strategylab trade: error: {escape(_book_failure(exc, args.db))}\n")
        return 1
    except (OSError, aiohttp.ClientError, OrderApiError, TimeoutError, CircuitOpenError) as exc:
        # Reconciliation must reach the exchange before anything trades.
        sys.stderr.write(
            f"strategylab trade: error: cannot reconcile with {base}: {escape(str(exc))}\n"
        )
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
