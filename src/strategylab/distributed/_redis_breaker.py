"""Shared circuit-breaker state on Redis: every process's breaker of one name sees one state.

Give a breaker the backend when it is made, ``CircuitBreaker("quotes", shared=backend)``; the
backend then keeps it in step with every other process's breaker named ``quotes`` under the same
key prefix. What it does better than pybreaker's ``CircuitRedisStorage`` (its issues #15, #24 and
#28, which this design answers):

- **The hot path stays local.** A CLOSED call and an OPEN rejection never talk to Redis; only the
  breaker's transitions do, through a background thread, so a call never waits on Redis. The one
  exception is the HALF_OPEN trial claim, which must be decided cluster-wide before the call runs
  (one round trip, bounded by ``timeout``).
- **One transition, not two.** Every transition runs in one atomic server-side Lua script
  (:mod:`._redis_breaker_lua`) keyed on a shared generation and epoch: of two processes tripping
  at once one makes the transition and the other adopts its state. Each change is PUBLISHed;
  peers adopt it as soon as the message arrives (``bench/cluster_breaker.py`` measures it).
- **One clock.** ``opened_at`` is Redis server time (``TIME`` inside the script); a process
  receives the *remaining* milliseconds and sets its own monotonic timer from them, so every
  process half-opens at the same moment without synchronised wall clocks (pybreaker shared a
  state name but each process kept its own ``opened_at``: #24).
- **One trial cluster-wide.** A HALF_OPEN breaker claims its trial in the script; at most
  ``half_open_max_calls`` claims per HALF_OPEN period across the cluster, the others reject as
  saturated until the outcome is published. A claim whose process died lapses after
  ``trial_ttl`` seconds, and an undecided HALF_OPEN re-opens after ``max_wait_in_half_open``.
- **Starting never resets.** A process that starts or re-joins adopts the shared state; a missing
  hash (a new breaker, or Redis's data lost) is created from the local state, never over an
  existing one (pybreaker reset the shared state on start, #15, and failed on a lost key, #28).
- **Losing Redis's data never closes a breaker.** A hash created again after the data was lost
  (``FLUSHALL``, a restart without persistence) has a new *generation*. A process that sees a new
  generation counts the loss (``recreated``), logs it and reports a :class:`SharedStateLostError`;
  if its own breaker is OPEN or HALF_OPEN and the new hash is CLOSED (made by a process that
  knew nothing of the old one) it does not adopt CLOSED but re-asserts its state: OPEN with its
  remaining time, HALF_OPEN with its trials in flight (the restart-resets fault, #15, in the
  form data loss takes).
- **Redis gone: local, reported, re-joined without flapping.** When Redis is unreachable every
  breaker keeps working on its own (:attr:`RedisBreakerBackend.degraded`,
  :meth:`~RedisBreakerBackend.health`, :meth:`~RedisBreakerBackend.metrics`, and one report per
  episode through an optional :class:`~strategylab.fault_tolerance.ErrorReporter`). It re-joins
  only after ``rejoin_pings`` consecutive successful pings spanning ``rejoin_hold`` seconds of
  ``clock``, so a Redis that comes and goes does not make the breakers come and go.

Keys: ``{prefix}:{name}:state`` (a hash) and the channel ``{prefix}:{name}:events``
(:func:`breaker_keys`), where ``name`` has ``%`` and ``:`` percent-encoded (``%25``, ``%3A``; RFC
3986 §2.1) so that no two (prefix, name) pairs share a key: ``P`` + ``a:b`` is ``P:a%3Ab:state``,
``P:a`` + ``b`` is ``P:a:b:state``. A name without either character is used as it is. ``prefix``
defaults to ``strategylab:breaker``. Operator overrides (FORCED_OPEN, FORCED_CLOSED, DISABLED)
stay local to the process that set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import queue
import secrets
import threading
import time
from typing import TYPE_CHECKING, Final, NamedTuple, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, FaultToleranceError
from strategylab.fault_tolerance import BreakerState, ErrorType, HealthState

from ._redis_breaker_lua import SCRIPT

if TYPE_CHECKING:
    from redis.client import PubSub

    from strategylab.fault_tolerance import CircuitBreaker, ErrorReporter

__all__ = [
    "RedisBreakerBackend",
    "RedisBreakerMetrics",
    "SharedStateLostError",
    "SharedStateUnavailableError",
    "breaker_keys",
]

_log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "strategylab:breaker"

_NAMES: Final = {
    BreakerState.CLOSED: "closed",
    BreakerState.OPEN: "open",
    BreakerState.HALF_OPEN: "half_open",
}
_STATES: Final = {name: state for state, name in _NAMES.items()}


class _Notice(NamedTuple):
    """A shared state as a script reply or a published notice carries it."""

    generation: int
    epoch: int
    state: str
    remaining_ms: int
    """Until the state's timer falls due, on the Redis server's clock; -1: no timer."""


class _Job(NamedTuple):
    """One script step the publisher thread runs for a breaker (against the shared epoch known
    when it runs: the replies to the jobs before it have moved it on; ``epoch`` >= 0 fixes it)."""

    entry: _Entry
    op: str
    arg: str
    to: str
    epoch: int = -1


def breaker_keys(prefix: str, name: str) -> tuple[str, str]:
    """The hash and the pub/sub channel of breaker ``name`` under ``prefix``.

    ``({prefix}:{enc}:state, {prefix}:{enc}:events)`` where ``enc`` is ``name`` with ``%`` and
    ``:`` percent-encoded (RFC 3986 §2.1: ``%25``, ``%3A``). Injective: ``enc`` holds no ``:``, so
    the last two ``:`` of a key split it back into the prefix, ``enc`` and the suffix, and the
    encoding is undone exactly because ``%`` itself is encoded. A name with neither character is
    unchanged (``quotes`` -> ``{prefix}:quotes:state``).
    """
    encoded = name.replace("%", "%25").replace(":", "%3A")
    return f"{prefix}:{encoded}:state", f"{prefix}:{encoded}:events"


class SharedStateUnavailableError(FaultToleranceError):
    """Redis could not be reached: the breakers fall back to their local state until it is back.

    Reported to the recovery manager as ``DATABASE_CONNECTION_LOST``; ``__cause__`` is redis-py's
    error.
    """

    error_type = ErrorType.DATABASE_CONNECTION_LOST


class SharedStateLostError(FaultToleranceError):
    """A breaker's shared state was lost with Redis's data (``FLUSHALL``, a restart without
    persistence) and created again: a new generation. Reported once per generation by every
    process that had known the old one; its breaker keeps (re-asserts) an OPEN or HALF_OPEN state.

    Reported to the recovery manager as ``DATABASE_CONNECTION_LOST`` (the shared store failed).
    """

    error_type = ErrorType.DATABASE_CONNECTION_LOST


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RedisBreakerMetrics:
    """A frozen snapshot of a :class:`RedisBreakerBackend`'s counters."""

    degraded: bool
    """True while the breakers run on their local state only."""
    breakers: int
    """Breakers registered with the backend."""
    published: int
    """Local transitions (and timer expiries) this process made in the shared state."""
    lost: int
    """Local transitions another process had made first: this one adopted the winner's state."""
    adopted: int
    """Shared states taken from other processes (published, or found on start and re-join)."""
    trials_granted: int
    """HALF_OPEN trial claims granted to this process."""
    trials_refused: int
    """HALF_OPEN trial claims refused: another process holds the cluster's trial."""
    fallbacks: int
    """Times Redis became unreachable and the breakers fell back to local state."""
    rejoins: int
    """Times the backend re-joined the shared state after a fallback."""
    dropped: int
    """Local transitions made while degraded, not published (the re-join reconciles them)."""
    recreated: int
    """Losses of shared state noticed (Redis lost its data: a new generation seen), whether this
    process created the state again from its own or found it created by another process."""


@dataclasses.dataclass(slots=True)
class _Entry:
    breaker: CircuitBreaker
    key: str
    channel: str
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    generation: int = 0
    epoch: int = 0
    open_deadline: float = 0.0
    """When this process's breaker leaves OPEN, on the breaker's clock (for re-creating a lost
    shared state from the local one)."""
    pending: int = 0
    """Local transitions queued and not yet run: while any is, the breaker is ahead of the
    shared state and adopts nothing (the reply to the last one brings it in step)."""
    pending_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    """Guards ``pending`` only; never held while another lock is taken."""
    stale: bool = False
    """A notice was passed over while jobs were pending: read the shared state after them."""
    noticed: int = 0
    """The last new generation this process counted as a loss of the shared state."""
    trials: int = 0
    """HALF_OPEN trials this process claimed and has not settled (under ``pending_lock``)."""
    claimed: int = -1
    """The shared epoch of the HALF_OPEN period in which this process's last trial was granted
    (-1: none since its breaker last left HALF_OPEN). The trial's outcome (a move out of
    HALF_OPEN, a settle) is published against it: the epoch known when the job runs may still be
    the OPEN period's, since a claim's reply is not adopted while a job is queued."""

    def queued(self, change: int) -> None:
        with self.pending_lock:
            self.pending += change

    def trial(self, change: int | None) -> None:
        """Count a trial claimed (+1) or settled (-1); None: the HALF_OPEN period ended."""
        with self.pending_lock:
            self.trials = 0 if change is None else max(0, self.trials + change)


class _Hysteresis:
    """Re-join only after ``pings`` consecutive successes spanning ``hold`` seconds."""

    __slots__ = ("_first", "_hold", "_pings", "_streak")

    def __init__(self, pings: int, hold: float) -> None:
        self._pings = pings
        self._hold = hold
        self._streak = 0
        self._first = 0.0

    def record(self, *, ok: bool, now: float) -> bool:
        """Record a ping's outcome at ``now``; True when the backend may re-join."""
        if not ok:
            self._streak = 0
            return False
        if self._streak == 0:
            self._first = now
        self._streak += 1
        return self._streak >= self._pings and now - self._first >= self._hold

    def reset(self) -> None:
        self._streak = 0


class RedisBreakerBackend:
    """Shares the state of circuit breakers across processes through Redis.

    ``url`` is a redis-py URL (``redis://host:port/db``); ``prefix`` namespaces the keys and
    channels (see the module docstring). ``timeout`` (seconds) bounds every Redis command, the
    HALF_OPEN trial claim included. ``ping_interval`` (seconds) paces the pings while degraded;
    ``rejoin_pings`` consecutive successes spanning ``rejoin_hold`` seconds of ``clock`` re-join.
    ``trial_ttl`` (seconds) releases a trial claim whose process never reported its outcome.
    ``reporter`` receives a :class:`SharedStateUnavailableError` when Redis becomes unreachable
    (one per episode) and a :class:`SharedStateLostError` when a breaker's shared state is found
    lost with Redis's data (one per new generation), both folded by the reporter as it folds;
    it reports from ``loop`` (default: the running loop at construction). ``ConfigurationError``
    names a bad argument.

    The backend starts two daemon threads (the publisher and the subscriber); :meth:`close` stops
    them. Breakers keep working on their local state after it is closed.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 0.5,
        ping_interval: float = 0.2,
        rejoin_pings: int = 3,
        rejoin_hold: float = 1.0,
        trial_ttl: float = 30.0,
        reporter: ErrorReporter | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("url", url, "expected a redis://, rediss:// or unix:// URL")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "*?[]\\"):
            raise ConfigurationError("prefix", prefix, "expected a non-empty key prefix, no glob")
        for key, value in (
            ("timeout", timeout),
            ("ping_interval", ping_interval),
            ("trial_ttl", trial_ttl),
        ):
            if not _positive(value):
                raise ConfigurationError(key, value, "must be a finite number of seconds > 0")
        if not _positive(rejoin_hold) and rejoin_hold != 0:
            raise ConfigurationError("rejoin_hold", rejoin_hold, "must be seconds >= 0")
        if isinstance(rejoin_pings, bool) or not isinstance(rejoin_pings, int) or rejoin_pings < 1:
            raise ConfigurationError("rejoin_pings", rejoin_pings, "must be an integer >= 1")
        if reporter is not None and loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise ConfigurationError(
                    "reporter", reporter, "reports need loop= or a running event loop"
                ) from None
        self._url = url
        self._prefix = prefix
        self._timeout = float(timeout)
        self._ping_interval = float(ping_interval)
        self._trial_ttl_ms = round(trial_ttl * 1000)
        self._reporter = reporter
        self._loop = loop
        self._clock = clock
        self._origin = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._script = self._client.register_script(SCRIPT)
        self._entries: dict[str, _Entry] = {}
        self._channels: dict[str, _Entry] = {}
        self._entries_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._hysteresis = _Hysteresis(rejoin_pings, float(rejoin_hold))
        self._state_lock = threading.Lock()
        self._degraded = False
        self._closed = False
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._published = self._lost = self._adopted = 0
        self._granted = self._refused = 0
        self._fallbacks = self._rejoins = self._dropped = self._recreated = 0
        self._worker = threading.Thread(
            target=self._work, name=f"breaker-backend-publisher-{prefix}", daemon=True
        )
        self._listener = threading.Thread(
            target=self._listen, name=f"breaker-backend-subscriber-{prefix}", daemon=True
        )
        self._listener.start()
        # Registering breakers before the subscription is live could miss a transition published
        # in between: wait for it (a Redis that is down makes the backend start degraded).
        if not self._subscribed.wait(self._timeout * 2 + 0.5):
            self._fail(TimeoutError("no pub/sub subscription"))
        self._worker.start()

    # ------------------------------------------------------------------------------ inspection

    @property
    def prefix(self) -> str:
        """Keys are ``{prefix}:{name}:state``, channels ``{prefix}:{name}:events`` (``name``
        encoded: :func:`breaker_keys`)."""
        return self._prefix

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and the breakers run on their local state."""
        return self._degraded

    def health(self) -> HealthState:
        """HEALTHY while shared, DEGRADED while the breakers run on their local state."""
        return HealthState.DEGRADED if self._degraded else HealthState.HEALTHY

    def metrics(self) -> RedisBreakerMetrics:
        """A frozen snapshot of the counters."""
        return RedisBreakerMetrics(
            degraded=self._degraded,
            breakers=len(self._entries),
            published=self._published,
            lost=self._lost,
            adopted=self._adopted,
            trials_granted=self._granted,
            trials_refused=self._refused,
            fallbacks=self._fallbacks,
            rejoins=self._rejoins,
            dropped=self._dropped,
            recreated=self._recreated,
        )

    def __repr__(self) -> str:
        state = "degraded" if self._degraded else "shared"
        return f"RedisBreakerBackend(prefix={self._prefix!r}, {state})"

    # ------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the threads and close the connections; idempotent. Breakers stay local."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._queue.put(None)
        for thread in (self._worker, self._listener):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(self._timeout + 1.0)
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ hooks

    def register(self, breaker: CircuitBreaker) -> None:
        """Share ``breaker``'s state (called by ``CircuitBreaker(..., shared=self)``).

        Adopts the shared state at once when Redis answers within ``timeout``; creates it from the
        breaker's state when there is none. ``ConfigurationError`` when this backend already
        shares a breaker of that name.
        """
        name = breaker.name
        entry = _Entry(breaker, *breaker_keys(self._prefix, name))
        with self._entries_lock:
            if name in self._entries:
                raise ConfigurationError(
                    "name", name, f"a breaker of that name already shares {self!r}"
                )
            self._entries = {**self._entries, name: entry}
            self._channels = {**self._channels, entry.channel: entry}
        if self._degraded or self._closed:
            return
        try:
            self._join(entry)
        except redis.RedisError as exc:
            self._fail(exc)

    def transitioned(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        """Queue the local transition for publication (under the breaker's lock: no I/O)."""
        entry = self._entries.get(breaker.name)
        if entry is None or entry.breaker is not breaker or self._closed:
            return
        if new is BreakerState.OPEN:
            entry.open_deadline = self._clock.monotonic() + breaker.recovery_timeout
        entry.trial(None)
        claimed, entry.claimed = entry.claimed, -1
        if old in _NAMES and new in _NAMES:
            entry.queued(1)
            epoch = claimed if old is BreakerState.HALF_OPEN else -1
            self._queue.put(_Job(entry, "move", _NAMES[old], _NAMES[new], epoch))

    def trial_settled(self, breaker: CircuitBreaker, *, success: bool) -> None:
        """Queue a trial's outcome that made no transition (under the breaker's lock: no I/O)."""
        entry = self._entries.get(breaker.name)
        if entry is None or entry.breaker is not breaker or self._closed:
            return
        entry.trial(-1)
        entry.queued(1)
        self._queue.put(_Job(entry, "settle", "1" if success else "0", "", entry.claimed))

    def claim_trial(self, breaker: CircuitBreaker) -> bool:
        """Claim the cluster's HALF_OPEN trial for ``breaker`` (one round trip, in the caller).

        True while degraded or closed: the local breaker decides alone.
        """
        entry = self._entries.get(breaker.name)
        if entry is None or entry.breaker is not breaker or self._degraded or self._closed:
            return True
        try:
            granted = self._run(entry, "claim", entry.epoch, "", "")
        except redis.RedisError as exc:
            self._fail(exc)
            return True
        if granted:
            entry.trial(1)
            self._granted += 1
        else:
            self._refused += 1
        return granted

    # ------------------------------------------------------------------------------ Redis

    def _args(self, entry: _Entry, op: str, expected: int, arg: str, to: str) -> list[str | int]:
        breaker = entry.breaker
        max_wait = breaker.max_wait_in_half_open
        state = breaker.state
        local = _NAMES.get(state, "closed")
        remaining = -1
        if state is BreakerState.OPEN:
            remaining = max(0, round((entry.open_deadline - self._clock.monotonic()) * 1000))
        elif state is BreakerState.HALF_OPEN and max_wait is not None:
            remaining = round(max_wait * 1000)
        return [
            op,
            expected,
            arg,
            to,
            round(breaker.recovery_timeout * 1000),
            -1 if max_wait is None else round(max_wait * 1000),
            self._trial_ttl_ms,
            breaker.half_open_max_calls,
            local,
            remaining,
            self._origin,
            entry.trials,
        ]

    def _run(
        self, entry: _Entry, op: str, expected: int, arg: str, to: str, *, job: bool = False
    ) -> bool:
        """Run one script step and adopt its reply; True when the step applied. ``job``: the
        step is a queued job, itself still counted as pending."""
        args = self._args(entry, op, expected, arg, to)
        sent = time.monotonic()
        reply = self._script(keys=[entry.key, entry.channel], args=args)
        half_trip = (time.monotonic() - sent) / 2
        applied, state, epoch, remaining, created, generation = reply
        if op == "claim" and applied:
            entry.claimed = int(epoch)
        if op == "move":
            if applied:
                self._published += 1
            else:
                self._lost += 1
        notice = _Notice(int(generation), int(epoch), state, int(remaining))
        self._adopt(
            entry,
            notice,
            latency=half_trip,
            confirm=True,
            own=1 if job else 0,
            created=bool(created),
            reasserted=int(arg) if op == "reassert" else 0,
        )
        return bool(applied)

    def _join(self, entry: _Entry) -> None:
        """Adopt the shared state (create it from the local one when missing)."""
        known = (entry.generation, entry.epoch)
        self._run(entry, "join", entry.epoch, "", "")
        if (entry.generation, entry.epoch) != known:
            self._adopted += 1

    def _adopt(
        self,
        entry: _Entry,
        notice: _Notice,
        *,
        latency: float,
        confirm: bool,
        own: int = 0,
        created: bool = False,
        reasserted: int = 0,
    ) -> bool:
        """Take a shared state newer than the known one (or the known one again: ``confirm``).

        Nothing is taken while local transitions other than the ``own`` job are queued: the
        breaker is ahead of the notice, and the last job's reply brings it in step.

        A generation newer than the known one means the shared state was lost and created again
        (``created``: by this step). The loss is counted and reported once per generation; a
        CLOSED one is not taken by a breaker that is OPEN or HALF_OPEN, which queues a
        ``reassert`` of its state instead (``reasserted``: the generation the reply to that job
        re-asserted in, whose outcome is taken as it is).
        """
        generation, epoch, name, remaining_ms = notice
        state = _STATES.get(name)
        if state is None:
            _log.warning("breaker %r: unknown shared state %r ignored", entry.breaker.name, name)
            return False
        remaining = math.inf if remaining_ms < 0 else max(0.0, remaining_ms / 1000 - latency)
        lost = reassert = False
        with entry.lock:
            if entry.pending > own:
                entry.stale = True
                return False
            known = (entry.generation, entry.epoch)
            if (generation, epoch) < known or ((generation, epoch) == known and not confirm):
                return False
            local = entry.breaker.state
            if entry.generation and generation > entry.generation:
                if generation > entry.noticed:
                    entry.noticed = generation
                    self._recreated += 1
                    lost = True
                reassert = (
                    state is BreakerState.CLOSED
                    and local in (BreakerState.OPEN, BreakerState.HALF_OPEN)
                    and generation != reasserted
                )
            if reassert:
                # Keep the generation known so that every later notice of the new one is
                # checked again; the job's reply brings the breaker in step.
                entry.queued(1)
                self._queue.put(_Job(entry, "reassert", str(generation), "", epoch))
            else:
                entry.generation, entry.epoch = generation, epoch
                if state is BreakerState.OPEN:
                    entry.open_deadline = self._clock.monotonic() + remaining
                if state is not local:
                    entry.trial(None)
                entry.breaker.adopt(state, remaining)
        if lost:
            self._report_loss(entry, generation, local, created=created, reassert=reassert)
        return not reassert and (generation, epoch) != known

    def _report_loss(
        self,
        entry: _Entry,
        generation: int,
        local: BreakerState,
        *,
        created: bool,
        reassert: bool,
    ) -> None:
        """Log and report a lost shared state (once per new generation, by each process)."""
        if created:
            how = f"created again from this process's {local.value} state"
        elif reassert:
            how = f"created CLOSED elsewhere; this process's {local.value} state is re-asserted"
        else:
            how = "created again elsewhere; adopted"
        message = (
            f"shared state of breaker {entry.breaker.name!r} under {self._prefix!r} was lost "
            f"with Redis's data (new generation {generation}): {how}"
        )
        _log.warning("%s", message)
        reporter, loop = self._reporter, self._loop
        if reporter is not None and loop is not None and not loop.is_closed():
            error = SharedStateLostError(message)
            loop.call_soon_threadsafe(lambda: reporter.report(error, component="breaker-backend"))

    def _fail(self, exc: BaseException) -> None:
        """Redis is unreachable: fall back to local state (once per episode) and report it."""
        if self._closed:
            return
        with self._state_lock:
            if self._degraded:
                return
            self._degraded = True
            self._fallbacks += 1
            self._hysteresis.reset()
        _log.warning(
            "Redis unreachable (%s: %s): circuit breakers under %r run on local state",
            type(exc).__name__,
            exc,
            self._prefix,
        )
        reporter, loop = self._reporter, self._loop
        if reporter is not None and loop is not None and not loop.is_closed():
            error = SharedStateUnavailableError(
                f"Redis unreachable for the breakers under {self._prefix!r}: {exc}"
            )
            error.__cause__ = exc
            loop.call_soon_threadsafe(lambda: reporter.report(error, component="breaker-backend"))

    # ------------------------------------------------------------------------------ threads

    def _work(self) -> None:
        """Publish queued transitions while shared; ping and re-join while degraded."""
        while True:
            if self._degraded:
                try:
                    job = self._queue.get(timeout=self._ping_interval)
                except queue.Empty:
                    self._probe()
                    continue
                if job is None:
                    return
                job.entry.queued(-1)
                self._dropped += 1
                continue
            try:
                # Bounded: a fallback the subscriber detects queues nothing, and must still
                # start the pings (an unbounded wait here never re-joined: H6).
                job = self._queue.get(timeout=self._ping_interval)
            except queue.Empty:
                continue
            if job is None:
                return
            try:
                if self.degraded:  # fell back while this job waited
                    self._dropped += 1
                    continue
                expected = job.epoch if job.epoch >= 0 else job.entry.epoch
                self._run(job.entry, job.op, expected, job.arg, job.to, job=True)
            except redis.RedisError as exc:
                self._dropped += 1
                self._fail(exc)
            except Exception:
                _log.exception("breaker %r: publishing %s failed", job.entry.breaker.name, job.op)
            finally:
                job.entry.queued(-1)
            self._catch_up(job.entry)

    def _catch_up(self, entry: _Entry) -> None:
        """Read the shared state once the queued jobs are done, if a notice was passed over."""
        if not entry.stale or entry.pending or self.degraded:
            return
        entry.stale = False
        try:
            self._run(entry, "read", entry.epoch, "", "")
        except redis.RedisError as exc:
            self._fail(exc)

    def _probe(self) -> None:
        try:
            self._client.ping()
            ok = True
        except redis.RedisError:
            ok = False
        if not self._hysteresis.record(ok=ok, now=self._clock.monotonic()):
            return
        if not self._subscribed.is_set():
            return  # the subscriber re-subscribes first, so no transition falls in between
        try:
            for entry in list(self._entries.values()):
                self._join(entry)
        except redis.RedisError:
            self._hysteresis.reset()
            return
        with self._state_lock:
            self._degraded = False
            self._rejoins += 1
        _log.info("Redis is back: circuit breakers under %r share their state again", self._prefix)

    def _listen(self) -> None:
        """Adopt the transitions other processes publish; re-subscribe after a failure."""
        pattern = f"{self._prefix}:*"
        pubsub: PubSub | None = None
        while not self._stopping.is_set():
            if pubsub is None:
                try:
                    pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
                    pubsub.psubscribe(pattern)
                    deadline = time.monotonic() + self._timeout
                    while time.monotonic() < deadline:
                        message = pubsub.get_message(timeout=self._timeout)
                        if message is not None and message["type"] == "psubscribe":
                            break
                    else:
                        raise redis.TimeoutError("no psubscribe confirmation")
                except (redis.RedisError, OSError) as exc:
                    if pubsub is not None:
                        _close_quietly(pubsub)
                    pubsub = None
                    self._fail(exc)
                    self._stopping.wait(self._ping_interval)
                    continue
                self._subscribed.set()
            try:
                message = pubsub.get_message(timeout=0.1)
            except (redis.RedisError, OSError) as exc:
                self._subscribed.clear()
                _close_quietly(pubsub)
                pubsub = None
                self._fail(exc)
                continue
            if message is not None and message["type"] == "pmessage" and not self._degraded:
                self._on_message(message["channel"], message["data"])
        if pubsub is not None:
            _close_quietly(pubsub)

    def _on_message(self, channel: str, data: str) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return  # another process's breaker of a name this process does not have
        try:
            generation, epoch, state, remaining, origin = data.split(" ")
            notice = _Notice(int(generation), int(epoch), state, int(remaining))
            adopted = self._adopt(entry, notice, latency=0.0, confirm=False)
        except ValueError:
            _log.warning("breaker %r: malformed notice %r ignored", entry.breaker.name, data)
            return
        if adopted and origin != self._origin:
            self._adopted += 1


def _positive(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > 0
    )


def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(redis.RedisError, OSError):
        pubsub.close()
