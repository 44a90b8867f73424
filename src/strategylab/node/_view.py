"""The node as the status service sees it: :class:`NodeView`, a
:class:`~strategylab.service.StatusSource` over a started :class:`~._node.Node`.

``risk_state`` is the trader child's, upper case as the metrics' state set (``ACTIVE``,
``REDUCING``, ``HALTED``; None on a node without one), and ``extra["trader"]`` its summary
(:meth:`~._node.Node.trader_status`). Reads are synchronous and cheap: each is one call to the
components' frozen ``statistics()`` / ``snapshot()`` views, taken when a request or a scrape asks.
Actions (kill, force a breaker, shed or restore a feature, reload the configuration, and with
``--chaos-agent`` the memory ballast of the chaos lab) are coroutines
that refuse with :class:`~strategylab.service.AdminActionError` (404 unknown name, 409 cannot run
now, 400 bad value). Each one, accepted or refused, is audited (kind ``admin``: ``action``,
``target``, ``outcome`` and what it did or why it was refused; never the token, which stays in the
service) and published as an ``admin`` event (:meth:`~._node.Node.record_admin`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from strategylab.fault_tolerance import (
    DegradationController,
    HealthState,
    ProbeKind,
    ProbeResult,
    TriggerSource,
    TriggerStatus,
    rss_bytes,
)
from strategylab.market import FailoverStore
from strategylab.service import AdminActionError, NodeSnapshot

from ._ballast import Ballast
from ._shedding import MEMORY_SHED_AT

if TYPE_CHECKING:
    from strategylab.distributed import ClusterKillSwitch

    from ._node import Node

__all__ = ["NodeView"]

_RATE_WINDOW: Final = 5.0
"""Seconds over which ``ticks_per_s`` is measured."""


class NodeView:
    """A :class:`~strategylab.service.StatusSource` for ``node`` (started before the first read).

    ``ticks_per_s`` is the acknowledged rate over the last :data:`_RATE_WINDOW` seconds of reads
    (the first read: since the start).
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._ballast = Ballast()
        self._ballast_lock = asyncio.Lock()

    # ------------------------------------------------------------------ reads

    def snapshot(self) -> NodeSnapshot:
        """Every component's statistics now."""
        node = self._node
        clock = node.clock
        now = clock.monotonic()
        ingest = node.ingestor.statistics()
        store = node.store
        store_state, spool_pending = "primary", 0
        if isinstance(store, FailoverStore):
            failover = store.statistics()
            store_state, spool_pending = failover.state.value, failover.spool_pending
        report = node.kill_report
        degradation = node.degradation
        supervisor = node.supervisor
        monitor = node.health_monitor
        extra: dict[str, Any] = {"exchange_url": node.config.exchange_url}
        if node.resume is not None:
            extra["resumed"] = node.resume.to_dict()
        if node.reloader is not None:
            extra["config"] = node.reloader.status()
        risk = node.risk_state  # the metrics' state set is upper case: ACTIVE, REDUCING, HALTED
        trader = node.trader_status()
        if trader is not None:
            extra["trader"] = trader
        if node.config.chaos_agent:
            extra["chaos_agent"] = self._chaos_figures()
        if node.cluster_kill is not None:  # the cluster kill switch (issue 14)
            extra["cluster_kill"] = node.cluster_kill.status()
            if trader is not None:  # halted by it: trading false (issue 14, F3)
                node.cluster_kill.mark_trader(trader)
        cluster = node.cluster_status()  # sharded ingest: symbols owned, tokens (issue 14, H3)
        if cluster is not None:
            extra["cluster"] = cluster
        return NodeSnapshot(
            node=node.config.node_name,
            uptime=node.uptime,
            recovery=node.manager.statistics(),
            active_recoveries=node.manager.active_recoveries(),
            breakers={},  # the node guards nothing with a breaker of its own
            health=None if monitor is None else monitor.snapshot(),
            degradation=None if degradation is None else degradation.snapshot(),
            supervisor=None if supervisor is None else supervisor.snapshot(),
            ingest=ingest,
            feed=node.feed.statistics(),
            ticks_per_s=self._rate(now, ingest.acknowledged),
            last_price=node.last_prices(),
            risk_state=None if risk is None else risk.upper(),
            store_state=store_state,
            spool_pending=spool_pending,
            kill_switch=None if report is None else report.to_dict(),
            extra=extra,
        )

    def _rate(self, now: float, acknowledged: int) -> float:
        samples = self._samples
        samples.append((now, acknowledged))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW:
            samples.popleft()
        if len(samples) < 2:  # a rate needs two points
            elapsed = max(self._node.uptime, 1e-9)
            return round(acknowledged / elapsed, 1)
        then, count = samples[0]
        return round((acknowledged - count) / max(now - then, 1e-9), 1)

    def liveness(self) -> ProbeResult:
        """The health monitor's liveness aggregate (not live once the kill switch was pulled)."""
        return self._probe(ProbeKind.LIVENESS)

    def readiness(self) -> ProbeResult:
        """The health monitor's readiness aggregate (not ready once the kill switch was pulled)."""
        return self._probe(ProbeKind.READINESS)

    def _probe(self, kind: ProbeKind) -> ProbeResult:
        node = self._node
        monitor = node.health_monitor
        if node.halted.is_set() or node.kill_switch_pulled or monitor is None:
            why = "kill switch pulled" if monitor is not None else "no health monitor"
            return ProbeResult(
                kind=kind,
                ok=False,
                state=HealthState.UNHEALTHY,
                failing=("node",),
                degraded=(),
                reasons={"node": why},
            )
        return monitor.liveness() if kind is ProbeKind.LIVENESS else monitor.readiness()

    def recent_audit(self, limit: int) -> list[Mapping[str, Any]]:
        """The last ``limit`` audit records, oldest first (after a restart: the log's last
        records first, see :meth:`~._node.Node.recent_audit`)."""
        return list(self._node.recent_audit(limit))

    # ------------------------------------------------------------------ actions

    async def _audited(
        self,
        action: str,
        target: str | None,
        run: Callable[[], Awaitable[Mapping[str, Any]]],
        detail: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any]:
        """``await run()``, audited and published (:meth:`~._node.Node.record_admin`) either way.

        Outcome ``rejected`` (with ``status`` and ``error``) when it raises
        :class:`AdminActionError` (re-raised) or returns ``ok``/``accepted`` False (a
        configuration the reloader refused); ``accepted`` (with ``result``) otherwise.
        ``detail`` is added to the record (the kill's reason)."""
        extra = dict(detail or {})
        try:
            result = await run()
        except AdminActionError as exc:
            record = {**extra, "status": exc.status, "error": exc.message}
            await self._node.record_admin(action, target, "rejected", record)
            raise
        refused = result.get("ok") is False or result.get("accepted") is False
        outcome = "rejected" if refused else "accepted"
        await self._node.record_admin(action, target, outcome, {**extra, "result": dict(result)})
        return result

    async def kill(self, reason: str) -> Mapping[str, Any]:
        """Pull the kill switch (source ``http``) and return at once; the process exits 3 once
        the shutdown has run.

        ``{"accepted": true, "already_triggered": bool, "reason": str, "source": str}``: the
        reason and source the kill switch recorded, i.e. the first trigger's when it was pulled
        already (this call then only joins it). 400 for an empty reason."""

        async def run() -> Mapping[str, Any]:
            if not isinstance(reason, str) or not reason.strip():
                raise AdminActionError(400, "reason: must be a non-empty string")
            node = self._node
            already = node.kill_switch_pulled
            node.kill_soon(reason.strip(), TriggerSource.HTTP)
            source = node.kill_source
            return {
                "accepted": True,
                "already_triggered": already,
                "reason": node.kill_reason,
                "source": None if source is None else source.value,
            }

        asked = reason.strip() if isinstance(reason, str) else repr(reason)
        return await self._audited("kill", None, run, {"reason_given": asked})

    async def force_breaker(self, name: str, state: str) -> Mapping[str, Any]:
        """The node has no breakers of its own: every name is unknown (404)."""

        async def run() -> Mapping[str, Any]:
            raise AdminActionError(404, f"no breaker {name!r} on this node")

        return await self._audited("breaker", name, run, {"state": state})

    async def shed(self, feature: str) -> Mapping[str, Any]:
        """Shed ``feature`` now (404 unknown, 409 without a degradation controller)."""

        async def run() -> Mapping[str, Any]:
            controller = self._controller()
            try:
                changed = await controller.shed_feature(feature, reason="manual")
            except KeyError:
                raise AdminActionError(404, f"no feature {feature!r}") from None
            except ValueError as exc:  # an essential feature
                raise AdminActionError(409, str(exc)) from None
            return {"feature": feature, "shed": True, "changed": changed}

        return await self._audited("shed", feature, run)

    async def restore(self, feature: str) -> Mapping[str, Any]:
        """Restore ``feature`` now: ``{"feature", "shed": False, "changed": bool}``.

        404 for an unknown feature; 409 without a degradation controller, and 409 while a
        trigger reads over its shed mark (its last evaluated reading, from
        :meth:`~strategylab.fault_tolerance.DegradationController.snapshot`): the controller
        would shed the feature again within one evaluation, so the restore is refused rather
        than answered ``changed: true`` and undone. The message names the trigger and its
        reading (``trigger memory over its mark (92 % of the budget): ...``)."""

        async def run() -> Mapping[str, Any]:
            controller = self._controller()
            now = controller.snapshot()
            shed = any(f.name == feature and not f.active for f in now.features)
            over = next((t for t in now.triggers if t.over), None)
            if shed and over is not None:  # on already: nothing to undo, answer as before
                raise AdminActionError(409, _refusal(over))
            try:
                changed = await controller.restore_feature(feature, reason="manual")
            except KeyError:
                raise AdminActionError(404, f"no feature {feature!r}") from None
            return {"feature": feature, "shed": False, "changed": changed}

        return await self._audited("restore", feature, run)

    def _controller(self) -> DegradationController:
        controller = self._node.degradation
        if controller is None:
            raise AdminActionError(409, "this node runs no degradation controller")
        return controller

    async def reload_config(self) -> Mapping[str, Any]:
        """Reload the configuration file now: the reloader's ``{"ok": True, "version",
        "error": None, "changed"}`` when the file's configuration is in force.

        Refuses with :class:`~strategylab.service.AdminActionError` 409 when the node runs
        without a configuration file, and 422 with the one-line reason (the path and why, or the
        key and value) when the file is rejected: the last good configuration stays in force.
        """
        reloader = self._node.reloader

        async def run() -> Mapping[str, Any]:
            if reloader is None:
                raise AdminActionError(
                    409, "this node runs without a configuration file (--config)"
                )
            result = await reloader.reload()
            if not result["ok"]:
                reason = result["error"] or "the configuration was rejected"
                raise AdminActionError(
                    422, f"configuration rejected, the last good one stays in force: {reason}"
                )
            return result

        return await self._audited("reload", None, run)

    # ------------------------------------------------------------------ cluster kill (issue 14)

    async def _cluster_switch(
        self, act: Callable[[ClusterKillSwitch], Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        """``act`` on the cluster's :class:`ClusterKillSwitch` (the node's Redis and admin
        token), off the event loop; 502 when Redis cannot be reached, 409 when refused."""
        cfg = self._node.config
        if cfg.cluster is None or cfg.redis_url is None or cfg.admin_token is None:
            raise AdminActionError(404, "not in a cluster: start the node with --cluster --redis")
        cluster, url, token = cfg.cluster, cfg.redis_url, cfg.admin_token
        # Loaded on a cluster node only (redis); the others never get here.
        from strategylab.distributed import ClusterKillError, ClusterKillSwitch  # noqa: PLC0415

        def call() -> Mapping[str, Any]:
            with ClusterKillSwitch(cluster, url, admin_token=token) as switch:
                return act(switch)

        try:
            return await asyncio.to_thread(call)
        except ClusterKillError as exc:
            raise AdminActionError(502 if exc.unreachable else 409, str(exc)) from None

    async def cluster_kill(self, reason: str) -> Mapping[str, Any]:
        """Pull the cluster's kill switch (``strategylab kill --cluster``'s, signed with this
        node's admin token): ``{"kill": {...}, "created", "receivers"}``; audited as admin
        action ``cluster_kill``. Every node of the cluster halts its trading, this one too."""

        def act(switch: ClusterKillSwitch) -> Mapping[str, Any]:
            record, created, receivers = switch.kill(reason.strip())
            kill = {k: v for k, v in record.to_dict().items() if k != "mac"}
            return {"kill": kill, "created": created, "receivers": receivers}

        async def run() -> Mapping[str, Any]:
            return await self._cluster_switch(act)

        return await self._audited("cluster_kill", None, run, {"reason": reason})

    async def cluster_clear(self) -> Mapping[str, Any]:
        """Clear the cluster's kill in force: ``{"kill_id", "receivers"}``; 409 when there is
        none or this node's admin token is not the one that pulled it. Audited as admin action
        ``cluster_clear``."""

        def act(switch: ClusterKillSwitch) -> Mapping[str, Any]:
            kill_id, receivers = switch.clear()
            return {"kill_id": kill_id, "receivers": receivers}

        async def run() -> Mapping[str, Any]:
            return await self._cluster_switch(act)

        return await self._audited("cluster_clear", None, run)

    # ------------------------------------------------------------------ chaos agent

    def _chaos_figures(self) -> dict[str, Any]:
        """``{"ballast_bytes", "rss_bytes", "memory_budget"}`` now (``/status``'s
        ``extra.chaos_agent``; the budget None without ``--memory-budget``)."""
        return {
            "ballast_bytes": self._ballast.size,
            "rss_bytes": rss_bytes(),
            "memory_budget": self._node.config.memory_budget,
        }

    async def set_ballast(self, nbytes: int) -> Mapping[str, Any]:
        """Hold ``nbytes`` of touched memory in this process (0 releases it), audited as admin
        action ``ballast``; the result is :meth:`_chaos_figures` after the change. Refuses 409
        when the chaos agent is off and 507 when the kernel refuses the memory (the ballast
        keeps what it had)."""

        async def run() -> Mapping[str, Any]:
            if not self._node.config.chaos_agent:
                raise AdminActionError(409, "the chaos agent is off (--chaos-agent)")
            async with self._ballast_lock:
                try:
                    # Touching a large ballast takes a while: off the event loop.
                    await asyncio.to_thread(self._ballast.resize, nbytes)
                except MemoryError as exc:
                    raise AdminActionError(507, str(exc)) from None
            return self._chaos_figures()

        return await self._audited("ballast", None, run, {"bytes": nbytes})


def _refusal(trigger: TriggerStatus) -> str:
    """Why a feature is not restored while ``trigger`` reads over its shed mark: the trigger and
    its reading in the signal's terms (the node's triggers, see :mod:`._shedding`)."""
    reading = trigger.reading
    mark = trigger.shed_above
    if reading is None:  # over is only set from a reading; kept for the type checker
        what = "no reading"
    elif trigger.name == "memory":  # rss_trigger: shed_above is MEMORY_SHED_AT of the budget
        what = f"{reading / (mark / MEMORY_SHED_AT) * 100:.0f} % of the budget"
    elif trigger.name == "ingest_queue":  # a fill fraction of the queue's capacity
        what = f"{reading * 100:.0f} % of the ingest queue's capacity, mark {mark * 100:.0f} %"
    elif trigger.name == "loop_lag":
        what = f"event-loop lag {reading:.3g} s, mark {mark:g} s"
    elif trigger.name == "cpu":
        what = f"{reading:.0f} % of one CPU, mark {mark:g} %"
    else:
        what = f"reading {reading:g}, mark {mark:g}"
    return f"trigger {trigger.name} over its mark ({what}): the controller would shed it again"
