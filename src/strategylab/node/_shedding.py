"""The node's degradation controller: which features it sheds, on which signals, at which marks.

:func:`build_degradation` wires :class:`~strategylab.fault_tolerance.DegradationController` to
four real signals, each with a high mark (shed above) and a lower low mark (restore below); the
gap is the hysteresis that keeps a reading hovering at one mark from flapping a feature:

- ``memory``: resident set size in bytes against ``memory_budget``: shed above 90 %, restore
  below 75 % of it;
- ``loop_lag``: event-loop lag in seconds (the largest of the last 5 s): above 0.25, below 0.05;
- ``ingest_queue``: ingest queue depth over its capacity (0..1): above 0.80, below 0.50;
- ``cpu``: process CPU in percent of one CPU: above 90, below 60.

The marks are the library's defaults (:func:`~strategylab.fault_tolerance.rss_trigger`,
:func:`~strategylab.fault_tolerance.loop_lag_trigger`,
:func:`~strategylab.fault_tolerance.queue_depth_trigger`,
:func:`~strategylab.fault_tolerance.cpu_trigger`), after the soft/hard thresholds of the
Kubernetes kubelet's node-pressure eviction (act before the hard limit, with a minimum reclaim so
that the signal does not bounce) and a thermostat's dead band. The memory trigger is on only when
``config.memory_budget`` is set. A level changes only after its condition held ``hold`` seconds
(5 s by default), one feature per level: lowest priority first (DESIGN §5: real-time charts, then
batch jobs, then notifications), restored in the reverse order. Ingestion and risk checks are
never features: the controller cannot shed them.

:func:`node_features` makes the node's two features: ``live_chart`` (the dashboard's price
chart, priority :data:`LIVE_CHART_PRIORITY`, shed first) and ``events`` (the status service's
server-sent event detail, :data:`EVENTS_PRIORITY`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    CpuMeter,
    DegradationController,
    Feature,
    LoopLagSampler,
    Trigger,
    cpu_trigger,
    loop_lag_trigger,
    rss_trigger,
)

from ._config import NodeConfig

__all__ = [
    "CPU_RESTORE_BELOW",
    "CPU_SHED_ABOVE",
    "EVENTS_PRIORITY",
    "LIVE_CHART_PRIORITY",
    "LOOP_LAG_RESTORE_BELOW",
    "LOOP_LAG_SHED_ABOVE",
    "MEMORY_RESTORE_AT",
    "MEMORY_SHED_AT",
    "QUEUE_RESTORE_AT",
    "QUEUE_SHED_AT",
    "NodeDegradation",
    "build_degradation",
    "node_features",
]

MEMORY_SHED_AT: Final = 0.9
"""Shed when RSS is above this fraction of ``memory_budget``."""
MEMORY_RESTORE_AT: Final = 0.75
"""Restore when RSS is below this fraction of ``memory_budget``."""
LOOP_LAG_SHED_ABOVE: Final = 0.25
"""Shed when the event loop wakes a sleeper this many seconds late (the window's maximum)."""
LOOP_LAG_RESTORE_BELOW: Final = 0.05
"""Restore when the loop lag is below this many seconds."""
QUEUE_SHED_AT: Final = 0.8
"""Shed when the ingest queue holds more than this fraction of its capacity."""
QUEUE_RESTORE_AT: Final = 0.5
"""Restore when the ingest queue holds less than this fraction of its capacity."""
CPU_SHED_ABOVE: Final = 90.0
"""Shed when the process uses more than this percent of one CPU."""
CPU_RESTORE_BELOW: Final = 60.0
"""Restore when the process uses less than this percent of one CPU."""
LIVE_CHART_PRIORITY: Final = 10
"""The live price chart: the least important feature, shed first."""
EVENTS_PRIORITY: Final = 30
"""The server-sent event detail: shed after the chart (room for batch jobs at 20)."""
LAG_SAMPLE_INTERVAL: Final = 0.1
"""Seconds between two loop-lag samples."""
LAG_WINDOW: Final = 50
"""Loop-lag samples whose maximum the trigger reads (5 s at the default interval)."""


class NodeDegradation(DegradationController):
    """A :class:`~strategylab.fault_tolerance.DegradationController` that also runs the node's
    loop-lag sampler: :meth:`start` starts it, :meth:`stop` stops it."""

    def __init__(
        self,
        features: Iterable[Feature],
        triggers: Iterable[Trigger],
        *,
        sampler: LoopLagSampler,
        clock: Clock = SYSTEM_CLOCK,
        hold: float = 5.0,
        interval: float = 1.0,
    ) -> None:
        super().__init__(features, triggers, clock=clock, hold=hold, interval=interval)
        self._sampler = sampler

    @property
    def sampler(self) -> LoopLagSampler:
        """The loop-lag sampler the ``loop_lag`` trigger reads."""
        return self._sampler

    async def start(self) -> None:
        """Start the loop-lag sampler and the evaluation loop."""
        self._sampler.start()
        await super().start()

    async def stop(self) -> None:
        """Stop the evaluation loop and the sampler; shed features stay shed."""
        await super().stop()
        await self._sampler.stop()


def _queue_fill(depth: Callable[[], int], capacity: Callable[[], int]) -> Callable[[], float]:
    def read() -> float:
        cap = capacity()
        if cap <= 0:
            raise ValueError(f"queue capacity {cap} is not > 0")
        return depth() / cap

    return read


def build_degradation(
    config: NodeConfig,
    *,
    queue_depth: Callable[[], int],
    queue_capacity: Callable[[], int],
    features: Sequence[Feature],
    clock: Clock = SYSTEM_CLOCK,
    hold: float = 5.0,
    interval: float = 1.0,
) -> NodeDegradation:
    """The node's degradation controller over ``features``.

    Triggers (see the module docstring for the marks): ``memory`` (RSS against
    ``config.memory_budget``, bytes; only when set), ``loop_lag`` (seconds, from a
    :class:`~strategylab.fault_tolerance.LoopLagSampler` on ``clock`` that the controller's
    ``start``/``stop`` run), ``ingest_queue`` (``queue_depth() / queue_capacity()``, both in
    ticks, read at each evaluation so a rescaled queue counts), ``cpu`` (percent of one CPU,
    :class:`~strategylab.fault_tolerance.CpuMeter` on ``clock``). ``hold`` and ``interval``
    (seconds) go to the controller. Raises :class:`~strategylab.errors.ConfigurationError` when
    a feature is named for ingestion or risk checks (never features) or a name repeats.
    """
    for feature in features:
        if feature.name in {"ingest", "ingestion", "risk", "risk_checks"}:
            raise ConfigurationError(
                "features", feature.name, "ingestion and risk checks are never shed features"
            )
    sampler = LoopLagSampler(clock=clock, interval=LAG_SAMPLE_INTERVAL, window=LAG_WINDOW)
    triggers: list[Trigger] = []
    if config.memory_budget is not None:
        triggers.append(
            rss_trigger(config.memory_budget, shed_at=MEMORY_SHED_AT, restore_at=MEMORY_RESTORE_AT)
        )
    triggers.append(
        loop_lag_trigger(
            sampler, shed_above=LOOP_LAG_SHED_ABOVE, restore_below=LOOP_LAG_RESTORE_BELOW
        )
    )
    triggers.append(
        Trigger(
            "ingest_queue",
            _queue_fill(queue_depth, queue_capacity),
            QUEUE_SHED_AT,
            QUEUE_RESTORE_AT,
        )
    )
    triggers.append(
        cpu_trigger(
            CpuMeter(clock=clock), shed_above=CPU_SHED_ABOVE, restore_below=CPU_RESTORE_BELOW
        )
    )
    return NodeDegradation(
        features, triggers, clock=clock, hold=hold, interval=interval, sampler=sampler
    )


def node_features(
    chart: Callable[[bool], None], events: Callable[[bool], None]
) -> tuple[Feature, ...]:
    """The node's two sheddable features: ``live_chart`` (priority 10, shed first) and
    ``events`` (the server-sent event detail, priority 30). Each callback is called with
    ``False`` when its feature is shed and ``True`` when it is restored."""
    return (
        Feature(
            "live_chart",
            LIVE_CHART_PRIORITY,
            shed=lambda: chart(False),  # noqa: FBT003 - the callback takes "on"
            restore=lambda: chart(True),  # noqa: FBT003
        ),
        Feature(
            "events",
            EVENTS_PRIORITY,
            shed=lambda: events(False),  # noqa: FBT003
            restore=lambda: events(True),  # noqa: FBT003
        ),
    )
