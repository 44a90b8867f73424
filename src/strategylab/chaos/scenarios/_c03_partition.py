"""Category 3, network partition: the feed's WebSocket cut, then the order API cut, for 2–5 s.

Each cut is a blackhole in the fault proxy on both directions (nothing passes, no connection is
closed: the node must notice by itself). Its length is chosen with the category's seeded random
source and scaled by the severity (medium: 2–3.5 s; critical: up to 5 s). The node must keep
serving its users throughout (availability: ``/health/live`` and ``/status``), and recover once
the cut is healed. The order API's recovery is seen from the trader's side: the exchange's own
order book holds an order it accepted after the cut began (nothing passes a blackhole, so the
order came through after the heal), from the live trader.
"""

from __future__ import annotations

import time
from typing import ClassVar

from strategylab.chaos._inject_network import Partition
from strategylab.chaos._lab import LabRun, cross_check_recorded
from strategylab.chaos._probes import all_of, http_ok, node_ready, store_caught_up
from strategylab.chaos._scenario import Criterion, Lab, Scenario

from ._c09_sla import orders_flowing

__all__ = ["NetworkPartition"]

_MIN_CUT = 2.0
_MAX_CUT = 5.0


class NetworkPartition(Scenario):
    """The feed's WebSocket and the order API cut for 2–5 s each."""

    id: ClassVar[int] = 3
    name: ClassVar[str] = "network partition"
    description: ClassVar[str] = "WebSocket and order API cut for 2–5 s"
    seed_criterion: ClassVar[Criterion] = Criterion(
        recovered=0.8, availability=0.95, text="≥ 80 % recovered, ≥ 95 % availability"
    )
    own_criterion: ClassVar[Criterion] = Criterion(
        recovered=1.0,
        availability=0.99,
        consistency=1.0,
        within_sla=1.0,
        zero_duplicated=True,
        zero_corrupted=True,
        text="100 % recovered, ≥ 99 % availability, zero lost/duplicated/corrupted",
    )
    sla: ClassVar[float] = 10.0
    """The API recovery SLA of category 9 (seconds)."""

    def cut_length(self, lab: Lab) -> float:
        """A cut's length, seconds: drawn in 2..3.5 and scaled by the severity, within 2..5."""
        drawn = lab.rng.uniform(_MIN_CUT, _MIN_CUT + 1.5) * lab.severity.scale
        return round(min(_MAX_CUT, max(_MIN_CUT, drawn)), 2)

    async def run(self, lab: Lab) -> None:
        if not isinstance(lab, LabRun):
            raise TypeError(f"{self.name}: needs the lab's own runner (a LabRun), got {lab!r}")
        pipeline, sev = lab.pipeline, lab.severity
        feed = Partition(pipeline.ws_proxy, severity=sev, name="network.partition_feed")
        run = await lab.fault(feed, hold=self.cut_length(lab), sla=self.sla, recover_timeout=20.0)
        cross_check_recorded(lab, run, expected=True)
        api = Partition(pipeline.api_proxy, severity=sev, name="network.partition_api")
        # The node's own service does not depend on the order API: the recovery is the trader's
        # orders reaching the exchange again (its own book: an order accepted after the cut
        # began), with the API answering through the proxy and the node ready and caught up.
        through = http_ok(f"http://127.0.0.1:{pipeline.api_proxy.listen_port}/api/status")
        orders = orders_flowing(pipeline)
        orders.since_ns = time.time_ns()
        recovered = all_of(through, orders, node_ready(pipeline), store_caught_up(pipeline))
        run = await lab.fault(
            api, hold=self.cut_length(lab), sla=self.sla, recovered=recovered, recover_timeout=12.0
        )
        lab.check(
            "the trader's orders reach the exchange after the order-API cut",
            orders.first_seen is not None,
            f"first order accepted after the cut began: {orders.first_seen or 'none'}",
        )
        cross_check_recorded(lab, run, expected=False)
        await lab.integrity()
