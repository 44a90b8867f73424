"""Symlinks planted in a data directory are refused, never followed; files 0600, dirs 0700."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from strategylab._files import UnsafePathError
from strategylab.fault_tolerance import AuditLog
from strategylab.market import SpoolStore, SQLiteTickStore, Tick
from strategylab.market._ledger import AckLog, EmittedLog
from strategylab.testing import FakeClock

VICTIM = b"precious, outside the data directory\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the data directory whose content must never change."""
    path = tmp_path / "outside" / "victim"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


def _plant(data: Path, name: str, target: Path) -> Path:
    link = data / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def _intact(victim: Path) -> bool:
    """The victim's content is unchanged and nothing was created beside it."""
    return victim.read_bytes() == VICTIM and [p.name for p in victim.parent.iterdir()] == ["victim"]


def _tick(seq: int) -> Tick:
    return Tick("A", seq, 1_700_000_000_000_000_000 + seq, 1.0, 1.1, 1.0, 1.0)


def test_ack_log_refuses_a_symlink(tmp_path: Path, victim: Path) -> None:
    """AckLog at a planted symlink raises UnsafePathError naming it; the victim is unchanged."""
    link = _plant(tmp_path / "data", "acks.jsonl", victim)
    with pytest.raises(UnsafePathError, match=r"acks\.jsonl"):
        AckLog(link)
    assert _intact(victim)


def test_emitted_log_refuses_a_symlink(tmp_path: Path, victim: Path) -> None:
    """EmittedLog at a planted symlink is refused; the victim is unchanged."""
    link = _plant(tmp_path / "data", "emitted.bin", victim)
    with pytest.raises(UnsafePathError, match=r"emitted\.bin"):
        EmittedLog(link)
    assert _intact(victim)


def test_audit_log_refuses_a_symlink(tmp_path: Path, victim: Path) -> None:
    """AuditLog at a planted symlink is refused (no tear repair truncates the victim)."""
    link = _plant(tmp_path / "data", "audit.jsonl", victim)
    with pytest.raises(UnsafePathError, match=r"audit\.jsonl"):
        AuditLog(link, clock=FakeClock(), fsync=False)
    assert _intact(victim)


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
async def test_sqlite_store_refuses_a_symlink(tmp_path: Path, victim: Path, suffix: str) -> None:
    """A symlink at ticks.db or its -wal/-shm is refused before SQLite opens anything."""
    data = tmp_path / "data"
    _plant(data, f"ticks.db{suffix}", victim)
    store = SQLiteTickStore(data / "ticks.db")
    try:
        with pytest.raises(UnsafePathError, match=f"ticks.db{suffix}"):
            await store.open()
    finally:
        await store.aclose()
    assert _intact(victim)


@pytest.mark.parametrize("name", ["000000000001.seg", "holes.json", "quarantine.log"])
async def test_spool_refuses_a_symlinked_file(tmp_path: Path, victim: Path, name: str) -> None:
    """A symlink planted at a spool segment, holes.json or the quarantine file is refused."""
    spool_dir = tmp_path / "data" / "spool"
    _plant(spool_dir, name, victim)
    spool = SpoolStore(spool_dir)
    with pytest.raises(UnsafePathError, match=name.replace(".", r"\.")):
        await spool.open()
    assert _intact(victim)


async def test_spool_write_refuses_a_segment_planted_after_open(
    tmp_path: Path, victim: Path
) -> None:
    """A symlink planted at the next segment while the spool runs fails the write."""
    spool_dir = tmp_path / "data" / "spool"
    spool = SpoolStore(spool_dir)
    await spool.open()
    try:
        _plant(spool_dir, "000000000001.seg", victim)
        with pytest.raises(UnsafePathError, match="000000000001"):
            await spool.write([_tick(1)])
    finally:
        await spool.aclose()
    assert _intact(victim)


async def test_spool_refuses_a_symlinked_directory(tmp_path: Path, victim: Path) -> None:
    """The spool directory itself planted as a symlink is refused."""
    link = _plant(tmp_path / "data", "spool", victim.parent)
    with pytest.raises(UnsafePathError, match="spool"):
        await SpoolStore(link).open()
    assert _intact(victim)


async def test_created_files_are_0600_and_dirs_0700(tmp_path: Path) -> None:
    """Files the node's parts create are 0600; directories they create are 0700."""
    data = tmp_path / "data"
    AckLog(data / "acks.jsonl").close()
    AuditLog(data / "audit.jsonl", clock=FakeClock(), fsync=False).close()
    store = SQLiteTickStore(data / "ticks.db")
    await store.open()
    try:
        await store.write([_tick(1), _tick(2)])
        modes = {
            name: stat.S_IMODE(os.lstat(data / name).st_mode)
            for name in ("ticks.db", "ticks.db-wal", "ticks.db-shm")
        }
    finally:
        await store.aclose()
    spool = SpoolStore(data / "spool")
    await spool.open()
    try:
        await spool.write([_tick(3)])
    finally:
        await spool.aclose()
    assert stat.S_IMODE(os.lstat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(data / "spool").st_mode) == 0o700
    for path in [data / "acks.jsonl", data / "audit.jsonl", *(data / "spool").iterdir()]:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600, path
    assert modes == dict.fromkeys(modes, 0o600)


async def _run_node(data: Path, *, until_started: bool) -> tuple[int, str, list[str]]:
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
        "--status-interval",
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    events: list[str] = []
    async with asyncio.timeout(50):
        if until_started:
            while line := await proc.stdout.readline():
                events.append(json.loads(line)["event"])
                if events[-1] == "started":
                    proc.send_signal(signal.SIGTERM)
                    break
        _out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(), events


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["acks.jsonl", "audit.jsonl", "ticks.db", "ticks.db-wal", "spool"])
async def test_node_refuses_a_planted_symlink_with_one_line_exit_2(
    tmp_path: Path, victim: Path, name: str
) -> None:
    """A real node with a symlink planted at a data file prints one line naming it, exits 2."""
    data = tmp_path / "node"
    _plant(data, name, victim.parent if name == "spool" else victim)
    code, err, _events = await _run_node(data, until_started=False)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, lines
    assert name in lines[0]
    assert "symlink" in lines[0]
    assert _intact(victim)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_node_creates_its_data_dir_0700_and_files_0600(tmp_path: Path) -> None:
    """A real node started on a fresh data dir creates it 0700 and its files 0600."""
    data = tmp_path / "node"
    code, err, events = await _run_node(data, until_started=True)
    assert "started" in events, err
    assert code == 0, err
    assert stat.S_IMODE(os.lstat(data).st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert {"audit.jsonl", "acks.jsonl", "ticks.db"} <= {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600, path
