"""The lab across several nodes (``strategylab lab --cluster N``, issue 14): :class:`LabCluster`,
its probes, its integrity check, and :func:`run_cluster_lab`.

:class:`LabCluster` starts, in a work directory: a PostgreSQL (the one ``postgres`` names, or a
:class:`~strategylab.chaos.ThrowawayPostgres`), in it a schema of the run's own; a Redis (the one
``redis`` names, or a :class:`~strategylab.chaos.ThrowawayRedis`); the lab's pipeline (the exchange
simulator, its feed and order-API fault proxies) whose node is the cluster's first member; and
``nodes - 1`` more ``strategylab node`` processes. Every member runs with ``--cluster NAME
--postgres URL --redis URL`` on the same symbols, a status port, the admin token and a trader
child of its own. The last member reaches PostgreSQL through a fault proxy of the lab (the
partition fault's target); the second is the SIGKILL target. The members share the symbols
through PostgreSQL leases with fencing tokens (:mod:`strategylab.node` sharded ingest) and obey
the cluster kill switch on Redis.

The cluster's probes (:class:`ClusterProbes`), each a :data:`~strategylab.chaos.Probe`:

- ``serving``: every member in service (not taken out by a fault) answers ``/health/live`` 200 and
  ``/status``;
- ``recovered``: every symbol is held by exactly one member in service (its ``/status``
  ``cluster.symbols``) and the shared store holds every tick the exchange had emitted when asked
  (the store's highest sequence per symbol, read from PostgreSQL, polled for at most 0.5 s).

:func:`cluster_integrity` runs the checker (:func:`~strategylab.chaos.check`, over a read-only
:func:`~strategylab.market.open_tick_reader` of the shared store, as
:func:`~strategylab.chaos.check_store` opens it) against the exchange's emitted log and the
members' ack logs merged (the highest acknowledged sequence per symbol over every member: a tick
any member acknowledged must be in the shared store).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Self

from strategylab._files import make_private_dir, open_private
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.market import (
    PostgresTickStore,
    StoreUnreachableError,
    StoreUnusableError,
    open_tick_reader,
    read_acks,
)

from ._checker import CheckInputError, IntegrityReport, check
from ._cluster_servers import ThrowawayRedis, pg_upstream, pg_url_via, throwaway_pg_url
from ._harness import ExtraNode, Pipeline, PipelineConfig, PipelineError
from ._injector import FaultSkippedError, HealGuard, Injector, InjectorError
from ._lab import CappedSource, LabRun, _drop_schema, _machine, _own_schema, _verify_audit
from ._measure import FaultRun
from ._proxy import Proxy
from ._run_model import LabEvent, LabOptions, LabReport
from ._scenario import CategoryResult, Integrity, Scenario
from ._severity import Severity
from ._throwaway_pg import ThrowawayPostgres

__all__ = [
    "CLUSTER_CATEGORY_ID",
    "MAX_NODES",
    "MIN_NODES",
    "ClusterConfig",
    "ClusterKillPull",
    "ClusterLabRun",
    "ClusterMember",
    "ClusterProbes",
    "LabCluster",
    "MemberOut",
    "cluster_integrity",
    "run_cluster_lab",
]

CLUSTER_CATEGORY_ID: Final = 11
"""The cluster category's id in reports (after DESIGN §6's ten)."""
MIN_NODES: Final = 2
MAX_NODES: Final = 5
_BALANCE_TIMEOUT: Final = 20.0
_CATCH_UP_TIMEOUT: Final = 20.0
_CLI_TIMEOUT: Final = 20.0
_TRADER_ARGS: Final = (
    *("--strategy", "ma-aapl=ma_crossover"),
    *("--param", "fast=5", "--param", "slow=20", "--param", "qty=1"),
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """How the lab's cluster runs.

    ``nodes``: members, :data:`MIN_NODES`..:data:`MAX_NODES`; ``postgres``: a ``postgresql://``
    URL (None: a throwaway server of the lab's own); ``redis``: a ``redis://`` URL (None: a
    throwaway ``redis-server``, the only kind the Redis fault may kill); ``name``: the cluster's
    name (default: unique to the run, so a shared Redis or database never mixes two runs);
    ``traders``: a trader child on every member. Raises :class:`ValueError` naming the field.
    """

    work_dir: Path
    nodes: int = 3
    postgres: str | None = None
    redis: str | None = None
    name: str = ""
    seed: int = 42
    tick_rate: float = 1500.0
    traders: bool = True
    ready_timeout: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not MIN_NODES <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes={self.nodes!r}: must be {MIN_NODES}..{MAX_NODES}")
        if self.postgres is not None and not self.postgres.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("postgres: must be a postgresql:// URL (the value is not shown)")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://")):
            raise ValueError("redis: must be a redis:// or rediss:// URL (the value is not shown)")
        if not self.tick_rate > 0:
            raise ValueError(f"tick_rate={self.tick_rate!r}: must be > 0 (ticks/s)")

        if self.name and not _CLUSTER_NAME.fullmatch(self.name):
            raise ValueError(f"name={self.name!r}: must be 1..64 of A-Z a-z 0-9 . _ -")


_CLUSTER_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ClusterMember:
    """One node of the cluster: the pipeline's own node (``node``) or an extra one (``nodeN``).

    ``out`` is set while a fault has taken it out of service (killed, partitioned): the probes
    do not count it. Observations mirror the pipeline's (:meth:`status`, :meth:`live`)."""

    def __init__(
        self,
        cluster: LabCluster,
        name: str,
        *,
        postgres: str,
        extra: ExtraNode | None,
        proxied: bool = False,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.postgres = postgres
        """The URL it was given (the proxy's, for the partition target)."""
        self.proxied = proxied
        self.extra = extra
        """Its process handle (None: the pipeline's own node)."""
        self.out = False
        self.starts = 1

    @property
    def running(self) -> bool:
        if self.extra is None:
            return self.cluster.pipeline.node_running
        return self.extra.running

    @property
    def pid(self) -> int | None:
        return self.cluster.pipeline.node_pid if self.extra is None else self.extra.pid

    @property
    def acks_path(self) -> Path:
        return self.cluster.pipeline.acks_path if self.extra is None else self.extra.acks_path

    @property
    def in_service(self) -> bool:
        """Running and not taken out by a fault."""
        return self.running and not self.out

    async def status(self) -> dict[str, Any]:
        """Its ``/status``. Raises :class:`PipelineError` when it is down or does not answer."""
        if self.extra is None:
            return await self.cluster.pipeline.status()
        return await self.extra.status()

    async def live(self) -> tuple[bool, str]:
        """``/health/live`` answered 200 (never raises)."""
        if self.extra is None:
            return await self.cluster.pipeline.live()
        return await self.extra.live()

    async def reap(self, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal it (unless it exited) and reap it; its exit status."""
        if self.extra is None:
            if not self.cluster.pipeline.node_running:
                return (
                    self.cluster.pipeline.node_exits[-1] if self.cluster.pipeline.node_exits else 0
                )
            return await self.cluster.pipeline.kill_node()
        return await self.extra.stop(sig)

    async def start(self) -> None:
        """Start it again (as its service manager would), from its data directory."""
        if self.running:
            raise PipelineError(f"{self.name} is already running")
        if self.extra is None:
            await self.cluster.pipeline.start_node()
        else:
            self.extra = await self.cluster.start_extra(self.name, self.postgres)
        self.starts += 1


class LabCluster:
    """The servers, the pipeline and the members (see the module docstring).

    Use as ``async with LabCluster(config) as cluster:``; leaving it stops every member
    (SIGTERM: each leaves the cluster), the proxies, the exchange, the throwaway servers, and
    drops the run's schema. Raises :class:`PipelineError` when something does not start.
    """

    def __init__(self, config: ClusterConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.name = config.name or f"lab-{os.getpid()}-{secrets.token_hex(3)}"
        """The cluster's name (``--cluster NAME`` of every member)."""
        self._clock = clock
        self._pg: ThrowawayPostgres | None = None
        self.redis_server: ThrowawayRedis | None = None
        self.redis_url = config.redis or ""
        self._base_url = ""
        self._schema: str | None = None
        self.postgres_url = ""
        """The run's database, ``search_path`` its own schema (what the checker reads)."""
        self.pg_proxy: Proxy | None = None
        self.pg_proxy_problem: str | None = None
        self._pipeline: Pipeline | None = None
        self.members: list[ClusterMember] = []
        self._store: PostgresTickStore | None = None
        self.probes = ClusterProbes(self)

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise PipelineError("the cluster is not started")
        return self._pipeline

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.pipeline.config.symbols

    @property
    def servers(self) -> dict[str, str]:
        """Which servers the run used: ``given`` or ``throwaway``."""
        return {
            "postgres": "throwaway" if self.config.postgres is None else "given",
            "redis": "throwaway" if self.config.redis is None else "given",
        }

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the servers, the pipeline (member ``node``) and the other members; return once
        every member holds a share of the symbols."""
        cfg = self.config
        make_private_dir(cfg.work_dir)
        if cfg.postgres is None:
            pg = ThrowawayPostgres()
            reason = pg.capability()
            if reason is not None:
                raise PipelineError(f"no PostgreSQL for the cluster (give --postgres): {reason}")
            self._pg = pg  # destroyed by aclose() whatever step fails
            await pg.create()
            await pg.start()
            self._base_url = throwaway_pg_url(pg.port)
        else:
            self._base_url = cfg.postgres
        self._schema, self.postgres_url = await asyncio.to_thread(_own_schema, self._base_url)
        if cfg.redis is None:
            reason = ThrowawayRedis.capability()
            if reason is not None:
                raise PipelineError(f"no Redis for the cluster (give --redis): {reason}")
            self.redis_server = ThrowawayRedis(cfg.work_dir / "redis")
            await self.redis_server.start()
            self.redis_url = self.redis_server.url
        upstream = pg_upstream(self.postgres_url)
        if upstream is None:
            self.pg_proxy_problem = "the --postgres URL names no single TCP host:port to proxy"
        else:
            self.pg_proxy = Proxy(f"lab-pg-node{cfg.nodes}", upstream=upstream, connect_timeout=2.0)
            await self.pg_proxy.start()
        pipeline = Pipeline(
            PipelineConfig(
                work_dir=cfg.work_dir,
                seed=cfg.seed,
                tick_rate=cfg.tick_rate,
                postgres=self.postgres_url,
                trader=cfg.traders,
                ready_timeout=cfg.ready_timeout,
                extra_node_args=self._cluster_args(),
            ),
            clock=self._clock,
        )
        self._pipeline = pipeline
        await pipeline.start()
        self.members = [ClusterMember(self, "node", postgres=self.postgres_url, extra=None)]
        for index in range(2, cfg.nodes + 1):
            name = f"node{index}"
            proxied = index == cfg.nodes and self.pg_proxy is not None
            url = self.postgres_url
            if proxied:
                assert self.pg_proxy is not None  # noqa: S101 - just said so
                url = pg_url_via(self.postgres_url, self.pg_proxy.listen_port) or url
            extra = await self.start_extra(name, url)
            self.members.append(
                ClusterMember(self, name, postgres=url, extra=extra, proxied=proxied)
            )
        store = PostgresTickStore(
            self.postgres_url, read_only=True, pool_size=1, timeout=2.0, name="lab-cluster"
        )
        await store.open()
        self._store = store
        ok, detail = await self.wait_balanced(_BALANCE_TIMEOUT)
        if not ok:
            raise PipelineError(f"the cluster did not share its symbols: {detail}")

    def _cluster_args(self) -> tuple[str, ...]:
        return ("--cluster", self.name, "--redis", self.redis_url)

    async def start_extra(self, name: str, postgres: str) -> ExtraNode:
        """Start the extra member ``name`` (again) with the cluster's arguments."""
        pipeline = self.pipeline
        args = list(self._cluster_args())
        if self.config.traders:
            args += [*_TRADER_ARGS, "--book", str(pipeline.trading_dir / f"book-{name}.db")]
        return await pipeline.start_extra_node(name, postgres=postgres, extra_args=args)

    async def aclose(self) -> None:
        """Stop everything (idempotent); the run's schema is dropped."""
        try:
            if self._store is not None:
                await self._store.aclose()
                self._store = None
            if self._pipeline is not None:
                await self._pipeline.aclose()
            if self.pg_proxy is not None:
                await self.pg_proxy.stop()
            if self.redis_server is not None:
                await self.redis_server.aclose()
            elif self.config.redis is not None and self._pipeline is not None:
                await asyncio.to_thread(_forget_cluster, self.config.redis, self.name)
        finally:
            if self._schema is not None:
                schema, self._schema = self._schema, None
                await asyncio.shield(asyncio.to_thread(_drop_schema, self._base_url, schema))
            if self._pg is not None:
                pg, self._pg = self._pg, None
                await pg.destroy()

    def member(self, name: str) -> ClusterMember:
        """The member called ``name``. Raises :class:`KeyError`."""
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    async def statuses(self) -> dict[str, dict[str, Any] | str]:
        """Every running member's ``/status`` (or why it did not answer), asked at once."""
        running = [m for m in self.members if m.running]

        async def one(member: ClusterMember) -> dict[str, Any] | str:
            try:
                return await member.status()
            except PipelineError as exc:
                return str(exc)

        answers = await asyncio.gather(*(one(m) for m in running))
        return {m.name: a for m, a in zip(running, answers, strict=True)}

    async def store_last_seqs(self) -> dict[str, int]:
        """The shared store's highest sequence per symbol (read from PostgreSQL)."""
        if self._store is None:
            raise PipelineError("the cluster is not started")
        return await self._store.last_seqs()

    async def wait_balanced(self, timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109 - a bound
        """Wait at most ``timeout`` seconds until every member in service holds at least its
        floor share of the symbols and :meth:`ClusterProbes.recovered` passes."""
        deadline = self._clock.monotonic() + timeout
        detail = "never asked"
        while True:
            ok, detail = await self.probes.balanced()
            if ok:
                ok, detail = await self.probes.recovered()
                if ok:
                    return True, detail
            if self._clock.monotonic() >= deadline:
                return False, detail
            await self._clock.asleep(0.1)


def _forget_cluster(url: str, name: str) -> None:
    """Delete the cluster's keys (``strategylab:cluster:NAME:*``: its kill switch's and its
    shared breakers') from a Redis the lab was given, once every member has stopped (a Redis
    that cannot be reached then keeps them)."""
    import redis  # noqa: PLC0415 - only with --redis

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=f"strategylab:cluster:{name}:*", count=500))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def held(status: dict[str, Any] | str) -> list[str]:
    """The symbols a member's ``/status`` says it holds (none for an unanswered one)."""
    if not isinstance(status, dict):
        return []
    cluster = (status.get("extra") or {}).get("cluster") or {}
    symbols = cluster.get("symbols") or []
    return [str(s) for s in symbols]


def kill_view(status: dict[str, Any] | str) -> dict[str, Any]:
    """A member's ``/status`` ``cluster_kill`` (empty for an unanswered one)."""
    if not isinstance(status, dict):
        return {}
    view = (status.get("extra") or {}).get("cluster_kill")
    return view if isinstance(view, dict) else {}


class ClusterProbes:
    """The cluster's probes (see the module docstring)."""

    def __init__(self, cluster: LabCluster) -> None:
        self.cluster = cluster

    async def serving(self) -> tuple[bool, str]:
        """Every member in service answers ``/health/live`` 200 and ``/status``."""
        members = [m for m in self.cluster.members if m.in_service]
        if not members:
            return False, "no member in service"
        lives = await asyncio.gather(*(m.live() for m in members))
        down = [f"{m.name}: {d}" for m, (ok, d) in zip(members, lives, strict=True) if not ok]
        if down:
            return False, "; ".join(down)
        statuses = await self.cluster.statuses()
        silent = [n for m in members if not isinstance(statuses.get(n := m.name), dict)]
        if silent:
            return False, f"/status unanswered: {', '.join(silent)}"
        return True, f"{len(members)} members serving"

    async def ownership(self) -> tuple[bool, str]:
        """Every symbol held by exactly one member in service."""
        statuses = await self.cluster.statuses()
        holders: dict[str, list[str]] = {}
        for member in self.cluster.members:
            if member.in_service:
                for symbol in held(statuses.get(member.name, "")):
                    holders.setdefault(symbol, []).append(member.name)
        orphans = [s for s in self.cluster.symbols if not holders.get(s)]
        doubles = {s: h for s, h in holders.items() if len(h) > 1}
        if orphans or doubles:
            parts = []
            if orphans:
                parts.append(f"held by no member in service: {', '.join(orphans)}")
            if doubles:
                parts.append(f"held twice: {doubles}")
            return False, "; ".join(parts)
        return True, "every symbol held once"

    async def balanced(self) -> tuple[bool, str]:
        """Every member in service holds at least ``floor(symbols / members in service)``."""
        members = [m for m in self.cluster.members if m.in_service]
        if not members:
            return False, "no member in service"
        floor = len(self.cluster.symbols) // len(members)
        statuses = await self.cluster.statuses()
        short = {
            m.name: len(held(statuses.get(m.name, "")))
            for m in members
            if len(held(statuses.get(m.name, ""))) < floor
        }
        if short:
            return False, f"below the share of {floor}: {short}"
        return True, f"every member holds >= {floor}"

    async def caught_up(self, allowance: float = 0.5) -> tuple[bool, str]:
        """The shared store holds every tick the exchange had emitted when asked (polled every
        50 ms for at most ``allowance`` seconds: the frames in flight). Never raises."""
        cluster, clock = self.cluster, self.cluster._clock  # noqa: SLF001 - its own cluster
        try:
            emitted = (await cluster.pipeline.exchange_status()).get("last_seq", {})
        except (PipelineError, OSError, TimeoutError, ValueError) as exc:
            return False, f"exchange: {exc}"
        deadline = clock.monotonic() + allowance
        while True:
            try:
                stored = await cluster.store_last_seqs()
            except (StoreUnreachableError, StoreUnusableError, PipelineError, OSError) as exc:
                return False, f"store: {exc}"
            behind = {
                s: int(n) - stored.get(s, 0) for s, n in emitted.items() if stored.get(s, 0) < n
            }
            if not behind:
                return True, "store caught up"
            if clock.monotonic() >= deadline:
                shown = ", ".join(f"{s} {d}" for s, d in sorted(behind.items()))
                return False, f"store behind: {shown}"
            await clock.asleep(0.05)

    async def recovered(self) -> tuple[bool, str]:
        """:meth:`ownership` and :meth:`caught_up`."""
        ok, owned = await self.ownership()
        if not ok:
            return False, owned
        ok, caught = await self.caught_up()
        return ok, caught if not ok else f"{owned}; {caught}"


# ---------------------------------------------------------------------- injectors


class MemberOut(Injector):
    """``inner`` (a fault of ``member``), with the member taken out of the probes' count from the
    moment it is injected (the scenario puts it back when it has rejoined)."""

    def __init__(self, inner: Injector, member: ClusterMember) -> None:
        super().__init__(inner.name, inner.severity)
        self.kind = inner.kind  # type: ignore[misc] # an instance mirrors its inner's kind
        self.inner = inner
        self.member = member

    def capability(self) -> str | None:
        return self.inner.capability()

    async def _inject(self) -> None:
        self.member.out = True
        await self.inner.inject()

    async def _heal(self) -> None:
        await self.inner.heal()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "member": self.member.name}


class SkippedFault(Injector):
    """A fault that cannot run here: :meth:`capability` says why (it is reported SKIPPED)."""

    def __init__(self, name: str, reason: str, severity: Severity = Severity.MEDIUM) -> None:
        super().__init__(name, severity)
        self.reason = reason

    def capability(self) -> str | None:
        return self.reason

    async def _inject(self) -> None:  # pragma: no cover - capability() refuses first
        raise FaultSkippedError(self.name, self.reason)

    async def _heal(self) -> None:  # pragma: no cover
        return None


class ClusterKillPull(Injector):
    """The cluster kill switch pulled with ``strategylab kill --cluster NAME --redis URL
    --reason TEXT`` (inject) and cleared with ``--clear`` and the admin token (heal), each a real
    run of the command. :attr:`kill` is the kill record it printed (``id``, ``at``: Unix
    seconds), :attr:`pulled_mono` the monotonic time of ``at`` (CLOCK_MONOTONIC is one clock for
    every process of the machine). Raises :class:`InjectorError` when the command fails."""

    kind: ClassVar[str] = "operator"

    def __init__(
        self, cluster: LabCluster, *, severity: Severity = Severity.MEDIUM,
        name: str = "cluster.kill_switch",
    ) -> None:  # fmt: skip
        super().__init__(name, severity)
        self.cluster = cluster
        self.kill: dict[str, Any] = {}
        self.pulled_mono: float | None = None
        self.cleared: dict[str, Any] = {}
        self.command_s: dict[str, float] = {}

    async def _inject(self) -> None:
        answer = await self._run("kill", "--reason", f"chaos lab {self.cluster.name}")
        kill = answer.get("kill")
        if not isinstance(kill, dict):
            raise InjectorError(f"{self.name}: the kill command printed no kill record: {answer}")
        self.kill = kill
        at = kill.get("at")
        if isinstance(at, int | float):
            self.pulled_mono = time.monotonic() - (time.time() - float(at))

    async def _heal(self) -> None:
        self.cleared = await self._run("clear", "--clear")

    async def _run(self, what: str, *args: str) -> dict[str, Any]:
        cluster = self.cluster
        argv = (
            sys.executable, "-m", "strategylab", "kill",
            *("--cluster", cluster.name, "--redis", cluster.redis_url),
            *("--admin-token-file", str(cluster.pipeline.token_file)), *args,
        )  # fmt: skip
        began = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(_CLI_TIMEOUT):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise InjectorError(f"{self.name}: `strategylab kill {what}` hung") from None
        except BaseException:  # cancelled (Ctrl-C): the command does not outlive the lab
            if process.returncode is None:
                process.kill()
                await asyncio.shield(process.wait())
            raise
        self.command_s[what] = round(time.monotonic() - began, 3)
        if process.returncode != 0:
            raise InjectorError(
                f"{self.name}: `strategylab kill --cluster` ({what}) exited "
                f"{process.returncode}: {err.decode(errors='replace').strip()[:300]}"
            )
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise InjectorError(f"{self.name}: unreadable answer {out[:200]!r}") from exc
        return answer if isinstance(answer, dict) else {}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "cluster": self.cluster.name,
            "kill_id": self.kill.get("id"),
            "command_s": dict(self.command_s),
        }


# ---------------------------------------------------------------------- the lab run


class ClusterLabRun(LabRun):
    """The :class:`~strategylab.chaos.LabRun` of the cluster category: :attr:`cluster` besides the
    pipeline (whose node is the first member; its status lines give the ingest rate)."""

    def __init__(self, cluster: LabCluster, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(cluster.pipeline, scenario, **kwargs)
        self.cluster = cluster

    @property
    def clock(self) -> Clock:
        """The clock every measure of the run reads."""
        return self._clock

    async def integrity(self) -> Integrity:
        """The checker over the shared store (:func:`cluster_integrity`), recorded in
        :attr:`result` and written as ``integrity-11.json`` (the last one of the category)."""
        integ = await cluster_integrity(self.cluster, self._clock, emit=self.emit)
        self.result.integrity = integ
        if self._report_dir is not None:
            path = self._report_dir / f"integrity-{self.result.id:02d}.json"
            fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(integ.report, out, indent=1)
            if path not in self.integrity_paths:
                self.integrity_paths.append(path)
        return integ

    async def fault_integrity(self, run: FaultRun) -> Integrity:
        """:meth:`integrity` after ``run``: its figures in ``run.extra["integrity"]`` and a check
        that nothing acknowledged was lost and nothing duplicated."""
        integ = await self.integrity()
        run.extra["integrity"] = {
            "acknowledged": integ.acknowledged,
            "stored": integ.stored,
            "lost": integ.lost,
            "duplicated": integ.duplicated,
            "unexpected": integ.unexpected,
            "corrupted": integ.corrupted,
        }
        self.check(
            f"{run.name}: the shared store lost and duplicated nothing",
            integ.lost == 0 and integ.duplicated == 0,
            f"{integ.acknowledged} acknowledged, {integ.stored} stored, {integ.lost} lost, "
            f"{integ.duplicated} duplicated",
        )
        return integ


async def cluster_integrity(
    cluster: LabCluster,
    clock: Clock = SYSTEM_CLOCK,
    *,
    emit: Callable[..., None] | None = None,
) -> Integrity:
    """Wait (at most 20 s) for the shared store to catch up with the exchange, then run the
    checker over it (read-only) against the emitted log and the members' ack logs merged. Raises
    :class:`~strategylab.chaos.CheckInputError` when the store or a log cannot be read."""
    deadline = clock.monotonic() + _CATCH_UP_TIMEOUT
    caught, detail = False, "not asked"
    while clock.monotonic() < deadline:
        caught, detail = await cluster.probes.caught_up()
        if caught:
            break
        await clock.asleep(0.1)
    if not caught and emit is not None:
        emit("note", text=f"integrity: store not caught up ({detail})")
    report = await _check_cluster(cluster, clock)
    return Integrity.of(report, caught=caught, detail=detail)


async def _check_cluster(cluster: LabCluster, clock: Clock) -> IntegrityReport:
    """As :func:`strategylab.chaos._lab._check_snapshot`: acks first, then the exchange's
    ``last_seq`` (the store is read and the acks capped up to it), for every member's acks."""
    pipeline = cluster.pipeline

    def merged() -> dict[str, int]:
        acks: dict[str, int] = {}
        for member in cluster.members:
            if member.acks_path.exists():
                for symbol, seq in read_acks(member.acks_path).items():
                    acks[symbol] = max(acks.get(symbol, 0), seq)
        return acks

    acks = await asyncio.to_thread(merged)
    status = await pipeline.exchange_status()
    last = {str(k): int(v) for k, v in status.get("last_seq", {}).items()}
    capped = {s: min(n, last.get(s, n)) for s, n in acks.items()}
    source = open_tick_reader(cluster.postgres_url)
    try:
        await source.open()
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(str(exc)) from exc
    try:
        return await check(pipeline.ledger_path, CappedSource(source, last), capped, clock=clock)
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(str(exc)) from exc
    finally:
        await source.aclose()


EventSink = Callable[[LabEvent], None]


async def run_cluster_lab(
    options: LabOptions,
    on_event: EventSink | None = None,
    *,
    nodes: int = 3,
    redis: str | None = None,
    scenario: Scenario | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> LabReport:
    """Run the cluster category (``scenario``, default
    :class:`~strategylab.chaos.scenarios.ClusterFailover`) against a :class:`LabCluster` of
    ``nodes`` members on ``options.postgres`` and ``redis`` (throwaway servers when None) and
    report it as a lab run (category id :data:`CLUSTER_CATEGORY_ID`).

    A scenario's exception becomes the category's ``error``; the faults in force are healed and
    every process stopped however the run ends (Ctrl-C included). Raises
    :class:`~strategylab.chaos.PipelineError` when the cluster cannot start.
    """
    if scenario is None:
        from .scenarios import ClusterFailover  # noqa: PLC0415 - it imports this module

        scenario = ClusterFailover()
    origin = clock.monotonic()
    started_wall = dt.datetime.now(dt.UTC).isoformat()
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="strategylab-lab-"))
    config = ClusterConfig(
        work_dir=work, nodes=nodes, postgres=options.postgres, redis=redis, seed=options.seed
    )
    guard = HealGuard()

    def emit(event: LabEvent) -> None:
        if on_event is not None:
            on_event(event)

    skipped: dict[str, str] = {}
    if redis is not None:
        skipped["a Redis of the lab's own (Redis killed and restarted)"] = (
            "--redis was given: the lab kills only a Redis it started"
        )
    cluster = LabCluster(config, clock=clock)
    result: CategoryResult | None = None
    integrity_paths: list[Path] = []
    try:
        emit(LabEvent(kind="note", t=clock.monotonic(), text=f"starting {nodes} nodes"))
        async with cluster:
            if cluster.pg_proxy_problem is not None:
                skipped["a fault proxy in front of PostgreSQL"] = cluster.pg_proxy_problem
            report_dir = make_private_dir(work / "integrity")
            lab = ClusterLabRun(
                cluster, scenario, severity=options.severity, seed=options.seed, guard=guard,
                on_event=emit, report_dir=report_dir, clock=clock,
            )  # fmt: skip
            result = lab.result
            await _run(lab, scenario)
            integrity_paths = lab.integrity_paths
    finally:
        failures = await asyncio.shield(guard.heal_all())
        for name, exc in failures:
            emit(LabEvent(kind="note", t=clock.monotonic(), text=f"heal of {name} failed: {exc}"))
    pipeline = cluster.pipeline
    audit_verified = await asyncio.to_thread(
        _verify_audit, pipeline.audit_path, pipeline.audit_anchor_path
    )
    machine = _machine(dataclasses.replace(options, postgres=options.postgres or "throwaway"))
    machine["cluster"] = {"nodes": nodes, "name": cluster.name, **cluster.servers}
    emit(LabEvent(kind="note", t=clock.monotonic(), text="lab run finished"))
    return LabReport(
        options=options,
        results=[] if result is None else [result],
        started_wall=started_wall,
        origin=origin,
        duration_s=clock.monotonic() - origin,
        machine=machine,
        audit_log=pipeline.audit_path if pipeline.audit_path.exists() else None,
        audit_verified=audit_verified,
        integrity_reports=integrity_paths,
        skipped_capabilities=skipped,
    )


async def _run(lab: ClusterLabRun, scenario: Scenario) -> None:
    result = lab.result
    result.started = lab._clock.monotonic()  # noqa: SLF001 - our own helper
    lab.emit("category", text=scenario.description or scenario.name)
    try:
        await scenario.run(lab)
    except Exception as exc:  # a scenario's failure is its category's
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        failures = await asyncio.shield(lab.guard.heal_all())
        for name, failure in failures:
            result.error = result.error or f"heal of {name} failed: {failure}"
    if result.integrity is None and result.skipped is None:
        try:
            await lab.integrity()
        except Exception as exc:  # the checker could not read the store: a lab error
            result.error = result.error or f"integrity check: {type(exc).__name__}: {exc}"
    result.ended = lab._clock.monotonic()  # noqa: SLF001
    verdict = result.verdict
    lab.emit("done", ok=verdict == "pass", text=verdict)


def wall_to_monotonic(at: float) -> float:
    """Unix seconds ``at`` on the monotonic clock (both read now, on this machine)."""
    return time.monotonic() - (time.time() - at)


async def poll(
    probe: Callable[[], Awaitable[tuple[bool, str]]],
    timeout: float,  # noqa: ASYNC109 - a bound, said
    clock: Clock = SYSTEM_CLOCK,
    interval: float = 0.1,
) -> tuple[bool, str, float]:
    """Call ``probe`` every ``interval`` seconds until it passes or ``timeout`` seconds passed:
    ``(passed, its last detail, seconds taken)``."""
    began = clock.monotonic()
    while True:
        ok, detail = await probe()
        if ok or clock.monotonic() - began >= timeout:
            return ok, detail, clock.monotonic() - began
        await clock.asleep(interval)


def latencies(values: Sequence[float]) -> dict[str, float | None]:
    """p50/max (seconds, 4 decimals) of ``values``."""
    if not values:
        return {"p50": None, "max": None}
    ordered = sorted(values)
    return {"p50": round(ordered[len(ordered) // 2], 4), "max": round(ordered[-1], 4)}
