"""Secrets never on a command line: real exchange, node, trader and demo processes.

Each child's ``/proc/PID/cmdline`` (readable by every local user) is read while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from exchange_client import WsClient

pytestmark = pytest.mark.integration

KEY = "6b65792d66726f6d2d612d66696c65"  # hex: "key-from-a-file"
TOKEN = "token-from-a-file-9c1d"  # noqa: S105 - a test token
FAULT = {"kind": "api_errors", "duration": 60.0, "rate": 1.0}


def _private(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _env_without_secrets() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STRATEGYLAB_SIGNING_KEY", None)
    env.pop("STRATEGYLAB_ADMIN_TOKEN", None)
    return env


async def _exchange(tmp_path: Path, *extra: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "exchange", "--port", "0", "--symbols", "X"),
        *("--tick-rate", "500", "--data-dir", str(tmp_path / "ex"), *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _check_exchange(proc: asyncio.subprocess.Process) -> str:
    """Frames verify with KEY, /admin/* takes TOKEN only; returns the process's output."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            port = json.loads(await proc.stdout.readline())["port"]
        assert KEY not in _cmdline(proc.pid)
        assert TOKEN not in _cmdline(proc.pid)
        client = await WsClient.connect(f"ws://127.0.0.1:{port}/ws", key=bytes.fromhex(KEY))
        await client.subscribe(from_seq={"X": 1})
        kinds = set()
        async with asyncio.timeout(10):
            while "ticks" not in kinds:
                kind, _ = await client.next()  # raises if the HMAC does not verify
                kinds.add(kind)
        await client.close()
        url = f"http://127.0.0.1:{port}/admin/faults"
        async with aiohttp.ClientSession() as http:
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(url, json=FAULT, headers=bearer) as response:
                assert response.status == 201
            wrong = {"Authorization": "Bearer not-the-token"}
            async with http.post(url, json=FAULT, headers=wrong) as response:
                assert response.status in {401, 403}
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
    assert proc.returncode == 0
    return (out + err).decode()


@pytest.mark.timeout(60)
async def test_exchange_takes_key_and_token_from_private_files(tmp_path: Path) -> None:
    """--signing-key-file and --admin-token-file work end to end and are never printed."""
    key_file = _private(tmp_path / "signing.key", KEY)
    token_file = _private(tmp_path / "admin.token", TOKEN)
    proc = await _exchange(
        tmp_path,
        *("--signing-key-file", str(key_file), "--admin-token-file", str(token_file)),
        env=_env_without_secrets(),
    )
    output = await _check_exchange(proc)
    assert KEY not in output
    assert TOKEN not in output
    assert ": warning:" not in output  # no "visible in the process list" warning


@pytest.mark.timeout(60)
async def test_exchange_takes_key_and_token_from_the_environment(tmp_path: Path) -> None:
    """STRATEGYLAB_SIGNING_KEY and STRATEGYLAB_ADMIN_TOKEN work with nothing on the command line."""
    env = _env_without_secrets() | {
        "STRATEGYLAB_SIGNING_KEY": KEY,
        "STRATEGYLAB_ADMIN_TOKEN": TOKEN,
    }
    output = await _check_exchange(await _exchange(tmp_path, env=env))
    assert KEY not in output
    assert TOKEN not in output


@pytest.mark.timeout(60)
async def test_old_options_still_work_with_one_warning_naming_no_value(tmp_path: Path) -> None:
    """--signing-key/--admin-token still start the exchange; stderr warns, never echoes them."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "exchange", "--port", "0", "--symbols", "X"),
        *("--tick-rate", "500", "--data-dir", str(tmp_path / "ex")),
        *("--signing-key", KEY, "--admin-token", TOKEN),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env_without_secrets(),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        assert json.loads(await proc.stdout.readline())["event"] == "listening"
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    text = err.decode()
    assert "--signing-key is visible" in text
    assert "--admin-token is visible" in text
    assert KEY not in text
    assert TOKEN not in text


COMMANDS = {
    "exchange": ["exchange", "--port", "0", "--data-dir", "{tmp}/ex"],
    "node": ["node", "--exchange-url", "ws://127.0.0.1:9/ws", "--data-dir", "{tmp}/n",
             "--symbols", "X"],
    "trade": ["trade", "--exchange-url", "http://127.0.0.1:9", "--book", "{tmp}/book.db",
              "--strategy", "a=strategylab.strategy._builtin:MovingAverageCrossover",
              "--symbols", "X"],
}  # fmt: skip
BAD = {
    "missing": (["--signing-key-file", "{tmp}/nope.key"], "--signing-key-file", "no such file"),
    "empty": (["--signing-key-file", "{tmp}/empty.key"], "--signing-key-file", "is empty"),
    "world-readable": (["--signing-key-file", "{tmp}/open.key"], "--signing-key-file", "0644"),
    "both": (
        ["--signing-key", KEY, "--signing-key-file", "{tmp}/good.key"],
        "--signing-key-file",
        "contradicts --signing-key",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_secret_input_exits_2_with_one_line(tmp_path: Path, command: str, bad: str) -> None:
    """A missing, empty or readable-by-others key file, or both options: one line, exit 2."""
    _private(tmp_path / "empty.key", "")
    _private(tmp_path / "good.key", KEY)
    (tmp_path / "open.key").write_text(KEY)
    (tmp_path / "open.key").chmod(0o644)
    options, option, reason = BAD[bad]
    argv = [a.format(tmp=tmp_path) for a in [*COMMANDS[command], *options]]
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", *argv],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env=_env_without_secrets(),
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "warning" not in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"strategylab {command}: error: {option}=")
    assert reason in errors[0]
    assert "Traceback" not in result.stderr
    assert KEY not in result.stderr + result.stdout


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


@pytest.mark.timeout(180)
def test_demo_children_get_secrets_from_private_files_never_argv(tmp_path: Path) -> None:
    """While the demo runs, no child's /proc/PID/cmdline holds the key or the token; the files
    that carry them are 0600 and removed at the end; no output or log holds them."""
    data = tmp_path / "demo"
    with (tmp_path / "out.txt").open("w") as out:
        demo = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "strategylab",
                "demo",
                "--data-dir",
                str(data),
                "--ticks",
                "10000",
                "--tick-rate",
                "5000",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_env_without_secrets() | {"COLUMNS": "200"},
        )
        try:
            seen: dict[int, str] = {}
            deadline = time.monotonic() + 60

            def execed() -> bool:  # a child read between fork and exec shows the demo's argv
                return len(seen) == 3 and all(c.split()[3] != "demo" for c in seen.values())

            while not execed() and time.monotonic() < deadline and demo.poll() is None:
                for child in _children(demo.pid):
                    with contextlib.suppress(OSError):
                        cmdline = _cmdline(child)
                        # A child caught between fork and exec, or exiting, shows a short or
                        # empty command line: keep only complete ones.
                        if len(cmdline.split()) > 3:
                            seen[child] = cmdline
                time.sleep(0.1)  # polling /proc for children that appear; no state to inject
            key = (data / "signing.key").read_text().strip()
            token = (data / "admin.token").read_text().strip()
            assert (data / "signing.key").stat().st_mode & 0o777 == 0o600
            assert (data / "admin.token").stat().st_mode & 0o777 == 0o600
            assert len(seen) == 3, seen
            assert {c.split()[3] for c in seen.values()} == {"exchange", "node", "trade"}
            for cmdline in seen.values():
                assert key not in cmdline
                assert token not in cmdline
                assert "--signing-key-file" in cmdline
            assert demo.wait(timeout=150) == 0
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    assert not (data / "signing.key").exists()
    assert not (data / "admin.token").exists()
    logs = sorted(data.glob("*.log"))
    assert logs, "the demo writes its children's logs"
    assert {log.name: log.stat().st_mode & 0o777 for log in logs} == dict.fromkeys(
        (log.name for log in logs), 0o600
    )  # private: they were 0644
    for log in [tmp_path / "out.txt", *logs]:
        text = log.read_text(errors="replace")
        assert key not in text, log
        assert token not in text, log
