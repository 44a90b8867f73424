"""The ``strategylab exchange`` process: :func:`run_exchange` serves an :class:`Exchange` until a
signal, :func:`run_exchange_process` is the process entry (logging, the ``listening`` line, exit
codes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from strategylab._files import UnsafePathError, refuse_unsafe_dirs
from strategylab._layout import DataLayout
from strategylab._logging import configure_logging, escape
from strategylab.clock import SYSTEM_CLOCK, Clock

from ._server import Exchange

if TYPE_CHECKING:
    from strategylab.fault_tolerance import ErrorRecoveryManager

    from ._config import ExchangeConfig

__all__ = ["print_listening", "run_exchange", "run_exchange_process"]

_PROG: Final = "strategylab exchange"


async def run_exchange(
    config: ExchangeConfig,
    *,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock = SYSTEM_CLOCK,
    manager: ErrorRecoveryManager | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives, then shut down cleanly.

    ``ready(port)`` is called once the server is bound. Signal handlers are installed only when
    running in the main thread.
    """
    exchange = Exchange(config, clock=clock, manager=manager)
    await exchange.start()
    done = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        # Installed before the listening line: a signal sent as soon as it is read is a clean
        # stop (exit 0), and they stay installed until the exchange has stopped.
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, done.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                break  # not the main thread: the caller owns ``stop``
        if ready is not None:
            ready(exchange.port)
        await done.wait()
    finally:
        try:
            await exchange.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


def print_listening(port: int) -> None:
    """The one line a parent process reads to learn the port."""
    sys.stdout.write(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


def run_exchange_process(config: ExchangeConfig, *, log_level: int = logging.WARNING) -> int:
    """Run ``config`` as the ``strategylab exchange`` process: log to stderr and to
    ``data_dir/logs/exchange.log``, print the ``listening`` line, serve until SIGTERM or SIGINT.

    Returns the exit code: 0 after a clean shutdown, 1 for an operational failure (the port
    taken), 2 for a symlink or other file planted in the data directory. Errors are one line.
    """
    try:
        log_file = DataLayout(config.data_dir).log_file("exchange")
        refuse_unsafe_dirs(config.data_dir, log_file.parent)  # before the log is created there
        configure_logging(log_level, sys.stderr, log_file=log_file)
        asyncio.run(run_exchange(config, ready=print_listening))
    except UnsafePathError as exc:
        # A symlink planted in the data directory: a usage problem, as for the node.
        sys.stderr.write(f"{_PROG}: error: {escape(str(exc))}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"{_PROG}: error: {escape(str(exc))}\n")
        return 1
    return 0
