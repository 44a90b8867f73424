"""The cluster kill switch on Redis (issue 14; DESIGN §9): halt the trading of every node.

Keys, for a cluster ``NAME`` (1..64 of ``A-Z a-z 0-9 . _ -``):

- ``strategylab:cluster:{NAME}:kill``: the durable kill, a JSON object ``{"id", "reason", "by",
  "at", "mac"}`` (``at``: Unix seconds; ``mac``: hex HMAC-SHA256 of the admin token over
  ``kill:{NAME}:{id}``, so that a clear can tell a wrong token from the right one);
- ``strategylab:cluster:{NAME}:clear``: the last clear, ``{"kill_id", "by", "at", "mac"}`` with
  ``mac`` = HMAC-SHA256(admin token, ``clear:{NAME}:{kill_id}``);
- ``strategylab:cluster:{NAME}:events``: the pub/sub channel; each notice is ``{"type": "kill",
  "kill": {...}}`` or ``{"type": "clear", "clear": {...}}``;
- ``strategylab:cluster:{NAME}:member:{MEMBER}``: each running node's acknowledgement, a JSON
  object ``{"member", "halted", "kill_id", "verified", "problem", "known", "seen_clear", "at"}``
  (``seen_clear``: the first 16 hex digits of the ``mac`` of the clear record last read, so that
  the operator knows the node read ITS clear) written after every read of the keys (so at
  least every ``poll`` seconds) with a TTL of :data:`MEMBER_TTL_POLLS` polls (a node cut off
  from Redis, or gone, drops out by itself);
  ``strategylab:cluster:{NAME}:members`` the set of their names, ``strategylab:cluster:{NAME}:
  alive`` a key with the same TTL, ``strategylab:clusters`` the set of cluster names that had
  nodes (to name the clusters that do have running nodes when a kill reached none).

:class:`ClusterKillSwitch` is the operator's side (``strategylab kill --cluster NAME --redis
URL``): :meth:`~ClusterKillSwitch.kill` SETs the key (``NX``: a kill already in force is kept and
announced again) and PUBLISHes; :meth:`~ClusterKillSwitch.clear` checks the admin token against
the kill's ``mac`` (a wrong token changes nothing), then in one MULTI/EXEC transaction writes the
clear record, deletes the kill key and PUBLISHes. :meth:`~ClusterKillSwitch.acknowledgements`
then waits (at most ``wait`` seconds, 1 s by default) until every running node's acknowledgement
shows the kill obeyed (or the clear obeyed or refused), and says per node what happened: the
operator is told the truth, not the number of pub/sub subscribers.

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
re-reads the keys when back: a kill issued meanwhile is honoured then. A node that has NEVER
read the keys (Redis unreachable at start, a DB index that fails) and has no state file starts
halted, fail-safe (``known`` False, ``problem`` ``"kill state unknown: Redis unreachable ..."``),
until its first successful read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import socket
import time
import urllib.parse
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
    "MEMBER_TTL_POLLS",
    "ClusterKillAck",
    "ClusterKillError",
    "ClusterKillRecord",
    "ClusterKillState",
    "ClusterKillSwitch",
    "ClusterKillWatcher",
    "check_redis_url",
    "clear_mac",
    "cluster_kill_keys",
]

_log = logging.getLogger("strategylab.distributed.kill")

_CLUSTER: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PREFIX: Final = "strategylab:cluster:"
_REASON_MAX: Final = 500
_CLUSTERS: Final = "strategylab:clusters"
MEMBER_TTL_POLLS: Final = 3
"""A node's acknowledgement lives this many ``poll`` periods (at least 2 s) after its last read."""


def check_redis_url(url: object, key: str = "--redis") -> str:
    """``url`` when it is a Redis URL redis-py can use: ``redis://`` or ``rediss://`` with a host,
    a port 1..65535 when given, a DB path that is a number (``/0``) when given; or
    ``unix://PATH``. Otherwise :class:`ConfigurationError` naming ``key`` (the password is never
    shown). Stdlib parsing (:func:`urllib.parse.urlsplit`), the URL form of redis-py's
    ``Redis.from_url``."""
    if not isinstance(url, str):
        raise ConfigurationError(key, str(url)[:80], "must be a redis:// or rediss:// URL")
    shown = _safe_url(url)[:120]
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(key, shown, f"is not a URL ({exc})") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigurationError(key, shown, "unix:// needs the socket's path")
        return url
    if parts.scheme not in {"redis", "rediss"}:
        raise ConfigurationError(key, shown, "must be a redis://, rediss:// or unix:// URL")
    if not parts.hostname:
        raise ConfigurationError(key, shown, "has no host (redis://HOST:PORT/DB)")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(key, shown, "port must be from 1 to 65535")
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ConfigurationError(
            key, shown, f"the DB {db!r} must be a number (redis://HOST:PORT/0)"
        )
    return url


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


def _member_keys(cluster: str) -> tuple[str, str]:
    """``(members set, alive key)`` of ``cluster``; a member's key is ``{base}:member:{name}``."""
    base = _PREFIX + cluster
    return f"{base}:members", f"{base}:alive"


def _member_key(cluster: str, member: str) -> str:
    return f"{_PREFIX}{cluster}:member:{member}"


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
    way); ``since``: Unix seconds of the last change; ``known``: False until the node first read
    the keys (it is halted, fail-safe, meanwhile unless its state file says otherwise).
    """

    halted: bool = False
    kill: ClusterKillRecord | None = None
    connected: bool = False
    problem: str | None = None
    verified: bool | None = None
    since: float = 0.0
    known: bool = True

    def to_dict(self) -> dict[str, Any]:
        """For ``/status`` and the status line."""
        return {
            "known": self.known,
            "halted": self.halted,
            "kill": None if self.kill is None else self.kill.to_dict(),
            "connected": self.connected,
            "problem": self.problem,
            "verified": self.verified,
            "since": self.since,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterKillAck:
    """What one running node answered to a kill or a clear (:meth:`ClusterKillSwitch.
    acknowledgements`): ``member`` (its name), ``ok`` (it halted under the kill / resumed on the
    clear), ``outcome`` (``halted``, ``resumed``, ``still halted``, ``not halted``, ``no
    answer``), ``why`` (a reason or a warning, None when there is nothing to say), ``verified``
    (the kill's ``mac`` checks with the node's admin token; None: it has none)."""

    member: str
    ok: bool
    outcome: str
    why: str | None = None
    verified: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """For the command line's JSON answer."""
        return {"ok": self.ok, "outcome": self.outcome, "why": self.why, "verified": self.verified}


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
        check_redis_url(redis_url)
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

    def acknowledgements(
        self, kill_id: str, *, halted: bool, wait: float = 1.0
    ) -> list[ClusterKillAck]:
        """Each running node's answer to the kill ``kill_id`` (``halted`` True) or to its clear
        (False), sorted by member; an empty list: no node of the cluster is running (or none
        can reach Redis). Waits at most ``wait`` seconds (real time, polled every 20 ms) for
        every node to settle: halted under that kill, or resumed / refused the clear; a node
        that has not by then is reported as it stands. :class:`ClusterKillError` when Redis
        cannot be reached."""
        deadline = time.monotonic() + max(wait, 0.0)
        tag = None if halted else clear_mac(self._token, self.cluster, kill_id)[:16]
        while True:
            members = self._members()
            settled = all(_settled(m, kill_id, tag) for m in members.values())
            if settled or time.monotonic() >= deadline:
                return [
                    _ack(name, record, kill_id, tag) for name, record in sorted(members.items())
                ]
            time.sleep(0.02)

    def _members(self) -> dict[str, Mapping[str, Any]]:
        """The running members' acknowledgements; members whose key expired are forgotten."""
        members_key, _alive = _member_keys(self.cluster)
        try:
            names = sorted(
                n.decode() if isinstance(n, bytes) else str(n)
                for n in self._client.smembers(members_key)
            )
            raws = self._client.mget([_member_key(self.cluster, n) for n in names]) if names else []
            gone = [n for n, raw in zip(names, raws, strict=True) if raw is None]
            if gone:
                self._client.srem(members_key, *gone)
        except redis.RedisError as exc:
            raise self._unreachable(exc) from None
        out: dict[str, Mapping[str, Any]] = {}
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            out[name] = data if isinstance(data, Mapping) else {}
        return out

    def live_clusters(self, limit: int = 1000) -> list[str]:
        """Names of the clusters (on this Redis) with at least one running node, sorted; at most
        ``limit`` names are looked at (one pipelined EXISTS each; the names of clusters without
        a running node are dropped from the set as they are seen). :class:`ClusterKillError`
        when Redis cannot be reached."""
        try:
            names = sorted(
                {
                    n.decode() if isinstance(n, bytes) else str(n)
                    for n in itertools.islice(self._client.sscan_iter(_CLUSTERS, count=500), limit)
                }
            )
            if not names:
                return []
            with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(_member_keys(name)[1])
                alive = pipe.execute()
            dead = [name for name, up in zip(names, alive, strict=True) if not up]
            if dead:  # forgotten; a node of it that comes back adds it again
                self._client.srem(_CLUSTERS, *dead)
        except redis.RedisError as exc:
            raise self._unreachable(exc) from None
        return [name for name, up in zip(names, alive, strict=True) if up]


def _settled(record: Mapping[str, Any], kill_id: str, clear_tag: str | None) -> bool:
    """The node acted on the kill (``clear_tag`` None) or on the clear whose ``mac`` starts with
    ``clear_tag``: resumed, or read that clear and refused it."""
    if clear_tag is None:
        return record.get("halted") is True and record.get("kill_id") == kill_id
    return record.get("halted") is False or (
        record.get("kill_id") == kill_id and record.get("seen_clear") == clear_tag
    )


def _ack(
    member: str, record: Mapping[str, Any], kill_id: str, clear_tag: str | None
) -> ClusterKillAck:
    """One node's answer to the kill ``kill_id`` (``clear_tag`` None) or to its clear."""
    verified = record.get("verified")
    verified = verified if isinstance(verified, bool) else None
    problem = record.get("problem")
    now_halted = record.get("halted") is True
    obeyed = record.get("kill_id")
    if clear_tag is None:
        if now_halted and obeyed == kill_id:
            why = None
            if verified is False:
                why = (
                    "halted, but the kill was not signed with this node's admin token: it cannot "
                    "verify a clear made with the same token (clear with the nodes' token and "
                    f"--kill-id {kill_id})"
                )
            elif verified is None:
                why = "halted, but it has no admin token: it cannot verify any clear"
            return ClusterKillAck(
                member=member, ok=True, outcome="halted", why=why, verified=verified
            )
        if now_halted:
            why = f"halted by kill {obeyed}, not {kill_id} (no acknowledgement of this one)"
            return ClusterKillAck(
                member=member, ok=True, outcome="halted", why=why, verified=verified
            )
        return ClusterKillAck(
            member=member,
            ok=False,
            outcome="not halted",
            why="no acknowledgement of the kill within the wait (busy, or cut off from Redis)",
            verified=verified,
        )
    if not now_halted:
        return ClusterKillAck(member=member, ok=True, outcome="resumed", verified=verified)
    if obeyed == kill_id and record.get("seen_clear") == clear_tag:
        why = str(problem) if problem else "it refused the clear"
    elif obeyed != kill_id:
        why = (
            f"halted by {'kill ' + str(obeyed) if obeyed else 'no kill'}, not {kill_id}: {problem}"
        )
    else:
        why = f"no acknowledgement of the clear within the wait: {problem}"
    return ClusterKillAck(
        member=member, ok=False, outcome="still halted", why=why, verified=verified
    )


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
    (the wait for a notice is Redis's socket, on the real clock); ``member``: the node's name in
    its acknowledgements (default ``HOST:PID:RANDOM``), unique in the cluster.
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
        member: str | None = None,
    ) -> None:
        self.cluster = _check_cluster(cluster)
        self.kill_key, self.clear_key, self.channel = cluster_kill_keys(cluster)
        self.member = member or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._member_key = _member_key(self.cluster, self.member)
        self._members_key, self._alive_key = _member_keys(self.cluster)
        self._ttl_ms = max(int(MEMBER_TTL_POLLS * poll * 1000), 2000)
        self._cleared_kill: str | None = None  # the kill id of the clear record last read
        self._seen_clear: str | None = None  # its mac's first 16 hex digits
        self._url = check_redis_url(redis_url)
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
                await self._beat()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            read = pubsub is not None  # the keys were read; the acknowledgement failed
            await _close_quietly(pubsub)
            pubsub = None
            if not read and persisted is None:  # never read: fail safe, halted until a read
                _log.warning(
                    "cluster %s: kill state unknown (%s): trading halted until the first read",
                    self.cluster,
                    _outage(exc),
                )
                self._state = ClusterKillState(halted=True, known=False, since=self._clock.time())
            self._set(dataclasses.replace(self._state, connected=False, problem=self._problem(exc)))
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
                async with asyncio.timeout(self._timeout):
                    await client.delete(self._member_key)
                    await client.srem(self._members_key, self.member)
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

    async def _read(self, *, beat: bool = True) -> None:
        """Read both keys and settle the state (see the module docstring); then, with ``beat``,
        write the node's acknowledgement."""
        client = self._client
        assert client is not None  # noqa: S101 - start() made it
        raw_kill, raw_clear = await client.mget([self.kill_key, self.clear_key])
        self._cleared_kill, self._seen_clear = _clear_seen(raw_clear)
        self._settle(raw_kill, raw_clear)
        if beat:
            await self._beat()

    def _settle(self, raw_kill: object, raw_clear: object) -> None:
        kill = None if raw_kill is None else ClusterKillRecord.parse(raw_kill)
        if raw_kill is not None and kill is None:  # damaged: halting is the safe side
            kill = ClusterKillRecord(id="unreadable", reason="unreadable kill key", by="", at=0.0)
        if kill is not None:
            self._halt(kill, connected=True)
            return
        current = self._state
        if not current.halted or current.kill is None:
            if not current.known:
                _log.warning("cluster %s: kill state read: no kill, trading", self.cluster)
            self._set(ClusterKillState(connected=True, since=current.since))
            return
        if self._verified_clear(raw_clear, current.kill.id):
            _log.warning("cluster %s: kill %s cleared (verified)", self.cluster, current.kill.id)
            self._cleared.append(current.kill.id)  # a late notice of it halts nothing
            self._set(ClusterKillState(connected=True, since=current.since))
            return
        if self._token is None:
            problem = "no admin token: a clear cannot be verified"
        elif self._cleared_kill == current.kill.id:
            problem = "cannot verify the clear with its admin token (not the token of the clear)"
        else:
            problem = "kill key vanished without a verified clear"
        self._set(dataclasses.replace(current, connected=True, problem=problem))

    async def _beat(self) -> None:
        """Write this node's acknowledgement (see the module docstring), with its TTL."""
        client = self._client
        assert client is not None  # noqa: S101 - start() made it
        state = self._state
        body = {
            "member": self.member,
            "halted": state.halted,
            "kill_id": None if state.kill is None else state.kill.id,
            "verified": state.verified,
            "problem": state.problem,
            "known": state.known,
            "seen_clear": self._seen_clear,
            "at": round(self._clock.time(), 3),
        }
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self._member_key, json.dumps(body), px=self._ttl_ms)
            pipe.sadd(self._members_key, self.member)
            pipe.set(self._alive_key, "1", px=self._ttl_ms)
            pipe.sadd(_CLUSTERS, self.cluster)
            await pipe.execute()

    def _problem(self, exc: BaseException) -> str:
        """The outage as ``problem``; before the first read, the kill state is unknown."""
        if not self._state.known and self._state.kill is None:
            return f"kill state unknown: {_outage(exc)}"
        return _outage(exc)

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
            await self._read(beat=False)  # the caller writes the acknowledgement
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
                    await self._beat()
                delay = 0.05
                await self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                if self._state.connected:
                    _log.warning("cluster %s: Redis unreachable: %s", self.cluster, exc)
                problem = self._problem(exc)
                self._set(dataclasses.replace(self._state, connected=False, problem=problem))
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


def _clear_seen(raw: object) -> tuple[str | None, str | None]:
    """``(kill_id, mac[:16])`` of a clear record (unchecked), Nones when there is none."""
    if not isinstance(raw, bytes | str):
        return None, None
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(data, Mapping):
        return None, None
    kill_id, mac = data.get("kill_id"), data.get("mac")
    return (
        kill_id if isinstance(kill_id, str) else None,
        mac[:16] if isinstance(mac, str) else None,
    )


def _outage(exc: BaseException) -> str:
    return f"Redis unreachable: {exc or type(exc).__name__}"
