"""`run_interruptible`: a signal stops a command's children in order and becomes 128 + N.

Real signals to this process (delivered to the event loop's handler) and real child processes
(``sleep`` in a Python interpreter); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import pytest

from strategylab._children import (
    SIGNAL_EXIT_BASE,
    ChildGuard,
    ChildProcesses,
    run_interruptible,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


async def _body_that_signals_itself(
    children: ChildProcesses, sig: signal.Signals, started: list[int]
) -> int:
    for name in ("first", "second"):
        process = await children.start(name, *SLEEPER)
        started.append(process.pid)
    os.kill(os.getpid(), sig)  # delivered to the loop's handler: this task is cancelled
    await asyncio.sleep(30)
    return 0  # pragma: no cover - cancelled before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_a_signal_stops_the_children_newest_first_and_gives_128_plus_n(
    sig: signal.Signals,
) -> None:
    """The body is cancelled, ``on_interrupt`` hears the signal, both children are then stopped
    newest first and reaped, and the status is 128 + the signal's number."""
    heard: list[tuple[list[signal.Signals], list[str]]] = []
    started: list[int] = []
    with ChildGuard() as guard:
        children = ChildProcesses(guard, stop_timeout=10)

        def on_interrupt(received: Sequence[signal.Signals]) -> None:
            heard.append((list(received), [name for name, _code in children.stopped]))

        async with asyncio.timeout(30):
            code = await run_interruptible(
                children, lambda: _body_that_signals_itself(children, sig, started), on_interrupt
            )
    assert code == SIGNAL_EXIT_BASE + int(sig)
    assert heard == [([sig], [])]  # the body stopped none itself: aclose comes after
    assert [name for name, _code in children.stopped] == ["second", "first"]
    assert children.running == []
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped: the PID names no process of ours any more


@pytest.mark.timeout(60)
async def test_without_a_signal_the_status_is_the_body_s_and_children_are_stopped() -> None:
    """A body that returns: its status, no interruption reported, children still stopped."""
    heard: list[Sequence[signal.Signals]] = []
    with ChildGuard() as guard:
        children = ChildProcesses(guard, stop_timeout=10)

        async def body() -> int:
            await children.start("left-running", *SLEEPER)
            return 3

        async with asyncio.timeout(30):
            code = await run_interruptible(children, body, heard.append)
    assert code == 3
    assert heard == []
    assert [name for name, _code in children.stopped] == ["left-running"]


@pytest.mark.timeout(60)
async def test_another_cancellation_propagates() -> None:
    """A cancellation that is not from a signal is not swallowed (and children still stop)."""
    with ChildGuard() as guard:
        children = ChildProcesses(guard, stop_timeout=10)

        started = asyncio.Event()

        async def body() -> int:
            await children.start("child", *SLEEPER)
            started.set()
            await asyncio.sleep(30)
            return 0  # pragma: no cover - cancelled before

        task = asyncio.create_task(run_interruptible(children, body, lambda _r: None))
        async with asyncio.timeout(30):
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert [name for name, _code in children.stopped] == ["child"]
