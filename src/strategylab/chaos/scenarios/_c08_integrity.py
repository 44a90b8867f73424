"""Category 8, data integrity: rollback, partial writes, corruption; the checker is the judge.

- ``integrity.rollback`` (:class:`NodeCrash`): SIGKILL of the node at a point the category's
  seeded random source picks (0.3-0.8 s into a steady 1500 ticks/s ingest, where a store write
  is in flight much of the time); the lab restarts it on the same data directory. A batch whose
  transaction was not committed is rolled back by SQLite and was never acknowledged: the feed
  fetches it again. No loss, no duplicate.
- ``integrity.partial_spool_write`` (:class:`CrashWhileSpooling`): the store's write lock is
  held so that the node spools, the node is SIGKILLed while it appends to the spool (a torn
  record may be left at the end), and the oldest spool segment's first record is damaged while
  the node is down (:class:`~strategylab.chaos.SpoolSegmentDamage`). Heal releases the lock and
  restarts the node: the torn tail must be cut off, the damaged record detected (moved aside to a
  ``.corrupt`` file, never used), its range fetched again, and the rest drained in order.
- ``corruption.bit_flip``: bit flips on the wire, in the feed's frames (the fault proxy's
  ``corrupt`` toxic): the frame CRC rejects each damaged frame and the feed asks for a replay.
- ``orders.races`` (:class:`~._c08_races.OrderRaces`): the exchange's three order-lifecycle
  races (partial fills, resting fills, a fill racing a cancel) on for 2 s x severity while the
  node's trader trades, and the trader SIGKILLed once in the window, so that its restart
  reconciles against the racing venue. Recovered = a new trader process and its book agreeing
  with the exchange (nothing unexpected, no fill missing past 1 s, nothing double-counted).
  Checked against the exchange's own API (read directly): the trader ordered in the window, the
  races struck (``/api/status`` ``races``), and, read while the venue is still after the heal,
  the book's fills are exactly the exchange's fills of the trader's orders (less those younger
  than 1 s it has still to book) and its positions ``/api/positions`` less those young fills.

Memory issues (ballast in the node) are left to category 5. The verdict is the checker's: lost,
duplicated, unexpected and corrupted all zero for our criterion; the seed's is 95 % consistency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar, Final

from strategylab.chaos._harness import Pipeline, PipelineError
from strategylab.chaos._inject_database import SQLiteLockHolder
from strategylab.chaos._inject_files import SpoolSegmentDamage
from strategylab.chaos._inject_network import ProxyBitFlip
from strategylab.chaos._inject_process import KillProcess
from strategylab.chaos._injector import Injector, InjectorError
from strategylab.chaos._lab import LabRun, cross_check_recorded
from strategylab.chaos._scenario import Criterion, Lab, Scenario
from strategylab.chaos._severity import Severity

from ._c02_cascade import trader_back
from ._c04_database import lab_run, spool_segments, store_recovered
from ._c08_races import (
    BookAgrees,
    OrderRaces,
    orders_between,
    settled_agreement,
    trader_started_with,
)

__all__ = ["CRITICAL_SLA", "CrashWhileSpooling", "DataIntegrity", "NodeCrash"]

CRITICAL_SLA: Final = 30.0
"""The critical-failure recovery SLA of category 9 (seconds)."""
_EXIT_WAIT: Final = 10.0
_SPOOL_WAIT: Final = 5.0
_RACE_WINDOW: Final = 2.0
"""Seconds the order races stay on at medium severity (x the severity's scale)."""
_SETTLE_WAIT: Final = 3.0
"""Seconds to wait, after the races' recovery, for a quiet moment to set positions side by side."""


class NodeCrash(Injector):
    """SIGKILL the pipeline's node (through a pidfd: :class:`~strategylab.chaos.KillProcess`);
    heal reaps it and starts it again on the same data directory, as its service manager would.

    The restart is part of the heal, so a scenario measures the recovery from the kill itself
    (``failover=True`` in :meth:`~strategylab.chaos.Lab.fault`: recovery time from the inject).
    :attr:`exit_status` is the killed node's exit status as its parent saw it (``-9``).
    """

    kind: ClassVar[str] = "process"

    def __init__(
        self,
        pipeline: Pipeline,
        severity: Severity = Severity.MEDIUM,
        *,
        name: str = "process.kill_node",
    ) -> None:
        super().__init__(name, severity)
        self.pipeline = pipeline
        self._kill = KillProcess(lambda: pipeline.node_pid, severity=severity, name=name)
        self.killed_pid: int | None = None
        self.exit_status: int | None = None
        self.restarted_pid: int | None = None

    def capability(self) -> str | None:
        return self._kill.capability()

    async def _inject(self) -> None:
        self.killed_pid = self.pipeline.node_pid
        await self._kill.inject()

    async def _heal(self) -> None:
        await self._down()
        await self.pipeline.start_node()
        self.restarted_pid = self.pipeline.node_pid

    async def _down(self) -> None:
        """Wait for the killed node's exit and reap it (the pipeline records its status)."""
        await self._kill.heal()
        self.exit_status = await self.pipeline.wait_node_exit(_EXIT_WAIT)
        if self.exit_status is None:
            raise InjectorError(f"{self.name}: the node did not exit after SIGKILL")

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "killed_pid": self.killed_pid,
            "exit_status": self.exit_status,
            "restarted_pid": self.restarted_pid,
        }


class CrashWhileSpooling(NodeCrash):
    """The node SIGKILLed while it writes its spool, and with ``damage`` a spool segment damaged
    while it is down; heal releases the store's lock and restarts the node.

    Inject takes the store's write lock (:class:`~strategylab.chaos.SQLiteLockHolder`), waits
    (at most 5 s) until a spool segment on disk holds at least ``min_bytes``, kills the node and
    reaps it, then damages the oldest segment. :attr:`segments_at_kill` and
    :attr:`bytes_at_kill` are what the spool held on disk then. Raises
    :class:`~strategylab.chaos.InjectorError` when the node never spooled.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        severity: Severity = Severity.MEDIUM,
        *,
        damage: bool = True,
        min_bytes: int = 64 * 1024,
        name: str = "integrity.partial_spool_write",
    ) -> None:
        super().__init__(pipeline, severity, name=name)
        store = pipeline.store_path
        if store is None:
            raise ValueError(f"{name}: needs the node's SQLite store (not --postgres)")
        if min_bytes < 1:
            raise ValueError(f"min_bytes={min_bytes!r}: must be >= 1")
        self._lock = SQLiteLockHolder(store, severity, name=f"{name}.lock")
        self._damage = (
            SpoolSegmentDamage(
                pipeline.spool_dir, owner=lambda: pipeline.node_pid, severity=severity,
                name=f"{name}.damage",
            )
            if damage
            else None
        )  # fmt: skip
        self.min_bytes = min_bytes
        self.segments_at_kill = 0
        self.bytes_at_kill = 0
        self.damaged: str | None = None

    def capability(self) -> str | None:
        return self._kill.capability() or self._lock.capability()

    async def _inject(self) -> None:
        await self._lock.inject()
        try:
            await self._wait_spooled()
            await super()._inject()
            await self._down()
            if self._damage is not None:
                await self._damage.inject()
                self.damaged = f"{self._damage.target}@{self._damage.offset}"
        except BaseException:
            await self._lock.heal()
            if not self.pipeline.node_running:
                await self.pipeline.start_node()
            raise

    async def _wait_spooled(self) -> None:
        deadline = time.monotonic() + _SPOOL_WAIT
        while time.monotonic() < deadline:
            segments = spool_segments(self.pipeline)
            size = 0
            with contextlib.suppress(OSError):
                size = sum(p.stat().st_size for p in segments)
            if size >= self.min_bytes:
                self.segments_at_kill, self.bytes_at_kill = len(segments), size
                return
            await asyncio.sleep(0.02)  # watching the spool fill: no event tells it
        raise InjectorError(f"{self.name}: the node did not spool {self.min_bytes} bytes in time")

    async def _heal(self) -> None:
        try:
            await self._lock.heal()
        finally:
            await self.pipeline.start_node()
            self.restarted_pid = self.pipeline.node_pid

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "segments_at_kill": self.segments_at_kill,
            "bytes_at_kill": self.bytes_at_kill,
            "damaged": self.damaged,
        }


def corrupt_files(pipeline: Pipeline) -> list[str]:
    """The damaged spool bytes the node moved aside (``*.corrupt``), by name."""
    with contextlib.suppress(OSError):
        return sorted(p.name for p in pipeline.spool_dir.glob("*.corrupt"))
    return []


class DataIntegrity(Scenario):
    """Rollback, partial (torn) spool writes, a damaged spool segment, bit flips on the wire."""

    id: ClassVar[int] = 8
    name: ClassVar[str] = "data integrity"
    description: ClassVar[str] = "rollback, partial writes, corruption"
    seed_criterion: ClassVar[Criterion] = Criterion(
        # The floor of 80 % recovered beside the table's consistency figure.
        recovered=0.8,
        consistency=0.95,
        zero_loss=True,
        text="≥ 95 % consistency, no loss",
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % recovered within 30 s, zero lost/duplicated/unexpected/corrupted",
    )
    sla: ClassVar[float] = CRITICAL_SLA

    async def run(self, lab: Lab) -> None:
        run_lab = lab_run(lab, self)
        pipeline, sev = run_lab.pipeline, lab.severity
        recovered = store_recovered(pipeline)

        crash = NodeCrash(pipeline, sev, name="integrity.rollback")
        run = await lab.fault(
            crash, hold=round(lab.rng.uniform(0.3, 0.8), 3), sla=self.sla, failover=True,
            recovered=recovered, recover_timeout=20.0,
        )  # fmt: skip
        self._check_restart(run_lab, crash)

        if pipeline.store_path is not None:
            partial = CrashWhileSpooling(pipeline, sev)
            run = await lab.fault(
                partial, hold=0.2, sla=self.sla, failover=True,
                recovered=recovered, recover_timeout=20.0,
            )  # fmt: skip
            self._check_restart(run_lab, partial)
            if run.skipped is None and run.error is None:
                moved = corrupt_files(pipeline)
                lab.check(
                    f"{run.name}: damaged segment detected and moved aside (file system)",
                    bool(moved),
                    f"damaged {partial.damaged}; {len(moved)} .corrupt file(s): {moved[:3]}",
                )
                lab.check(
                    f"{run.name}: the node spooled before the kill (file system)",
                    partial.bytes_at_kill > 0,
                    f"{partial.segments_at_kill} segment(s), {partial.bytes_at_kill} bytes",
                )
                types = run.extra.get("node_error_types", {})
                lab.check(
                    f"{run.name}: the restarted node reported the spool corruption",
                    int(types.get("data_ingestion_failure", 0)) > 0,
                    f"manager recorded {types}",
                    independent=False,
                )

        # 10 x the injector's medium rate: ~75 KB/s of frames get ~7 flips/s, not ~1 in the hold.
        flips = ProxyBitFlip(pipeline.ws_proxy, rate=1e-4 * sev.scale, severity=sev)
        before = await _feed_counter(run_lab, "crc_errors")
        run = await lab.fault(
            flips, hold=1.0 * sev.scale, sla=self.sla, recovered=recovered, recover_timeout=20.0
        )
        after = await _feed_counter(run_lab, "crc_errors")
        cross_check_recorded(lab, run, expected=False)
        if run.skipped is None and run.error is None:
            run.extra["crc_errors"] = None if after is None else after - (before or 0)
            run.notes.append(
                f"feed CRC errors during the fault: {run.extra['crc_errors']} (a flip in a "
                "frame header may end the connection instead: a reconnect and a replay)"
            )
        if pipeline.config.trader:
            await self._order_races(run_lab)
        await lab.integrity()

    async def _order_races(self, lab: LabRun) -> None:
        """``orders.races``: the venue races while the trader trades and is killed once."""
        pipeline, sev = lab.pipeline, lab.severity
        book = pipeline.trading_dir / "book.db"
        races = OrderRaces(pipeline, sev, window=_RACE_WINDOW * sev.scale)
        back = trader_back(pipeline, lambda: races.killed_pid)
        agrees = BookAgrees(pipeline, book)

        async def recovered() -> tuple[bool, str]:
            ok, detail = await back()
            if not ok:
                return ok, detail
            ok, agreed = await agrees()
            return ok, f"{detail}; {agreed}"

        run = await lab.fault(
            races, hold=races.window, sla=self.sla, recovered=recovered, recover_timeout=20.0
        )
        if run.skipped is not None or run.error is not None:
            return
        struck = races.struck
        run.extra.update(
            races=struck, killed_pid=races.killed_pid, restarted_pid=races.restarted_pid
        )
        try:
            orders = await orders_between(pipeline, book, races.wall_inject, races.wall_heal)
        except (PipelineError, OSError, ValueError) as exc:
            orders = None
            run.notes.append(f"exchange /api/orders: {exc}")
        run.extra["orders_in_window"] = orders
        lab.check(
            f"{run.name}: the trader ordered in the race window (exchange /api/orders)",
            bool(orders),
            f"{orders} order(s) of the trader's created at the exchange in the window",
        )
        lab.check(
            f"{run.name}: the races struck the trader's orders (exchange /api/status races)",
            struck.get("partial_fills", 0) > 0,
            f"counter rises {struck}; {races.struck_at_kill} strike(s) before the kill "
            "(the MA crossover sends market orders only: resting fills need a limit order, a "
            "cancel race needs a cancel)",
        )
        lab.check(
            f"{run.name}: the killed trader came back as a new process that reconciled while "
            "the races were on",
            bool(back.seen)
            and races.restarted_pid == back.seen.get("pid")
            and "reconciled" in await trader_started_with(pipeline),
            f"killed pid {races.killed_pid}; trading again before the heal: pid "
            f"{races.restarted_pid}; supervisor: {back.seen or 'no new trader seen'}",
            independent=False,
        )
        _check_killed_trader(lab, races)
        settled, tries = await settled_agreement(pipeline, book, _SETTLE_WAIT)
        run.extra["settle_tries"] = tries
        exact = settled is not None and settled.exact
        shown = (
            "no comparison could be read" if settled is None
            else f"{settled.detail()} ({'exact' if exact else 'never still'} after {tries} read(s))"
        )  # fmt: skip
        lab.check(
            f"{run.name}: the book's fills are the exchange's fills of the trader's orders, "
            "none double-counted (book file vs exchange /api/fills)",
            settled is not None and exact and settled.ok,
            shown,
        )
        lab.check(
            f"{run.name}: the book's positions equal the exchange's (/api/positions, direct)",
            settled is not None and exact and not settled.position_diff,
            shown,
        )

    def _check_restart(self, lab: LabRun, crash: NodeCrash) -> None:
        """The process table agrees: the killed pid is gone, the restarted one runs."""
        import psutil  # noqa: PLC0415 - only the cross-check needs it

        if crash.killed_pid is None or crash.restarted_pid is None:
            return
        try:
            gone = psutil.Process(crash.killed_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            gone = True
        alive = psutil.pid_exists(crash.restarted_pid)
        lab.check(
            f"{crash.name}: killed node gone, restarted node running (process table)",
            gone and alive and crash.exit_status == -9,
            f"pid {crash.killed_pid} exit {crash.exit_status}, gone={gone}; "
            f"pid {crash.restarted_pid} running={alive}",
        )


def _check_killed_trader(lab: LabRun, races: OrderRaces) -> None:
    """The process table agrees: the trader killed in the race window is gone."""
    import psutil  # noqa: PLC0415 - only the cross-check needs it

    if races.killed_pid is None:
        lab.check(
            f"{races.name}: the trader was killed in the window",
            ok=False,
            detail=races.kill_error or "no trader pid",
        )
        return
    try:
        gone = psutil.Process(races.killed_pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        gone = True
    lab.check(
        f"{races.name}: the killed trader is gone (process table)",
        gone,
        f"pid {races.killed_pid} gone={gone}",
    )


async def _feed_counter(lab: LabRun, key: str) -> int | None:
    with contextlib.suppress(Exception):
        value = (await lab.pipeline.status()).get("feed", {}).get(key)
        return value if isinstance(value, int) else None
    return None
