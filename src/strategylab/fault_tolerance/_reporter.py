"""One way for a component to report its errors to the recovery manager.

A component that observes an error (a corrupt frame, a failed write, a crashed worker) hands it to
its :class:`ErrorReporter` and goes on. The reporter decides whether the error starts a new
*episode* and, if it does, sends it to the :class:`ErrorRecoveryManager` from an owned background
task (:meth:`ErrorReporter.report`) or in the caller (:meth:`ErrorReporter.areport`):

* **one report per episode**: an error of the same ``(error type, component)`` within ``quiet``
  seconds of the previous one of that pair is counted, not reported. One fault is one error, not
  a storm that pattern analysis would escalate to an emergency shutdown;
* **a quiet period after a recovery**: once the manager *successfully* recovered from a pair,
  repeats within ``recovered_quiet`` seconds are counted, not reported, so that escalation counts
  episodes rather than the noise a component heals by itself;
* **an always-report path** (``always=True``) for errors that must never be folded (every
  security violation is recorded, a connection drop whose recovery is the reconnect);
* **bounded, owned tasks**: at most ``max_pending`` reports in flight; beyond that a report is
  counted as dropped, never queued without bound. :meth:`ErrorReporter.aclose` cancels and awaits
  them (except the task calling it: a recovery may stop the component that reported).

Time comes from the injected clock; :meth:`ErrorReporter.statistics` is a frozen snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError

from ._classify import classify
from ._context import ErrorContext

if TYPE_CHECKING:
    from ._manager import ErrorRecoveryManager, RecoveryOutcome
    from ._taxonomy import ErrorType

__all__ = ["ErrorReporter", "ReporterStatistics"]

_log = logging.getLogger(__name__)

Operation = Callable[[], Awaitable[object]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReporterStatistics:
    """A frozen snapshot of an :class:`ErrorReporter`'s counters."""

    reported: int
    """Errors handed to the manager."""
    suppressed: int
    """Errors folded into an episode or a post-recovery quiet period (counted, not reported)."""
    dropped: int
    """Errors not reported because ``max_pending`` reports were already in flight."""
    pending: int
    """Reports in flight now."""


class ErrorReporter:
    """Reports a component's errors to a recovery manager, one report per episode.

    ``manager`` may be None (nothing is reported or counted: a component without a manager).
    ``component`` is the name errors are reported under unless a call names another. ``quiet``
    and ``recovered_quiet`` are seconds (0 turns the folding off); ``max_pending`` caps the
    reports in flight. A bad value raises :class:`~strategylab.errors.ConfigurationError`
    naming it.
    """

    __slots__ = (
        "_clock",
        "_component",
        "_dropped",
        "_last",
        "_manager",
        "_max_pending",
        "_quiet",
        "_quiet_until",
        "_recovered_quiet",
        "_reported",
        "_suppressed",
        "_tasks",
    )

    def __init__(
        self,
        manager: ErrorRecoveryManager | None,
        *,
        component: str,
        quiet: float = 5.0,
        recovered_quiet: float = 60.0,
        max_pending: int = 32,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        for key, value in (("quiet", quiet), ("recovered_quiet", recovered_quiet)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(key, value, "must be a finite number of seconds >= 0")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError("max_pending", max_pending, "must be an integer >= 1")
        self._manager = manager
        self._component = component
        self._quiet = float(quiet)
        self._recovered_quiet = float(recovered_quiet)
        self._max_pending = max_pending
        self._clock = clock
        self._tasks: set[asyncio.Task[RecoveryOutcome | None]] = set()
        self._last: dict[tuple[ErrorType | None, str], float] = {}
        self._quiet_until: dict[tuple[ErrorType | None, str], float] = {}
        self._reported = self._suppressed = self._dropped = 0

    @property
    def manager(self) -> ErrorRecoveryManager | None:
        """The manager reports go to (None: reporting is off)."""
        return self._manager

    def report(
        self,
        error: BaseException | ErrorContext,
        *,
        component: str | None = None,
        operation: Operation | None = None,
        always: bool = False,
    ) -> bool:
        """Report ``error`` from an owned task unless it is folded or the cap is reached.

        ``operation`` is the failed call (the manager's RETRY strategy re-runs it); ``always``
        skips the folding, not the cap. True when a report was started.
        """
        manager = self._manager
        if manager is None:
            return False
        key = self._key(error, component)
        if not self._admit(key, always=always):
            return False
        if len(self._tasks) >= self._max_pending:
            self._dropped += 1
            return False
        self._reported += 1
        task = asyncio.create_task(
            self._handle(manager, error, key, operation), name=f"{key[1]}.report"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def areport(
        self,
        error: BaseException | ErrorContext,
        *,
        component: str | None = None,
        operation: Operation | None = None,
        always: bool = False,
    ) -> RecoveryOutcome | None:
        """Report ``error`` in the calling task and return the manager's outcome.

        The same folding as :meth:`report` (the caller's own concurrency bounds these). None
        when the error was folded, reporting is off, or the manager itself failed (logged).
        """
        manager = self._manager
        if manager is None:
            return None
        key = self._key(error, component)
        if not self._admit(key, always=always):
            return None
        self._reported += 1
        return await self._handle(manager, error, key, operation)

    def statistics(self) -> ReporterStatistics:
        """A frozen snapshot of the counters."""
        return ReporterStatistics(
            reported=self._reported,
            suppressed=self._suppressed,
            dropped=self._dropped,
            pending=len(self._tasks),
        )

    async def ajoin(self) -> None:
        """Wait until the reports in flight have finished (their failures are logged)."""
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current]
        if pending:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Cancel the reports in flight and wait for them; the reporter stays usable (a
        component that restarts keeps it). The calling task is spared: a recovery running in
        a report may stop the component that reported."""
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current and not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # ------------------------------------------------------------------ internals

    def _key(
        self, error: BaseException | ErrorContext, component: str | None
    ) -> tuple[ErrorType | None, str]:
        name = component if component is not None else self._component
        if isinstance(error, ErrorContext):
            return error.error_type, error.component
        kind = getattr(error, "error_type", None)
        return (kind if kind is not None else classify(error, component=name)), name

    def _admit(self, key: tuple[ErrorType | None, str], *, always: bool) -> bool:
        """Record the error's time; False (and counted) when it belongs to an episode."""
        now = self._clock.monotonic()
        last = self._last.get(key)
        self._last[key] = now
        if always:
            return True
        if (last is not None and now - last < self._quiet) or now < self._quiet_until.get(
            key, -math.inf
        ):
            self._suppressed += 1
            return False
        return True

    async def _handle(
        self,
        manager: ErrorRecoveryManager,
        error: BaseException | ErrorContext,
        key: tuple[ErrorType | None, str],
        operation: Operation | None,
    ) -> RecoveryOutcome | None:
        try:
            if isinstance(error, ErrorContext):
                outcome = await manager.handle(error, operation=operation)
            else:
                outcome = await manager.handle(error, component=key[1], operation=operation)
        except Exception:
            _log.exception("%s: the recovery manager failed on %r", key[1], error)
            return None
        if outcome.success and self._recovered_quiet > 0:
            self._quiet_until[key] = self._clock.monotonic() + self._recovered_quiet
        return outcome
