"""The ``strategylab node`` process: :func:`run_node` runs a :class:`~._node.Node` and prints its
status lines, :func:`run_node_process` is the process entry (validation, logging, exit codes).

As a process (``strategylab node --exchange-url http://127.0.0.1:P --data-dir D --symbols A,B``,
run by :func:`run_node_process`) it prints one JSON ``status`` line every ``--status-interval``
seconds and, on SIGTERM or SIGINT, drains the queue for at most ``--drain-timeout`` seconds
(default 1; ticks still queued then were never acknowledged and are replayed by the next run),
prints a ``stopped`` line and exits 0: SIGTERM stops a node within 2 s whatever state its store
is in.

Exit codes: 0 stopped on request; 1 operational failure at start (an ``OSError``, a damaged
``snapshot.json`` after an unclean shutdown, a status port that cannot be bound); 2 a bad option,
including a store that can never work (:mod:`._store_check`); 3 an EMERGENCY_SHUTDOWN: the kill
switch stopped intake, flushed, wrote ``snapshot.json`` and ``UNCLEAN_SHUTDOWN`` within
``--shutdown-deadline`` seconds, the node printed an ``emergency_shutdown`` line naming the reason
(with the kill report under ``kill``), and exited.

With a trader child (``config.trader``), the status lines carry ``risk_state`` and ``trader``
(its PID, risk state, positions and open orders; after a kill, what its kill switch did, under
``kill``), and the ``emergency_shutdown`` line lists no step as not applicable; a SIGTERM stops
the trader first (SIGTERM, exit 0) and may take up to 3 s more.

Lines at start: ``started``; after an unclean shutdown ``resumed`` (what was restored; the marker
is removed once the node is up, see :mod:`._resume`); with a status port ``ready`` (``status_url``,
``pid``, ``symbols``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Final

from strategylab._files import UnsafePathError, refuse_unsafe_dirs
from strategylab._logging import configure_logging, escape
from strategylab.errors import AuditIntegrityError, ConfigurationError
from strategylab.fault_tolerance import ChildStartError, SnapshotError

from ._config import NodeConfig
from ._node import Node
from ._operations import NOT_APPLICABLE
from ._status import _print

__all__ = ["EXIT_EMERGENCY", "run_node", "run_node_process"]

EXIT_EMERGENCY: Final = 3
"""The exit code of a node that ended in an EMERGENCY_SHUTDOWN."""


async def run_node(
    config: NodeConfig, stop: asyncio.Event | None = None, *, node: Node | None = None
) -> int:
    """Run a node until ``stop`` is set, SIGTERM/SIGINT arrives, or an emergency shutdown halts
    it; print status lines. Returns the exit code: 0, or :data:`EXIT_EMERGENCY`.

    Raises :class:`ConfigurationError` for a store that can never work (nothing is started).
    """
    done = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, done.set)
            installed.append(sig)
    node = node if node is not None else Node(config)
    started = False
    try:
        await node.start()
        started = True
        out = node._status_out  # noqa: SLF001 - our own instance
        _print("started", {"pid": os.getpid(), "symbols": list(config.symbols)}, out)
        resume = node.resume
        if resume is not None:
            _print("resumed", resume.line(), out)
            resume.clear()  # only now: the node is up, and resumed from the store
        if node.status_url is not None:
            _print(
                "ready",
                {
                    "status_url": node.status_url,
                    "pid": os.getpid(),
                    "symbols": list(config.symbols),
                },
                out,
            )
        halted = node.halted
        while not done.is_set() and not halted.is_set():
            waiters = (asyncio.ensure_future(done.wait()), asyncio.ensure_future(halted.wait()))
            try:
                # node.config: a reloaded status_interval applies from the next line.
                await asyncio.wait(
                    waiters,
                    timeout=node.config.status_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if halted.is_set():
                break
            _print("status", node.status(), out)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await node.aclose()
    emergency = node.emergency
    if emergency is not None or node.kill_switch_pulled:
        report = node.kill_report
        source = node.kill_source
        _print(
            "emergency_shutdown",
            {
                "reason": emergency.message if emergency is not None else node.kill_reason,
                "error_type": None if emergency is None else emergency.error_type.value,
                "component": emergency.component
                if emergency is not None
                else (None if source is None else source.value),
                "source": None if source is None else source.value,
                "exit_code": EXIT_EMERGENCY,
                **node.status(),
                "kill": None if report is None else report.to_dict(),
                "not_applicable": [] if node.trader is not None else list(NOT_APPLICABLE),
            },
            node._status_out,  # noqa: SLF001 - our own instance
        )
        return EXIT_EMERGENCY
    if started:
        _print("stopped", node.status(), node._status_out)  # noqa: SLF001 - our own instance
    return 0


def run_node_process(config: NodeConfig, *, log_level: int = logging.WARNING) -> int:
    """Run ``config`` as the ``strategylab node`` process: validate, log to stderr and to
    ``data_dir/logs/node.log``, serve until a signal. Errors are one line on stderr.

    Returns the exit code: 0 after a clean shutdown, 1 for an operational failure at start (a
    damaged audit log included), 2 for a bad option (a store that can never work, a symlink
    planted in the data directory included), 3 (:data:`EXIT_EMERGENCY`) after an emergency
    shutdown.
    """
    try:
        # Build once to validate the feed and ingestor settings before anything starts.
        Node(config)
        if config.trader is not None:  # a strategy that does not build fails here, not in a child
            from ._trader import check_strategies  # noqa: PLC0415 - only a node that trades

            check_strategies(config.trader)
        if config.data_dir.exists() and not config.data_dir.is_dir():
            raise ConfigurationError(  # noqa: TRY301 - reported with the other bad options
                "--data-dir", str(config.data_dir), "exists and is not a directory"
            )
    except ConfigurationError as exc:
        # The flag the user typed, not the field of the feed or ingestor config (urls).
        named = exc.as_option({"urls": "--exchange-url/--feed-url/--backup-url"})
        return _fail(named, 2)
    log_file = config.layout.log_file("node")

    def open_log() -> None:
        # Only once the store passed its checks: a refused start leaves no data directory.
        refuse_unsafe_dirs(log_file.parent)
        configure_logging(log_level, sys.stderr, log_file=log_file)

    try:
        configure_logging(log_level, sys.stderr)
        node = Node(config, on_data_dir=open_log, log_level=log_level)
        return asyncio.run(run_node(config, node=node))
    except (ConfigurationError, UnsafePathError) as exc:
        return _fail(exc, 2)
    except AuditIntegrityError as exc:
        return _fail(f"audit log damaged: {exc}", 1)
    except SnapshotError as exc:
        # After an unclean shutdown: never start on a snapshot that cannot be verified.
        return _fail(f"snapshot damaged, not resuming: {exc}", 1)
    except (ChildStartError, OSError) as exc:
        return _fail(exc, 1)


def _fail(error: object, code: int) -> int:
    sys.stderr.write(f"strategylab node: error: {escape(str(error))}\n")
    return code
