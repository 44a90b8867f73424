"""Network, timeout, process, exchange, security and file injectors: each injects a real fault,
the test observes it, heals it, and observes it gone."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from service_support import LabSource, serving
from strategylab.chaos import (
    ApiErrors,
    BadSignatures,
    Bandwidth,
    ConnectionReset,
    CorruptFrames,
    DeadlineTimeout,
    ExchangeFault,
    InvalidTicks,
    KillProcess,
    Latency,
    Partition,
    PauseProcess,
    Proxy,
    ProxyBitFlip,
    Severity,
    Slicer,
    SpoolSegmentDamage,
    SQLitePageDamage,
    UnauthorisedAdminCalls,
    process_state,
)
from strategylab.chaos._injector import InjectorError, injected
from strategylab.errors import ConfigurationError
from strategylab.market import SpoolStore, Tick
from strategylab.testing import FakeClock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

TOKEN = "chaos-lab-admin-token-for-tests"  # noqa: S105 - a test token


# ---------------------------------------------------------------------------- network


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    """A proxy in front of a real asyncio echo server."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Proxy("echo", upstream=f"127.0.0.1:{port}") as running:
        yield running


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(proxy: Proxy) -> Conn:
    return await asyncio.open_connection("127.0.0.1", proxy.listen_port)


async def _round_trip(conn: Conn, data: bytes = b"ping!") -> tuple[bytes, float]:
    reader, writer = conn
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    echoed = await reader.readexactly(len(data))
    return echoed, time.monotonic() - started


async def _close(conn: Conn) -> None:
    conn[1].close()
    with contextlib.suppress(ConnectionError):
        await conn[1].wait_closed()


async def test_latency_adds_delay_both_ways_until_healed(proxy: Proxy) -> None:
    """Latency of 150 ms each way makes a round trip take >= 300 ms; healed, it is fast again."""
    conn = await _connect(proxy)
    await _round_trip(conn)
    fault = Latency(proxy, latency=150, jitter=0)
    await fault.inject()
    assert {t.name for t in proxy.toxics} == {
        "network.latency-upstream",
        "network.latency-downstream",
    }
    echoed, slow = await _round_trip(conn)
    await fault.heal()
    _, fast = await _round_trip(conn)
    await _close(conn)
    assert echoed == b"ping!"
    assert slow >= 0.29
    assert fast < 0.15
    assert proxy.toxics == ()


async def test_partition_makes_reads_time_out_then_work(proxy: Proxy) -> None:
    """Under a blackhole partition nothing comes back; after heal the same connection echoes."""
    conn = await _connect(proxy)
    await _round_trip(conn)
    async with injected(Partition(proxy)):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await _round_trip(conn, b"lost")
    echoed, _ = await _round_trip(conn, b"after")
    await _close(conn)
    assert echoed == b"after"
    assert proxy.toxics == ()


async def test_injected_heals_a_partition_when_the_body_raises(proxy: Proxy) -> None:
    """``injected`` removes the toxics even when the scenario fails inside the fault."""
    seen: list[int] = []

    async def scenario() -> None:
        async with injected(Partition(proxy)):
            seen.append(len(proxy.toxics))
            raise RuntimeError("scenario broke")

    with pytest.raises(RuntimeError, match="scenario broke"):
        await scenario()
    assert seen == [2]
    assert proxy.toxics == ()


async def test_connection_reset_closes_a_live_connection(proxy: Proxy) -> None:
    """A reset fault kills an open connection at its next data; healed, new ones work."""
    conn = await _connect(proxy)
    await _round_trip(conn)
    async with injected(ConnectionReset(proxy, timeout=0)):
        reader, writer = conn
        writer.write(b"doomed")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(5):
                await reader.readexactly(6)
    await _close(conn)
    fresh = await _connect(proxy)
    echoed, _ = await _round_trip(fresh)
    await _close(fresh)
    assert echoed == b"ping!"


async def test_deadline_timeout_answers_after_the_client_deadline(proxy: Proxy) -> None:
    """A 0.2 s deadline is missed while the fault is on (answers 0.3 s late) and met after."""
    fault = DeadlineTimeout(proxy, deadline=0.2)
    assert fault.latency == 300
    async with injected(fault):
        conn = await _connect(proxy)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await _round_trip(conn)
        await _close(conn)
    conn = await _connect(proxy)
    async with asyncio.timeout(0.2):
        echoed, _ = await _round_trip(conn)
    await _close(conn)
    assert echoed == b"ping!"


async def test_bandwidth_slows_a_transfer_until_healed(proxy: Proxy) -> None:
    """At 20 KB/s, 8000 bytes take >= 0.3 s to come back; healed, they are quick."""
    conn = await _connect(proxy)
    payload = bytes(8000)
    async with injected(Bandwidth(proxy, rate=20, streams=["downstream"])):
        _, slow = await _round_trip(conn, payload)
    _, fast = await _round_trip(conn, payload)
    await _close(conn)
    assert slow >= 0.3
    assert fast < 0.2


async def test_slicer_delivers_data_in_pieces(proxy: Proxy) -> None:
    """Sliced into 4-byte pieces 5 ms apart, 64 bytes arrive in several reads, intact."""
    conn = await _connect(proxy)
    reader, writer = conn
    data = bytes(range(64))
    async with injected(
        Slicer(proxy, average_size=4, size_variation=0, delay=5000, streams=["downstream"])
    ):
        writer.write(data)
        chunks: list[bytes] = []
        while sum(map(len, chunks)) < len(data):
            chunks.append(await reader.read(1024))
    await _close(conn)
    assert b"".join(chunks) == data
    assert len(chunks) > 1
    assert max(map(len, chunks)) < len(data)
    assert proxy.toxics == ()


async def test_bit_flip_changes_bytes_on_the_wire_until_healed(proxy: Proxy) -> None:
    """At rate 1 every byte comes back with exactly one bit flipped; healed, bytes are intact."""
    conn = await _connect(proxy)
    data = b"integrity matters"
    async with injected(ProxyBitFlip(proxy, rate=1.0)):
        flipped, _ = await _round_trip(conn, data)
    intact, _ = await _round_trip(conn, data)
    await _close(conn)
    assert all((a ^ b).bit_count() == 1 for a, b in zip(flipped, data, strict=True))
    assert intact == data


def test_network_sizes_scale_with_severity(proxy: Proxy) -> None:
    """The documented medium figures, scaled by the severity."""
    assert Latency(proxy).attributes() == {"latency": 250, "jitter": 25}
    assert Latency(proxy, severity=Severity.CRITICAL).attributes() == {"latency": 500, "jitter": 50}
    assert Bandwidth(proxy, severity=Severity.LOW).rate == 128
    assert DeadlineTimeout(proxy, deadline=1.0, severity=Severity.CRITICAL).latency == 2000
    assert ProxyBitFlip(proxy, severity=Severity.HIGH).rate == pytest.approx(1.5e-5)


def test_network_bad_arguments_name_the_value(proxy: Proxy) -> None:
    """Bad arguments raise ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="latency"):
        Latency(proxy, latency=-1)
    with pytest.raises(ConfigurationError, match="streams"):
        Partition(proxy, streams=["sideways"])
    with pytest.raises(ConfigurationError, match="deadline"):
        DeadlineTimeout(proxy, deadline=0)
    with pytest.raises(ConfigurationError, match="proxy"):
        Partition("not a proxy")  # type: ignore[arg-type]


async def test_a_toxic_name_taken_is_an_injector_error(proxy: Proxy) -> None:
    """Two injectors of the same name on one proxy: the second fails and adds nothing."""
    first = Partition(proxy)
    await first.inject()
    with pytest.raises(InjectorError, match=r"network\.partition"):
        await Partition(proxy).inject()
    held = [t.name for t in proxy.toxics]
    await first.heal()
    assert held == ["network.partition-upstream", "network.partition-downstream"]
    assert proxy.toxics == ()


# ---------------------------------------------------------------------------- process


@pytest.fixture
async def sleeper() -> AsyncIterator[asyncio.subprocess.Process]:
    """A real ``sleep`` child, killed at the end if still there."""
    proc = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_kill_process_kills_a_child_and_records_its_exit(
    sleeper: asyncio.subprocess.Process,
) -> None:
    """SIGKILL ends the child; heal records it gone with return code -9."""
    fault = KillProcess(lambda: sleeper.pid, exit_status=sleeper.wait)
    await fault.inject()
    await fault.heal()
    assert fault.exit is not None
    assert fault.exit.gone
    assert fault.exit.returncode == -signal.SIGKILL
    assert sleeper.returncode == -signal.SIGKILL
    assert fault.describe()["exit"]["signal"] == "SIGKILL"


async def test_kill_process_kills_a_process_that_is_not_our_child() -> None:
    """A grandchild (a shell's ``sleep``) is killed and seen gone through its pidfd."""
    shell = await asyncio.create_subprocess_exec(
        "sh", "-c", "sleep 60 & echo $!; wait", stdout=asyncio.subprocess.PIPE
    )
    assert shell.stdout is not None
    try:
        pid = int(await shell.stdout.readline())
        fault = KillProcess(lambda: pid)
        async with injected(fault):
            pass
        assert fault.exit is not None
        assert fault.exit.gone
        assert fault.exit.returncode is None  # only the parent can read it
        assert process_state(pid) in (None, "Z")  # ended; its parent may not have reaped it yet
        assert await shell.wait() == 0
    finally:
        if shell.returncode is None:
            shell.kill()
            await shell.wait()


@pytest.mark.parametrize("which", ["self", "parent", "init", "zero", "none"])
async def test_kill_process_refuses_dangerous_targets(which: str) -> None:
    """pid <= 1, the lab itself, its parent and a missing pid are refused, nothing sent."""
    pid = {"self": os.getpid(), "parent": os.getppid(), "init": 1, "zero": 0, "none": None}[which]
    fault = KillProcess(lambda: pid)
    with pytest.raises(InjectorError):
        await fault.inject()
    assert not fault.active


async def test_pause_process_stops_then_continues(sleeper: asyncio.subprocess.Process) -> None:
    """SIGSTOP shows as state T in /proc; heal's SIGCONT makes it run again."""
    fault = PauseProcess(lambda: sleeper.pid)
    await fault.inject()
    stopped = process_state(sleeper.pid)
    await fault.heal()
    resumed = process_state(sleeper.pid)
    assert stopped == "T"
    assert resumed not in ("T", "t", None)


async def test_pause_process_is_continued_when_the_scenario_fails(
    sleeper: asyncio.subprocess.Process,
) -> None:
    """An exception inside ``injected`` still sends SIGCONT."""
    states: list[str | None] = []

    async def scenario() -> None:
        async with injected(PauseProcess(lambda: sleeper.pid)):
            states.append(process_state(sleeper.pid))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await scenario()
    assert states == ["T"]
    assert process_state(sleeper.pid) not in ("T", "t")


def test_kill_process_bad_signal_is_a_configuration_error() -> None:
    """A signal number that does not exist is refused, naming it."""
    with pytest.raises(ConfigurationError, match="signal"):
        KillProcess(lambda: 42, signal=999)


# ---------------------------------------------------------------------------- exchange


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[str]:
    """A real exchange process with an admin token; its base URL."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "exchange", "--port", "0", "--symbols", "A"),
        *("--tick-rate", "50", "--data-dir", str(tmp_path / "ex")),
        *("--admin-token-file", str(token_file)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(15):
            announce = json.loads(await proc.stdout.readline())
        yield f"http://127.0.0.1:{announce['port']}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _kinds(faults: list[dict[str, Any]]) -> set[str]:
    return {str(f["kind"]) for f in faults}


@pytest.mark.parametrize(
    "make",
    [
        lambda url: CorruptFrames(url, TOKEN),
        lambda url: InvalidTicks(url, TOKEN, severity=Severity.HIGH),
        lambda url: BadSignatures(url, TOKEN, rate=0.2),
        lambda url: ApiErrors(url, TOKEN, status=429, phase="after"),
    ],
    ids=["corrupt_frames", "invalid_ticks", "bad_signatures", "api_errors"],
)
async def test_exchange_fault_is_listed_then_cleared(
    exchange: str, make: Callable[[str], ExchangeFault]
) -> None:
    """The exchange lists the fault (its rate, status, phase) while on and not after heal."""
    fault = make(exchange)
    await fault.inject()
    during = await fault.active_faults()
    await fault.heal()
    after = await fault.active_faults()
    listed = next(f for f in during if f["kind"] == fault.fault_kind)
    assert listed["rate"] == pytest.approx(fault.rate)
    for key in ("status", "phase"):
        if key in fault.body():
            assert listed[key] == fault.body()[key]
    assert fault.fault_kind not in _kinds(after)


async def test_api_errors_refuse_requests_until_healed(exchange: str) -> None:
    """At rate 1 the order API answers 503; healed, it answers 200 again."""
    fault = ApiErrors(exchange, TOKEN, status=503, rate=1.0)
    async with aiohttp.ClientSession() as http:

        async def status() -> int:
            async with http.get(f"{exchange}/api/status") as response:
                return response.status

        assert await status() == 200
        async with injected(fault):
            during = await status()
        assert during == 503
        assert await status() == 200


async def test_exchange_fault_with_a_wrong_token_is_an_injector_error(exchange: str) -> None:
    """A refused admin call raises InjectorError with the status; nothing is switched on."""
    fault = CorruptFrames(exchange, "not-the-token")
    with pytest.raises(InjectorError, match="401"):
        await fault.inject()
    assert not fault.active
    assert _kinds(await CorruptFrames(exchange, TOKEN).active_faults()) == set()


def test_exchange_rates_scale_with_severity() -> None:
    """5 % of frames and 50 % of requests at medium, scaled and capped at 100 %."""
    url = "http://127.0.0.1:1"
    assert CorruptFrames(url, TOKEN).rate == pytest.approx(0.05)
    assert CorruptFrames(url, TOKEN, severity=Severity.CRITICAL).rate == pytest.approx(0.1)
    assert ApiErrors(url, TOKEN, severity=Severity.CRITICAL).rate == 1.0
    with pytest.raises(ConfigurationError, match="status"):
        ApiErrors(url, TOKEN, status=404)
    with pytest.raises(ConfigurationError, match="url"):
        CorruptFrames("ftp://x", TOKEN)


# ---------------------------------------------------------------------------- security


async def test_unauthorised_admin_calls_are_refused_and_change_nothing(tmp_path: Path) -> None:
    """Every call without a valid token is refused (401/429) and /status is unchanged."""
    clock = FakeClock(autojump_threshold=None)
    source = LabSource(clock, tmp_path / "audit.log")
    try:
        async with serving(source, clock=clock, admin_token=TOKEN) as service:
            fault = UnauthorisedAdminCalls(service.url, calls=16, interval=0)
            await fault.inject()
            async with asyncio.timeout(10):
                await fault.wait_fired()
            await fault.heal()
    finally:
        source.close()
    report = fault.report
    assert report.calls == 16
    assert set(report.answers) <= {401, 429}
    assert sum(report.answers.values()) == 16
    assert report.accepted == []
    assert report.changed == {}
    assert report.held
    assert source.kills == []
    assert source.reloads == 0


async def test_unauthorised_admin_calls_report_a_service_that_lets_them_through() -> None:
    """Against a service that obeys anyone, the accepted calls and the change are reported."""
    state: dict[str, Any] = {"kill_switch": None}

    async def kill(_request: web.Request) -> web.Response:
        state["kill_switch"] = {"reason": "anyone"}
        return web.json_response({"ok": True}, status=202)

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(state)

    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response({"error": "no"}, status=401)

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/admin/kill", kill)
    app.router.add_post("/admin/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        fault = UnauthorisedAdminCalls(f"http://127.0.0.1:{port}", calls=4, interval=0)
        await fault.inject()
        async with asyncio.timeout(10):
            await fault.wait_fired()
        await fault.heal()
    finally:
        await runner.cleanup()
    assert fault.report.accepted == ["POST /admin/kill: 202"]
    assert fault.report.changed == {"kill_switch": [None, {"reason": "anyone"}]}
    assert not fault.report.held


# ---------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _integrity(path: Path) -> str:
    try:
        with sqlite3.connect(path) as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return f"error: {exc}"
    finally:
        db.close()
    return "; ".join(str(r[0]) for r in rows)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """An SQLite database of a few dozen pages."""
    path = tmp_path / "ticks.db"
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE ticks (symbol TEXT, seq INTEGER, payload TEXT)")
        db.executemany(
            "INSERT INTO ticks VALUES (?, ?, ?)", [("A", i, "x" * 100) for i in range(2000)]
        )
    db.close()
    return path


async def test_sqlite_page_damage_corrupts_then_heal_restores(database: Path) -> None:
    """The damaged file fails SQLite's integrity check; heal restores it byte for byte."""
    before = _sha256(database)
    fault = SQLitePageDamage(database, restore=True)
    await fault.inject()
    damaged_sha, damaged_check = _sha256(database), _integrity(database)
    await fault.heal()
    assert damaged_sha != before
    assert damaged_check != "ok"
    assert fault.damaged_page is not None
    assert fault.damaged_page >= 2
    assert _sha256(database) == before
    assert fault.sha256["healed"] == before
    assert _integrity(database) == "ok"


async def test_sqlite_page_damage_stays_without_restore(database: Path) -> None:
    """By default heal leaves the damage for the system to find."""
    before = _sha256(database)
    fault = SQLitePageDamage(database)
    async with injected(fault):
        pass
    assert not fault.restored
    assert _sha256(database) != before


async def test_sqlite_page_damage_refuses_a_running_owner(
    database: Path, sleeper: asyncio.subprocess.Process
) -> None:
    """A running owner is refused (nothing written); a paused one is not."""
    before = _sha256(database)
    with pytest.raises(InjectorError, match="running"):
        await SQLitePageDamage(database, owner=lambda: sleeper.pid).inject()
    assert _sha256(database) == before
    async with injected(PauseProcess(lambda: sleeper.pid)):
        fault = SQLitePageDamage(database, owner=lambda: sleeper.pid, restore=True)
        async with injected(fault):
            assert _sha256(database) != before
    assert _sha256(database) == before


async def test_sqlite_page_damage_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    """A file without SQLite's header is an InjectorError naming it."""
    path = tmp_path / "plain.txt"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(InjectorError, match="not an SQLite database"):
        await SQLitePageDamage(path).inject()


async def _spool_with_batches(directory: Path) -> None:
    spool = SpoolStore(directory)
    await spool.open()
    for batch in range(3):
        await spool.write(
            [
                Tick("A", batch * 10 + i, 1_700_000_000_000_000_000 + i, 1.0, 1.1, 1.0, 1.0)
                for i in range(1, 11)
            ]
        )
    await spool.aclose()


async def _spool_corruptions(directory: Path) -> int:
    spool = SpoolStore(directory)
    await spool.open()
    try:
        return len(spool.corruptions())
    finally:
        await spool.aclose()


async def test_spool_segment_damage_is_detected_by_the_spool(tmp_path: Path) -> None:
    """A damaged record in a segment is reported as corruption when the spool opens."""
    directory = tmp_path / "spool"
    await _spool_with_batches(directory)
    fault = SpoolSegmentDamage(directory)
    async with injected(fault):
        pass
    assert fault.sha256["damaged"] != fault.sha256["before"]
    assert await _spool_corruptions(directory) == 1


async def test_spool_segment_damage_restored_leaves_nothing_to_find(tmp_path: Path) -> None:
    """With restore, heal puts the bytes back and the spool opens clean."""
    directory = tmp_path / "spool"
    await _spool_with_batches(directory)
    fault = SpoolSegmentDamage(directory, restore=True)
    async with injected(fault):
        assert fault.target is not None
        assert _sha256(fault.target) == fault.sha256["damaged"]
    assert fault.sha256["healed"] == fault.sha256["before"]
    assert await _spool_corruptions(directory) == 0


async def test_spool_segment_damage_without_segments_is_an_injector_error(
    tmp_path: Path,
) -> None:
    """An empty spool directory has nothing to damage."""
    with pytest.raises(InjectorError, match="no spool segment"):
        await SpoolSegmentDamage(tmp_path).inject()
