"""``strategylab node``'s operations options: --status-port, --status-host, the admin token,
--config, --memory-budget and --name, turned into a :class:`NodeConfig`.

The option-to-config tests run the real command line (typer) and stop at the seam where the
node process would start (``strategylab.node.run_node_process``, replaced by a recorder); the
last test runs a real node process with its status service and drives it with
``strategylab status`` and ``strategylab kill``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import strategylab.node
from strategylab._node_cli import _PARAM_FIELDS, node_command, parse_memory_size
from strategylab.cli import app
from strategylab.errors import ConfigurationError
from strategylab.node import NodeConfig

TOKEN = "node-cli-ops-token-0123456789"  # noqa: S105 - a test token


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[NodeConfig]:
    """The configs the node would have been started with (the process is not started)."""
    configs: list[NodeConfig] = []

    def record(config: NodeConfig, **_: Any) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(strategylab.node, "run_node_process", record)
    for name in list(os.environ):
        if name.startswith("STRATEGYLAB_"):
            monkeypatch.delenv(name)
    return configs


def run_node(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    """``strategylab node`` with the required options and ``extra``, in this process."""
    argv = [
        "node",
        *("--exchange-url", f"ws://127.0.0.1:{_closed_port()}/ws"),
        *("--data-dir", str(tmp_path / "node"), "--symbols", "A"),
        *extra,
    ]
    return CliRunner().invoke(app, argv, env=env)


def test_without_status_options_there_is_no_status_service(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    """No --status-port: no status service, no admin token, the default name and host."""
    result = run_node(tmp_path)
    assert result.exit_code == 0, result.output
    (config,) = started
    assert config.status_port is None
    assert config.status_host == "127.0.0.1"
    assert config.admin_token is None
    assert config.memory_budget is None
    assert config.config_file is None
    assert config.node_name == "node"


def test_operations_options_reach_the_config(tmp_path: Path, started: list[NodeConfig]) -> None:
    """Each option sets its NodeConfig field; the token is read from its 0600 file."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    result = run_node(
        tmp_path,
        *("--status-port", "0", "--status-host", "::1"),
        *("--admin-token-file", str(token_file)),
        *("--memory-budget", "512M", "--name", "edge-1"),
    )
    assert result.exit_code == 0, result.output
    (config,) = started
    assert config.status_port == 0
    assert config.status_host == "::1"
    assert config.admin_token == TOKEN
    assert config.memory_budget == 512 * 1024 * 1024
    assert config.node_name == "edge-1"


def test_the_admin_token_comes_from_the_environment(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    """``$STRATEGYLAB_ADMIN_TOKEN`` sets the admin token when no file is given."""
    result = run_node(tmp_path, "--status-port", "0", env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert started[0].admin_token == TOKEN


def test_there_is_no_admin_token_value_option(tmp_path: Path, started: list[NodeConfig]) -> None:
    """``--admin-token VALUE`` is refused (it would be visible in ``ps``); nothing starts."""
    result = run_node(tmp_path, "--admin-token", TOKEN)
    assert result.exit_code == 2
    assert "--admin-token" in result.output
    assert started == []


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("4096", 4096),
        ("64K", 64 * 1024),
        ("64k", 64 * 1024),
        ("512M", 512 * 1024**2),
        ("512MiB", 512 * 1024**2),
        ("2G", 2 * 1024**3),
        ("2gb", 2 * 1000**3),  # kB..TB are decimal (SI), as in the configuration file
        ("512MB", 512 * 1000**2),
        ("1T", 1024**4),
        ("1024T", 1 << 50),  # the bound itself, 1 PiB
    ],
)
def test_memory_sizes_are_bytes_with_their_units(text: str, size: int) -> None:
    """``--memory-budget`` reads bytes: K/M/G/T and KiB..TiB as powers of 1024, kB..TB as
    powers of 1000 (the configuration file's rule), case-insensitive."""
    assert parse_memory_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        *("", "0", "0M", "-5", "1.5G", "12X", "M", "5 MB MB", "1e9"),
        *("1025T", str((1 << 50) + 1), "99999999999999999999999G", "9" * 5000),
    ],
)
def test_bad_memory_sizes_name_the_flag(text: str) -> None:
    """A size that is not a whole number of bytes from 1 to 1 PiB is refused naming
    --memory-budget."""
    with pytest.raises(ConfigurationError, match="--memory-budget"):
        parse_memory_size(text)


def test_every_node_option_names_real_config_fields() -> None:
    """Every option of ``strategylab node`` (but --log-level) maps to NodeConfig fields, so the
    explicit set handed to the config-file loader names only real fields."""
    fields = {f.name for f in dataclasses.fields(NodeConfig)}
    params = set(inspect.signature(node_command).parameters) - {"ctx", "log_level"}
    assert params == set(_PARAM_FIELDS)
    for names in _PARAM_FIELDS.values():
        assert set(names) <= fields


def test_the_config_file_applies_where_the_command_line_is_silent(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    """A --config file sets what the command line did not; what it did set wins."""
    config_file = tmp_path / "node.toml"
    config_file.write_text("[ingest]\nbatch_size = 1234\nmax_queue = 5678\n")
    result = run_node(tmp_path, "--config", str(config_file), "--max-queue", "9999")
    assert result.exit_code == 0, result.output
    (config,) = started
    assert config.config_file == config_file.absolute()
    assert config.batch_size == 1234
    assert config.max_queue == 9999


def test_a_bad_config_file_is_a_usage_error_naming_key_and_value(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    """A bad value in the --config file: exit 2, one line naming the key and the value."""
    config_file = tmp_path / "node.toml"
    config_file.write_text("[ingest]\nbatch_size = -7\n")
    result = run_node(tmp_path, "--config", str(config_file))
    assert result.exit_code == 2
    assert "batch_size" in result.output
    assert "-7" in result.output
    assert started == []


def _next_event(process: subprocess.Popen[str], event: str, deadline: float) -> dict[str, Any]:
    """The next JSON line of ``process`` whose ``event`` is ``event`` (before ``deadline``)."""
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            break
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("event") == event:
            return document
    pytest.fail(f"no {event!r} line from the node")


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A real node (its exchange unreachable) serving its status on a free port, and its ready
    line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            *("-m", "strategylab", "node"),
            *("--exchange-url", f"ws://127.0.0.1:{_closed_port()}/ws"),
            *("--data-dir", str(tmp_path / "node"), "--symbols", "A"),
            *("--status-port", "0", "--name", "cli-ops"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**env, "STRATEGYLAB_ADMIN_TOKEN": TOKEN},
    )
    try:
        ready = _next_event(process, "ready", time.monotonic() + 20)
        yield process, ready
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, "COLUMNS": "200", **(env or {})},
        check=False,
    )


@pytest.mark.timeout(60)
def test_a_real_node_answers_status_and_obeys_kill(
    node_process: tuple[subprocess.Popen[str], dict[str, Any]],
) -> None:
    """A node started with --status-port 0 prints its status URL; ``status`` shows it by name,
    and ``kill`` with its token pulls its kill switch: the node exits non-zero."""
    process, ready = node_process
    url = ready["status_url"]
    assert url.startswith("http://127.0.0.1:")
    shown = _cli("status", "--url", url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["node"] == "cli-ops"
    tables = _cli("status", "--url", url)
    assert tables.returncode == 0, tables.stderr
    assert "cli-ops" in tables.stdout
    refused = _cli("kill", "--url", url, "--reason", "x", env={"STRATEGYLAB_ADMIN_TOKEN": "no"})
    assert refused.returncode == 1
    assert "token refused" in refused.stderr
    assert process.poll() is None
    killed = _cli(
        "kill", "--url", url, "--reason", "cli drill", env={"STRATEGYLAB_ADMIN_TOKEN": TOKEN}
    )
    assert killed.returncode == 0, killed.stderr
    assert json.loads(killed.stdout)["ok"] is True
    assert process.wait(timeout=20) != 0
