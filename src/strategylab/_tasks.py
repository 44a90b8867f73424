"""Small helpers for owning asyncio tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel every task and wait until each has finished.

    Unlike ``suppress(CancelledError): await task``, a cancellation aimed at the *caller* while it
    waits still propagates; the tasks' own outcomes are left to their done-callbacks.
    """
    pending = [task for task in tasks if task is not None and not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
