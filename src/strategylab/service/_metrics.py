"""``GET /metrics``: Prometheus text exposition rendered at scrape time from one snapshot.

A :class:`SnapshotCollector` is registered on a private ``CollectorRegistry``; each scrape takes
ONE :meth:`StatusSource.snapshot` and turns it into metric families (nothing is counted between
scrapes: the components' frozen statistics are the source of truth, after stamina's
instrumentation and the Prometheus guidance for exporters, "Writing exporters: collectors").

Families (all ``strategylab_``; counters end in ``_total`` on the wire):

- ``node_info{node}`` 1; ``uptime_seconds``;
- ``errors_total{type}``: errors handed to the recovery manager, by :class:`ErrorType` value
  (every type, 0 when unseen); ``component_errors_total{type,component}``: the same by
  component; ``health_check_failures_total{check,component}``: failed probes per component;
- ``recoveries_total{outcome}`` (``succeeded``, ``failed``, ``rejected``, ``joined``);
  ``recovery_strategy_executions_total{strategy}``;
  ``recovery_strategy_outcomes_total{strategy,outcome}`` (``succeeded``/``failed``);
  ``recovery_escalations_total``;
  ``recoveries_active``, ``recoveries_queued``; ``recovery_success_ratio`` (0..1);
  ``recovery_sla_compliance_ratio{sla}``;
- ``recovery_time_seconds``: a **summary** (quantiles 0.5, 0.95, 0.99 over the manager's recent
  window, ``_count`` completed recoveries, ``_sum`` their total seconds); the statistics keep
  exact percentiles, not buckets, so a summary states them without inventing bucket bounds;
- ``breaker_state{breaker,state}``: a state set (1 for the breaker's state, 0 for the others
  of :class:`BreakerState`); ``breaker_calls_total{breaker,result}``;
- ``degradation_level``, ``degradation_max_level``, ``feature_active{feature}`` (1 on, 0 shed);
- ``ingest_rate_ticks_per_second``, ``ingest_queue_depth``, ``ingest_acknowledged_ticks_total``,
  ``last_sequence{symbol}`` (the acknowledged watermark per symbol);
- ``feed_connected``, ``feed_reconnects_total``;
- ``risk_state{state}`` (state set over ``ACTIVE``, ``REDUCING``, ``HALTED`` and the current one);
- ``health_state{check,component,state}`` (state set over ``healthy``, ``degraded``,
  ``unhealthy``, ``unknown``);
- ``supervisor_restarts_total{supervisor}``, ``spool_pending_ticks``,
  ``store_state{state}`` (state set over ``primary``, ``spooling``, ``draining``),
  ``kill_switch_pulled`` (0/1), ``price_chart_enabled`` (0/1), ``events_clients``,
  ``events_dropped_clients_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from strategylab.fault_tolerance import BreakerState, ErrorType, RecoveryStrategyKind

from ._source import NodeSnapshot

__all__ = ["ServiceFigures", "SnapshotCollector"]

_P = "strategylab_"
_BREAKER_STATES = tuple(state.value for state in BreakerState)
_HEALTH_STATES = ("healthy", "degraded", "unhealthy", "unknown")
_RISK_STATES = ("ACTIVE", "REDUCING", "HALTED")
_STORE_STATES = ("primary", "spooling", "draining")


class ServiceFigures(NamedTuple):
    """The service's own figures at scrape time."""

    chart_enabled: bool
    clients: int
    dropped_clients: int


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_P + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_P + name, doc, value=value)


def _state_set(name: str, doc: str, states: Iterable[str], current: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(_P + name, doc, labels=["state"])
    for state in states:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


class SnapshotCollector(Collector):
    """A prometheus-client collector over ``snapshot()`` (called once per scrape) and
    ``figures()`` (the service's own counters); see the module docstring for the families."""

    def __init__(
        self, snapshot: Callable[[], NodeSnapshot], figures: Callable[[], ServiceFigures]
    ) -> None:
        self._snapshot = snapshot
        self._figures = figures

    def describe(self) -> list[Metric]:
        """Nothing: registering must not take a snapshot."""
        return []

    def collect(self) -> Iterator[Metric]:  # noqa: C901, PLR0912, PLR0915 - one family after another
        """The families of one snapshot."""
        snap = self._snapshot()
        figures = self._figures()
        yield InfoMetricFamily(
            _P + "node", "The node this service reports on.", {"node": snap.node}
        )
        yield _gauge("uptime_seconds", "Seconds since the node started.", snap.uptime)

        stats = snap.recovery
        errors = CounterMetricFamily(
            _P + "errors", "Errors handed to the recovery manager, by type.", labels=["type"]
        )
        seen = stats.error_type_distribution
        for error_type in ErrorType:
            errors.add_metric([error_type.value], float(seen.get(error_type, 0)))
        yield errors
        by_component = CounterMetricFamily(
            _P + "component_errors",
            "Errors handed to the recovery manager, by type and component.",
            labels=["type", "component"],
        )
        for (error_type, component), count in stats.error_component_distribution.items():
            by_component.add_metric([error_type.value, component], float(count))
        yield by_component
        recoveries = CounterMetricFamily(
            _P + "recoveries", "Recoveries by outcome.", labels=["outcome"]
        )
        recoveries.add_metric(["succeeded"], stats.successful_recoveries)
        recoveries.add_metric(["failed"], stats.failed_recoveries)
        recoveries.add_metric(["rejected"], stats.rejected_recoveries)
        recoveries.add_metric(["joined"], stats.joined_recoveries)
        yield recoveries
        strategies = CounterMetricFamily(
            _P + "recovery_strategy_executions",
            "Recovery strategies executed, by strategy.",
            labels=["strategy"],
        )
        executed = stats.strategy_distribution
        for kind in RecoveryStrategyKind:
            strategies.add_metric([kind.value], float(executed.get(kind, 0)))
        yield strategies
        outcomes = CounterMetricFamily(
            _P + "recovery_strategy_outcomes",
            "Recovery strategies executed, by strategy and outcome.",
            labels=["strategy", "outcome"],
        )
        for (kind, success), count in stats.strategy_outcomes.items():
            outcomes.add_metric([kind.value, "succeeded" if success else "failed"], float(count))
        yield outcomes
        yield _counter(
            "recovery_escalations",
            "Escalation thresholds crossed by pattern analysis.",
            stats.pattern_escalations,
        )
        yield _gauge(
            "recoveries_active", "Recoveries running now.", stats.current_recovery_attempts
        )
        yield _gauge("recoveries_queued", "Recoveries waiting for a slot.", stats.queued_recoveries)
        yield _gauge(
            "recovery_success_ratio", "Successful over attempted recoveries.", stats.success_rate
        )
        sla = GaugeMetricFamily(
            _P + "recovery_sla_compliance_ratio",
            "Recoveries within their SLA class, over completed ones.",
            labels=["sla"],
        )
        for name, ratio in stats.sla_compliance.items():
            sla.add_metric([name], ratio)
        yield sla
        completed = stats.successful_recoveries + stats.failed_recoveries
        summary = Metric(
            _P + "recovery_time_seconds",
            "Recovery time (p50/p95/p99 over the manager's recent window).",
            "summary",
        )
        name = _P + "recovery_time_seconds"
        summary.add_sample(name, {"quantile": "0.5"}, stats.p50_ms / 1000.0)
        summary.add_sample(name, {"quantile": "0.95"}, stats.p95_ms / 1000.0)
        summary.add_sample(name, {"quantile": "0.99"}, stats.p99_ms / 1000.0)
        summary.add_sample(name + "_count", {}, float(completed))
        summary.add_sample(name + "_sum", {}, stats.average_recovery_time_ms * completed / 1000.0)
        yield summary

        breaker_state = GaugeMetricFamily(
            _P + "breaker_state",
            "Circuit breaker state (a state set).",
            labels=["breaker", "state"],
        )
        calls = CounterMetricFamily(
            _P + "breaker_calls", "Calls through a breaker by result.", labels=["breaker", "result"]
        )
        for breaker, metrics in snap.breakers.items():
            current = metrics.state.value
            for state in _BREAKER_STATES:
                breaker_state.add_metric([breaker, state], 1.0 if state == current else 0.0)
            calls.add_metric([breaker, "successful"], metrics.successful_calls)
            calls.add_metric([breaker, "failed"], metrics.failed_calls)
            calls.add_metric([breaker, "ignored"], metrics.ignored_calls)
            calls.add_metric([breaker, "not_permitted"], metrics.not_permitted)
        yield breaker_state
        yield calls

        degradation = snap.degradation
        yield _gauge(
            "degradation_level",
            "Features shed now.",
            0 if degradation is None else degradation.level,
        )
        yield _gauge(
            "degradation_max_level",
            "Features that can be shed.",
            0 if degradation is None else degradation.max_level,
        )
        features = GaugeMetricFamily(
            _P + "feature_active", "Degradable feature on (1) or shed (0).", labels=["feature"]
        )
        if degradation is not None:
            for feature in degradation.features:
                features.add_metric([feature.name], 1.0 if feature.active else 0.0)
        yield features

        yield _gauge(
            "ingest_rate_ticks_per_second", "Acknowledged ticks per second.", snap.ticks_per_s
        )
        ingest = snap.ingest
        yield _gauge(
            "ingest_queue_depth",
            "Ticks waiting in the ingest queue.",
            ingest.queued if ingest else 0,
        )
        yield _counter(
            "ingest_acknowledged_ticks",
            "Ticks whose batch write returned.",
            ingest.acknowledged if ingest else 0,
        )
        sequences = GaugeMetricFamily(
            _P + "last_sequence",
            "The acknowledged sequence watermark per symbol.",
            labels=["symbol"],
        )
        if ingest is not None:
            for symbol, seq in ingest.acked.items():
                sequences.add_metric([symbol], seq)
        yield sequences
        feed = snap.feed
        yield _gauge(
            "feed_connected",
            "The feed is connected (1) or not (0).",
            1 if feed and feed.connected else 0,
        )
        yield _counter("feed_reconnects", "Feed reconnections.", feed.reconnects if feed else 0)

        if snap.risk_state is not None:
            states = (
                _RISK_STATES
                if snap.risk_state in _RISK_STATES
                else (*_RISK_STATES, snap.risk_state)
            )
            yield _state_set(
                "risk_state",
                "The risk engine's state (a state set).",
                states,
                snap.risk_state,
            )

        health = GaugeMetricFamily(
            _P + "health_state",
            "Health check state (a state set).",
            labels=["check", "component", "state"],
        )
        failures = CounterMetricFamily(
            _P + "health_check_failures",
            "Failed health probes by check and component.",
            labels=["check", "component"],
        )
        if snap.health is not None:
            for check in snap.health.checks:
                current = "unknown" if check.state is None else check.state.value
                for state in _HEALTH_STATES:
                    health.add_metric(
                        [check.name, check.component, state], 1.0 if state == current else 0.0
                    )
                failures.add_metric([check.name, check.component], check.failures)
        yield health
        yield failures

        restarts = CounterMetricFamily(
            _P + "supervisor_restarts",
            "Child starts after a crash, by supervisor.",
            labels=["supervisor"],
        )
        if snap.supervisor is not None:
            restarts.add_metric([snap.supervisor.name], snap.supervisor.restarts_total)
        yield restarts
        yield _gauge(
            "spool_pending_ticks", "Ticks in the spool waiting to drain.", snap.spool_pending
        )
        states = (
            _STORE_STATES
            if snap.store_state in _STORE_STATES
            else (*_STORE_STATES, snap.store_state)
        )
        yield _state_set(
            "store_state",
            "The tick store's failover state (a state set).",
            states,
            snap.store_state,
        )
        yield _gauge(
            "kill_switch_pulled",
            "The kill switch was pulled (1) or not (0).",
            snap.kill_switch is not None,
        )
        yield _gauge(
            "price_chart_enabled",
            "The live price chart is on (1) or shed (0).",
            figures.chart_enabled,
        )
        yield _gauge("events_clients", "Server-sent-event clients connected.", figures.clients)
        yield _counter(
            "events_dropped_clients",
            "Server-sent-event clients dropped for a full queue.",
            figures.dropped_clients,
        )
