"""A cluster node's sharded ingest (issue 14): lease-driven symbol ownership.

``strategylab node --cluster NAME --postgres DSN --symbols A,B,...`` on several processes, each
given the same symbol list: each process is a member of the cluster's leases
(:class:`strategylab.distributed.SymbolLeases`) and ingests only the symbols it holds a lease
of, writing them through the fence (:meth:`strategylab.market.PostgresTickStore.write_fenced`).

Two loops on the node's event loop, every ``renew_interval`` seconds:

- the renewal: heartbeat and extend the leases held (a lease found taken over is dropped from
  the feed at the next balance);
- the balance: the fair share ``ceil(symbols / live members)``. Below it: acquire free leases,
  then resubscribe the feed with them (the feed resumes each new symbol from the store's last
  durable sequence, read after the acquisition committed: the previous owner's last write is
  in it, and any later one of its writes is fenced out). Above it (a member came back): give
  the surplus up gracefully: resubscribe the feed without them, wait until the ticks the feed
  handed on for them are stored (at most ``flush_timeout``), then release the leases; the
  newcomer acquires them at its next round and resumes from what was flushed.

A write the store fences out (:class:`~strategylab.market.FencedError`: another member holds a
lease this one thought it held) never stops the ingest of the symbols still held:
:class:`FencedWrites`, the store the ingestor writes to, forgets the fenced symbols' leases,
writes the rest of the batch, and the balance drops them from the feed. Their ticks it did not
store are stored by their new owner, which resumes from the shared store's watermark (they are
acknowledged in this node's ack log as the cluster's, see the report of issue 14).

Every node of a cluster must be given the same ``--symbols``: a node whose list differs from a
live member's refuses to join (:meth:`ClusterIngest.open` raises :class:`ConnectionError`, one
line naming both lists: the node exits 1); one that appears later anyway (its heartbeat had
lapsed when the other joined) is logged and shown in ``/status`` (``cluster.mismatched``).

A node whose feed cannot ingest (issue 14, F1) does not keep leases it cannot use. When its
feed, subscribed to the symbols it holds, has been unhealthy (not connected, not subscribed, or
no frame within ``stale_after``: :meth:`Feed.health`) for ``feed_grace`` seconds (default the
lease ``ttl``), the node PARKS: it marks itself parked in the members table (the others stop
counting it in the fair share, so their next round takes its symbols: within ``feed_grace`` +
a round or two), parks its feed, waits for the flush of what it handed on, and releases its
leases. It acquires nothing for a backoff (``park_backoff``: 5 s, doubling to 60 s), then
unparks and takes its share again: that is how it learns its exchange is back, since a feed
with no symbols does not connect. If its feed is still down, it parks again after
``feed_grace`` with the next backoff (a retry costs its share of the symbols about
``feed_grace`` + 2 rounds of ingest each time, at most once a minute once the backoff is at
its cap). After the feed has been healthy for ``feed_grace`` the backoff starts again at 5 s.
All of it is in ``/status`` (``cluster.feed``) and the log.

A cluster node writes straight to PostgreSQL, without the local spool of a standalone node: a
node cut off from the database loses its leases to the others after the ``ttl``, and what it
would spool could never be written under a fence it no longer holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from strategylab._tasks import cancel_and_wait, log_failure
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.distributed import LeaseConfig, SymbolLeases, SymbolSetMismatchError
from strategylab.market import (
    Feed,
    FencedError,
    Ingestor,
    PostgresTickStore,
    QuarantinedTick,
    Tick,
)

__all__ = ["ClusterIngest", "FencedWrites"]

_log = logging.getLogger(__name__)

FLUSH_TIMEOUT: Final = 1.0
"""Seconds a graceful release waits, at most, for the ticks of the symbols it gives up to be
stored (past it the lease is released anyway: the fence refuses their later writes and the
new owner resumes from what the store holds)."""


PARK_BACKOFF: Final = (5.0, 60.0)
"""Seconds a node whose feed is down waits, parked, before it takes a share again: the first
wait, and the cap it doubles up to."""

_FLUSH_POLL: Final = 0.02
"""Seconds between two looks at the flush of the symbols a release gives up."""


class FencedWrites:
    """The store a cluster node's ingestor writes to: the PostgreSQL store, every batch under
    the fence of the leases held now. A :class:`~strategylab.fault_tolerance.Component`-like
    :class:`~strategylab.market.TickStore`.

    Ticks of symbols not held (given up, taken over) are not written: their owner stores them.
    A :class:`~strategylab.market.FencedError` forgets the fenced symbols' leases, calls
    ``on_fenced`` with them, and writes the rest of the batch (never raised to the ingestor)."""

    def __init__(self, store: PostgresTickStore, leases: SymbolLeases, on_fenced: Any) -> None:
        self._store = store
        self._leases = leases
        self._on_fenced = on_fenced
        self.skipped = 0
        """Ticks not written because their symbol's lease was not held (counted)."""
        self._not_stored: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self._store.name

    @property
    def store(self) -> PostgresTickStore:
        """The PostgreSQL store underneath."""
        return self._store

    async def open(self) -> None:
        """Open the store; :class:`ConnectionError` (one line) when it cannot be used."""
        await _opened(self._store.open, self._store.shown_url, "the tick store")

    async def aclose(self) -> None:
        await self._store.aclose()

    async def start(self) -> None:
        await self._store.open()

    async def stop(self) -> None:
        await self._store.aclose()

    async def health(self) -> bool:
        return await self._store.health()

    def not_stored(self) -> frozenset[str]:
        """The symbols of the last batch whose ticks this node did not store (not held, or
        fenced out): the ingestor does not acknowledge them; their owner stores them."""
        return self._not_stored

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Store the batch's ticks of the symbols held, fenced; how many were new."""
        batch = ticks
        self._not_stored = frozenset()
        while True:
            fence = self._leases.fence()
            held = fence.tokens
            mine = [t for t in batch if t.symbol in held]
            if len(mine) != len(batch):
                self.skipped += len(batch) - len(mine)
                self._not_stored |= {t.symbol for t in batch if t.symbol not in held}
            if not mine:
                return 0
            try:
                return await self._store.write_fenced(mine, fence)
            except FencedError as exc:
                gone = self._leases.forget(exc.symbols)
                _log.warning("cluster: %s; dropping %s", exc, ", ".join(exc.symbols))
                if gone:
                    self._on_fenced(gone)
                batch = mine

    async def last_seqs(self) -> dict[str, int]:
        return await self._store.last_seqs()

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        return await self._store.read(symbol, from_seq, to_seq)

    async def symbols(self) -> list[str]:
        return await self._store.symbols()

    async def duplicates(self) -> int:
        return await self._store.duplicates()

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        await self._store.quarantine(entries)

    async def quarantined(self) -> list[QuarantinedTick]:
        return await self._store.quarantined()


async def _opened(open_: Any, shown: str, what: str) -> None:
    """Run ``open_`` (creating tables), again after a lost race with another node creating
    the same ones (``CREATE ... IF NOT EXISTS`` may still collide); a psycopg error becomes a
    :class:`ConnectionError` naming ``what`` and the server (never a password), which the node
    process reports in one line (exit 1)."""
    for attempt in range(3):
        try:
            await open_()
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
            if attempt == 2:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
            continue
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConnectionError(f"--postgres {shown}: {what}: {first}") from None
        return


class ClusterIngest:
    """The node's lease-driven symbol ownership: the leases, the fenced store, and the loops
    that keep the feed's symbol set equal to the leases held."""

    def __init__(
        self,
        dsn: str,
        store: PostgresTickStore,
        config: LeaseConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        flush_timeout: float = FLUSH_TIMEOUT,
        feed_grace: float | None = None,
        park_backoff: tuple[float, float] = PARK_BACKOFF,
    ) -> None:
        """``feed_grace``: seconds the feed may be unhealthy before the node parks (default the
        lease ``ttl``); ``park_backoff``: (first, cap) seconds of a park. ``ValueError`` for a
        value that is not a positive number of seconds."""
        grace = config.ttl if feed_grace is None else feed_grace
        first, cap = park_backoff
        for key, value in (("feed_grace", grace), ("park_backoff", first), ("park_backoff", cap)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key}={value!r}: must be a number of seconds > 0")
        if cap < first:
            raise ValueError(f"park_backoff={park_backoff!r}: the cap must be >= the first wait")
        self._grace = float(grace)
        self._backoff_first, self._backoff_cap = float(first), float(cap)
        self._backoff = self._backoff_first
        self._bad_since: float | None = None
        self._good_since: float | None = None
        self._parked_until: float | None = None
        self._parks = 0
        self._alone_logged = False
        self.leases = SymbolLeases(dsn, config)
        self.config = config
        self.writes = FencedWrites(store, self.leases, self._fenced)
        self._clock = clock
        self._flush_timeout = flush_timeout
        self._feed: Feed | None = None
        self._ingestor: Ingestor | None = None
        self._subscribed: tuple[str, ...] = ()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing: dict[str, str] = {}
        self._rounds = 0
        self._joined = False

    async def open(self) -> tuple[str, ...]:
        """Join the cluster (tables, heartbeat) and take a first share; the symbols held.
        :class:`ConnectionError` (one line, no password) when the database cannot be used, or
        when a live member was given other symbols (naming both lists: nothing joined)."""

        async def join() -> None:
            await self.leases.open()
            plan = await self.leases.plan()
            await self.leases.acquire(plan.wanted)

        try:
            await _opened(join, self.writes.store.shown_url, "the cluster's leases")
        except SymbolSetMismatchError as exc:
            await self.leases.aclose()
            raise ConnectionError(str(exc)) from None
        self._joined = True
        return tuple(sorted(self.leases.held))

    async def start(self, feed: Feed, ingestor: Ingestor | None, *, loops: bool = True) -> None:
        """Set the feed to the symbols held and start the renewal and balance loops (the
        feed is started by the caller). ``loops=False``: no loops (the caller runs
        :meth:`balance` and :meth:`SymbolLeases.renew` itself, e.g. a test on a fake clock)."""
        self._feed, self._ingestor = feed, ingestor
        self._subscribed = tuple(sorted(self.leases.held))
        await feed.resubscribe(self._subscribed)
        if not loops:
            return
        for name, loop in (("renew", self._renew_loop), ("balance", self._balance_loop)):
            task = asyncio.create_task(loop(), name=f"cluster.{name}")
            task.add_done_callback(log_failure)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Stop the loops (the leases stay held until :meth:`leave`)."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)

    async def leave(self) -> None:
        """Release every lease and leave the cluster (after the ingest was flushed); a
        failure is logged (the leases then expire after the ``ttl``)."""
        await self.stop()
        if not self._joined:
            return
        self._joined = False
        try:
            async with asyncio.timeout(2.0):
                await self.leases.leave()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            _log.warning("cluster: leases not released (%r); they expire by themselves", exc)
        await self.leases.aclose()

    def status(self) -> dict[str, Any]:
        """``/status``'s ``cluster``: the symbols held with their tokens, the members seen,
        the share, the counters, and what is failing (``{"renew": reason}``)."""
        now = self._clock.monotonic()
        until, bad = self._parked_until, self._bad_since
        return self.leases.statistics().to_dict() | {
            "subscribed": list(self._subscribed),
            "skipped_ticks": self.writes.skipped,
            "failing": dict(self._failing),
            "feed": {
                "parked": until is not None,
                "parked_for": None if until is None else round(max(until - now, 0.0), 3),
                "unhealthy_for": None if bad is None else round(now - bad, 3),
                "grace": self._grace,
                "next_backoff": self._backoff,
                "parks": self._parks,
            },
        }

    # ------------------------------------------------------------------ loops

    def _fenced(self, symbols: list[str]) -> None:
        """The fenced store's callback: the balance drops them from the feed at once."""
        _log.info("cluster: fenced out of %s", ", ".join(symbols))
        self._wake.set()

    async def _renew_loop(self) -> None:
        interval = self.config.renew_interval
        while True:
            try:
                if await self.leases.renew():
                    self._wake.set()
                self._ok("renew")
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._fail("renew", exc)
            await self._clock.asleep(interval)

    async def _balance_loop(self) -> None:
        interval = self.config.renew_interval
        while True:
            self._wake.clear()  # before the round: a loss found during it wakes the next one
            try:
                await self._balance()
                self._ok("balance")
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._fail("balance", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    async def balance(self) -> None:
        """One balance round (what the balance loop runs every ``renew_interval``)."""
        await self._balance()

    async def _balance(self) -> None:
        """One round: park or unpark on the feed's health; give the surplus up, or acquire up
        to the share; then the feed follows."""
        self._rounds += 1
        leases = self.leases
        if await self._parking():
            return
        plan = await leases.plan()
        if plan.surplus:
            keep = tuple(s for s in sorted(leases.held) if s not in plan.surplus)
            removed = await self._resubscribe(keep)
            await self._flushed({s: removed[s] for s in plan.surplus if s in removed})
            await leases.release(plan.surplus)
            _log.info("cluster: released %s (share %d)", ", ".join(plan.surplus), plan.share)
        elif plan.wanted:
            got = await leases.acquire(plan.wanted)
            if got:
                _log.info("cluster: acquired %s", ", ".join(f"{s}#{t}" for s, t in got.items()))
        held = tuple(sorted(leases.held))
        if held != self._subscribed:
            await self._resubscribe(held)

    async def _parking(self) -> bool:
        """Watch the feed's health; park, stay parked or unpark. True while parked (the round
        ends there)."""
        now = self._clock.monotonic()
        if self._parked_until is not None:
            return await self._still_parked(now)
        if not await self._feed_down_for_grace(now):
            return False
        await self.leases.plan()
        if not self.leases.peers:
            # Nobody could take the symbols over: keep them, keep the feed reconnecting.
            if not self._alone_logged:
                self._alone_logged = True
                _log.warning(
                    "cluster: the feed has been unhealthy for %.1fs but no live peer could take "
                    "%s over: keeping the leases",
                    now - (self._bad_since or now),
                    ", ".join(sorted(self.leases.held)) or "nothing",
                )
            return False
        self._alone_logged = False
        await self._park(now)
        return True

    async def _still_parked(self, now: float) -> bool:
        """Parked: stay so until the backoff ends, unless no live peer is left to ingest the
        symbols (an exchange down for every node, say: parking then gains nothing)."""
        if self.leases.held:  # a release that failed before: try again
            await self._release_all()
        until = self._parked_until
        if until is not None and now < until:
            await self.leases.plan()
            if self.leases.peers:
                return True
            _log.warning("cluster: parked with no live peer to take over: unparking now")
        self._parked_until = None
        self._bad_since = self._good_since = None
        await self.leases.set_parked(False)
        _log.warning(
            "cluster: unparked: taking a share again to try the feed "
            "(parks again after %.1fs unhealthy, for %.0fs)",
            self._grace,
            self._backoff,
        )
        return False

    async def _feed_down_for_grace(self, now: float) -> bool:
        """Whether the feed, with symbols subscribed, has been unhealthy for ``feed_grace``
        (tracks the healthy stretch that resets the park backoff, too)."""
        feed = self._feed
        if feed is None or not feed.symbols:
            self._bad_since = self._good_since = None  # nothing subscribed: nothing to judge
            return False
        if await feed.health():
            self._bad_since = None
            if self._good_since is None:
                self._good_since = now
            elif now - self._good_since >= self._grace and self._backoff != self._backoff_first:
                self._backoff = self._backoff_first
                _log.warning("cluster: the feed is healthy again; park backoff reset")
            return False
        self._good_since = None
        if self._bad_since is None:
            self._bad_since = now
        return now - self._bad_since >= self._grace

    async def _park(self, now: float) -> None:
        """Mark this member parked, release every lease, take nothing for the backoff."""
        bad_since = self._bad_since if self._bad_since is not None else now
        wait, self._backoff = self._backoff, min(self._backoff * 2, self._backoff_cap)
        self._parked_until = now + wait
        self._parks += 1
        held = sorted(self.leases.held)
        _log.warning(
            "cluster: the feed has been unhealthy for %.1fs: parking, releasing %s, taking no "
            "share for %.0fs",
            now - bad_since,
            ", ".join(held) or "nothing",
            wait,
        )
        self._bad_since = None
        await self.leases.set_parked(True)  # first: the others stop counting this node
        await self._release_all()

    async def _release_all(self) -> None:
        """Park the feed, wait for the flush of what it handed on, release every lease."""
        held = tuple(sorted(self.leases.held))
        removed = await self._resubscribe(())
        await self._flushed({s: removed[s] for s in held if s in removed})
        await self.leases.release(held)

    async def _resubscribe(self, symbols: tuple[str, ...]) -> dict[str, int]:
        feed = self._feed
        if feed is None:
            return {}
        self._subscribed = symbols
        return await feed.resubscribe(symbols)

    async def _flushed(self, positions: dict[str, int]) -> None:
        """Wait until the ticks handed on for ``positions`` are stored: accounted for by the
        ingestor, or found in the store (a position the feed resumed from and never moved
        past is already there); at most ``flush_timeout`` seconds."""
        ingestor = self._ingestor
        if ingestor is None:
            return
        clock = self._clock
        deadline = clock.monotonic() + self._flush_timeout
        pending = dict(positions)
        while True:
            done = ingestor.accounted()
            pending = {s: n for s, n in pending.items() if done.get(s, 0) < n}
            if pending:
                stored = await self.writes.last_seqs()
                pending = {s: n for s, n in pending.items() if stored.get(s, 0) < n}
            if not pending:
                return
            if clock.monotonic() >= deadline:
                _log.warning(
                    "cluster: releasing %s before their flush ended (still to store: %s); "
                    "their later writes are fenced out",
                    ", ".join(positions),
                    pending,
                )
                return
            await clock.asleep(_FLUSH_POLL)

    def _ok(self, what: str) -> None:
        if self._failing.pop(what, None) is not None:
            _log.warning("cluster: lease %s works again", what)

    def _fail(self, what: str, exc: BaseException) -> None:
        if what not in self._failing:
            _log.warning("cluster: lease %s failed: %r (retrying every round)", what, exc)
        self._failing[what] = repr(exc)[:200]
