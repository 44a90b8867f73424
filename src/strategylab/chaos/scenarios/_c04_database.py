"""Category 4, database failover: primary failure, pool exhaustion, timeouts, storage full.

On the default SQLite store (the lab's embedded default):

- ``database.sqlite_lock`` (primary failure): a connection of the lab's own holds the store's
  write lock (``BEGIN EXCLUSIVE``). The node's writes stall, it fails over to its durable spool
  (writes stay acknowledged), and once the lock is released it drains the spool back into the
  store, in order. Recovered = ready, the store back on the primary with the spool empty, and
  caught up with the exchange. Cross-checked on the file system: segment files were seen in the
  spool directory while the lock was held, and none is left after the recovery.
- ``disk.fill`` (storage full where the store and the spool live): the node's data directory
  cannot be given a size-limited volume while the node runs (it is not empty, and a tmpfs
  mounted over it would hide the open store rather than fill it), so the fault is the
  kernel's file-size limit on the node process (:class:`~strategylab.chaos.DiskFill` mode
  ``fsize``: ``RLIMIT_FSIZE`` 0 with ``prlimit``): every write of the node to any of its files
  (store, WAL, spool, ack log) fails with ``EFBIG``, which the node classifies as a full disk.
  Nothing can be acknowledged meanwhile; once the limit is lifted the node must resume by
  itself within its ``--disk-full-grace`` and fetch again what it missed.

The server faults (``database.pg_pause``: SIGSTOP of the postmaster and every backend, healed by
SIGCONT; ``database.pg_kill``: SIGKILL of the postmaster, healed by starting it again on the same
data directory, where it runs crash recovery from its WAL) run in BOTH modes, and only ever on a
:class:`~strategylab.chaos.ThrowawayPostgres` the lab starts itself (never a server given by
``--postgres``): while the first faults run, the category starts that server (~2 s) and a SECOND
node process, ``pgnode``, whose store it is (:meth:`Pipeline.start_extra_node`: the same feed
proxy, its own data directory, spool and status service, no trader). The two faults are probed on
``pgnode``: it must fail over to its spool while the server is gone (segments seen on disk) and
drain back after; recovered = ready, its store back on the primary with the spool empty, and
caught up with the exchange. The process table cross-checks the fault (every server process
stopped; a new postmaster PID after the kill). The category's integrity is the checker over BOTH
stores, the main node's and ``pgnode``'s PostgreSQL store: the figures are summed (each store's
own report is kept under ``report["stores"]``). A machine that cannot start a throwaway server
(no binaries; root without a ``postgres`` user) records the two faults as SKIPPED with the reason.

With ``--postgres`` the main node's store is that server, and the lock holder, the statement
timeout and the pool exhaustion run against it; in SQLite mode those three are SKIPPED (they
need the main node's store to be PostgreSQL). ``database.pg_storage_full`` is SKIPPED: see
:data:`STORAGE_FULL_SKIPPED`.

Zero loss is the hard criterion: the checker over the store after the category.

The helpers here (:func:`store_drained`, :class:`StoreObserver`, :func:`skip_fault`) are shared
by the categories 2, 8 and 9 of this package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import psutil

from strategylab.chaos._checker import CheckInputError, check
from strategylab.chaos._harness import ExtraNode, Pipeline, PipelineError
from strategylab.chaos._inject_database import (
    PgLockHolder,
    PgPoolExhaustion,
    PgServerKill,
    PgServerPause,
    PgStatementTimeout,
    SQLiteLockHolder,
)
from strategylab.chaos._inject_resources import DiskFill
from strategylab.chaos._injector import Injector
from strategylab.chaos._lab import CappedSource, LabRun, cross_check_recorded
from strategylab.chaos._measure import FaultRun
from strategylab.chaos._probes import all_of, node_ready, store_caught_up
from strategylab.chaos._scenario import Criterion, Integrity, Lab, Probe, Scenario
from strategylab.chaos._throwaway_pg import ThrowawayPostgres
from strategylab.market import (
    StoreUnreachableError,
    StoreUnusableError,
    open_tick_reader,
    read_acks,
)

__all__ = [
    "DatabaseFailover",
    "StoreObserver",
    "lock_hold",
    "skip_fault",
    "spool_segments",
    "store_drained",
    "store_recovered",
]

DATABASE_SLA: Final = 60.0
"""The database recovery SLA of category 9 (seconds)."""
_OBSERVE_INTERVAL: Final = 0.1
PG_NODE: Final = "pgnode"
"""The name (and data directory under the lab's work directory) of the second node whose store
is the throwaway PostgreSQL server."""
STORAGE_FULL_SKIPPED: Final = (
    "not run in the lab (a choice, not a missing capability): it needs the throwaway server on "
    "a tmpfs of its own, and a full volume under a live server can fail a WAL write, which "
    "PostgreSQL answers with a PANIC (a server restart, not the storage-full path this fault "
    "tests); PgStorageFull is exercised on its own by the injector tests"
)
"""Why ``database.pg_storage_full`` is SKIPPED in category 4."""
_CATCH_UP_TIMEOUT: Final = 20.0


class NodeView(Protocol):
    """What the store probes read of a node: the main one (:class:`Pipeline`) or a second one
    (:class:`~strategylab.chaos._harness.ExtraNode`)."""

    @property
    def spool_dir(self) -> Path: ...

    async def status(self) -> dict[str, Any]: ...


def lab_run(lab: Lab, scenario: Scenario) -> LabRun:
    """``lab`` as the lab's own runner; :class:`TypeError` naming the scenario otherwise."""
    if not isinstance(lab, LabRun):
        raise TypeError(f"{scenario.name}: needs the lab's own runner (a LabRun), got {lab!r}")
    return lab


def server_hold(lab: Lab) -> float:
    """Seconds a server fault (pause, kill) is kept: 1.5 s at medium, scaled by the severity;
    longer than the node's 1 s stall timeout, so that it has failed over before the heal."""
    return 1.5 * lab.severity.scale


def lock_hold(lab: Lab) -> float:
    """Seconds a lock-holder fault is kept: 2 s at medium, scaled by the severity. Twice the
    node's 1 s stall timeout: the node has failed over and spooled for a second before heal."""
    return 2.0 * lab.severity.scale


def spool_segments(pipeline: NodeView) -> list[Path]:
    """The node's spool segment files (``*.seg``) that hold bytes, oldest first."""
    try:
        return sorted(p for p in pipeline.spool_dir.glob("*.seg") if p.stat().st_size > 0)
    except OSError:
        return []


def store_drained(pipeline: NodeView) -> Probe:
    """A probe: the node's store takes writes on its primary again (``/status`` ``store.state``
    is ``primary``) with nothing pending in the spool, and no spool segment holds bytes on disk
    (the file system, read apart from the node's word)."""

    async def probe() -> tuple[bool, str]:
        try:
            store = (await pipeline.status()).get("store", {})
        except PipelineError as exc:
            return False, str(exc)
        state, pending = store.get("state"), store.get("spool_pending")
        if state != "primary" or pending != 0:
            return False, f"store {state}, {pending} batch(es) pending in the spool"
        left = spool_segments(pipeline)
        if left:
            return False, f"{len(left)} spool segment(s) still on disk"
        return True, "store on its primary, spool empty"

    return probe


def store_recovered(pipeline: Pipeline) -> Probe:
    """The recovery probe of a store fault: ready, drained back to the primary, caught up."""
    return all_of(node_ready(pipeline), store_drained(pipeline), store_caught_up(pipeline))


def skip_fault(lab: Lab, name: str, kind: str, sla: float, reason: str) -> FaultRun:
    """Record a fault that cannot run here as SKIPPED with ``reason`` (never simulated)."""
    run = FaultRun(name=name, kind=kind, severity=lab.severity.value, sla=sla, skipped=reason)
    lab.result.faults.append(run)
    return run


@dataclass(slots=True)
class StoreObserver:
    """What the node's store did while a fault was on, seen every 0.1 s: the ``/status``
    ``store.state`` values, the most batches pending in the spool, and the most spool segments
    (and bytes) seen on disk."""

    pipeline: NodeView
    states: set[str] = field(default_factory=set)
    max_pending: int = 0
    max_segments: int = 0
    max_bytes: int = 0
    write_failures: int = 0

    async def _poll(self) -> None:
        while True:
            segments = spool_segments(self.pipeline)
            self.max_segments = max(self.max_segments, len(segments))
            with contextlib.suppress(OSError):
                self.max_bytes = max(self.max_bytes, sum(p.stat().st_size for p in segments))
            with contextlib.suppress(PipelineError):
                status = await self.pipeline.status()
                store = status.get("store", {})
                if isinstance(state := store.get("state"), str):
                    self.states.add(state)
                pending = store.get("spool_pending")
                if isinstance(pending, int):
                    self.max_pending = max(self.max_pending, pending)
                failures = status.get("ingest", {}).get("write_failures")
                if isinstance(failures, int):
                    self.write_failures = max(self.write_failures, failures)
            await asyncio.sleep(_OBSERVE_INTERVAL)  # the observation's pace, not a wait

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[StoreObserver]:
        """Observe for the body of the ``async with``."""
        task = asyncio.create_task(self._poll(), name="lab-store-observer")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.wait([task])

    def summary(self) -> str:
        states = ", ".join(sorted(self.states)) or "none"
        return (
            f"states seen: {states}; spool: up to {self.max_pending} batch(es) pending, "
            f"{self.max_segments} segment(s), {self.max_bytes} bytes on disk"
        )


class DatabaseFailover(Scenario):
    """The store's primary fails (locked; storage full); the node fails over and back."""

    id: ClassVar[int] = 4
    name: ClassVar[str] = "database failover"
    description: ClassVar[str] = "primary failure, pool exhaustion, timeouts, storage full"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.75, zero_loss=True, text="≥ 75 % recovered, no data loss"
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % recovered within 60 s, zero lost/duplicated/corrupted",
    )
    sla: ClassVar[float] = DATABASE_SLA

    async def run(self, lab: Lab) -> None:
        run_lab = lab_run(lab, self)
        pipeline = run_lab.pipeline
        side = _ThrowawaySide()
        # The throwaway server and its node start while the main node's faults run.
        starting = asyncio.create_task(side.start(pipeline), name="lab-throwaway-pg")
        try:
            if pipeline.config.postgres is None:
                await self._sqlite(run_lab, pipeline)
                for name in (
                    "database.pg_lock",
                    "database.pg_pool_exhaustion",
                    "database.pg_statement_timeout",
                ):
                    skip_fault(
                        lab, name, "database", self.sla,
                        "needs --postgres: the main node's store is SQLite here (the server "
                        "faults run on a throwaway server and its own node instead)",
                    )  # fmt: skip
            else:
                await self._postgres(run_lab, pipeline, pipeline.config.postgres)
            await asyncio.shield(starting)
            await self._server_faults(run_lab, side)
            node = side.node
            if node is None or not node.running:
                await lab.integrity()
            else:
                # Both stores checked at once (each waits for its node to catch up first).
                async with asyncio.TaskGroup() as checks:
                    main = checks.create_task(lab.integrity())
                    extra = checks.create_task(_node_integrity(pipeline, node))
                run_lab.result.integrity = _summed(
                    main.result(), {"main": main.result(), PG_NODE: extra.result()}
                )
        finally:
            starting.cancel()
            await asyncio.wait([starting])
            await asyncio.shield(side.aclose())

    async def _server_faults(self, lab: LabRun, side: _ThrowawaySide) -> None:
        """SIGSTOP and SIGKILL of the throwaway server under ``pgnode``."""
        names = ("database.pg_pause", "database.pg_kill")
        if side.node is None or side.server is None:
            for name in names:
                run = FaultRun(
                    name=name, kind="database", severity=lab.severity.value, sla=self.sla
                )
                if side.skipped is not None:
                    run.skipped = side.skipped
                else:
                    run.error = f"the throwaway server or its node did not start: {side.error}"
                lab.result.faults.append(run)
            skip_fault(lab, "database.pg_storage_full", "database", self.sla, STORAGE_FULL_SKIPPED)
            return
        server, node = side.server, side.node
        hold = server_hold(lab)
        for injector in (PgServerPause(server, lab.severity), PgServerKill(server, lab.severity)):
            postmaster = server.postmaster_pid
            before = await _statistics(node)
            observer = StoreObserver(node)
            async with observer.watching():
                run = await lab.fault(
                    injector, hold=hold, sla=self.sla,
                    availability=_serving(node), recovered=_recovered(node),
                    recover_timeout=20.0,
                )  # fmt: skip
            _record_errors(run, before, await _statistics(node))
            run.extra["node"] = PG_NODE
            run.notes.append(
                f"on the throwaway server under the second node {PG_NODE!r} (probes, spool and "
                "recovery-manager statistics are that node's)"
            )
            cross_check_recorded(lab, run, expected=True)
            self._check_failover(lab, run, observer, node)
            if run.skipped is not None or run.error is not None:
                continue
            if isinstance(injector, PgServerPause):
                lab.check(
                    f"{run.name}: every server process was stopped, none is now (process table)",
                    _none_stopped(server),
                    f"{len(server.server_pids())} server process(es) running after SIGCONT",
                )
            else:
                now = server.postmaster_pid if server.running else None
                lab.check(
                    f"{run.name}: a new postmaster runs after the kill (process table)",
                    now is not None and now != postmaster and not _alive(postmaster),
                    f"postmaster {postmaster} -> {now}",
                )
        skip_fault(lab, "database.pg_storage_full", "database", self.sla, STORAGE_FULL_SKIPPED)

    async def _sqlite(self, lab: LabRun, pipeline: Pipeline) -> None:
        store = pipeline.store_path
        assert store is not None  # noqa: S101 - SQLite mode
        observer = StoreObserver(pipeline)
        lock = SQLiteLockHolder(store, lab.severity)
        async with observer.watching():
            run = await lab.fault(
                lock, hold=lock_hold(lab), sla=self.sla,
                recovered=store_recovered(pipeline), recover_timeout=20.0,
            )  # fmt: skip
        cross_check_recorded(lab, run, expected=True)
        self._check_failover(lab, run, observer)

        pid = pipeline.node_pid
        if pid is None:
            skip_fault(lab, "disk.fill", "disk", self.sla, "the node is not running")
            return
        full = DiskFill(pipeline.node_dir, lab.severity, mode="fsize", pid=pid, limit=0)
        observer = StoreObserver(pipeline)
        async with observer.watching():
            run = await lab.fault(
                full, hold=1.5 * lab.severity.scale, sla=self.sla,
                recovered=store_recovered(pipeline), recover_timeout=20.0,
            )  # fmt: skip
        run.notes.append(
            "storage full as RLIMIT_FSIZE=0 on the node process (EFBIG on every write of its "
            "store, WAL, spool and ack log): its data directory cannot take a size-limited "
            "volume while it runs"
        )
        cross_check_recorded(lab, run, expected=True)
        if run.skipped is None and run.error is None:
            lab.check(
                "disk.fill: the node saw its writes fail",
                observer.write_failures > 0 or "spooling" in observer.states,
                f"ingest write failures up to {observer.write_failures}; {observer.summary()}",
                independent=False,
            )
            left = spool_segments(pipeline)
            lab.check(
                "disk.fill: spool empty after recovery (file system)",
                not left,
                f"{len(left)} segment(s) left in {pipeline.spool_dir}",
            )

    def _check_failover(
        self, lab: Lab, run: FaultRun, observer: StoreObserver, node: NodeView | None = None
    ) -> None:
        """The fault made the node (the main one unless ``node``) spool (seen on disk), and the
        spool drained back."""
        if run.skipped is not None or run.error is not None:
            return
        if not isinstance(lab, LabRun):
            return
        pipeline: NodeView = lab.pipeline if node is None else node
        lab.check(
            f"{run.name}: failed over to the spool (segments seen on disk)",
            observer.max_segments > 0 and observer.max_bytes > 0,
            observer.summary(),
        )
        left = spool_segments(pipeline)
        lab.check(
            f"{run.name}: spool drained back into the store (file system)",
            not left,
            f"{len(left)} segment(s) left in {pipeline.spool_dir}" if left else "no segment left",
        )

    async def _postgres(self, lab: LabRun, pipeline: Pipeline, dsn: str) -> None:
        sev = lab.severity
        recovered = store_recovered(pipeline)
        faults: list[tuple[Injector, bool]] = [
            (PgLockHolder(dsn, sev), True),
            (PgStatementTimeout(dsn, sev), True),
            (PgPoolExhaustion(dsn, sev), False),
        ]
        for injector, expected in faults:
            observer = StoreObserver(pipeline)
            async with observer.watching():
                run = await lab.fault(
                    injector, hold=lock_hold(lab), sla=self.sla,
                    recovered=recovered, recover_timeout=20.0,
                )  # fmt: skip
            # The pool of a running node keeps its connections: exhaustion may not hurt it.
            cross_check_recorded(lab, run, expected=expected)
            if expected:
                self._check_failover(lab, run, observer)


# ---------------------------------------------------------------------- the throwaway side


@dataclass(slots=True)
class _ThrowawaySide:
    """The throwaway server and the second node on it; ``skipped`` (no capability) or
    ``error`` (a start that failed) says why they are not there."""

    server: ThrowawayPostgres | None = None
    node: ExtraNode | None = None
    skipped: str | None = None
    error: str | None = None

    async def start(self, pipeline: Pipeline) -> None:
        server = ThrowawayPostgres()
        reason = server.capability()
        if reason is not None:
            self.skipped = reason
            return
        self.server = server
        try:
            await server.create()
            await server.start()
            url = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
            self.node = await pipeline.start_extra_node(PG_NODE, postgres=url)
        except Exception as exc:  # a start that failed: recorded as the faults' lab error
            self.error = f"{type(exc).__name__}: {exc}"

    async def aclose(self) -> None:
        """Stop the node (SIGTERM) and, meanwhile, the server (SIGKILL: its data is thrown away,
        a shutdown checkpoint would only cost time); delete its directory."""
        node, self.node = self.node, None
        server, self.server = self.server, None

        async def close_server() -> None:
            if server is not None:
                try:
                    await server.kill()
                finally:
                    await server.destroy()

        results = await asyncio.gather(
            node.stop() if node is not None else asyncio.sleep(0),
            close_server(),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _none_stopped(server: ThrowawayPostgres) -> bool:
    pids = server.server_pids()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
                return False
    return bool(pids)


def _serving(node: ExtraNode) -> Probe:
    """Availability of a second node: ``/health/live`` 200 and ``/status`` answers."""

    async def probe() -> tuple[bool, str]:
        ok, detail = await node.live()
        if not ok:
            return False, f"live: {detail}"
        try:
            await node.status()
        except PipelineError as exc:
            return False, f"status: {exc}"
        return True, "serving"

    return probe


def _recovered(node: ExtraNode) -> Probe:
    """Recovery of a second node: ready, drained back to its primary, caught up."""

    async def caught_up() -> tuple[bool, str]:
        return await node.caught_up()

    return all_of(node.ready, store_drained(node), caught_up)


async def _statistics(node: ExtraNode) -> dict[str, Any] | None:
    try:
        stats = (await node.status()).get("statistics")
    except PipelineError:
        return None
    return stats if isinstance(stats, dict) else None


def _record_errors(
    run: FaultRun, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> None:
    """The second node's recovery-manager figures over ``run`` (replacing the main node's,
    which :meth:`LabRun.fault` recorded)."""
    if after is None:
        run.extra["node_errors"] = None
        return
    base = before or {}

    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(base.get(key, 0))

    types_after = after.get("error_type_distribution", {}) or {}
    types_before = base.get("error_type_distribution", {}) or {}
    run.extra["node_errors"] = delta("total_errors")
    run.extra["node_recoveries"] = delta("successful_recoveries")
    run.extra["node_failed_recoveries"] = delta("failed_recoveries")
    run.extra["node_error_types"] = {
        k: int(v) - int(types_before.get(k, 0))
        for k, v in types_after.items()
        if int(v) - int(types_before.get(k, 0)) > 0
    }


async def _node_integrity(pipeline: Pipeline, node: ExtraNode) -> Integrity:
    """The checker over a second node's store, as :meth:`LabRun.integrity` does for the main
    one: wait (at most 20 s) for it to catch up, read its acks, then the exchange's
    ``last_seq``, and check the store up to it. Raises :class:`CheckInputError` when the
    store cannot be read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CATCH_UP_TIMEOUT
    caught, detail = False, f"{node.name} down"
    while node.running and loop.time() < deadline:
        caught, detail = await node.caught_up()
        if caught:
            break
        await asyncio.sleep(_OBSERVE_INTERVAL)  # the poll's pace (a real process catching up)
    acks = await asyncio.to_thread(read_acks, node.acks_path) if node.acks_path.exists() else {}
    last = {
        str(k): int(v) for k, v in (await pipeline.exchange_status()).get("last_seq", {}).items()
    }
    capped = {s: min(n, last.get(s, n)) for s, n in acks.items()}
    source = open_tick_reader(node.store)
    try:
        await source.open()
        report = await check(pipeline.ledger_path, CappedSource(source, last), capped)
    except (StoreUnusableError, StoreUnreachableError) as exc:
        raise CheckInputError(f"{node.name}: {exc}") from exc
    finally:
        await source.aclose()
    return Integrity.of(report, caught=caught, detail=detail)


def _summed(main: Integrity, stores: dict[str, Integrity]) -> Integrity:
    """One :class:`Integrity` whose figures are the sums over ``stores`` (each store's own
    report under ``report["stores"]``)."""
    parts = list(stores.values())
    return Integrity(
        acknowledged=sum(i.acknowledged for i in parts),
        stored=sum(i.stored for i in parts),
        lost=sum(i.lost for i in parts),
        duplicated=sum(i.duplicated for i in parts),
        unexpected=sum(i.unexpected for i in parts),
        corrupted=sum(i.corrupted for i in parts),
        report=main.report
        | {
            "summed_over": list(stores),
            "stores": {
                name: {
                    "acknowledged": i.acknowledged,
                    "stored": i.stored,
                    "lost": i.lost,
                    "duplicated": i.duplicated,
                    "unexpected": i.unexpected,
                    "corrupted": i.corrupted,
                    "report": i.report if i is not main else "(the top level)",
                }
                for name, i in stores.items()
            },
        },
    )
