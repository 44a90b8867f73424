"""The FAILOVER recovery strategy for the tick store: primary, else the durable local spool.

States::

    PRIMARY ──write fails / failover()──▶ SPOOLING ──probe: primary healthy──▶ DRAINING
       ▲                                     ▲                                    │
       └──────────── spool empty ────────────┼──────── drain write fails ─────────┘

- PRIMARY: writes go to the primary. A write that fails is reported to the manager and the same
  batch goes to the spool (fsynced, so it is acknowledged); the store is now SPOOLING.
- SPOOLING: every write goes to the spool. An owned background task probes ``primary.health()``
  every ``probe_interval`` seconds.
- DRAINING: the probe succeeded; the spool is drained into the primary in order while new writes
  still go to the spool (behind the drained batches, so a symbol's ticks reach the primary in
  order). When a drain pass leaves the spool empty, the switch back to PRIMARY happens under the
  write lock, so no batch can land in the spool after the last pass. A failed drain write goes
  back to SPOOLING; the segment it was draining stays in the spool and is drained again later (the
  primary is idempotent, so the re-drain cannot duplicate).

An acknowledged batch is either committed in the primary or fsynced in the spool, and it leaves
the spool only after the primary committed it: nothing acknowledged is lost.

Only the error that starts an outage is reported to the recovery manager. Failed probes and failed
drain attempts during the same outage are counted in :meth:`FailoverStore.statistics` instead:
reporting each one would look like a storm of new errors and escalate (for a full disk, to the
emergency shutdown) while the failover is doing its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Sequence
from typing import Final

from strategylab.fault_tolerance import ErrorRecoveryManager

from ._spool import SpoolStore
from ._store import QuarantinedTick, TickStore
from ._tick import Tick

__all__ = ["FailoverState", "FailoverStatistics", "FailoverStore"]

_log = logging.getLogger(__name__)

_UNLOCKED_PASSES: Final = 8
"""At most this many drain passes run while writes keep going to the spool (see ``_drain``)."""


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


def _merge_max(into: dict[str, int], other: dict[str, int]) -> None:
    for symbol, seq in other.items():
        if seq > into.get(symbol, 0):
            into[symbol] = seq


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
        name: str = "store",
    ) -> None:
        if probe_interval <= 0:
            raise ValueError(f"probe_interval={probe_interval!r}: must be > 0")
        self.primary = primary
        self.spool = spool
        self._manager = manager
        self._probe_interval = probe_interval
        self._name = name
        self._state = FailoverState.PRIMARY
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._entered = {state: asyncio.Event() for state in FailoverState}
        self._entered[FailoverState.PRIMARY].set()
        self._task: asyncio.Task[None] | None = None
        self._failback_error: BaseException | None = None
        self._died = asyncio.Event()
        self._known: dict[str, int] = {}
        self._to_primary = 0
        self._to_spool = 0
        self._drained = 0
        self._failovers = 0
        self._failbacks = 0
        self._failed_probes = 0
        self._failed_drains = 0

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
        try:
            await self.primary.open()
        except Exception as exc:
            await self._fail_over(exc)
        else:
            if not self.spool.is_empty():
                self._set_state(FailoverState.SPOOLING)
                self._failovers += 1
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
            return await self.primary.health()
        return await self.spool.health()

    async def failover(self) -> bool:
        """Switch writes to the spool now (the FAILOVER strategy); False if already there."""
        async with self._lock:
            if self._state is not FailoverState.PRIMARY:
                return True
            self._switch_to_spool()
            return True

    def statistics(self) -> FailoverStatistics:
        """A snapshot of the counters."""
        return FailoverStatistics(
            state=self._state,
            batches_to_primary=self._to_primary,
            batches_to_spool=self._to_spool,
            batches_drained=self._drained,
            failovers=self._failovers,
            failbacks=self._failbacks,
            failed_probes=self._failed_probes,
            failed_drains=self._failed_drains,
            spool_pending=self.spool.pending_batches,
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

        Returns the primary's count of new ticks, or ``len(ticks)`` when spooled.
        """
        if not ticks:
            return 0
        failure: Exception | None = None
        async with self._lock:
            if self._state is FailoverState.PRIMARY:
                try:
                    written = await self.primary.write(ticks)
                except Exception as exc:
                    failure = exc
                    self._switch_to_spool()
                else:
                    self._to_primary += 1
                    self._remember(ticks)
                    return written
            written = await self.spool.write(ticks)
            self._to_spool += 1
            self._remember(ticks)
        if failure is not None:
            await self._report(failure)
        return written

    async def last_seqs(self) -> dict[str, int]:
        """The highest sequence per symbol in the primary or the spool (or acknowledged here)."""
        merged = dict(self._known)
        _merge_max(merged, await self.spool.last_seqs())
        with contextlib.suppress(Exception):
            _merge_max(merged, await self.primary.last_seqs())
        return merged

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
                    await self.primary.quarantine(entries)
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
        self._wake.set()

    def _switch_to_spool(self) -> None:
        self._failovers += 1
        self._set_state(FailoverState.SPOOLING)

    async def _fail_over(self, exc: Exception) -> None:
        async with self._lock:
            self._switch_to_spool()
        await self._report(exc)

    async def _report(self, exc: Exception) -> None:
        _log.warning("%s: primary %s failed, spooling: %r", self._name, self.primary.name, exc)
        if self._manager is not None:
            await self._manager.handle(exc, component=self._name)

    def _failback_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error("%s: failback task died: %r", self._name, exc)
            self._failback_error = exc
            self._died.set()

    async def _run(self) -> None:
        while True:
            if self._state is FailoverState.PRIMARY:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not await self._probe():
                self._failed_probes += 1
                await asyncio.sleep(self._probe_interval)
                continue
            if not await self._drain():
                self._failed_drains += 1
                await asyncio.sleep(self._probe_interval)

    async def _probe(self) -> bool:
        try:
            return (await self.primary.health()) is True
        except Exception:
            return False

    async def _drain(self) -> bool:
        """Drain the spool into the primary; True once switched back to PRIMARY.

        Passes run without the write lock (writes keep landing in the spool, behind the drained
        batches) only while each pass at least halves the backlog. Once writers refill the spool
        as fast as a pass empties it, more unlocked passes cannot converge, so the last pass runs
        under the lock: it holds writers back for about one pass, then switches to PRIMARY.
        """
        self._set_state(FailoverState.DRAINING)
        try:
            for _ in range(_UNLOCKED_PASSES):
                before = self.spool.pending_batches
                self._drained += await self.spool.drain(self.primary)
                after = self.spool.pending_batches
                if after <= 0 or 2 * after > before:
                    break
            async with self._lock:
                self._drained += await self.spool.drain(self.primary)
                self._failbacks += 1
                self._set_state(FailoverState.PRIMARY)
        except Exception as exc:
            _log.warning("%s: drain into %s failed: %r", self._name, self.primary.name, exc)
            if self._state is FailoverState.DRAINING:
                self._set_state(FailoverState.SPOOLING)
            return False
        return True
