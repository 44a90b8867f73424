"""The node's ledgers on a real full disk: the ack log fails cleanly, the audit log holds."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from strategylab.fault_tolerance import AuditLog
from strategylab.market._ledger import AckLog, read_acks
from test_node_faults import volume
from volumes import fill

pytestmark = pytest.mark.integration

__all__ = ["volume"]  # the fixture, imported for pytest


@pytest.mark.timeout(30)
def test_ack_log_append_on_a_full_disk_raises_and_leaves_no_partial_line(volume: Path) -> None:
    """ENOSPC surfaces as OSError, the file is as before, and the retried append is whole."""
    acks = AckLog(volume / "acks.jsonl")
    ballast = volume / "ballast"
    fill(ballast)
    with pytest.raises(OSError) as info:
        acks.append({f"SYM{i}": i for i in range(500)})
    assert info.value.errno == errno.ENOSPC
    assert (volume / "acks.jsonl").read_bytes() == b""
    ballast.unlink()
    acks.append({"A": 7, "B": 9})
    acks.close()
    assert read_acks(volume / "acks.jsonl") == {"A": 7, "B": 9}
    with pytest.raises(ValueError, match="closed"):
        acks.append({"A": 8})


@pytest.mark.timeout(30)
def test_audit_log_holds_records_on_a_full_disk_and_writes_them_in_order_later(
    volume: Path,
) -> None:
    """hold_when_full: appends on a full disk are held in order; once space returns the next
    append writes them first, and the whole chain verifies."""
    log = AuditLog(volume / "audit.jsonl", hold_when_full=100)
    log.append("recovery", {"n": 0})
    ballast = volume / "ballast"
    fill(ballast)
    for n in range(1, 4):
        log.append("recovery", {"n": n, "pad": "x" * 5000})
    assert log.held == 3
    assert AuditLog.verify(volume / "audit.jsonl").records == 1
    ballast.unlink()
    log.append("recovery", {"n": 4})
    assert log.held == 0
    log.close()
    records = list(AuditLog.read(volume / "audit.jsonl"))
    assert [r.data["n"] for r in records] == [0, 1, 2, 3, 4]
    assert AuditLog.verify(volume / "audit.jsonl").records == 5


@pytest.mark.timeout(30)
def test_audit_log_without_hold_still_raises_on_a_full_disk(volume: Path) -> None:
    """The default is unchanged: a failed append raises and nothing is written or chained."""
    log = AuditLog(volume / "audit.jsonl")
    fill(volume / "ballast")
    with pytest.raises(OSError) as info:
        log.append("recovery", {"pad": "x" * 5000})
    assert info.value.errno == errno.ENOSPC
    assert log.held == 0
    assert log.head[0] == 0
    log.close()
