"""The cluster kill switch on Redis (issue 14; DESIGN §9): halt the trading of every node.

Keys, for a cluster ``NAME`` (1..64 of ``A-Z a-z 0-9 . _ -``):

- ``strategylab:cluster:{NAME}:kill``: the durable kill, a JSON object ``{"id", "reason", "by",
  "at", "mac"}`` (``at``: Unix seconds; ``mac``: hex HMAC-SHA256 of the admin token over
  ``kill:{NAME}:{id}``, so that a clear can tell a wrong token from the right one);
- ``strategylab:cluster:{NAME}:clear``: the last clear, ``{"kill_id", "by", "at", "mac"}`` with
  ``mac`` = HMAC-SHA256(admin token, ``clear:{NAME}:{kill_id}``);
- ``strategylab:cluster:{NAME}:events``: the pub/sub channel; each notice is ``{"type": "kill",
  "kill": {...}}`` or ``{"type": "clear", "clear": {...}}``.

:class:`ClusterKillSwitch` is the operator's side (``strategylab kill --cluster NAME --redis
URL``): :meth:`~ClusterKillSwitch.kill` SETs the key (``NX``: a kill already in force is kept and
announced again) and PUBLISHes; :meth:`~ClusterKillSwitch.clear` checks the admin token against
the kill's ``mac`` (a wrong token changes nothing), then in one MULTI/EXEC transaction writes the
clear record, deletes the kill key and PUBLISHes.

:class:`ClusterKillWatcher` is the node's side: it subscribes to the channel, then reads the keys
(subscribe first, read second: nothing falls between), re-reads them every ``poll`` seconds (a
lost notice, a Redis that went silent), and keeps a state file in the node's data directory
(the kill id it obeys), so that a restart without Redis starts halted too. A kill notice halts at
once, from the notice itself (halting needs no proof: it is the safe side). Resuming needs a
clear the node can VERIFY with its own admin token (``mac`` above) naming the kill it obeys: a
kill key that vanished without one (Redis data lost, a forged ``DEL``) or a clear record with a
bad ``mac`` keeps the node halted, and its :attr:`~ClusterKillWatcher.state` says why. With
Redis unreachable the node keeps its last known state, reports the outage
(:attr:`ClusterKillState.connected`, ``problem``), reconnects with a capped backoff, and
re-reads the keys when back: a kill issued meanwhile is honoured then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Self

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from strategylab._durable import write_atomic
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, StrategyLabError

__all__ = [
    "ClusterKillError",
    "ClusterKillRecord",
    "ClusterKillState",
    "ClusterKillSwitch",
    "ClusterKillWatcher",
    "clear_mac",
    "cluster_kill_keys",
]

_log = logging.getLogger("strategylab.distributed.kill")

_CLUSTER: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PREFIX: Final = "strategylab:cluster:"
_REASON_MAX: Final = 500


class ClusterKillError(StrategyLabError):
    """An operation of the cluster kill switch failed: Redis unreachable (``unreachable``
    True), a wrong admin token, nothing to clear. ``usage`` is True for an error of the caller
    (exit 2), False for an operational one (exit 1)."""

    def __init__(self, message: str, *, usage: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.usage = usage
        self.unreachable = unreachable


def _check_cluster(cluster: object) -> str:
    if not isinstance(cluster, str) or not _CLUSTER.fullmatch(cluster):
        raise ConfigurationError(
            "--cluster", str(cluster)[:80], "must be 1..64 of A-Z a-z 0-9 . _ -"
        )
    return cluster


def cluster_kill_keys(cluster: str) -> tuple[str, str, str]:
    """``(kill key, clear key, channel)`` of ``cluster`` (see the module docstring);
    :class:`ConfigurationError` naming ``--cluster`` for a bad name."""
    base = _PREFIX + _check_cluster(cluster)
    return f"{base}:kill", f"{base}:clear", f"{base}:events"


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def clear_mac(token: str, cluster: str, kill_id: str) -> str:
    """Hex HMAC-SHA256 of ``token`` over ``clear:{cluster}:{kill_id}``: a clear's proof."""
    return _mac(token, f"clear:{cluster}:{kill_id}")


def _kill_mac(token: str, cluster: str, kill_id: str) -> str:
    return _mac(token, f"kill:{cluster}:{kill_id}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterKillRecord:
    """One cluster kill: ``id`` (random hex), ``reason``, ``by`` (user@host), ``at`` (Unix
    seconds), ``mac`` (hex HMAC-SHA256 of the admin token over ``kill:{cluster}:{id}``)."""

    id: str
    reason: str
    by: str
    at: float
    mac: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The record as stored in Redis and in the node's state file."""
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, raw: object) -> ClusterKillRecord | None:
        """The record in ``raw`` (bytes, str or a mapping); None when it is not one."""
        data: object = raw
        if isinstance(raw, bytes | str):
            try:
                data = json.loads(raw)
            except ValueError:
                return None
        if not isinstance(data, Mapping):
            return None
        kill_id, reason = data.get("id"), data.get("reason")
        if not isinstance(kill_id, str) or not kill_id or not isinstance(reason, str):
            return None
        at = data.get("at")
        return cls(
            id=kill_id,
            reason=reason,
            by=str(data.get("by", "")),
            at=float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0,
            mac=str(data.get("mac", "")),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterKillState:
    """What a node knows of its cluster's kill switch.

    ``halted``: trading must be halted; ``kill``: the kill obeyed (None when running);
    ``connected``: Redis answered the last read; ``problem``: why the node is still halted
    without a kill key (``"kill key vanished without a verified clear"``), or the Redis outage;
    ``verified``: the kill's ``mac`` checks with the node's admin token (a kill is obeyed either
    way); ``since``: Unix seconds of the last change.
    """

    halted: bool = False
    kill: ClusterKillRecord | None = None
    connected: bool = False
    problem: str | None = None
    verified: bool | None = None
    since: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """For ``/status`` and the status line."""
        return {
            "halted": self.halted,
            "kill": None if self.kill is None else self.kill.to_dict(),
            "connected": self.connected,
            "problem": self.problem,
            "verified": self.verified,
            "since": self.since,
        }


def _who() -> str:
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER", "?")
    return f"{user}@{socket.gethostname()}"


def _check_reason(reason: str) -> str:
    if (
        not isinstance(reason, str)
        or not reason.strip()
        or len(reason) > _REASON_MAX
        or not reason.isprintable()
    ):
        raise ConfigurationError(
            "--reason", reason[:80], f"must be 1..{_REASON_MAX} printable characters"
        )
    return reason


class ClusterKillSwitch:
    """The operator's side: pull or clear the kill switch of ``cluster`` through ``redis_url``.

    ``admin_token`` signs the kill and proves the clear (see the module docstring). ``timeout``
    is the seconds each Redis command may take; ``clock`` gives the records' ``at``. Methods
    raise :class:`ClusterKillError` (``unreachable=True``) when Redis cannot be reached, and as
    documented on each.
    """

    def __init__(
        self,
        cluster: str,
        redis_url: str,
        *,
        admin_token: str,
        timeout: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self.cluster = _check_cluster(cluster)
        self.kill_key, self.clear_key, self.channel = cluster_kill_keys(cluster)
        self._token = admin_token
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._url = redis_url

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _unreachable(self, exc: Exception) -> ClusterKillError:
        return ClusterKillError(
            f"Redis at {_safe_url(self._url)} unreachable: {exc}", unreachable=True
        )

    def current(self) -> ClusterKillRecord | None:
        """The kill in force (None: none)."""
        try:
            raw = self._client.get(self.kill_key)
        except redis.RedisError as exc:
            raise self._unreachable(exc) from None
        return None if raw is None else ClusterKillRecord.parse(raw)

    def kill(self, reason: str) -> tuple[ClusterKillRecord, bool, int]:
        """Pull the kill switch: ``(record, created, receivers)``; ``created`` False when a kill
        was already in force (it is kept and announced again); ``receivers``: the subscribers
        the notice reached (the nodes listening). ``ConfigurationError`` for a bad ``reason``."""
        _check_reason(reason)
        kill_id = secrets.token_hex(8)
        record = ClusterKillRecord(
            id=kill_id,
            reason=reason,
            by=_who(),
            at=round(self._clock.time(), 6),
            mac=_kill_mac(self._token, self.cluster, kill_id),
        )
        try:
            created = bool(self._client.set(self.kill_key, json.dumps(record.to_dict()), nx=True))
            if not created:
                existing = ClusterKillRecord.parse(self._client.get(self.kill_key))
                record = existing if existing is not None else record
            notice = json.dumps({"type": "kill", "kill": record.to_dict()})
            receivers = int(self._client.publish(self.channel, notice))
        except redis.RedisError as exc:
            raise self._unreachable(exc) from None
        return record, created, receivers

    def clear(self, kill_id: str | None = None) -> tuple[str, int]:
        """Clear the kill in force (or, with ``kill_id``, the kill of that id that nodes still
        obey after the key was lost): ``(kill id, receivers)``.

        Raises :class:`ClusterKillError` with ``usage=False`` when no kill is in force and no
        ``kill_id`` is given, and when the admin token is not the one that pulled the kill (its
        ``mac`` does not check): nothing is changed then.
        """
        try:
            record = ClusterKillRecord.parse(self._client.get(self.kill_key))
        except redis.RedisError as exc:
            raise self._unreachable(exc) from None
        if record is None and kill_id is None:
            raise ClusterKillError(
                f"cluster {self.cluster}: no kill in force to clear (a node still halted by a "
                "lost kill shows its id in /status: clear it with --kill-id ID)"
            )
        if record is not None:
            if kill_id is not None and kill_id != record.id:
                raise ClusterKillError(
                    f"cluster {self.cluster}: the kill in force is {record.id}, not {kill_id}"
                )
            expected = _kill_mac(self._token, self.cluster, record.id)
            if not hmac.compare_digest(record.mac, expected):
                raise ClusterKillError(
                    f"cluster {self.cluster}: the admin token is not the one that pulled kill "
                    f"{record.id}: refused, nothing changed"
                )
            kill_id = record.id
        assert kill_id is not None  # noqa: S101 - one of the two branches set it
        clear = {
            "kill_id": kill_id,
            "by": _who(),
            "at": round(self._clock.time(), 6),
            "mac": clear_mac(self._token, self.cluster, kill_id),
        }
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self.clear_key, json.dumps(clear))
                pipe.delete(self.kill_key)
                pipe.publish(self.channel, json.dumps({"type": "clear", "clear": clear}))
                results = pipe.execute()
        except redis.RedisError as exc:
            raise self._unreachable(exc) from None
        return kill_id, int(results[-1])


def _safe_url(url: str) -> str:
    """``url`` without a password."""
    return re.sub(r"//[^@/]*@", "//***@", url)


# ---------------------------------------------------------------------- the node's side


class ClusterKillWatcher:
    """The node's side of the cluster kill switch (see the module docstring).

    ``state_file``: where the kill id obeyed is kept (in the node's data directory);
    ``admin_token``: the node's, to verify a clear (None: no clear can be verified, the node
    stays halted once killed); ``on_change(state)``: called on the event loop whenever
    ``halted`` changes (once at :meth:`start` too, with the state then), before anything else
    is done with the notice: the halt's latency is Redis's plus this call's. ``poll``: seconds
    between two re-reads of the keys (also the outage detection); ``timeout``: seconds a Redis
    command or connection may take; ``backoff_cap``: the longest wait between reconnects
    (seconds, each); ``clock``: the wall time of ``since`` and the reconnect backoff's sleeps
    (the wait for a notice is Redis's socket, on the real clock).
    """

    def __init__(
        self,
        cluster: str,
        redis_url: str,
        *,
        state_file: Path,
        admin_token: str | None,
        on_change: Callable[[ClusterKillState], object] | None = None,
        poll: float = 1.0,
        timeout: float = 1.0,
        backoff_cap: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.cluster = _check_cluster(cluster)
        self.kill_key, self.clear_key, self.channel = cluster_kill_keys(cluster)
        self._url = redis_url
        self._state_file = Path(state_file)
        self._token = admin_token
        self._on_change = on_change
        self._poll = poll
        self._timeout = timeout
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._state = ClusterKillState()
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self._changed = asyncio.Event()
        self._quiet = False
        self._closing = False
        self._cleared: collections.deque[str] = collections.deque(maxlen=64)
        """Kill ids this watcher saw cleared (verified), newest last."""
        self.reconnects = 0
        """Times the subscription was set up again after an outage."""

    @property
    def state(self) -> ClusterKillState:
        """What the node knows now."""
        return self._state

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> ClusterKillState:
        """Load the state file, read Redis once (bounded by ``timeout``; unreachable: the state
        file decides) and start listening; the state then (``on_change`` was called with it).
        ``OSError`` when the state file cannot be read."""
        persisted = self._load()
        if persisted is not None:
            self._state = ClusterKillState(
                halted=True,
                kill=persisted,
                verified=self._verify_kill(persisted),
                since=self._clock.time(),
            )
        self._client = aioredis.Redis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        pubsub: PubSub | None = None
        self._quiet = True  # one on_change call below, with the settled state
        try:
            async with asyncio.timeout(self._timeout * 2):
                pubsub = await self._subscribe()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._set(dataclasses.replace(self._state, connected=False, problem=_outage(exc)))
        finally:
            self._quiet = False
        self._notify()
        self._task = asyncio.create_task(self._run(pubsub), name=f"cluster-kill:{self.cluster}")
        return self._state

    async def aclose(self) -> None:
        """Stop listening and close the connections (safe to repeat)."""
        task, self._task = self._task, None
        self._closing = True
        if task is not None:
            # redis-py's get_message may swallow a cancellation: the loop also sees the flag
            # (within ``poll`` seconds); cancelled again until it ends.
            deadline = asyncio.get_running_loop().time() + self._poll + self._timeout + 1.0
            while not task.done() and asyncio.get_running_loop().time() < deadline:
                task.cancel()
                await asyncio.wait({task}, timeout=0.05)
            if not task.done():
                _log.error("cluster kill: task %s did not stop; left behind", task.get_name())
                return
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def wait_for(self, predicate: Callable[[ClusterKillState], bool]) -> ClusterKillState:
        """Wait until ``predicate(state)`` holds (bound it with ``asyncio.timeout``)."""
        while not predicate(self._state):
            event = self._changed
            await event.wait()
        return self._state

    # -------------------------------------------------------------- state

    def _load(self) -> ClusterKillRecord | None:
        try:
            raw = self._state_file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            _log.error("%s is damaged: the node stays halted", self._state_file)
            return ClusterKillRecord(id="unknown", reason="damaged state file", by="", at=0.0)
        if not isinstance(data, Mapping) or data.get("cluster") != self.cluster:
            return None
        return ClusterKillRecord.parse(data.get("kill"))

    def _persist(self, kill: ClusterKillRecord | None) -> None:
        body = {"cluster": self.cluster, "kill": None if kill is None else kill.to_dict()}
        write_atomic(self._state_file, json.dumps(body).encode())

    def _verify_kill(self, kill: ClusterKillRecord) -> bool | None:
        if self._token is None:
            return None
        return hmac.compare_digest(kill.mac, _kill_mac(self._token, self.cluster, kill.id))

    def _verified_clear(self, raw: object, kill_id: str) -> bool:
        if self._token is None or raw is None:
            return False
        try:
            data = json.loads(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        if not isinstance(data, Mapping) or data.get("kill_id") != kill_id:
            return False
        mac = data.get("mac")
        return isinstance(mac, str) and hmac.compare_digest(
            mac, clear_mac(self._token, self.cluster, kill_id)
        )

    def _set(self, state: ClusterKillState) -> None:
        before = self._state
        moved = state.halted != before.halted or state.kill != before.kill
        if moved:
            state = dataclasses.replace(state, since=self._clock.time())
        self._state = state
        if state.halted != before.halted:
            self._notify()  # first: the halt's latency does not include the fsync below
        if moved:
            try:
                self._persist(state.kill if state.halted else None)
            except OSError as exc:
                _log.error("cluster kill: %s cannot be written: %s", self._state_file, exc)
        self._changed.set()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        if self._on_change is None or self._quiet:
            return
        try:
            self._on_change(self._state)
        except Exception:
            _log.exception("cluster kill: on_change failed")

    def _halt(self, kill: ClusterKillRecord, *, connected: bool) -> None:
        self._set(
            ClusterKillState(
                halted=True,
                kill=kill,
                connected=connected,
                verified=self._verify_kill(kill),
                since=self._state.since,
            )
        )

    async def _read(self) -> None:
        """Read both keys and settle the state (see the module docstring)."""
        client = self._client
        assert client is not None  # noqa: S101 - start() made it
        raw_kill, raw_clear = await client.mget([self.kill_key, self.clear_key])
        kill = None if raw_kill is None else ClusterKillRecord.parse(raw_kill)
        if raw_kill is not None and kill is None:  # damaged: halting is the safe side
            kill = ClusterKillRecord(id="unreadable", reason="unreadable kill key", by="", at=0.0)
        if kill is not None:
            self._halt(kill, connected=True)
            return
        current = self._state
        if not current.halted or current.kill is None:
            self._set(ClusterKillState(connected=True, since=current.since))
            return
        if self._verified_clear(raw_clear, current.kill.id):
            _log.warning("cluster %s: kill %s cleared (verified)", self.cluster, current.kill.id)
            self._cleared.append(current.kill.id)  # a late notice of it halts nothing
            self._set(ClusterKillState(connected=True, since=current.since))
            return
        problem = (
            "no admin token: a clear cannot be verified"
            if self._token is None
            else "kill key vanished without a verified clear"
        )
        self._set(dataclasses.replace(current, connected=True, problem=problem))

    def _on_message(self, data: object) -> bool:
        """A notice: a kill halts at once, from the notice; True: re-read the keys."""
        try:
            notice = json.loads(data)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return True
        if isinstance(notice, Mapping) and notice.get("type") == "kill":
            kill = ClusterKillRecord.parse(notice.get("kill"))
            if kill is not None and kill.id in self._cleared:
                return True  # a notice that arrived after its verified clear
            if kill is not None and (not self._state.halted or self._state.kill != kill):
                self._halt(kill, connected=True)
        return True

    async def _subscribe(self) -> PubSub:
        """Subscribe, then read the keys (in this order: nothing issued between is missed)."""
        client = self._client
        assert client is not None  # noqa: S101 - start() made it
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            await self._read()
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return pubsub

    async def _listen(self, pubsub: PubSub) -> None:
        """Notices as they come, and the keys re-read every ``poll`` seconds, until closing."""
        loop = asyncio.get_running_loop()
        next_read = loop.time() + self._poll
        while not self._closing:
            wait = max(next_read - loop.time(), 0.0)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is not None and message.get("type") == "message":
                self._on_message(message.get("data"))
                await self._read()
            if loop.time() >= next_read:
                await self._read()
                next_read = loop.time() + self._poll

    async def _run(self, pubsub: PubSub | None) -> None:
        delay = 0.05
        while not self._closing:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe()
                    self.reconnects += 1
                delay = 0.05
                await self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                if self._state.connected:
                    _log.warning("cluster %s: Redis unreachable: %s", self.cluster, exc)
                self._set(dataclasses.replace(self._state, connected=False, problem=_outage(exc)))
                await _close_quietly(pubsub)
                pubsub = None
                await self._clock.asleep(delay)
                delay = min(delay * 2, self._backoff_cap)
            except asyncio.CancelledError:
                await _close_quietly(pubsub)
                raise
        await _close_quietly(pubsub)


async def _close_quietly(pubsub: PubSub | None) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _outage(exc: BaseException) -> str:
    return f"Redis unreachable: {exc or type(exc).__name__}"
