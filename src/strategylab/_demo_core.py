"""``strategylab demo-core``: a real flaky dependency, protected by retry + circuit breaker.

A quote service runs as its own process on a loopback TCP port. A client asks it for quotes through
``Pipeline.of(total_timeout=..., retry=..., breaker=..., timeout=...)``. Every few hundred calls the
demo kills the service with SIGKILL: the client's retries fail, its breaker opens and rejects calls
at once, and the failures go to an :class:`ErrorRecoveryManager`, which first re-probes the service
(RETRY) and then escalates to COMPONENT_RESTART, which starts a new process. A recovery counts only
when the new process is observed answering; the breaker half-opens, its trial call succeeds, and it
closes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from strategylab._children import ChildGuard, ChildProcesses, run_interruptible
from strategylab.fault_tolerance import (
    AuditLog,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
    Pipeline,
    RecoveryOutcome,
    RecoveryPolicy,
    RecoveryStatistics,
    RecoveryStrategyKind,
    RetryPolicy,
    SlaClass,
    Timeout,
)

_SERVER = r"""
import asyncio, sys

async def handle(reader, writer):
    try:
        while await reader.readline():
            writer.write(b"101.25\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
"""

_COMPONENT = "quote-api"


class QuoteService:
    """The dependency: a quote server in its own process, restartable on the same port.

    Its processes are started through ``children``, so none outlives the demo (see
    :mod:`strategylab._children`).
    """

    def __init__(self, children: ChildProcesses) -> None:
        self.port = 0
        self.starts = 0
        self._children = children
        self._process: asyncio.subprocess.Process | None = None

    @property
    def name(self) -> str:
        return _COMPONENT

    async def start(self) -> None:
        process = await self._children.start(
            _COMPONENT,
            sys.executable,
            "-c",
            _SERVER,
            str(self.port),
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None  # noqa: S101 - PIPE was asked for
        async with asyncio.timeout(10):
            line = await process.stdout.readline()
        if not line:
            await self._children.stop(process, signal.SIGKILL)
            raise OSError(f"{_COMPONENT}: the service exited before it printed its port")
        self.port = int(line)
        self._process = process
        self.starts += 1

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await self._children.stop(process, signal.SIGKILL)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def crash(self) -> None:
        """The injected fault: SIGKILL, as a crash would leave it (no cleanup, port closed)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGKILL)

    async def health(self) -> bool:
        try:
            return await fetch_quote(self.port) > 0
        except OSError:
            return False


async def fetch_quote(port: int) -> float:
    """One request over a fresh connection; raises the socket's own errors."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"Q\n")
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("quote service closed the connection")
        return float(line)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    rejected: int = 0
    transitions: list[str] = field(default_factory=list)
    recovery_seconds: list[float] = field(default_factory=list)
    outcomes: list[RecoveryOutcome] = field(default_factory=list)


async def _run(
    calls: int, faults: int, audit_path: Path, console: Console, children: ChildProcesses
) -> int:
    service = QuoteService(children)
    await service.start()
    tally = _Tally()
    breaker = CircuitBreaker(_COMPONENT, failure_threshold=3, recovery_timeout=0.3)
    breaker.add_listener(
        lambda _b, old, new: tally.transitions.append(f"{old.value} → {new.value}")
    )
    guarded = Pipeline.of(
        total_timeout=Timeout(2.0, name="quote"),
        retry=RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=0.2, retry_on=(OSError,)),
        breaker=breaker,
        timeout=Timeout(1.0, name="quote.attempt"),
    ).awrap(fetch_quote)
    policy = RecoveryPolicy(
        error_type=ErrorType.EXTERNAL_API_FAILURE,
        severity=ErrorSeverity.MEDIUM,
        chain=(RecoveryStrategyKind.RETRY, RecoveryStrategyKind.COMPONENT_RESTART),
        sla=SlaClass.API,
        retry=RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=0.1, retry_on=(OSError,)),
    )
    with AuditLog(audit_path, fsync=True) as audit:
        manager = ErrorRecoveryManager({ErrorType.EXTERNAL_API_FAILURE: policy}, audit=audit)
        manager.register(service, breaker=breaker)
        try:
            async with asyncio.TaskGroup() as recoveries:
                for fault in range(faults):
                    crash_at = calls // 4
                    crashed_at: float | None = None
                    for i in range(calls):
                        if i == crash_at:
                            service.crash()
                            crashed_at = time.monotonic()
                        try:
                            await guarded(service.port)
                        except CircuitOpenError:
                            tally.rejected += 1
                        except OSError as exc:
                            tally.failed += 1
                            task = recoveries.create_task(manager.handle(exc, _COMPONENT))
                            task.add_done_callback(lambda t: tally.outcomes.append(t.result()))
                        else:
                            tally.ok += 1
                            if crashed_at is not None:
                                tally.recovery_seconds.append(time.monotonic() - crashed_at)
                                crashed_at = None
                        # Request pacing of the load generator; recovery does not depend on it.
                        await asyncio.sleep(0.002)
                    console.print(
                        f"fault {fault + 1}/{faults}: service killed; "
                        f"recovered: {crashed_at is None}; breaker {breaker.state.value}"
                    )
        finally:
            await service.stop()
        stats = manager.statistics()
        healthy_at_end = breaker.state is BreakerState.CLOSED and crashed_at is None
    verification = AuditLog.verify(audit_path)
    _report(console, tally, stats, verification.records, service.starts)
    recovered_all = len(tally.recovery_seconds) == faults and stats.successful_recoveries >= faults
    if recovered_all and healthy_at_end:
        console.print("[green]every fault recovered; the service answers and the breaker is closed")
        return 0
    console.print("[red]not every fault recovered")
    return 1


def _table(title: str, headings: tuple[str, str], rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title)
    table.add_column(headings[0])
    table.add_column(headings[1], justify="right")
    for label, value in rows:
        table.add_row(label, value)
    return table


def _report(
    console: Console, tally: _Tally, stats: RecoveryStatistics, audit_records: int, starts: int
) -> None:
    transitions = Counter(tally.transitions)
    calls = [
        ("answered", f"{tally.ok:,}"),
        ("failed after retries", f"{tally.failed:,}"),
        ("rejected fast by the open breaker", f"{tally.rejected:,}"),
        ("breaker transitions", ", ".join(f"{t} ×{n}" for t, n in transitions.items()) or "none"),
        ("crash → first answer (s)", ", ".join(f"{s:.3f}" for s in tally.recovery_seconds)),
    ]
    title = "client calls (total timeout ▸ retry ▸ breaker ▸ attempt timeout)"
    console.print(_table(title, ("outcome", "count"), calls))
    strategies = stats.strategy_distribution.items()
    recovery = [
        ("errors reported", f"{stats.total_errors}"),
        ("recoveries succeeded", f"{stats.successful_recoveries}"),
        ("recoveries failed", f"{stats.failed_recoveries}"),
        ("success rate", f"{stats.success_rate:.0%}"),
        ("escalations (pattern threshold crossed)", f"{stats.pattern_escalations}"),
        ("fall-throughs to the next strategy", f"{stats.fall_throughs}"),
        (
            "recovery time p50 / p95 / p99 (ms)",
            f"{stats.p50_ms:.0f} / {stats.p95_ms:.0f} / {stats.p99_ms:.0f}",
        ),
        ("strategies used", ", ".join(f"{k.value}×{v}" for k, v in strategies)),
        ("SLA compliance", ", ".join(f"{k} {v:.0%}" for k, v in stats.sla_compliance.items())),
        ("service processes started", f"{starts}"),
        ("audit records (hash chain verified)", f"{audit_records}"),
    ]
    console.print(
        _table("recovery statistics (ErrorRecoveryManager)", ("measure", "value"), recovery)
    )


async def _amain(calls: int, faults: int, audit_path: Path, console: Console) -> int:
    with ChildGuard() as guard:
        children = ChildProcesses(guard)

        def interrupted(received: Sequence[signal.Signals]) -> None:
            # The service was stopped on the way out (QuoteService.stop in _run's finally).
            console.print(
                f"[yellow]interrupted by {received[0].name}: the quote service was stopped; "
                "nothing is kept (the audit log was in a temporary directory)"
            )

        return await run_interruptible(
            children, lambda: _run(calls, faults, audit_path, console, children), interrupted
        )


def run_demo(*, calls: int, faults: int) -> int:
    """Run the demonstration; the exit code is 0 only when every injected fault was recovered,
    128 + N when signal N interrupted it."""
    console = Console()
    with tempfile.TemporaryDirectory(prefix="strategylab-demo-") as tmp:
        return asyncio.run(_amain(calls, faults, Path(tmp) / "audit.jsonl", console))
