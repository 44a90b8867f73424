"""The ingestor: a bounded queue between a feed and a tick store, written in batches.

The feed ``await``s :meth:`Ingestor.put` once per frame; when the queue holds ``max_queue`` ticks
the call waits, so a slow store slows the socket reads instead of growing memory. One writer task
takes up to ``batch_size`` ticks (waiting up to ``linger`` seconds for a batch to fill), writes them
with ``store.write`` (idempotent on (symbol, seq)) and only then ACKNOWLEDGES them: the per-symbol
watermarks go to the :class:`AckLog` and the counters. A failed write is reported to the recovery
manager and retried with backoff, forever: a batch is never dropped (with a ``FailoverStore`` the
failover to the spool happens inside the store).

A batch leaves the queue only once it is acknowledged, i.e. stored AND its watermarks are in the ack
log. When the ack-log append fails (``ENOSPC`` on a full disk) after the store committed, the
failure is reported like a failed write (classified DISK_SPACE_EXHAUSTED) and only the append is
retried, with the same backoff, until space returns; the queue keeps the batch, so ``queued`` stays
honest and the feed is held back. An ack that could not be written yet is never a loss (the ack log
may claim less than is stored, never more).

The writer task is owned by a :class:`~strategylab._tasks.SupervisedTask`: should it die of an
unexpected exception anyway, the failure is reported to the recovery manager,
:meth:`Ingestor.health` is False while it is down, and it is restarted with backoff, resuming at
the head of the queue (writes are idempotent, so a batch written twice is stored once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import random
from collections.abc import Mapping

from strategylab._tasks import SupervisedTask
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, StrategyLabError
from strategylab.fault_tolerance import (
    ErrorContext,
    ErrorRecoveryManager,
    ErrorReporter,
    KnobValue,
    ScalingKnob,
    classify,
    scale_knobs,
)

from ._feed_backoff import Backoff
from ._ledger import AckLog
from ._store import QuarantinedTick, TickStore
from ._tick import Tick

__all__ = ["IngestStatistics", "Ingestor", "IngestorClosedError", "IngestorConfig"]

_log = logging.getLogger(__name__)
_MAX_REPORTS = 8
"""Error reports in flight at once (beyond, a report is counted as dropped)."""


class IngestorClosedError(StrategyLabError):
    """Ticks were offered to an ingestor that has been closed."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestorConfig:
    """Queue bound, batching and retry settings of an :class:`Ingestor`."""

    max_queue: int = 200_000
    """Ticks queued before :meth:`Ingestor.put` waits (exceeded by at most one frame)."""
    batch_size: int = 20_000
    linger: float = 0.02
    retry_floor: float = 0.05
    retry_cap: float = 2.0
    scale_limit: int = 4
    """RESOURCE_SCALING (:meth:`Ingestor.scale`) may raise ``batch_size`` and ``max_queue`` up
    to this multiple of their configured values."""
    name: str = "ingestor"

    def __post_init__(self) -> None:
        for key in ("max_queue", "batch_size", "scale_limit"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(key, value, "must be an int >= 1")
        for key in ("linger", "retry_floor", "retry_cap"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(key, value, "must be a finite number >= 0")
        if not self.retry_floor > 0:
            raise ConfigurationError("retry_floor", self.retry_floor, "must be > 0")
        if self.retry_cap < self.retry_floor:
            raise ConfigurationError("retry_cap", self.retry_cap, "must be >= retry_floor")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestStatistics:
    """A frozen snapshot of an ingestor's counters."""

    queued: int
    """Ticks waiting in the queue now."""
    queue_peak: int
    batches: int
    acknowledged: int
    """Ticks whose batch write returned (stored, or already stored)."""
    new: int
    """Of those, how many the store reported as new."""
    quarantined: int
    write_failures: int
    writing: bool
    """A write is in progress or being retried."""
    acked: Mapping[str, int]
    """The acknowledged watermark per symbol."""
    healthy: bool = True
    """The writer is running and neither a write nor an ack-log append is failing right now."""
    failing: str | None = None
    """What is failing right now (``"write"``, ``"ack_log"``, ``"writer"``), else None."""
    restarts: int = 0
    """Times the writer task died and was restarted by its supervisor."""
    batch_size: int = 0
    """The batch size in force now (RESOURCE_SCALING may have changed it)."""
    max_queue: int = 0
    """The queue bound in force now (RESOURCE_SCALING may have changed it)."""


class _Quarantine:
    """Refused input queued in order with the ticks; ``written`` once the store holds it (a
    span re-taken after an interrupted tick write does not quarantine it twice)."""

    __slots__ = ("entries", "written")

    def __init__(self, entries: list[QuarantinedTick]) -> None:
        self.entries = entries
        self.written = False


class _Span:
    """The head of the queue one write cycle deals with: its ticks, the quarantine items
    interleaved with them, and how many queue items it covers (NOT removed yet)."""

    __slots__ = ("items", "quarantine", "ticks")

    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.quarantine: list[_Quarantine] = []
        self.items = 0


class Ingestor:
    """Bounded, batched, acknowledged writes into a :class:`TickStore` (a Component)."""

    def __init__(
        self,
        store: TickStore,
        config: IngestorConfig | None = None,
        *,
        ack_log: AckLog | None = None,
        manager: ErrorRecoveryManager | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._config = config if config is not None else IngestorConfig()
        # The scalable knobs: read on every batch and every put, so a change applies next time.
        self._batch_size = self._config.batch_size
        self._max_queue = self._config.max_queue
        limit = self._config.scale_limit
        self._knobs = (
            ScalingKnob(
                name="batch_size",
                getter=lambda: self._batch_size,
                setter=self._set_batch_size,
                lower=1,
                upper=self._config.batch_size * limit,
            ),
            ScalingKnob(
                name="max_queue",
                getter=lambda: self._max_queue,
                setter=self._set_max_queue,
                lower=1,
                upper=self._config.max_queue * limit,
            ),
        )
        self._ack_log = ack_log
        self._manager = manager
        self._clock = clock
        self._backoff = Backoff(
            self._config.retry_floor, self._config.retry_cap, rng=rng, clock=clock
        )
        self._queue: collections.deque[list[Tick] | _Quarantine] = collections.deque()
        self._size = 0
        self._peak = 0
        self._space = asyncio.Event()
        self._space.set()
        self._items = asyncio.Event()
        self._full_batch = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._supervisor = SupervisedTask(
            self._writer,
            name=f"{self._config.name}.writer",
            on_failure=self._writer_died,
            delay=lambda _n: self._backoff.next_delay(),
            clock=clock,
        )
        # No folding here: the ingestor reports one error per outage itself (``_failing``).
        self._reporter = ErrorReporter(
            manager,
            component=self._config.name,
            quiet=0.0,
            recovered_quiet=0.0,
            max_pending=_MAX_REPORTS,
            clock=clock,
        )
        self._draining = False
        self._closed = False
        self._writing = False
        self._failing = False
        self._failing_what: str | None = None
        self._acked: dict[str, int] = {}
        self._accounted: dict[str, int] = {}
        self._batches = self._acknowledged = self._new = 0
        self._quarantined = self._failures = 0

    # ------------------------------------------------------------------ the feed's side (TickSink)

    async def put(self, ticks: list[Tick]) -> None:
        """Queue ``ticks``; waits while ``max_queue`` ticks are queued. Cancel-safe: a cancelled
        call queued nothing."""
        if self._closed:
            raise IngestorClosedError(f"{self.name} is closed; {len(ticks)} ticks refused")
        while self._size >= self._max_queue:
            self._space.clear()
            await self._space.wait()
        self._queue.append(ticks)
        size = self._size = self._size + len(ticks)
        self._peak = max(self._peak, size)
        self._items.set()
        if size >= self._batch_size:
            self._full_batch.set()

    async def quarantine(self, entries: list[QuarantinedTick]) -> None:
        """Queue refused input for the store's quarantine, in order with the ticks."""
        if self._closed:
            raise IngestorClosedError(f"{self.name} is closed; {len(entries)} entries refused")
        self._queue.append(_Quarantine(list(entries)))
        self._items.set()

    async def last_seqs(self) -> dict[str, int]:
        """The store's highest stored sequence per symbol (where a feed resumes)."""
        return await self._store.last_seqs()

    # ------------------------------------------------------------------ Component

    @property
    def name(self) -> str:
        """The component name."""
        return self._config.name

    @property
    def store(self) -> TickStore:
        """The store written to."""
        return self._store

    async def start(self) -> None:
        """Start the writer task (the queue survives a stop/start)."""
        if self._closed:
            raise IngestorClosedError(f"{self.name} is closed")
        if self._task is None or self._task.done():
            self._draining = False
            self._task = self._supervisor.start()

    async def stop(self) -> None:
        """Stop the writer now; queued ticks stay queued for the next :meth:`start`."""
        current = asyncio.current_task()
        if self._task is not current:
            await self._supervisor.stop()
        await self._reporter.aclose()
        self._task = None
        self._writing = False

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Write everything queued, then stop the writer; ``TimeoutError`` after ``timeout``."""
        if self._task is None or self._task.done():
            await self.start()
        self._draining = True
        self._items.set()
        self._full_batch.set()
        task = self._task
        assert task is not None  # noqa: S101 - start() just set it
        async with asyncio.timeout(timeout):
            await asyncio.shield(task)

    async def aclose(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Drain within ``timeout`` seconds, then stop; ticks still queued are reported."""
        try:
            await self.drain(timeout)
        except TimeoutError:
            _log.error(
                "%s: %d ticks still queued after %.1fs; not acknowledged",
                self.name,
                self._size,
                timeout,
            )
        finally:
            self._closed = True
            await self.stop()
            if self._ack_log is not None:
                self._ack_log.close()

    async def restart(self) -> None:
        """Restart the writer, keeping the queue."""
        await self.stop()
        await self.start()

    async def health(self) -> bool:
        """Writer running (not down awaiting a restart), the last write and ack-log append did
        not fail, and a store round trip succeeds."""
        if not self._healthy_now():
            return False
        return await self._store.health()

    def _healthy_now(self) -> bool:
        task = self._task
        return (
            task is not None
            and not task.done()
            and not self._supervisor.down
            and (not self._failing)
        )

    def statistics(self) -> IngestStatistics:
        """A frozen snapshot of the counters."""
        return IngestStatistics(
            queued=self._size,
            queue_peak=self._peak,
            batches=self._batches,
            acknowledged=self._acknowledged,
            new=self._new,
            quarantined=self._quarantined,
            write_failures=self._failures,
            writing=self._writing,
            acked=dict(self._acked),
            healthy=self._healthy_now(),
            failing="writer" if self._supervisor.down else self._failing_what,
            restarts=self._supervisor.restarts,
            batch_size=self._batch_size,
            max_queue=self._max_queue,
        )

    # ------------------------------------------------------------------ RESOURCE_SCALING

    def knob(self, name: str) -> ScalingKnob:
        """The scaling knob ``name`` (``batch_size`` or ``max_queue``): its ``setter`` applies an
        exact value to the running ingestor (the next batch, the next ``put``) within
        ``[lower, upper]``; ``KeyError`` naming ``name`` for another name."""
        for knob in self._knobs:
            if knob.name == name:
                return knob
        raise KeyError(f"the ingestor has no scaling knob {name!r}")

    def knobs(self) -> tuple[KnobValue, ...]:
        """The scalable resources (``batch_size``, ``max_queue``) with their values and bounds."""
        return tuple(knob.snapshot() for knob in self._knobs)

    async def scale(self, factor: float) -> bool:
        """``Scalable.scale``: multiply the batch size and the queue bound by ``factor``
        within ``[1, configured * scale_limit]``; False when both are already at the bound.

        The next batch the writer takes and the next :meth:`put` use the new values."""
        return scale_knobs(self._knobs, factor)

    def _set_batch_size(self, value: int) -> None:
        self._batch_size = value
        if self._size >= value:
            self._full_batch.set()

    def _set_max_queue(self, value: int) -> None:
        self._max_queue = value
        if self._size < value:
            self._space.set()

    def accounted(self) -> dict[str, int]:
        """Per symbol, the highest sequence durably dealt with: stored or quarantined."""
        return dict(self._accounted)

    async def wait_accounted(self, targets: Mapping[str, int], timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every ``targets[symbol]`` is stored or quarantined; ``TimeoutError`` names
        the symbols still behind."""
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: not self._behind(targets))
        except TimeoutError as exc:
            raise TimeoutError(
                f"{self.name}: still behind after {timeout}s: {self._behind(targets)}"
            ) from exc

    def _behind(self, targets: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        return {
            s: (self._accounted.get(s, 0), n)
            for s, n in targets.items()
            if self._accounted.get(s, 0) < n
        }

    # ------------------------------------------------------------------ the writer

    async def _writer(self) -> None:
        cfg = self._config
        while True:
            if not self._queue:
                if self._draining:
                    return
                self._items.clear()
                await self._items.wait()
                continue
            if self._size < self._batch_size and cfg.linger > 0 and not self._draining:
                self._full_batch.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(cfg.linger):
                        await self._full_batch.wait()
            # One cycle takes ticks AND the quarantine entries queued among them: refused input
            # never splits a batch (a frame with one invalid tick in it used to cost a linger and
            # a commit of its own, twice, and the writer fell behind a feed of such frames).
            span = self._take(self._batch_size)
            await self._write_span(span)
            self._take_done(span)
            if self._size < self._max_queue:
                self._space.set()

    def _take(self, limit: int) -> _Span:
        """The head of the queue up to ``limit`` ticks plus quarantine entries (at least one
        whole item), NOT removed. Quarantine items already written count as taken, but their
        entries are not written again."""
        span = _Span()
        taken = 0
        for item in self._queue:
            if isinstance(item, _Quarantine):
                size = 0 if item.written else len(item.entries)
                if span.items and taken + size > limit:
                    break
                span.quarantine.append(item)
            else:
                size = len(item)
                if span.items and taken + size > limit:
                    break
                span.ticks.extend(item)
            taken += size
            span.items += 1
        return span

    def _take_done(self, span: _Span) -> None:
        queue = self._queue
        for _ in range(span.items):
            queue.popleft()
        self._size -= len(span.ticks)

    async def _write_span(self, span: _Span) -> None:
        """Quarantine the span's refused input (one transaction), then write and acknowledge
        its ticks (one transaction); only then is any of it accounted for. Quarantine first: a
        crash in between re-receives (and re-quarantines) the refused ticks on resume, where the
        other order would leave refused ticks below the stored watermark never quarantined."""
        pending = [item for item in span.quarantine if not item.written]
        if pending:
            entries = (
                pending[0].entries
                if len(pending) == 1
                else [entry for item in pending for entry in item.entries]
            )
            await self._write_quarantine(entries)
            for item in pending:
                item.written = True
        if span.ticks:
            await self._write(span.ticks)
        if span.quarantine:
            await self._account_quarantine(span.quarantine)

    async def _write(self, batch: list[Tick]) -> None:
        store = self._store
        self._writing = True
        while True:
            try:
                new = await store.write(batch)
            except Exception as exc:
                await self._failed("write", exc, len(batch))
                continue
            break
        handed, watermarks, stored = _stored(store, batch)
        ack_log = self._ack_log
        if ack_log is not None and watermarks:
            while True:
                try:
                    ack_log.append(watermarks)
                except OSError as exc:
                    # Stored but not yet acknowledged: retry the append only (not the write).
                    await self._failed("ack_log", exc, len(batch))
                    continue
                break
        self._recovered()
        self._writing = False
        self._batches += 1
        self._acknowledged += stored
        self._new += new
        acked = self._acked
        accounted = self._accounted
        for symbol, seq in watermarks.items():
            if seq > acked.get(symbol, 0):
                acked[symbol] = seq
        for symbol, seq in handed.items():
            if seq > accounted.get(symbol, 0):
                accounted[symbol] = seq
        async with self._progress:
            self._progress.notify_all()

    async def _failed(self, what: str, exc: Exception, size: int) -> None:
        """Count a failed write or append, report the one that starts an outage, back off."""
        self._failures += 1
        if not self._failing:
            # Only the failure that starts an outage is reported; the retries that follow are
            # counted (a storm of reports would escalate to a shutdown).
            self._report(exc)
        self._failing = True
        self._failing_what = what
        delay = self._backoff.next_delay()
        _log.warning(
            "%s: %s of %d ticks failed (%r); retry in %.3fs", self.name, what, size, exc, delay
        )
        await self._clock.asleep(delay)

    def _recovered(self) -> None:
        self._failing = False
        self._failing_what = None
        self._backoff.reset()

    async def _write_quarantine(self, entries: list[QuarantinedTick]) -> None:
        while True:
            try:
                await self._store.quarantine(entries)
            except Exception as exc:
                await self._failed("quarantine", exc, len(entries))
                continue
            break
        self._recovered()
        self._quarantined += len(entries)

    async def _account_quarantine(self, items: list[_Quarantine]) -> None:
        """Move the accounted watermarks over quarantined entries (their span's ticks are
        stored: nothing below them is still waiting)."""
        accounted = self._accounted
        for item in items:
            for entry in item.entries:
                if entry.symbol is not None and entry.seq is not None:
                    # A lost-range entry names its first seq; the feed moved past the whole range.
                    top = _range_end(entry)
                    if top > accounted.get(entry.symbol, 0):
                        accounted[entry.symbol] = top
        async with self._progress:
            self._progress.notify_all()

    # ------------------------------------------------------------------ reporting

    def _writer_died(self, exc: Exception) -> None:
        """The supervisor's ``on_failure``: count and report; the queue is kept for the restart."""
        self._failures += 1
        self._writing = False
        self._report(exc)

    def _report(self, exc: Exception) -> None:
        manager = self._manager
        if manager is None:
            return
        # Classified as the store's error (a lost connection, a full disk), recovered as ours.
        kind = classify(exc, component=self._store.name)
        context = ErrorContext.from_exception(
            exc,
            component=self.name,
            error_type=kind,
            severity=manager.policies[kind].severity,
            metadata={"store": self._store.name},
            capture_state=False,
            clock=self._clock,
        )
        self._reporter.report(context)


def _range_end(entry: QuarantinedTick) -> int:
    """The last seq an entry accounts for: ``seq``, or the end of a ``lost range a..b``."""
    seq = entry.seq if entry.seq is not None else 0
    prefix = "lost range "
    if entry.reason.startswith(prefix):
        span = entry.reason[len(prefix) :].split(":", 1)[0]
        _, _, end = span.partition("..")
        with contextlib.suppress(ValueError):
            return max(seq, int(end))
    return seq


def _stored(store: object, batch: list[Tick]) -> tuple[dict[str, int], dict[str, int], int]:
    """The batch's watermarks per symbol: handed on, stored (to acknowledge), and how many ticks
    were stored. A store that shards symbols (a cluster node's fenced writes) may leave some of a
    batch to their owner (its ``not_stored()``): accounted for, never acknowledged here."""
    handed = {t.symbol: t.seq for t in batch}
    not_stored = getattr(store, "not_stored", None)
    gone = not_stored() if not_stored is not None else ()
    if not gone:
        return handed, handed, len(batch)
    stored = {s: q for s, q in handed.items() if s not in gone}
    return handed, stored, sum(t.symbol not in gone for t in batch)
