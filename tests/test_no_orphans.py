"""No orphans: whatever ends `strategylab demo` (SIGTERM, SIGINT, SIGKILL), its children end too.

Each test starts the real command, waits until its exchange, node and trader run and the exchange
listens, signals the demo, and then requires, within a bounded wait, that every child is gone and
the exchange's port refuses connections. SIGKILL runs no clean-up code at all: only the kernel's
parent-death signal (Linux) or the watchdog (elsewhere; forced here with STRATEGYLAB_CHILD_GUARD)
can stop the children then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups"),
]

CHILDREN = {"exchange", "node", "trade"}
START_TIMEOUT = 60.0
GONE_TIMEOUT = 20.0
POLL = 0.1  # polling the process table for processes that appear or go; nothing to inject


@dataclass
class _Demo:
    process: subprocess.Popen[bytes]
    output: Path
    children: dict[str, psutil.Process]
    port: int | None = None

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def _command(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        argv = process.cmdline()
        if "strategylab._children" in argv:
            return "watchdog"
        if len(argv) > 3 and argv[1:3] == ["-m", "strategylab"]:
            return argv[3]
    return "?"


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an exited child whose new parent has not reaped it yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _listening_port(process: psutil.Process) -> int | None:
    with contextlib.suppress(psutil.Error):
        for conn in process.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                return int(conn.laddr.port)
    return None


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


@contextlib.contextmanager
def _demo(
    tmp_path: Path, command: list[str], expected: set[str], guard: str = "auto", ready: str = ""
) -> Iterator[_Demo]:
    """The real demo, running until ``expected`` children exist (and the exchange listens) and
    its output holds ``ready``."""
    output = tmp_path / "out.txt"
    env = os.environ | {"COLUMNS": "120", "STRATEGYLAB_CHILD_GUARD": guard}
    with output.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "strategylab", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    demo = _Demo(process=process, output=output, children={})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(process.pid).children():
                    demo.children.setdefault(_command(child), child)
            exchange = demo.children.get("exchange")
            demo.port = _listening_port(exchange) if exchange is not None else None
            if (
                expected <= set(demo.children)
                and ("exchange" not in expected or demo.port)
                and ready in demo.text()
            ):
                break
            time.sleep(POLL)
        assert expected <= set(demo.children), (demo.children, demo.text())
        assert ready in demo.text(), demo.text()
        yield demo
    finally:
        # Whatever the test found, leave nothing behind: the demo, then anything it started.
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=30)
        for child in demo.children.values():
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil checks the creation time: never a reused PID


def _wait_all_gone(demo: _Demo) -> list[str]:
    """Names of the children still alive after GONE_TIMEOUT (empty when all are gone)."""
    deadline = time.monotonic() + GONE_TIMEOUT
    while time.monotonic() < deadline:
        alive = [name for name, p in demo.children.items() if _alive(p)]
        if not alive and (demo.port is None or _refused(demo.port)):
            return []
        time.sleep(POLL)
    return [name for name, p in demo.children.items() if _alive(p)]


DEMO = ["demo", "--ticks", "10000", "--tick-rate", "1000"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("sig", "guard"),
    [
        pytest.param(signal.SIGTERM, "auto", id="SIGTERM"),
        pytest.param(signal.SIGKILL, "auto", id="SIGKILL"),
        pytest.param(signal.SIGINT, "auto", id="SIGINT"),
        pytest.param(signal.SIGKILL, "watchdog", id="SIGKILL-watchdog"),
        pytest.param(signal.SIGTERM, "watchdog", id="SIGTERM-watchdog"),
    ],
)
def test_no_child_of_the_demo_survives_it(tmp_path: Path, sig: signal.Signals, guard: str) -> None:
    """Signal the demo once its children run: every child (and the watchdog) is gone within
    the bound, and the exchange's port no longer listens."""
    expected = CHILDREN | ({"watchdog"} if guard == "watchdog" else set())
    command = [*DEMO, "--data-dir", str(tmp_path / "data")]
    # Signalled once every child is ready (the demo says "started:"), so that each one has its
    # own SIGTERM handler installed and the order of the stop is what the test sees.
    with _demo(tmp_path, command, expected, guard, ready="started:") as demo:
        assert demo.port is not None
        assert not _refused(demo.port)  # listening before the signal
        os.kill(demo.process.pid, sig)
        code = demo.process.wait(timeout=GONE_TIMEOUT)
        assert _wait_all_gone(demo) == [], demo.text()
        assert _refused(demo.port)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    text = demo.text()
    assert code == 128 + sig, text
    assert f"interrupted by {sig.name} while " in text
    # In order: the trader, then the node, then the exchange it reads from.
    assert "stopped, in this order: trader (exit 0), node (exit 0), exchange (exit 0)" in text
    assert "strategylab check " in text  # how to check what was stored
    assert "Traceback" not in text


@pytest.mark.timeout(120)
def test_a_second_signal_kills_the_children_at_once(tmp_path: Path) -> None:
    """Two SIGTERMs in a row: the orderly stop is cut short, and still nothing survives."""
    command = [*DEMO, "--data-dir", str(tmp_path / "data")]
    with _demo(tmp_path, command, CHILDREN, ready="started:") as demo:
        os.kill(demo.process.pid, signal.SIGTERM)
        os.kill(demo.process.pid, signal.SIGTERM)
        code = demo.process.wait(timeout=GONE_TIMEOUT)
        assert _wait_all_gone(demo) == [], demo.text()
    assert code == 128 + signal.SIGTERM, demo.text()
    assert "Traceback" not in demo.text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_no_quote_service_survives_demo_core(tmp_path: Path, sig: signal.Signals) -> None:
    """`demo-core`'s quote service, too, ends with the demo however it is ended."""
    with _demo(tmp_path, ["demo-core", "--calls", "20000", "--faults", "3"], {"?"}) as demo:
        service = demo.children["?"]
        assert "asyncio.start_server" in " ".join(service.cmdline())
        os.kill(demo.process.pid, sig)
        code = demo.process.wait(timeout=GONE_TIMEOUT)
        assert _wait_all_gone(demo) == [], demo.text()
    assert code == (-sig if sig == signal.SIGKILL else 128 + sig), demo.text()
