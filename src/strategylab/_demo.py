"""``strategylab demo``: the market-data path under real faults, then an integrity check.

The exchange simulator, the ingesting node and a trader run as processes, a fault proxy in this
one sits between the node and the exchange, and a scripted series of faults is injected
(:mod:`strategylab._demo_script`, the schedule drawn from ``--seed`` by
:mod:`strategylab._demo_faults`) while a live screen shows what is happening
(:mod:`strategylab._demo_live`). Then the demo stops the processes and compares the exchange's
log of every tick it emitted with the node's SQLite store and its acknowledgements, and the
exchange's orders with the trader's (:mod:`strategylab._demo_report`). The exit code is 0 only
when nothing was lost, duplicated, corrupted or left missing. The schedule, and what each fault
did, is written to ``faults.json`` in the data directory.

**The data directory is the user's** (:mod:`strategylab._demo_dir`): the demo clears only what
its marker says it created, and refuses a non-empty directory it did not create (exit 2).

**Its children never outlive it** (:mod:`strategylab._children`): each is tied to the demo's life
(``PR_SET_PDEATHSIG`` or a watchdog) and runs in its own process group. SIGTERM, SIGINT (Ctrl-C)
or SIGHUP stops them in order (trader, node, exchange), says what was interrupted and what state
is safe, and exits 128 + the signal number; a second signal kills them at once.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from rich.console import Console

from strategylab._children import ChildGuard, ChildProcesses, run_interruptible
from strategylab._cli_options import LogLevel
from strategylab._demo_dir import DataDirError, faults_file, prepare_data_dir, secret_files
from strategylab._demo_live import Progress
from strategylab._demo_report import faults_table, print_interrupted, print_report, print_trading
from strategylab._demo_script import DemoError, Run, run_children
from strategylab._durable import write_atomic
from strategylab._layout import DataLayout
from strategylab._logging import escape
from strategylab._secrets import write_secret_file
from strategylab.chaos import CheckInputError, IntegrityReport, check_sqlite
from strategylab.market import StoreCorruptedError

__all__ = ["run_demo"]

_USAGE: Final = 2


async def _run(run: Run, children: ChildProcesses, console: Console) -> int:
    data_dir = run.data_dir
    key, token = secrets.token_hex(32), secrets.token_hex(16)
    key_path, token_path = secret_files(data_dir)
    # Children get the secrets through 0600 files, never argv (/proc/PID/cmdline is public).
    key_file = write_secret_file(key_path, key)
    token_file = write_secret_file(token_path, token)
    try:
        try:
            await run_children(
                run, children, console, token=token, key_file=key_file, token_file=token_file
            )
        except asyncio.CancelledError:
            run.interrupted_during = run.phase
            raise
        finally:
            run.phase = "stopping the processes"
            await children.aclose()
    finally:
        key_file.unlink(missing_ok=True)
        token_file.unlink(missing_ok=True)
    run.phase = "checking integrity"
    report = await _check(DataLayout(data_dir))
    console.print()
    print_report(console, report, run.stopped, run.progress.faults_done)
    console.print(faults_table(run.seed, run.faults))
    print_trading(console, run.traded)
    _write_faults(run)
    trading_ok = run.traded.get("duplicate_orders", 1) == 0 and run.traded.get("inflight", 1) == 0
    if report.ok and trading_ok:
        console.print("[green]zero lost, zero duplicated, zero corrupted, nothing missing")
        return 0
    console.print("[red]integrity check failed" if not report.ok else "[red]trading check failed")
    return 1


def _write_faults(run: Run) -> None:
    """``faults.json``: the seed's schedule, what each fault did, and the trader's ambiguous
    orders (planned and counted)."""
    if run.schedule is None:
        return
    body = {
        **run.schedule.to_json(),
        "faults": [record.to_json() for record in run.faults],
        "ambiguous_counted": run.traded.get("ambiguous"),
    }
    write_atomic(faults_file(run.data_dir), (json.dumps(body, indent=2) + "\n").encode())


async def _check(layout: DataLayout) -> IntegrityReport:
    # Read-only, like `strategylab check`: the demo's own store is evidence, not scratch.
    node = layout.node_dir
    return await check_sqlite(
        layout.exchange_dir.emitted_log, node.ticks_db, node.acks, require_complete=True
    )


async def _amain(run: Run, console: Console, guard: ChildGuard) -> int:
    children = ChildProcesses(guard)

    def interrupted(received: Sequence[signal.Signals]) -> None:
        phase = run.interrupted_during or run.phase
        print_interrupted(
            console, run.data_dir, phase=phase, stopped=children.stopped, received=received
        )

    return await run_interruptible(children, lambda: _run(run, children, console), interrupted)


def _error(message: str) -> None:
    """One line on stderr: escaped, since it may carry a path, a child's or a peer's text."""
    sys.stderr.write(f"strategylab demo: error: {escape(message)}\n")


def run_demo(
    *,
    data_dir: Path,
    ticks: int,
    tick_rate: int,
    log_level: LogLevel = LogLevel.WARNING,
    seed: int = 42,
) -> int:
    """Run the demonstration; 0 only when the integrity check finds nothing wrong, 1 when it
    finds something or a process could not start, 2 for a data directory the demo must not
    clear, 128 + N when signal N interrupted it. ``log_level`` is the children's ``--log-level``
    (each writes its log file under its own data directory); ``seed`` draws the fault schedule
    (the same seed and ``ticks`` inject the same faults at the same points), the exchange's
    market and the fault proxy's random choices."""
    try:
        prepare_data_dir(data_dir)
    except DataDirError as exc:
        _error(f"--data-dir {exc}")
        return _USAGE
    except OSError as exc:
        _error(f"--data-dir {data_dir}: {exc.strerror or exc}")
        return 1
    console = Console()
    run = Run(
        data_dir=data_dir,
        ticks=ticks,
        tick_rate=tick_rate,
        progress=Progress(total=ticks),
        log_level=LogLevel(log_level).value,
        seed=seed,
    )
    try:
        with ChildGuard() as guard:
            return asyncio.run(_amain(run, console, guard))
    except (OSError, TimeoutError, DemoError, CheckInputError, StoreCorruptedError) as exc:
        _error(str(exc))
        return 1
