"""The FAILOVER recovery strategy for the tick store: primary, else the durable local spool.

Which one takes writes is decided by a :class:`~strategylab.fault_tolerance.FailoverGroup` of two
members, ``primary`` and ``spool`` (HAProxy-style backup with health checks): a failed write
reports the primary's failure, the group probes it while the spool is in use and, after
``failback_after`` consecutive good probes, runs the drain below as its drain hook and switches
back. :attr:`FailoverStore.group` exposes it (statistics, listeners).

States::

    PRIMARY ──write fails / failover()──▶ SPOOLING ──probe: primary healthy──▶ DRAINING
       ▲                                     ▲                                    │
       └──────────── spool empty ────────────┼──────── drain write fails ─────────┘

- PRIMARY: writes go to the primary. A write that fails is reported to the manager and the same
  batch goes to the spool (fsynced, so it is acknowledged); the store is now SPOOLING.
- SPOOLING: every write goes to the spool. An owned background task probes ``primary.health()``
  every ``probe_interval`` seconds of the injected ``clock``.
- DRAINING: the probe succeeded; the spool is drained into the primary in order while new writes
  still go to the spool (behind the drained batches, so a symbol's ticks reach the primary in
  order). When a drain pass leaves the spool empty, the switch back to PRIMARY happens under the
  write lock, so no batch can land in the spool after the last pass. A failed drain write goes
  back to SPOOLING; the segment it was draining stays in the spool and is drained again later (the
  primary is idempotent, so the re-drain cannot duplicate).

An acknowledged batch is either committed in the primary or fsynced in the spool, and it leaves
the spool only after the primary committed it: nothing acknowledged is lost.

A STALL is a failure too: every operation on the primary (a write, a quarantine, a probe, a drain
write, ``last_seqs``) must finish within ``stall_timeout`` seconds. One that overruns raises
:class:`StoreStallError` here at once (a write's batch then goes to the spool, as for any failed
write) and is left to finish on its own in the background (the primary is idempotent, so a late
commit is harmless; a cancelled psycopg call could itself block for seconds on a frozen server).
Such *stragglers* are cancelled, with a deadline, by :meth:`FailoverStore.aclose`. While a probe
is still pending no second one is started.

Spool corruption (see :mod:`strategylab.market._spool`) found when opening or draining is reported
to the manager as one :class:`~strategylab.market.SpoolCorruptionError` per pass, and
:meth:`FailoverStore.last_seqs` holds every symbol at its resume limit, so the feed asks the
exchange for the damaged range again.

The RESUME POINT never falls back below what the primary holds: :meth:`FailoverStore.open` reads
the primary's positions once (bounded by ``max(10 * stall_timeout, 10 s)``, not by the
``stall_timeout`` of one write), and :meth:`FailoverStore.last_seqs` merges them with every batch
acknowledged since and the spool. A primary that fails or stalls on a later ``last_seqs`` is then
left out without loss: what it holds is already known. (Before, a stalled read, e.g. a full scan of
millions of rows, made the resume point the spool's, nothing after a restart, and the feed asked
the exchange for everything from seq 1 and declared what it no longer retained lost.)

Only the error that starts an outage is reported to the recovery manager. Failed probes and failed
drain attempts during the same outage are counted in :meth:`FailoverStore.statistics` instead:
reporting each one would look like a storm of new errors and escalate (for a full disk, to the
emergency shutdown) while the failover is doing its job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
from collections.abc import Coroutine, Sequence
from typing import Any, Final, TypeVar

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, StrategyLabError
from strategylab.fault_tolerance import (
    ErrorRecoveryManager,
    ErrorReporter,
    ErrorType,
    FailoverEvent,
    FailoverGroup,
    FailoverGroupStatistics,
    FailoverMember,
    SwitchReason,
)

from ._spool import SpoolCorruptionError, SpoolStore
from ._store import QuarantinedTick, TickStore
from ._tick import Tick

__all__ = ["FailoverState", "FailoverStatistics", "FailoverStore", "StoreStallError"]

_T = TypeVar("_T")

_log = logging.getLogger(__name__)
_OPEN_READ_MIN: Final = 10.0
"""Seconds the primary's positions may take to read when the store is opened, at least."""

_UNLOCKED_PASSES: Final = 8
"""At most this many drain passes run while writes keep going to the spool (see ``_drain``)."""


class StoreStallError(StrategyLabError, TimeoutError):
    """The primary store did not finish an operation within ``stall_timeout`` seconds."""

    error_type = ErrorType.DATABASE_CONNECTION_LOST

    def __init__(self, store: str, operation: str, timeout: float) -> None:
        super().__init__(f"{store}: {operation} did not finish within stall_timeout={timeout}s")
        self.store = store
        self.operation = operation
        self.timeout = timeout


class FailoverState(enum.Enum):
    """Where writes go right now."""

    PRIMARY = "primary"
    SPOOLING = "spooling"
    DRAINING = "draining"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverStatistics:
    """A snapshot of the failover store's counters."""

    state: FailoverState
    batches_to_primary: int
    batches_to_spool: int
    batches_drained: int
    failovers: int
    failbacks: int
    failed_probes: int
    failed_drains: int
    spool_pending: int
    stalls: int
    """Primary operations abandoned after ``stall_timeout``."""
    corruptions: int
    """Damaged spool ranges found (and reported) since the store was opened."""
    group: FailoverGroupStatistics | None = None
    """The underlying :class:`~strategylab.fault_tolerance.FailoverGroup`'s snapshot (members
    ``primary`` and ``spool``: per-member health, last switch time)."""


def _merge_max(into: dict[str, int], other: dict[str, int]) -> None:
    for symbol, seq in other.items():
        if seq > into.get(symbol, 0):
            into[symbol] = seq


class _StallGuard:
    """Runs primary operations with a deadline and keeps the ones it abandoned."""

    def __init__(self, store: str, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self.stalls = 0
        self.stragglers: set[asyncio.Task[Any]] = set()

    async def run(
        self,
        operation: str,
        call: Coroutine[Any, Any, _T],
        timeout: float | None = None,  # noqa: ASYNC109 - a bound for one call, not a scope
    ) -> _T:
        limit = self.timeout if timeout is None else timeout
        task = asyncio.create_task(call, name=f"{self.store}.{operation}")
        try:
            done, _ = await asyncio.wait((task,), timeout=limit)
        except asyncio.CancelledError:
            task.cancel()
            self._adopt(task)
            raise
        if not done:
            self.stalls += 1
            self._adopt(task)
            raise StoreStallError(self.store, operation, limit)
        return task.result()

    def pending(self, operation: str) -> bool:
        name = f"{self.store}.{operation}"
        return any(task.get_name() == name for task in self.stragglers)

    def _adopt(self, task: asyncio.Task[Any]) -> None:
        self.stragglers.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.stragglers.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.info("abandoned %s ended late: %r", task.get_name(), exc)

    async def aclose(self, deadline: float) -> None:
        tasks = set(self.stragglers)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=deadline)
            for task in stuck:
                _log.error("%s still running %ss after it was cancelled", task.get_name(), deadline)


class _Bounded:
    """The primary as a drain sees it: every write and read bounded by the stall guard."""

    def __init__(self, primary: TickStore, guard: _StallGuard) -> None:
        self._primary = primary
        self._guard = guard

    @property
    def name(self) -> str:
        return self._primary.name

    async def open(self) -> None:
        await self._primary.open()

    async def aclose(self) -> None:
        await self._primary.aclose()

    async def write(self, ticks: Sequence[Tick]) -> int:
        return await self._guard.run("drain", self._primary.write(ticks))

    async def last_seqs(self) -> dict[str, int]:
        return await self._guard.run("last_seqs", self._primary.last_seqs())

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        return await self._primary.read(symbol, from_seq, to_seq)

    async def symbols(self) -> list[str]:
        return await self._primary.symbols()

    async def duplicates(self) -> int:
        return await self._primary.duplicates()

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        await self._guard.run("quarantine", self._primary.quarantine(entries))

    async def quarantined(self) -> list[QuarantinedTick]:
        return await self._primary.quarantined()

    async def health(self) -> bool:
        return await self._guard.run("health", self._primary.health())


class FailoverStore:
    """A ``TickStore`` that fails over from ``primary`` to a durable ``spool`` and back.

    Also a ``Component`` with ``failover()`` (the manager's FAILOVER strategy): ``health()`` is
    True while writes are being durably accepted, by the primary or by the spool.
    """

    def __init__(
        self,
        primary: TickStore,
        spool: SpoolStore,
        *,
        manager: ErrorRecoveryManager | None = None,
        probe_interval: float = 0.5,
        stall_timeout: float = 1.0,
        failback_after: int = 1,
        max_probe_interval: float | None = None,
        name: str = "store",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``probe_interval`` and ``stall_timeout`` are seconds; a bad one raises
        :class:`~strategylab.errors.ConfigurationError` naming it.

        The switching is a :class:`~strategylab.fault_tolerance.FailoverGroup` of two members,
        ``primary`` and ``spool``: the drain back into the primary starts once the primary
        passed ``failback_after`` consecutive probes; failed probes back the interval off up to
        ``max_probe_interval`` seconds (None: no backoff).

        The probes wait ``probe_interval`` on ``clock``. ``stall_timeout`` bounds one I/O call
        on the primary, so, like :class:`~strategylab.fault_tolerance.Timeout`, it follows the
        event loop's timer, which an injected clock cannot drive.
        """
        for key, value in (("probe_interval", probe_interval), ("stall_timeout", stall_timeout)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(key, value, "must be a finite number of seconds > 0")
        self.primary = primary
        self.spool = spool
        self._guard = _StallGuard(primary.name, float(stall_timeout))
        self._bounded = _Bounded(primary, self._guard)
        self._reported = 0
        # Reported in the caller (a write returns after its failure's recovery), unfolded: only
        # the error that starts an outage is reported at all.
        self._reporter = ErrorReporter(
            manager, component=name, quiet=0.0, recovered_quiet=0.0, clock=clock
        )
        self._probe_interval = probe_interval
        self._clock = clock
        self._name = name
        self._state = FailoverState.PRIMARY
        self._lock = asyncio.Lock()
        self._group: FailoverGroup[TickStore] = FailoverGroup(
            (
                FailoverMember(name="primary", target=primary, health=self._probe),
                FailoverMember(name="spool", target=spool, health=spool.health),
            ),
            name=f"{name}-failover",
            probe_interval=probe_interval,
            max_probe_interval=max_probe_interval,
            failback_after=failback_after,
            drain=self._drain,
            clock=clock,
        )
        self._group.add_listener(self._on_switch)
        self._entered = {state: asyncio.Event() for state in FailoverState}
        self._entered[FailoverState.PRIMARY].set()
        self._task: asyncio.Task[None] | None = None
        self._failback_error: BaseException | None = None
        self._died = asyncio.Event()
        # Durable positions known here: the primary's when opened, then every acknowledged batch.
        self._known: dict[str, int] = {}
        self._primary_known = False
        self._unknown_warned = False
        self._to_primary = 0
        self._to_spool = 0
        self._drained = 0

    @property
    def name(self) -> str:
        """The component name (``"store"`` unless given)."""
        return self._name

    @property
    def state(self) -> FailoverState:
        """Where writes go right now."""
        return self._state

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the spool, then the primary; spool if the primary cannot be opened.

        A spool left non-empty by an earlier run is drained before writes go to the primary.
        """
        await self.spool.open()
        await self._report_corruptions()
        try:
            await self.primary.open()
        except Exception as exc:
            await self._fail_over(exc)
        else:
            stored = await self._learn_primary()
            if not self.spool.is_empty() and stored is not None:
                # Before the first drain: a primary that ends before the spool begins lost a
                # range after it was acknowledged (a rebuilt file): fetch that range again.
                try:
                    await self.spool.hold_behind(stored)
                except Exception as exc:  # as before: the drain and the resume limits go on
                    _log.warning("%s: could not hold the resume point: %r", self._name, exc)
            if self.spool.needs_settle:
                # Before anything new reaches the primary: its positions now are from before
                # the damage. If that fails, the drain settles first (writes go to the spool).
                try:
                    await self.spool.settle(self._bounded)
                except Exception as exc:  # any failure: the drain settles first
                    _log.warning("%s: primary positions unavailable: %r", self._name, exc)
            if not self.spool.is_empty() or self.spool.needs_settle:
                # Writes go to the spool until it has drained into the primary.
                self._group.switch_to(self._group.members[1], SwitchReason.FAILURE)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-failback")
            self._task.add_done_callback(self._failback_done)

    async def aclose(self) -> None:
        """Stop the probe task and close both stores; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() raises CancelledError only when THIS task is cancelled; the old
            # ``suppress(CancelledError): await task`` also swallowed that, so a cancelled
            # aclose() (a timeout, a test runner's teardown) carried on as if nothing happened.
            await asyncio.wait([task])
            if not task.cancelled() and (exc := task.exception()) is not None:
                _log.error("%s: failback task had died: %r", self._name, exc)
        await self._guard.aclose(max(1.0, self._guard.timeout))
        async with self._lock:
            try:
                await self.primary.aclose()
            finally:
                await self.spool.aclose()

    async def start(self) -> None:
        """``Component.start``: :meth:`open`."""
        await self.open()

    async def stop(self) -> None:
        """``Component.stop``: :meth:`aclose`."""
        await self.aclose()

    async def health(self) -> bool:
        """True when writes are being durably accepted right now (by the primary or the spool)."""
        if self._state is FailoverState.PRIMARY:
            try:
                return await self._guard.run("health", self.primary.health())
            except StoreStallError:
                return False
        return await self.spool.health()

    async def failover(self) -> bool:
        """Switch writes to the spool now (the FAILOVER strategy); False if already there."""
        async with self._lock:
            if self._state is not FailoverState.PRIMARY:
                return True
            self._switch_to_spool()
            return True

    @property
    def group(self) -> FailoverGroup[TickStore]:
        """The failover group that decides where writes go (members ``primary``, ``spool``)."""
        return self._group

    def statistics(self) -> FailoverStatistics:
        """A snapshot of the counters."""
        group = self._group.statistics()
        return FailoverStatistics(
            state=self._state,
            batches_to_primary=self._to_primary,
            batches_to_spool=self._to_spool,
            batches_drained=self._drained,
            failovers=group.failovers,
            failbacks=group.failbacks,
            failed_probes=group.failed_probes,
            failed_drains=group.failed_drains,
            spool_pending=self.spool.pending_batches,
            stalls=self._guard.stalls,
            corruptions=len(self.spool.corruptions()),
            group=group,
        )

    async def wait_for_state(self, state: FailoverState) -> None:
        """Return once the store is in ``state`` (wrap in ``asyncio.timeout``).

        Raises :class:`RuntimeError` if the failback task died, since then nothing will ever
        change the state: the waiter fails fast instead of hanging.
        """
        if self._failback_error is not None:
            raise RuntimeError(f"{self._name}: failback task died") from self._failback_error
        if self._entered[state].is_set():
            return
        waiters = [
            asyncio.ensure_future(self._entered[state].wait()),
            asyncio.ensure_future(self._died.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self._entered[state].is_set() and self._failback_error is not None:
            raise RuntimeError(f"{self._name}: failback task died") from self._failback_error

    # ------------------------------------------------------------------ TickStore

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Durably store ``ticks`` in the primary, or in the spool while the primary is down.

        A primary write that fails, or does not finish within ``stall_timeout`` seconds, fails
        over: the batch is spooled instead. Returns the primary's count of new ticks, or
        ``len(ticks)`` when spooled. Raises what the spool raises when it cannot take the batch
        either (:class:`OSError`): then nothing was acknowledged.
        """
        if not ticks:
            return 0
        failure: Exception | None = None
        async with self._lock:
            if self._state is FailoverState.PRIMARY:
                try:
                    written = await self._guard.run("write", self.primary.write(ticks))
                except Exception as exc:
                    failure = exc
                    self._switch_to_spool()
                else:
                    self._to_primary += 1
                    self._remember(ticks)
                    if self.spool.has_resume_limits:
                        await self.spool.record_stored(ticks)
                    return written
            written = await self.spool.write(ticks)
            self._to_spool += 1
            self._remember(ticks)
        if failure is not None:
            await self._report(failure)
        return written

    async def last_seqs(self) -> dict[str, int]:
        """The highest sequence per symbol in the primary or the spool (or acknowledged here),
        held at the resume limits that spool corruption left (where the feed must resume).

        A primary that fails or stalls (``stall_timeout``) is left out; its positions read at
        :meth:`open` still count, so the answer does not fall back. Only when they could not be
        read then either is the answer a lower bound (logged once as a WARNING): the feed may
        fetch again what the primary holds, and the exchange may call part of that lost."""
        merged = dict(self._known)
        _merge_max(merged, await self.spool.last_seqs())
        try:
            stored = await self._guard.run("last_seqs", self.primary.last_seqs())
        except Exception as exc:  # the spool and the acks still count
            if self._primary_known:
                _log.debug("%s: primary positions unavailable: %r", self._name, exc)
            elif not self._unknown_warned:
                self._unknown_warned = True
                _log.warning(
                    "%s: the primary's positions are unknown (%r): resuming from the spool's "
                    "and this run's; what the exchange no longer retains of a range the primary "
                    "holds may be reported lost",
                    self._name,
                    exc,
                )
        else:
            _merge_max(merged, stored)
            if not self._primary_known:
                self._primary_known = True
                _merge_max(self._known, stored)
        return self.spool.apply_resume_limits(merged)

    async def _learn_primary(self) -> dict[str, int] | None:
        """Read the just-opened primary's positions into the known ones; None when it cannot
        answer within ``max(10 * stall_timeout, 10 s)`` (a warning; :meth:`last_seqs` tries
        again). Must run before anything new reaches the primary (see ``hold_behind``)."""
        bound = max(10 * self._guard.timeout, _OPEN_READ_MIN)
        try:
            stored = await self._guard.run("last_seqs", self.primary.last_seqs(), timeout=bound)
        except Exception as exc:  # positions unknown: nothing to compare with
            _log.warning("%s: primary positions unavailable: %r", self._name, exc)
            return None
        self._primary_known = True
        _merge_max(self._known, stored)
        return dict(stored)

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Ticks of ``symbol`` in the range from the primary and the pending spool, in order."""
        found = {t.seq: t for t in await self.spool.read(symbol, from_seq, to_seq)}
        found.update({t.seq: t for t in await self.primary.read(symbol, from_seq, to_seq)})
        return [found[seq] for seq in sorted(found)]

    async def symbols(self) -> list[str]:
        """Every symbol in the primary or the pending spool."""
        return sorted({*await self.primary.symbols(), *await self.spool.symbols()})

    async def duplicates(self) -> int:
        """The primary's duplicate rows (the spool may hold retried batches; drain dedupes)."""
        return await self.primary.duplicates()

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        """Quarantine in the primary, or in the spool while the primary is down."""
        if not entries:
            return
        async with self._lock:
            if self._state is FailoverState.PRIMARY:
                try:
                    await self._guard.run("quarantine", self.primary.quarantine(entries))
                except Exception as exc:
                    self._switch_to_spool()
                    failure: Exception | None = exc
                else:
                    return
            else:
                failure = None
            await self.spool.quarantine(entries)
        if failure is not None:
            await self._report(failure)

    async def quarantined(self) -> list[QuarantinedTick]:
        """Quarantined entries in the primary and the spool."""
        return [*await self.primary.quarantined(), *await self.spool.quarantined()]

    # ------------------------------------------------------------------ internals

    def _remember(self, ticks: Sequence[Tick]) -> None:
        known = self._known
        for tick in ticks:
            if tick.seq > known.get(tick.symbol, 0):
                known[tick.symbol] = tick.seq

    def _set_state(self, state: FailoverState) -> None:
        self._state = state
        for each, event in self._entered.items():
            if each is state:
                event.set()
            else:
                event.clear()

    def _on_switch(self, event: FailoverEvent) -> None:
        """The group switched: writes follow it (to the primary only after a full drain)."""
        self._set_state(
            FailoverState.PRIMARY if event.active == "primary" else FailoverState.SPOOLING
        )

    def _switch_to_spool(self) -> None:
        self._group.report_failure(self._group.members[0])

    async def _fail_over(self, exc: Exception) -> None:
        async with self._lock:
            self._switch_to_spool()
        await self._report(exc)

    async def _report_corruptions(self) -> None:
        found = self.spool.corruptions()
        new, self._reported = found[self._reported :], len(found)
        if new:
            await self._reporter.areport(SpoolCorruptionError(new))

    async def _report(self, exc: Exception) -> None:
        _log.warning("%s: primary %s failed, spooling: %r", self._name, self.primary.name, exc)
        await self._reporter.areport(exc)

    def _failback_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error("%s: failback task died: %r", self._name, exc)
            self._failback_error = exc
            self._died.set()

    async def _run(self) -> None:
        await self._group.run()

    async def _probe(self) -> bool:
        if self._guard.pending("health"):
            return False  # the last probe is still waiting for an answer
        try:
            return (await self._bounded.health()) is True
        except Exception:  # a stall too: a failed probe
            return False

    async def _drain(
        self, _source: FailoverMember[TickStore], _target: FailoverMember[TickStore]
    ) -> bool:
        """The group's drain hook: drain the spool into the primary; True when the last pass
        left it empty (under the write lock: the group switches back to PRIMARY as this returns,
        in the same event-loop step, so no batch can land in the spool after the last pass).

        Passes run without the write lock (writes keep landing in the spool, behind the drained
        batches) only while each pass at least halves the backlog. Once writers refill the spool
        as fast as a pass empties it, more unlocked passes cannot converge, so the last pass runs
        under the lock: it holds writers back for about one pass, then switches to PRIMARY.
        """
        self._set_state(FailoverState.DRAINING)
        try:
            for _ in range(_UNLOCKED_PASSES):
                before = self.spool.pending_batches
                self._drained += await self.spool.drain(self._bounded)
                await self._report_corruptions()
                after = self.spool.pending_batches
                if after <= 0 or 2 * after > before:
                    break
            async with self._lock:
                self._drained += await self.spool.drain(self._bounded)
                await self._report_corruptions()
        except Exception as exc:
            _log.warning("%s: drain into %s failed: %r", self._name, self.primary.name, exc)
            if self._state is FailoverState.DRAINING:
                self._set_state(FailoverState.SPOOLING)
            return False
        return True
