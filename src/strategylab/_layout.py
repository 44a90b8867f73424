"""The data directory's layout: one record of every file name a process keeps there.

A node's data directory (``strategylab node --data-dir D``)::

    D/ticks.db               the SQLite tick store (unless --db or --postgres says otherwise)
    D/acks.jsonl             the ack log: what the node acknowledged as stored
    D/audit.jsonl            the recovery manager's hash-chained audit log
    D/audit.anchor.jsonl     the audit log's anchored heads
    D/spool/                 the failover spool (ticks held while the store is down)
    D/logs/PROCESS.log       each process's log file
    D/snapshot.json          the kill switch's state snapshot
    D/UNCLEAN_SHUTDOWN       the kill switch's unclean-shutdown marker

An exchange's data directory holds ``emitted.log``. The demo's directory holds ``node/`` and
``exchange/`` (each laid out as above) and its ownership marker ``.strategylab-demo``.

Bottom layer: imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Final

__all__ = ["DEMO_MARKER", "DataLayout"]

DEMO_MARKER: Final = ".strategylab-demo"
"""The file by which ``strategylab demo`` marks a data directory (and what in it) as its own."""


@dataclasses.dataclass(frozen=True, slots=True)
class DataLayout:
    """The paths of one data directory, ``root``; nothing is created or read here."""

    root: Path

    @property
    def ticks_db(self) -> Path:
        """The default SQLite tick store."""
        return self.root / "ticks.db"

    @property
    def acks(self) -> Path:
        """The node's ack log (JSON lines)."""
        return self.root / "acks.jsonl"

    @property
    def audit(self) -> Path:
        """The audit log (JSON lines, hash-chained)."""
        return self.root / "audit.jsonl"

    @property
    def audit_anchor(self) -> Path:
        """The audit log's anchor file."""
        return self.root / "audit.anchor.jsonl"

    @property
    def spool(self) -> Path:
        """The failover spool's directory."""
        return self.root / "spool"

    @property
    def logs(self) -> Path:
        """The directory of the processes' log files."""
        return self.root / "logs"

    def log_file(self, process: str) -> Path:
        """The log file of ``process`` (``"node"``, ``"exchange"``, ``"trader"``, ``"proxy"``)."""
        return self.logs / f"{process}.log"

    @property
    def snapshot(self) -> Path:
        """The kill switch's state snapshot."""
        return self.root / "snapshot.json"

    @property
    def unclean_marker(self) -> Path:
        """The marker an emergency shutdown leaves beside the snapshot."""
        return self.root / "UNCLEAN_SHUTDOWN"

    @property
    def emitted_log(self) -> Path:
        """The exchange simulator's log of every tick it emitted."""
        return self.root / "emitted.log"

    @property
    def demo_marker(self) -> Path:
        """The demo's ownership marker."""
        return self.root / DEMO_MARKER

    @property
    def node_dir(self) -> DataLayout:
        """The demo's node data directory."""
        return DataLayout(self.root / "node")

    @property
    def exchange_dir(self) -> DataLayout:
        """The demo's exchange data directory."""
        return DataLayout(self.root / "exchange")
