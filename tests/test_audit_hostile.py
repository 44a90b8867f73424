"""A hostile audit log: a line nested 100,000 deep is a named AuditIntegrityError, never a crash."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from strategylab.errors import AuditIntegrityError
from strategylab.fault_tolerance import AuditLog
from strategylab.testing import FakeClock

DEEP = [b"[" * 100_000 + b"\n", b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"\n"]


def _log_with_two_records(path: Path) -> None:
    with AuditLog(path, clock=FakeClock(), fsync=False) as log:
        log.append("recovery", {"n": 1})
        log.append("recovery", {"n": 2})


@pytest.mark.parametrize("deep", DEEP, ids=["list", "object"])
def test_verify_names_a_deeply_nested_line(tmp_path: Path, deep: bytes) -> None:
    """verify() on a log with a line nested 100k deep raises AuditIntegrityError at that line."""
    path = tmp_path / "audit.jsonl"
    _log_with_two_records(path)
    with path.open("ab") as file:
        file.write(deep)
    with pytest.raises(AuditIntegrityError, match="deeper") as info:
        AuditLog.verify(path)
    assert info.value.line == 3


@pytest.mark.parametrize("deep", DEEP, ids=["list", "object"])
def test_verify_names_a_deep_line_in_the_middle(tmp_path: Path, deep: bytes) -> None:
    """A deep line before intact records is named by its line number, not a RecursionError."""
    path = tmp_path / "audit.jsonl"
    _log_with_two_records(path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + deep + lines[1])
    with pytest.raises(AuditIntegrityError) as info:
        AuditLog.verify(path)
    assert info.value.line == 2


@pytest.mark.parametrize("deep", DEEP, ids=["list", "object"])
def test_open_refuses_a_deeply_nested_last_line(tmp_path: Path, deep: bytes) -> None:
    """Opening a log whose last line is nested 100k deep raises AuditIntegrityError naming it."""
    path = tmp_path / "audit.jsonl"
    _log_with_two_records(path)
    with path.open("ab") as file:
        file.write(deep)
    with pytest.raises(AuditIntegrityError, match="deeper") as info:
        AuditLog(path, fsync=False)
    assert info.value.line == 3


def test_append_refuses_data_nested_too_deep(tmp_path: Path) -> None:
    """Data nested deeper than MAX_DEPTH is refused with a ValueError; nothing is written."""
    data: object = 1
    for _ in range(10_000):
        data = [data]
    with AuditLog(tmp_path / "audit.jsonl", clock=FakeClock(), fsync=False) as log:
        with pytest.raises(ValueError, match="nested deeper than"):
            log.append("recovery", {"x": data})  # type: ignore[dict-item]
        assert log.head[0] == 0
    assert (tmp_path / "audit.jsonl").read_bytes() == b""


def test_data_nested_to_the_limit_round_trips(tmp_path: Path) -> None:
    """Data nested to just under the limit is appended and verifies."""
    from strategylab.fault_tolerance._audit import MAX_DEPTH  # noqa: PLC0415

    data: object = 1
    for _ in range(MAX_DEPTH - 1):
        data = [data]
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, clock=FakeClock(), fsync=False) as log:
        log.append("recovery", {"x": data})  # type: ignore[dict-item]
    assert AuditLog.verify(path).records == 1


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_node_with_a_deep_audit_line_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    """A real node whose audit log ends in a 100k-deep line prints one stderr line, exit 1."""
    data = tmp_path / "node"
    _log_with_two_records(data / "audit.jsonl")
    with (data / "audit.jsonl").open("ab") as file:
        file.write(DEEP[0])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "node",
        "--exchange-url",
        "ws://127.0.0.1:9/ws",
        "--data-dir",
        str(data),
        "--symbols",
        "A",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(50):
        _out, err = await proc.communicate()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1, err
    assert len(lines) == 1, lines
    assert "audit.jsonl:3" in lines[0]
    assert "Traceback" not in lines[0]
