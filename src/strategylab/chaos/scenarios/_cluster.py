"""The cluster category (``strategylab lab --cluster N``, issue 14): N nodes sharing the symbols
on one PostgreSQL and obeying one Redis, four faults in a row.

1. ``cluster.sigkill_node``: the second member SIGKILLed. Its symbols must be taken over by the
   others (every symbol held by exactly one member in service, and the shared store caught up
   with the exchange: they resumed from the last durable sequence) within 3 s of the kill (the
   SLA, measured from the kill: a failover). Then it is started again, as its service manager
   would, and must take its share back (``rejoin_s``).
2. ``cluster.partition_node_pg``: the last member cut from PostgreSQL (a blackhole in the lab's
   fault proxy between it and the server, both directions). Its leases expire and the others
   take over (the same measure and SLA); once healed it must rejoin with its share. Its writes
   that the store fenced out and the leases it lost are read from its ``/status``
   (``fenced_writes``, ``leases_lost``).
3. ``cluster.redis_kill``: the cluster's Redis SIGKILLed (its data lost) and started again on the
   same port after 2 s. Every member must report the outage (``/status`` ``cluster_kill.connected``
   false: it falls back to its last known state), keep ingesting (the shared store keeps
   growing), and re-join once Redis is back. Only a Redis the lab started is killed: with
   ``--redis`` the fault is SKIPPED.
4. ``cluster.kill_switch``: ``strategylab kill --cluster NAME --redis URL --reason ...`` (the real
   command): every member must halt its trading (its ``/status`` ``cluster_kill.halted`` and its
   trader's ``cluster_halted`` line); the latency per member is measured from the kill's ``at``
   to the node's halt (``since``) and to its trader's halt (the trader's CLOCK_MONOTONIC), against
   the issue's 100 ms goal (a miss is noted, the category's verdict does not time it). Then
   ``strategylab kill --cluster ... --clear`` with the admin token: every member resumes.

After each fault the checker runs over the shared store (zero lost, zero duplicated: a failed
check fails the category). Availability is the members in service answering ``/health/live`` and
``/status``. Every timing is the lab's own observation: 0.1 s probes, times stamped when a probe
completed.
"""

from __future__ import annotations

import signal
from typing import Any, ClassVar

from strategylab.chaos._cluster import (
    ClusterKillPull,
    ClusterLabRun,
    ClusterMember,
    LabCluster,
    MemberOut,
    SkippedFault,
    held,
    kill_view,
    latencies,
    poll,
)
from strategylab.chaos._cluster_servers import RedisKill
from strategylab.chaos._inject_network import Partition
from strategylab.chaos._inject_process import KillProcess
from strategylab.chaos._injector import Injector
from strategylab.chaos._measure import FaultRun
from strategylab.chaos._scenario import Criterion, Lab, Scenario
from strategylab.clock import Clock

__all__ = ["ClusterFailover"]

_REJOIN_TIMEOUT = 20.0
"""Seconds a member started again (or healed) has to hold its share again."""
_HALT_GOAL = 0.100
"""The issue's goal for the kill switch: every node halted within 100 ms (p99)."""


class ClusterFailover(Scenario):
    """N nodes on one PostgreSQL and Redis: SIGKILL, a partition from PostgreSQL, Redis killed,
    the cluster kill switch."""

    id: ClassVar[int] = 11
    name: ClassVar[str] = "cluster"
    description: ClassVar[str] = (
        "nodes sharing PostgreSQL and Redis: SIGKILL, partition from PostgreSQL, Redis killed, "
        "cluster kill switch"
    )
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        zero_duplicated=True,
        text="100 % recovered, zero lost/duplicated (issue 14)",
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        availability=0.99,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % recovered, ≥ 99 % availability, 100 % within SLA, zero lost/duplicated",
    )
    takeover_sla: ClassVar[float] = 3.0
    """Seconds from a SIGKILL or a partition to the takeover (issue 14)."""
    redis_sla: ClassVar[float] = 5.0
    """Seconds from Redis back to every member re-joined."""
    resume_sla: ClassVar[float] = 2.0
    """Seconds from the clear to every member trading again."""

    async def run(self, lab: Lab) -> None:
        if not isinstance(lab, ClusterLabRun):
            raise TypeError(
                f"{self.name}: needs the cluster's runner (a ClusterLabRun), got {lab!r}"
            )
        await self.sigkill(lab)
        await self.partition(lab)
        await self.redis_kill(lab)
        await self.kill_switch(lab)

    # ------------------------------------------------------------------ 1. SIGKILL

    async def sigkill(self, lab: ClusterLabRun) -> FaultRun:
        """SIGKILL the second member, measure the takeover, restart it, measure the rejoin."""
        cluster = lab.cluster
        victim = cluster.members[1]
        before = held(await _status(victim))
        kill = MemberOut(
            KillProcess(
                lambda: victim.pid,
                exit_status=lambda: victim.reap(signal.SIGKILL),
                exit_timeout=5.0,
                severity=lab.severity,
                name="cluster.sigkill_node",
            ),
            victim,
        )
        run = await self._fault(lab, kill, hold=0.5, sla=self.takeover_sla)
        run.extra.update(member=victim.name, symbols_before=before)
        began = lab.clock.monotonic()
        try:
            if not victim.running:
                await victim.start()
        finally:
            victim.out = False
        await self._rejoin(lab, run, victim, "restarted", began)
        await lab.fault_integrity(run)
        return run

    # ------------------------------------------------------------------ 2. partition

    def partition_hold(self, lab: Lab) -> float:
        """The cut's length, seconds: 4 s scaled by the severity, within 3.5..6 (longer than the
        leases' 2 s time to live and the takeover after it)."""
        return round(min(6.0, max(3.5, 4.0 * lab.severity.scale)), 2)

    async def partition(self, lab: ClusterLabRun) -> FaultRun:
        """Cut the last member from PostgreSQL, measure the takeover, heal, measure the rejoin."""
        cluster = lab.cluster
        target = cluster.members[-1]
        name = "cluster.partition_node_pg"
        injector: Injector
        if cluster.pg_proxy is None or not target.proxied:
            injector = SkippedFault(name, cluster.pg_proxy_problem or "no proxy in front of it")
        else:
            injector = MemberOut(
                Partition(cluster.pg_proxy, severity=lab.severity, name=name), target
            )
        status = await _status(target)
        before = _counters(status)
        run = await self._fault(lab, injector, hold=self.partition_hold(lab), sla=self.takeover_sla)
        target.out = False
        run.extra.update(member=target.name, symbols_before=held(status))
        if run.skipped is not None:
            return run
        await self._rejoin(lab, run, target, "healed", lab.clock.monotonic())
        after = _counters(await _status(target))
        run.extra["fenced_writes"] = _delta(after, before, "fenced")
        run.extra["leases_lost"] = _delta(after, before, "lost")
        await lab.fault_integrity(run)
        return run

    # ------------------------------------------------------------------ 3. Redis killed

    async def redis_kill(self, lab: ClusterLabRun) -> FaultRun:
        """Kill the cluster's Redis for 2 s: every member reports it, keeps ingesting, re-joins."""
        cluster = lab.cluster
        kill = RedisKill(
            cluster.redis_server,
            severity=lab.severity,
            name="cluster.redis_kill",
            skip_reason="--redis was given: the lab kills only a Redis it started",
        )
        watch = _RedisWatch(cluster, kill, lab.clock)
        run = await lab.fault(
            kill, hold=2.0, sla=self.redis_sla, availability=watch.availability,
            recovered=watch.recovered, recover_timeout=20.0,
        )  # fmt: skip
        if run.skipped is not None or run.error is not None:
            return run
        members = [m.name for m in cluster.members if m.in_service]
        silent = [n for n in members if n not in watch.down]
        lab.check(
            "every node reported the Redis outage (its fallback)",
            not silent,
            f"not reported by {', '.join(silent)}" if silent else f"all {len(members)} reported it",
            independent=False,
        )
        if watch.breakers:
            silent = sorted(watch.breakers - set(watch.breaker_down))
            lab.check(
                "every trader's shared breaker fell back to its local state",
                not silent,
                f"not reported by {', '.join(silent)}"
                if silent
                else f"all {len(watch.breakers)} fell back",
                independent=False,
            )
        else:
            run.notes.append("no node reports a shared breaker (trader.breaker.shared)")
        run.extra["breaker_fallback_s"] = {
            n: round(t - (run.t_inject or 0.0), 3) for n, t in watch.breaker_down.items()
        }
        run.extra["breaker_rejoined_s"] = {
            n: round(t - (run.t_heal or 0.0), 3) for n, t in watch.breaker_back.items()
        }
        grown = watch.stored_during[-1] - watch.stored_during[0] if watch.stored_during else 0
        lab.check(
            "the cluster kept ingesting while Redis was down",
            grown > 0,
            f"the shared store grew by {grown} ticks during the outage",
        )
        t_inject, t_heal = run.t_inject or 0.0, run.t_heal or 0.0
        run.extra["fallback_reported_s"] = {
            n: round(t - t_inject, 3) for n, t in watch.down.items()
        }
        run.extra["rejoined_s"] = {n: round(t - t_heal, 3) for n, t in watch.back.items()}
        run.extra["stored_during_outage"] = grown
        stopped = sorted(n for n, flags in watch.trading_during.items() if not all(flags))
        if watch.trading_during:
            lab.check(
                "every trader kept trading while Redis was down",
                not stopped,
                f"not trading at some point: {', '.join(stopped)}"
                if stopped
                else f"{len(watch.trading_during)} traders trading in every sample",
                independent=False,
            )
        await lab.fault_integrity(run)
        return run

    # ------------------------------------------------------------------ 4. kill switch

    async def kill_switch(self, lab: ClusterLabRun) -> FaultRun:
        """``strategylab kill --cluster``, every member halted (latency each), cleared, resumed."""
        cluster = lab.cluster
        pull = ClusterKillPull(cluster, severity=lab.severity)
        watch = _HaltWatch(cluster, pull, lab.clock)
        run = await lab.fault(
            pull, hold=1.0, sla=self.resume_sla, availability=watch.availability,
            recovered=watch.recovered, recover_timeout=15.0,
        )  # fmt: skip
        if run.skipped is not None or run.error is not None:
            return run
        kill_id, at = pull.kill.get("id"), pull.kill.get("at")
        members = [m.name for m in cluster.members if m.in_service]
        halted = {n for n, v in watch.halted.items() if (v.get("kill") or {}).get("id") == kill_id}
        missing = [n for n in members if n not in halted]
        lab.check(
            "every node halted on the cluster kill switch",
            not missing,
            f"not halted: {', '.join(missing)}" if missing else f"all {len(members)} halted",
            independent=False,
        )
        node_s: dict[str, float] = {}
        trader_s: dict[str, float] = {}
        for name in halted:
            since = watch.halted[name].get("since")
            if isinstance(at, int | float) and isinstance(since, int | float):
                node_s[name] = round(float(since) - float(at), 4)
            line = watch.trader_halts.get(name, {})
            mono = line.get("monotonic")
            if (
                pull.pulled_mono is not None
                and isinstance(mono, int | float)
                and line.get("kill_id") == kill_id
            ):
                trader_s[name] = round(float(mono) - pull.pulled_mono, 4)
        run.extra["halt_latency_s"] = {"node": node_s, "trader": trader_s, "goal": _HALT_GOAL}
        run.extra["halt_latency_summary"] = latencies(list((trader_s or node_s).values()))
        run.extra["commands_s"] = dict(pull.command_s)
        worst = max((trader_s or node_s).values(), default=None)
        if worst is not None and worst > _HALT_GOAL:
            run.notes.append(
                f"slowest halt {worst * 1000:.0f} ms after the kill: over the 100 ms goal"
            )
        await lab.fault_integrity(run)
        return run

    # ------------------------------------------------------------------ helpers

    async def _fault(
        self, lab: ClusterLabRun, injector: Injector, *, hold: float, sla: float
    ) -> FaultRun:
        probes = lab.cluster.probes
        return await lab.fault(
            injector, hold=hold, sla=sla, failover=True, availability=probes.serving,
            recovered=probes.recovered, recover_timeout=20.0,
        )  # fmt: skip

    async def _rejoin(
        self, lab: ClusterLabRun, run: FaultRun, member: ClusterMember, how: str, began: float
    ) -> None:
        """Wait until ``member`` holds its share again and the cluster is recovered; the time
        from ``began`` (monotonic: the restart, or the heal) in ``run.extra["rejoin_s"]`` and a
        check."""
        probes = lab.cluster.probes

        async def rejoined() -> tuple[bool, str]:
            ok, detail = await probes.balanced()
            return (await probes.recovered()) if ok else (ok, detail)

        ok, detail, _ = await poll(rejoined, _REJOIN_TIMEOUT, lab.clock)
        took = lab.clock.monotonic() - began
        run.extra["rejoin_s"] = round(took, 3) if ok else None
        run.extra["symbols_after_rejoin"] = held(await _status(member))
        lab.check(
            f"{member.name} {how} takes its share of the symbols back",
            ok,
            f"after {took:.2f} s: {detail}"
            if ok
            else f"not within {_REJOIN_TIMEOUT:g} s: {detail}",
        )


async def _status(member: ClusterMember) -> dict[str, Any] | str:
    try:
        return await member.status()
    except Exception as exc:  # an unanswered /status is a detail, not a failure here
        return str(exc)


def _counters(status: dict[str, Any] | str) -> dict[str, int]:
    if not isinstance(status, dict):
        return {}
    view = (status.get("extra") or {}).get("cluster") or {}
    return {k: int(v) for k, v in view.items() if isinstance(v, int) and not isinstance(v, bool)}


def _delta(after: dict[str, int], before: dict[str, int], key: str) -> int | None:
    if key not in after:
        return None
    return after[key] - before.get(key, 0)


def breaker_view(status: dict[str, Any] | str) -> dict[str, Any] | None:
    """A member's trader's shared breaker backend (``/status`` ``trader.breaker.shared``: its
    ``health``, ``healthy`` while it shares the cluster's state), None when it reports none."""
    if not isinstance(status, dict):
        return None
    trader = (status.get("extra") or {}).get("trader") or {}
    breaker = trader.get("breaker") if isinstance(trader, dict) else None
    shared = breaker.get("shared") if isinstance(breaker, dict) else None
    return shared if isinstance(shared, dict) else None


class _RedisWatch:
    """The Redis fault's probes: availability (the members serve) that also records when each
    member first reported the outage and when it re-joined (its cluster kill watcher, and its
    trader's shared breaker where it reports one), and the store's growth meanwhile; recovery:
    every member connected to Redis again, every shared breaker shared again, and the cluster
    recovered."""

    def __init__(self, cluster: LabCluster, kill: RedisKill, clock: Clock) -> None:
        self.cluster = cluster
        self.kill = kill
        self.clock = clock
        self.down: dict[str, float] = {}
        self.back: dict[str, float] = {}
        self.breakers: set[str] = set()
        """Members whose trader reports a shared breaker."""
        self.breaker_down: dict[str, float] = {}
        self.breaker_back: dict[str, float] = {}
        self.stored_during: list[int] = []
        self.trading_during: dict[str, list[bool]] = {}
        """Each member's trader's ``trading`` flag, sampled while Redis was down."""

    async def availability(self) -> tuple[bool, str]:
        ok, detail = await self.cluster.probes.serving()
        if self.kill.exit is None:  # not killed yet
            return ok, detail
        statuses = await self.cluster.statuses()
        now = self.clock.monotonic()
        for name, status in statuses.items():
            self._observe(name, status, now)
        redis = self.kill.redis
        if redis is not None and not redis.running:
            for name, status in statuses.items():
                trader = (
                    (status.get("extra") or {}).get("trader") if isinstance(status, dict) else None
                )
                if isinstance(trader, dict):
                    self.trading_during.setdefault(name, []).append(trader.get("trading") is True)
            try:
                self.stored_during.append(sum((await self.cluster.store_last_seqs()).values()))
            except Exception as exc:  # the store's own failure is a failed availability sample
                return False, f"store: {exc}"
        return ok, detail

    def _observe(self, name: str, status: dict[str, Any] | str, now: float) -> None:
        """The member's cluster kill watcher and shared breaker: fallen back, or back."""
        connected = kill_view(status).get("connected")
        if connected is False:
            self.down.setdefault(name, now)
        elif connected is True and name in self.down:
            self.back.setdefault(name, now)
        shared = breaker_view(status)
        if shared is not None:
            self.breakers.add(name)
            if shared.get("health") != "healthy":
                self.breaker_down.setdefault(name, now)
            elif name in self.breaker_down:
                self.breaker_back.setdefault(name, now)

    async def recovered(self) -> tuple[bool, str]:
        statuses = await self.cluster.statuses()
        members = [m for m in self.cluster.members if m.in_service]
        apart = [
            m.name
            for m in members
            if kill_view(statuses.get(m.name, "")).get("connected") is not True
        ]
        if apart:
            return False, f"not re-joined to Redis: {', '.join(apart)}"
        local = [
            m.name
            for m in members
            if (shared := breaker_view(statuses.get(m.name, ""))) is not None
            and shared.get("health") != "healthy"
        ]
        if local:
            return False, f"shared breaker still local: {', '.join(local)}"
        return await self.cluster.probes.recovered()


class _HaltWatch:
    """The kill switch's probes: availability (the members serve: a halt stops trading, not the
    node) that also keeps each member's first halted ``cluster_kill`` view and its trader's
    ``cluster_halted`` line; recovery: every member running again (its trader resumed) and the
    cluster recovered."""

    def __init__(self, cluster: LabCluster, pull: ClusterKillPull, clock: Clock) -> None:
        self.cluster = cluster
        self.pull = pull
        self.clock = clock
        self.halted: dict[str, dict[str, Any]] = {}
        self.trader_halts: dict[str, dict[str, Any]] = {}

    async def availability(self) -> tuple[bool, str]:
        ok, detail = await self.cluster.probes.serving()
        for name, status in (await self.cluster.statuses()).items():
            view = kill_view(status)
            if view.get("halted"):
                self.halted.setdefault(name, view)
            line = (view.get("trader") or {}).get("cluster_halted")
            if isinstance(line, dict) and name not in self.trader_halts:
                self.trader_halts[name] = line
        return ok, detail

    async def recovered(self) -> tuple[bool, str]:
        statuses = await self.cluster.statuses()
        waiting = []
        for member in self.cluster.members:
            if not member.in_service:
                continue
            view = kill_view(statuses.get(member.name, ""))
            trader = view.get("trader") or {}
            if view.get("halted") is not False:
                waiting.append(f"{member.name} halted")
            elif "cluster_halted" in trader and "cluster_resumed" not in trader:
                waiting.append(f"{member.name}'s trader not resumed")
        if waiting:
            return False, "; ".join(waiting)
        return await self.cluster.probes.recovered()
