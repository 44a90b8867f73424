"""The node's side of the cluster kill switch (issue 14; :mod:`strategylab.distributed._kill`).

A node started with ``--cluster NAME --redis URL`` runs a
:class:`~strategylab.distributed.ClusterKillWatcher` (its state file: ``cluster_kill.json`` in
the data directory). When the cluster's kill switch is pulled the node does NOT exit (unlike its
own kill switch, ``POST /admin/kill``): it stays up, ingesting and serving ``/status``, and halts
its trading until an operator clears the kill (``strategylab kill --cluster NAME --clear``), as
"halts every node ... until an operator clears it" asks: an exit would leave the node's data
unserved and need a restart by hand after the clear.

Halting the trader child (:mod:`._trader_child`): the node writes ``cluster_halt.json`` in its
data directory (``{"halted", "kill_id", "reason", "at"}``, atomically) and sends the trader
SIGUSR2; the trader holds its risk engine (every new order refused) in the signal's handler,
prints ``cluster_halted``, then cancels its open orders at the exchange (``cluster_cancelled``).
A trader (re)started while the kill holds reads the file before it trades. On a verified clear
the file says ``halted: false`` and SIGUSR2 lifts the hold (``cluster_resumed``). A node without
a trader has nothing to halt: it shows the kill in ``/status`` only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, Final

from strategylab._durable import write_atomic
from strategylab.distributed import ClusterKillState, ClusterKillWatcher
from strategylab.fault_tolerance import HealthCheck, HealthState, ProbeKind

from ._config import NodeConfig
from ._operations import HEALTH_INTERVAL, HEALTH_TIMEOUT
from ._trader_child import TraderChild

__all__ = ["CLUSTER_HALT_NAME", "CLUSTER_STATE_NAME", "NodeClusterKill", "cluster_health_check"]

_log = logging.getLogger("strategylab.node.cluster_kill")

CLUSTER_STATE_NAME: Final = "cluster_kill.json"
"""The watcher's state file in the data directory: the kill id the node obeys."""
CLUSTER_HALT_NAME: Final = "cluster_halt.json"
"""The file the trader child obeys (see the module docstring)."""


class NodeClusterKill:
    """The cluster kill of one node: :meth:`start` after the trader child is built (before the
    supervisor starts it), :meth:`aclose` with the node; :meth:`status` for ``/status``."""

    def __init__(
        self,
        config: NodeConfig,
        trader: TraderChild | None,
        trader_pid: Callable[[], int | None],
    ) -> None:
        if config.cluster is None or config.redis_url is None:
            raise ValueError("NodeClusterKill needs config.cluster and config.redis_url")
        self._trader = trader
        self._trader_pid = trader_pid
        self.halt_file = config.data_dir / CLUSTER_HALT_NAME
        if trader is not None:
            trader.cluster_halt = self.halt_file
        self.watcher = ClusterKillWatcher(
            config.cluster,
            config.redis_url,
            state_file=config.data_dir / CLUSTER_STATE_NAME,
            admin_token=config.admin_token,
            on_change=self._on_change,
            member=f"{config.node_name}@{socket.gethostname()}:{os.getpid()}",
        )

    async def start(self) -> None:
        """Read the state file and Redis (the trader's file is written before it starts)."""
        state = await self.watcher.start()
        if not state.known:
            _log.warning(
                "cluster %s: %s: trading halted until the kill state is read",
                self.watcher.cluster,
                state.problem,
            )

    async def aclose(self) -> None:
        """Stop watching."""
        await self.watcher.aclose()

    def _on_change(self, state: ClusterKillState) -> None:
        kill = state.kill
        body = {
            "halted": state.halted,
            "kill_id": None if kill is None else kill.id,
            "reason": state.problem if kill is None else kill.reason,
            "at": None if kill is None else kill.at,
        }
        try:
            write_atomic(self.halt_file, json.dumps(body).encode())
        except OSError as exc:  # the trader then halts on an unreadable file only
            _log.error("cluster kill: %s cannot be written: %s", self.halt_file, exc)
        self._nudge()

    def _nudge(self) -> None:
        """SIGUSR2 to the trader process, once it said hello (its handler is set by then; one
        that has not reads the file before it trades)."""
        trader = self._trader
        if trader is None:
            return
        pid = self._trader_pid()
        if pid is None or trader.incarnation(pid) is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)

    def status(self) -> dict[str, Any]:
        """``/status``'s ``cluster_kill``: the watcher's state and the trader's last cluster
        lines (``cluster_halted``, ``cluster_cancelled``, ``cluster_resumed``)."""
        out = self.watcher.state.to_dict()
        out["cluster"] = self.watcher.cluster
        trader = self._trader
        if trader is not None:
            inc = trader.incarnation(self._trader_pid())
            out["trader"] = {} if inc is None else dict(inc.cluster)
        return out

    def mark_trader(self, trader: dict[str, Any]) -> None:
        """``/status``'s ``extra.trader`` while the cluster kill halts it: ``trading`` False and
        ``halted`` saying why (``"cluster kill ID: REASON"`` or the unknown kill state)."""
        state = self.watcher.state
        if not state.halted:
            return
        trader["trading"] = False
        kill = state.kill
        trader["halted"] = (
            f"cluster kill {kill.id}: {kill.reason}" if kill is not None else state.problem
        )


def cluster_health_check(get: Callable[[], NodeClusterKill | None]) -> HealthCheck:
    """The health check ``cluster_kill`` (readiness, every :data:`HEALTH_INTERVAL` s): DEGRADED
    while the cluster's Redis cannot be reached (the node keeps its last known kill state and
    reconnects by itself: never UNHEALTHY, nothing a recovery could do), HEALTHY otherwise.
    ``get()`` is the node's :class:`NodeClusterKill` (None before it started)."""

    async def check() -> HealthState:
        cluster = get()
        if cluster is None or cluster.watcher.state.connected:
            return HealthState.HEALTHY
        return HealthState.DEGRADED

    return HealthCheck(
        name="cluster_kill",
        check=check,
        kind=ProbeKind.READINESS,
        component="cluster_kill",
        interval=HEALTH_INTERVAL,
        timeout=HEALTH_TIMEOUT,
    )
