"""A primary that stalls longer than ``stall_timeout`` fails over to the spool, and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._failover_store import FailoverState, FailoverStore, StoreStallError
from strategylab.market._pg_store import PostgresTickStore
from strategylab.market._spool import SpoolStore
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick


def batch(first: int, size: int = 50) -> list[Tick]:
    return [
        Tick(symbol, seq, seq * 1_000, 100.0, 100.5, 1.0, 2.0)
        for seq in range(first, first + size)
        for symbol in ("AAA", "BBB")
    ]


def state_of(store: FailoverStore) -> FailoverState:
    return store.state  # a call, so that mypy does not narrow the state across awaits


class GatedSQLite(SQLiteTickStore):
    """A real SQLite store whose writes and probes hang while ``gate`` is closed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, ticks: Sequence[Tick]) -> int:
        await self.gate.wait()
        return await super().write(ticks)

    async def health(self) -> bool:
        await self.gate.wait()
        return await super().health()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_stall_timeout_is_named(tmp_path: Path, value: object) -> None:
    """A stall_timeout that is not a positive finite number of seconds is refused by name."""
    with pytest.raises(ConfigurationError, match="stall_timeout"):
        FailoverStore(
            SQLiteTickStore(tmp_path / "t.db"),
            SpoolStore(tmp_path / "spool"),
            stall_timeout=value,  # type: ignore[arg-type]
        )


@pytest.mark.timeout(20)
async def test_stalled_write_is_spooled_within_the_bound_then_drained(tmp_path: Path) -> None:
    """A write that hangs is acknowledged from the spool after stall_timeout; all data arrives."""
    primary = GatedSQLite(tmp_path / "ticks.db")
    manager = ErrorRecoveryManager()
    store = FailoverStore(
        primary,
        SpoolStore(tmp_path / "spool"),
        manager=manager,
        stall_timeout=0.2,
        probe_interval=0.02,
    )
    await store.open()
    try:
        acked = batch(1)
        await store.write(acked)
        primary.gate.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for first in range(51, 251, 50):
            await store.write(batch(first))
            acked += batch(first)
        # Only the first write waits for the bound; the rest go straight to the spool.
        assert loop.time() - started < 0.2 + 0.5
        assert state_of(store) is not FailoverState.PRIMARY
        assert store.statistics().stalls >= 1
        assert store.statistics().batches_to_spool == 4
        distribution = manager.statistics().error_type_distribution
        assert distribution.get(ErrorType.DATABASE_CONNECTION_LOST) == 1
        assert await store.health() is True  # the spool takes writes durably
        primary.gate.set()
        async with asyncio.timeout(10):
            await store.wait_for_state(FailoverState.PRIMARY)
        for symbol in ("AAA", "BBB"):
            assert await primary.read(symbol) == [t for t in acked if t.symbol == symbol]
        assert await primary.duplicates() == 0
    finally:
        primary.gate.set()
        await store.aclose()


@pytest.mark.timeout(20)
async def test_stalled_health_and_positions_answer_within_the_bound(tmp_path: Path) -> None:
    """health() says False and last_seqs() leaves the primary out once it overruns the bound."""
    primary = GatedSQLite(tmp_path / "ticks.db")
    store = FailoverStore(primary, SpoolStore(tmp_path / "spool"), stall_timeout=0.1)
    await store.open()
    try:
        await store.write(batch(1))
        primary.gate.clear()
        async with asyncio.timeout(2):
            assert await store.health() is False
            assert await store.last_seqs() == {"AAA": 50, "BBB": 50}  # acknowledged here
    finally:
        primary.gate.set()
        await store.aclose()


def test_stall_error_is_a_timeout_classified_as_a_lost_database() -> None:
    """StoreStallError names the store, operation and bound; it is a TimeoutError."""
    exc = StoreStallError("postgres", "write", 0.5)
    assert isinstance(exc, TimeoutError)
    assert exc.error_type is ErrorType.DATABASE_CONNECTION_LOST
    assert "postgres" in str(exc)
    assert "stall_timeout=0.5" in str(exc)


# ------------------------------------------------------------------ a real PostgreSQL, frozen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def throwaway_postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL server of this test's own (run as ``postgres``): its DSN and data directory."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    runuser = shutil.which("runuser")
    if not found or runuser is None or os.geteuid() != 0:
        pytest.fail("needs root, runuser(1) and PostgreSQL's initdb under /usr/lib/postgresql")
    bindir = found[-1].parent
    user = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="failover-stall-pg-"))
    os.chown(base, user.pw_uid, user.pw_gid)
    data, port = base / "data", _free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(  # noqa: S603
            [runuser, "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60
        )

    try:
        as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-N")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(base / "log")
        as_postgres(
            str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start"
        )
        yield f"host=127.0.0.1 port={port} dbname=postgres user=postgres", data
    finally:
        for proc in _server_processes(data):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
        with contextlib.suppress(subprocess.SubprocessError):
            as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _server_processes(data: Path) -> list[psutil.Process]:
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return []
    postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
    return [postmaster, *postmaster.children(recursive=True)]


def _signal_server(data: Path, sig: signal.Signals) -> None:
    for proc in _server_processes(data):
        proc.send_signal(sig)


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_postgres_frozen_by_sigstop_fails_over_within_the_bound_and_catches_up(
    tmp_path: Path, throwaway_postgres: tuple[str, Path]
) -> None:
    """SIGSTOP the server for 3 s (statement timeout 30 s): writes spool within the bound; after
    SIGCONT everything acknowledged is in PostgreSQL and the pool works."""
    dsn, data = throwaway_postgres
    primary = PostgresTickStore(dsn, timeout=30.0)
    store = FailoverStore(
        primary, SpoolStore(tmp_path / "spool"), stall_timeout=0.5, probe_interval=0.05
    )
    await store.open()
    acked: list[Tick] = []
    try:
        first = 1
        for _ in range(3):
            await store.write(batch(first))
            acked += batch(first)
            first += 50
        assert store.state is FailoverState.PRIMARY

        _signal_server(data, signal.SIGSTOP)
        frozen_at = time.monotonic()
        slowest = 0.0
        try:
            while time.monotonic() - frozen_at < 3.0:
                began = time.monotonic()
                await store.write(batch(first))
                slowest = max(slowest, time.monotonic() - began)
                acked += batch(first)
                first += 50
                await asyncio.sleep(0.05)
            assert state_of(store) is FailoverState.SPOOLING
            assert await store.health() is True
        finally:
            _signal_server(data, signal.SIGCONT)
        assert slowest < 0.5 + 0.5, f"a write took {slowest:.2f}s with stall_timeout=0.5"
        assert store.statistics().stalls >= 1

        async with asyncio.timeout(45):
            await store.wait_for_state(FailoverState.PRIMARY)
        # After the failback the pool serves writes again (no connection left mid-transaction).
        await store.write(batch(first))
        acked += batch(first)
        assert state_of(store) is FailoverState.PRIMARY
        for symbol in ("AAA", "BBB"):
            assert await primary.read(symbol) == [t for t in acked if t.symbol == symbol]
        assert await primary.duplicates() == 0
    finally:
        await store.aclose()
