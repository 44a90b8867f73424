"""A :class:`StatusSource` over real library components, for the status-service tests.

:class:`LabSource` wires an :class:`ErrorRecoveryManager` (auditing into a real :class:`AuditLog`),
a :class:`CircuitBreakerRegistry` with real breakers, a :class:`HealthMonitor` whose ``store``
check the test flips (``source.store_ok``; drive it with ``await source.monitor.probe("store")``)
and a :class:`DegradationController` whose ``live_chart`` feature turns the service's chart off
and on, all on one :class:`FakeClock`. A test sets ``source.supervisor`` (a
:class:`SupervisorSnapshot`) and ``source.extra`` (``trader``, ``resumed``, ``config``) to show what
a node with a trader child puts on ``/status``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    AuditLog,
    CircuitBreakerRegistry,
    DegradationController,
    DegradationEvent,
    ErrorRecoveryManager,
    Feature,
    HealthCheck,
    HealthMonitor,
    HealthState,
    HealthTransition,
    ProbeKind,
    ProbeResult,
    RecoveryEvent,
    SupervisorSnapshot,
)
from strategylab.market import IngestStatistics
from strategylab.service import AdminActionError, NodeSnapshot, StatusService
from strategylab.testing import FakeClock

BREAKERS = ("exchange-api", "store", "backup-exchange")


class LabSource:
    """The node, as far as the status service can tell, made of real components."""

    def __init__(
        self,
        clock: FakeClock,
        audit_path: Path,
        *,
        node: str = "lab-node",
        breakers: Sequence[str] = BREAKERS,
    ) -> None:
        self.clock = clock
        self.node = node
        self.audit = AuditLog(audit_path, clock=clock, fsync=False)
        self.manager = ErrorRecoveryManager(clock=clock, audit=self.audit)
        self.breakers = CircuitBreakerRegistry(clock=clock, failure_threshold=3)
        for name in breakers:
            self.breakers.get_or_create(name)
        self.store_ok = True
        self.monitor = HealthMonitor(
            [
                HealthCheck(name="store", check=self._store_check, failure_threshold=1),
                HealthCheck(
                    name="feed", check=self._feed_check, kind=ProbeKind.READINESS, component="feed"
                ),
            ],
            clock=clock,
        )
        self.service: StatusService | None = None
        self.degradation = DegradationController(
            [
                Feature("live_chart", 10, self._chart_off, self._chart_on),
                Feature("backtests", 20, _noop, _noop),
                Feature("ingestion", 100, _noop, _noop, essential=True),
            ],
            clock=clock,
        )
        self.prices: dict[str, float] = {}
        self.acked: dict[str, int] = {}
        self.ticks_per_s = 0.0
        self.queued = 0
        self.kills: list[str] = []
        self.kill_report: Mapping[str, Any] | None = None
        self.reloads = 0
        self.extra: dict[str, Any] = {}
        """What the node puts under ``/status``'s ``extra`` (``resumed``, ``config``,
        ``trader``)."""
        self.supervisor: SupervisorSnapshot | None = None
        """The node's supervisor as ``/status`` shows it (None: the node runs none)."""
        self.started = clock.monotonic()

    # ------------------------------------------------------------------ the components

    async def _store_check(self) -> bool:
        return self.store_ok

    async def _feed_check(self) -> HealthState:
        return HealthState.HEALTHY

    def _chart_off(self) -> None:
        if self.service is not None:
            self.service.chart_enabled = False

    def _chart_on(self) -> None:
        if self.service is not None:
            self.service.chart_enabled = True

    def attach(self, service: StatusService) -> None:
        """Publish what the node publishes: health transitions, degradation and recovery events."""
        self.service = service

        def health(transition: HealthTransition) -> None:
            service.publish(
                "health",
                {
                    "check": transition.check,
                    "component": transition.component,
                    "previous": None if transition.previous is None else transition.previous.value,
                    "current": transition.current.value,
                    "reason": transition.reason,
                },
            )

        def degradation(event: DegradationEvent) -> None:
            service.publish("degradation", event.to_dict())

        def recovery(event: RecoveryEvent) -> None:
            data: dict[str, Any] = {
                "kind": event.kind,
                "component": event.component,
                "error_type": event.error_type.value,
                "strategy": None if event.strategy is None else event.strategy.value,
                "detail": event.detail,
            }
            if event.outcome is not None:
                data["outcome"] = event.outcome.to_dict()
            service.publish("recovery", data)

        self.monitor.add_listener(health)
        self.degradation.add_listener(degradation)
        self.manager.add_listener(recovery)

    async def probe_all(self) -> None:
        """One probe of every check, now."""
        for name in self.monitor.names:
            await self.monitor.probe(name)

    def tick(self, prices: Mapping[str, float]) -> None:
        """Acknowledge one tick per symbol at these prices."""
        for symbol, price in prices.items():
            self.prices[symbol] = price
            self.acked[symbol] = self.acked.get(symbol, 0) + 1

    # ------------------------------------------------------------------ StatusSource

    def snapshot(self) -> NodeSnapshot:
        """Every component's statistics now."""
        acknowledged = sum(self.acked.values())
        return NodeSnapshot(
            node=self.node,
            uptime=self.clock.monotonic() - self.started,
            recovery=self.manager.statistics(),
            active_recoveries=self.manager.active_recoveries(),
            breakers=self.breakers.metrics(),
            health=self.monitor.snapshot(),
            degradation=self.degradation.snapshot(),
            supervisor=self.supervisor,
            ingest=IngestStatistics(
                queued=self.queued,
                queue_peak=self.queued,
                batches=acknowledged,
                acknowledged=acknowledged,
                new=acknowledged,
                quarantined=0,
                write_failures=0,
                writing=False,
                acked=dict(self.acked),
            ),
            feed=None,
            ticks_per_s=self.ticks_per_s,
            last_price=dict(self.prices),
            risk_state="ACTIVE",
            store_state="primary",
            spool_pending=0,
            kill_switch=self.kill_report,
            extra=dict(self.extra),
        )

    def liveness(self) -> ProbeResult:
        """The monitor's liveness aggregate."""
        return self.monitor.liveness()

    def readiness(self) -> ProbeResult:
        """The monitor's readiness aggregate."""
        return self.monitor.readiness()

    def recent_audit(self, limit: int) -> list[Mapping[str, Any]]:
        """The last ``limit`` records of the real audit log."""
        records = [record.to_dict() for record in AuditLog.read(self.audit.path)]
        return list(records[-limit:])

    async def kill(self, reason: str) -> Mapping[str, Any]:
        """Record the reason (a real node would start its kill switch)."""
        self.kills.append(reason)
        self.kill_report = {"reason": reason, "source": "http"}
        return {"accepted": True, "reason": reason}

    async def force_breaker(self, name: str, state: str) -> Mapping[str, Any]:
        """Force a real breaker; 404 for an unknown one."""
        try:
            breaker = self.breakers.get(name)
        except KeyError:
            raise AdminActionError(404, f"no circuit breaker named {name!r}") from None
        {"open": breaker.force_open, "closed": breaker.force_closed, "reset": breaker.reset}[
            state
        ]()
        return {"breaker": name, "state": breaker.state.value}

    async def shed(self, feature: str) -> Mapping[str, Any]:
        """Shed a real feature; 404 unknown, 409 essential."""
        try:
            done = await self.degradation.shed_feature(feature)
        except KeyError:
            raise AdminActionError(404, f"no feature named {feature!r}") from None
        except ConfigurationError as exc:
            raise AdminActionError(409, exc.reason) from None
        return {"feature": feature, "shed": done}

    async def restore(self, feature: str) -> Mapping[str, Any]:
        """Restore a real feature; 404 unknown."""
        try:
            done = await self.degradation.restore_feature(feature)
        except KeyError:
            raise AdminActionError(404, f"no feature named {feature!r}") from None
        return {"feature": feature, "restored": done}

    async def reload_config(self) -> Mapping[str, Any]:
        """Count the reload."""
        self.reloads += 1
        return {"accepted": True}

    def close(self) -> None:
        """Close the audit log."""
        self.audit.close()


def _noop() -> None:
    return None


@contextlib.asynccontextmanager
async def serving(source: LabSource, **options: Any) -> AsyncIterator[StatusService]:
    """A started :class:`StatusService` over ``source`` on 127.0.0.1, closed on exit."""
    service = StatusService(source, **options)
    source.attach(service)
    await service.start()
    try:
        yield service
    finally:
        await service.aclose()
        await source.monitor.stop()
        source.close()
