"""The node's settings after the operations review: one set of checks for the command line, the
file and the environment; variables named as such; a path that is no file is a rejection.

- ``node_name``, ``status_host`` and ``memory_budget`` are checked by :class:`NodeConfig`, the
  one place the command line, the file and the environment all go through;
- a ``STRATEGYLAB_NODE_*`` variable that is unknown, misplaced or names a table without a key is
  an error naming the variable;
- a directory (or a FIFO, a symlink loop) at the configuration path is a rejection naming it:
  the poll goes on, and ``POST /admin/reload`` answers 422 with the reason, never 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from typer.testing import CliRunner

import strategylab.node
from service_support import LabSource, serving
from strategylab.cli import app
from strategylab.errors import ConfigurationError
from strategylab.node import Node, NodeConfig, NodeReloader, load_node_config
from strategylab.node._view import NodeView
from strategylab.service import AdminActionError
from strategylab.testing import FakeClock

pytestmark = pytest.mark.timeout(60)

TOKEN = "node-settings-review-token-0123456789"  # noqa: S105 - a test token
_BAD_NAME = "<img src=x onerror=alert(1)>"
_BAD_HOST = "<img src=x>"


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    # A new mtime even within the file system's timestamp granularity.
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def _base(path: Path, **changes: object) -> NodeConfig:
    config = NodeConfig(
        exchange_url="ws://127.0.0.1:9001/ws",
        symbols=("BTC-USD",),
        data_dir=path.parent,
        config_file=path,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    _write(path, "[ingest]\nbatch_size = 500\n")
    return path


def _to_directory(path: Path) -> None:
    """``rm node.toml; mkdir node.toml``, as the reviewer did."""
    path.unlink()
    path.mkdir()


def _back_to_file(path: Path, text: str) -> None:
    """The directory removed and a good file written in its place."""
    shutil.rmtree(path)
    _write(path, text)


async def _apply(_new: NodeConfig) -> None:
    return None


async def _reloader(
    conf: Path, environ: dict[str, str], clock: FakeClock | None = None
) -> NodeReloader:
    config = load_node_config(_base(conf), environ=environ)
    reloader = NodeReloader(
        config, _apply, clock=clock or FakeClock(autojump_threshold=None), environ=environ
    )
    await reloader.start()
    return reloader


# ---------------------------------------------------------------------- one set of checks


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("node_name", _BAD_NAME, "must be 1..64 of A-Z a-z 0-9 . _ -"),
        ("node_name", "x" * 65, "must be 1..64"),
        ("status_host", _BAD_HOST, "must be an IP address or a host name"),
        ("status_host", "999.1.1.1", "must be an IP address or a host name"),
        ("memory_budget", (1 << 50) + 1, "must be at most 1 PiB"),
    ],
)
def test_node_config_refuses_what_the_command_line_refuses(
    tmp_path: Path, field: str, value: object, reason: str
) -> None:
    """NodeConfig itself checks the name, the host and the budget, naming the field."""
    with pytest.raises(ConfigurationError) as info:
        _base(tmp_path / "n.toml", **{field: value})
    assert info.value.key == field
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node_name", "edge-1.east_2"),
        ("status_host", "::1"),
        ("status_host", "localhost"),
        ("status_host", "status.example.com"),
        ("memory_budget", 1 << 50),
    ],
)
def test_node_config_takes_good_values(tmp_path: Path, field: str, value: object) -> None:
    """The bound is inclusive; names, addresses and host names pass."""
    assert getattr(_base(tmp_path / "n.toml", **{field: value}), field) == value


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        (f'[node]\nnode_name = "{_BAD_NAME}"\n', "node.node_name", _BAD_NAME),
        (f'[status]\nstatus_host = "{_BAD_HOST}"\n', "status.status_host", _BAD_HOST),
        (
            '[degradation]\nmemory_budget = "99999999999999999999999GiB"\n',
            "degradation.memory_budget",
            "99999999999999999999999GiB",
        ),
        ("[degradation]\nmemory_budget = 1125899906842625\n", "degradation.memory_budget", ""),
    ],
)
def test_a_bad_value_in_the_file_names_key_value_and_file(
    tmp_path: Path, text: str, key: str, shown: str
) -> None:
    """The file's name, host and budget meet the same checks, named by the file's key."""
    path = tmp_path / "node.toml"
    _write(path, text)
    with pytest.raises(ConfigurationError) as info:
        load_node_config(_base(path), environ={})
    assert info.value.key == key
    assert shown in str(info.value)
    assert f"(from file {path})" in str(info.value)


def test_the_largest_budget_in_the_file_is_one_pib(tmp_path: Path) -> None:
    """``1024TiB`` is the bound itself: accepted."""
    path = tmp_path / "node.toml"
    _write(path, '[degradation]\nmemory_budget = "1024TiB"\n')
    assert load_node_config(_base(path), environ={}).memory_budget == NodeConfig.MAX_MEMORY_BUDGET


def test_a_bad_host_from_the_environment_names_the_variable(conf: Path) -> None:
    """STRATEGYLAB_NODE_STATUS__STATUS_HOST goes through the --status-host check."""
    env = {"STRATEGYLAB_NODE_STATUS__STATUS_HOST": _BAD_HOST}
    with pytest.raises(ConfigurationError) as info:
        load_node_config(_base(conf), environ=env)
    assert info.value.key == "status.status_host"
    assert "must be an IP address or a host name" in str(info.value)
    assert "environment variable STRATEGYLAB_NODE_STATUS__STATUS_HOST" in str(info.value)


async def test_a_bad_name_on_reload_is_a_rejection(conf: Path) -> None:
    """A bad node_name written into the running node's file is rejected by the same check."""
    reloader = await _reloader(conf, {})
    try:
        good = reloader.current
        _write(conf, f'[node]\nnode_name = "{_BAD_NAME}"\n')
        result = await reloader.reload()
        assert result["ok"] is False
        assert "node.node_name" in result["error"]
        assert "must be 1..64 of A-Z a-z 0-9 . _ -" in result["error"]
        assert reloader.current is good
    finally:
        await reloader.aclose()


# ---------------------------------------------------------------------- variables by name


@pytest.mark.parametrize(
    ("variable", "reason"),
    [
        ("STRATEGYLAB_NODE_BOGUS__X", "unknown table"),
        ("STRATEGYLAB_NODE_INGEST", "is a table, not a value"),
        ("STRATEGYLAB_NODE_BATCH_SIZE", "belongs in [ingest]"),
        ("STRATEGYLAB_NODE_BOGUS", "unknown table"),
        ("STRATEGYLAB_NODE_INGEST__BOGUS", "unknown key"),
    ],
)
def test_an_unknown_or_keyless_variable_is_named(conf: Path, variable: str, reason: str) -> None:
    """A variable the file loader cannot place is an error naming the variable, not the file."""
    with pytest.raises(ConfigurationError) as info:
        load_node_config(_base(conf), environ={variable: "1"})
    message = str(info.value)
    assert reason in message
    assert f"(from environment variable {variable})" in message
    assert "from file" not in message


def test_a_keyless_table_variable_says_how_to_name_a_key(conf: Path) -> None:
    """STRATEGYLAB_NODE_INGEST=1 points at STRATEGYLAB_NODE_INGEST__<KEY>."""
    with pytest.raises(ConfigurationError) as info:
        load_node_config(_base(conf), environ={"STRATEGYLAB_NODE_INGEST": "1"})
    assert "STRATEGYLAB_NODE_INGEST__BATCH_SIZE=" in str(info.value)


def test_other_strategylab_variables_are_not_overrides(conf: Path) -> None:
    """STRATEGYLAB_ variables outside the node's prefix (the secrets) are not its business."""
    env = {"STRATEGYLAB_ADMIN_TOKEN": "x", "STRATEGYLAB_AUDIT_KEY": "y"}
    assert load_node_config(_base(conf), environ=env).batch_size == 500


async def test_a_keyless_variable_on_reload_is_a_rejection_naming_it(conf: Path) -> None:
    """Set after the start, STRATEGYLAB_NODE_INGEST=1 makes the next reload a rejection that
    names the variable; the configuration in force stays."""
    env: dict[str, str] = {}
    reloader = await _reloader(conf, env)
    try:
        env["STRATEGYLAB_NODE_INGEST"] = "1"
        result = await reloader.reload()
        assert result["ok"] is False
        assert result["error"].startswith("environment STRATEGYLAB_NODE_INGEST: "), result
        env.clear()
        env["STRATEGYLAB_NODE_BOGUS__X"] = "1"
        result = await reloader.reload()
        assert result["error"].startswith("environment STRATEGYLAB_NODE_BOGUS__X: "), result
        assert reloader.current.batch_size == 500
    finally:
        await reloader.aclose()


# ---------------------------------------------------------------------- a path that is no file


async def test_a_directory_at_the_path_is_rejected_and_the_poll_goes_on(conf: Path) -> None:
    """rm node.toml; mkdir node.toml: the poll rejects it naming the path and keeps polling;
    the good file put back is applied by the poll."""
    clock = FakeClock(autojump_threshold=None)
    reloader = await _reloader(conf, {}, clock)
    try:
        _to_directory(conf)
        for _ in range(20):
            await asyncio.sleep(0)
        clock.advance(1.0)
        status = await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
        assert f"{conf}: not a regular file (a directory)" in (status["last_error"] or "")
        assert status["polling"] is True
        _back_to_file(conf, "[ingest]\nbatch_size = 800\n")
        for _ in range(20):
            await asyncio.sleep(0)
        clock.advance(1.0)
        status = await asyncio.wait_for(reloader.wait_for_attempt(3), timeout=10)
        assert status["last_error"] is None
        assert reloader.current.batch_size == 800
    finally:
        await reloader.aclose()


class _ReloadingSource(LabSource):
    """The lab's status source whose reload is the node's: a NodeView over a real reloader."""

    view: NodeView

    async def reload_config(self) -> Any:
        return await self.view.reload_config()


class _NodeSeam(SimpleNamespace):
    """The two parts of a node NodeView.reload_config uses: its reloader, and record_admin (the
    audit of admin actions), recorded here."""

    def __init__(self, reloader: NodeReloader) -> None:
        super().__init__(reloader=reloader)
        self.admin: list[tuple[str, str | None, str]] = []

    async def record_admin(
        self, action: str, target: str | None, outcome: str, data: dict[str, Any]
    ) -> None:
        self.admin.append((action, target, outcome))


@pytest.fixture
async def admin(
    conf: Path, tmp_path: Path
) -> AsyncIterator[tuple[str, NodeReloader, aiohttp.ClientSession]]:
    """A real status service whose reload route reaches a real NodeReloader over ``conf``."""
    clock = FakeClock(autojump_threshold=None)
    reloader = await _reloader(conf, {}, clock)
    source = _ReloadingSource(clock, tmp_path / "audit.log")
    # NodeView.reload_config reads the node's reloader and audits through record_admin.
    source.view = NodeView(cast("Node", _NodeSeam(reloader)))
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            serving(source, clock=clock, admin_token=TOKEN) as service,
            aiohttp.ClientSession(timeout=timeout) as http,
        ):
            yield service.url, reloader, http
    finally:
        await reloader.aclose()


async def test_admin_reload_of_a_directory_is_422_with_the_reason(
    conf: Path, admin: tuple[str, NodeReloader, aiohttp.ClientSession]
) -> None:
    """POST /admin/reload with a directory at the path: 422 naming the path, never 500; with
    the good file back: 200 and the change."""
    url, reloader, http = admin
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _to_directory(conf)
    async with http.post(f"{url}/admin/reload", headers=auth) as response:
        body = await response.json()
        assert response.status == 422, body
    assert f"{conf}: not a regular file (a directory)" in body["error"]
    assert "last good one stays in force" in body["error"]
    assert reloader.current.batch_size == 500
    _back_to_file(conf, "[ingest]\nbatch_size = 900\n")
    async with http.post(f"{url}/admin/reload", headers=auth) as response:
        body = await response.json()
        assert response.status == 200, body
    assert body["result"]["changed"] == ["ingest.batch_size"]


async def test_node_view_refuses_a_rejected_file_with_422(conf: Path) -> None:
    """A bad value is an AdminActionError 422 naming key and value."""
    reloader = await _reloader(conf, {})
    try:
        seam = _NodeSeam(reloader)
        view = NodeView(cast("Node", seam))
        _write(conf, "[ingest]\nbatch_size = 0\n")
        with pytest.raises(AdminActionError) as info:
            await view.reload_config()
        assert info.value.status == 422
        assert "ingest.batch_size=0" in info.value.message
        assert seam.admin == [("reload", None, "rejected")]  # audited
    finally:
        await reloader.aclose()


# ---------------------------------------------------------------------- the command line


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


def _node(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    argv = [
        "node",
        *("--exchange-url", f"ws://127.0.0.1:{_closed_port()}/ws"),
        *("--data-dir", str(tmp_path / "node"), "--symbols", "A"),
        *extra,
    ]
    return CliRunner().invoke(app, argv, env=env)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--name", _BAD_NAME), "--name="),
        (("--status-host", _BAD_HOST), "--status-host="),
        (("--memory-budget", "99999999999999999999999G"), "--memory-budget="),
        (("--memory-budget", "1025T"), "must be at most 1024T (1 PiB"),
    ],
)
def test_the_command_line_refuses_with_exit_2(
    tmp_path: Path, started: list[NodeConfig], extra: tuple[str, str], needle: str
) -> None:
    """--name, --status-host and --memory-budget: exit 2, one line naming the flag."""
    result = _node(tmp_path, *extra)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert started == []


@pytest.mark.parametrize(
    ("text", "env", "needles"),
    [
        (
            f'[node]\nnode_name = "{_BAD_NAME}"\n',
            {},
            ("node.node_name=", "must be 1..64", "(from file "),
        ),
        (
            "",
            {"STRATEGYLAB_NODE_STATUS__STATUS_HOST": _BAD_HOST},
            ("status.status_host=", "STRATEGYLAB_NODE_STATUS__STATUS_HOST"),
        ),
        (
            "",
            {"STRATEGYLAB_NODE_INGEST": "1"},
            ("is a table", "(from environment variable STRATEGYLAB_NODE_INGEST)"),
        ),
        (
            "",
            {"STRATEGYLAB_NODE_BOGUS__X": "1"},
            ("unknown table", "(from environment variable STRATEGYLAB_NODE_BOGUS__X)"),
        ),
    ],
)
def test_a_bad_file_or_variable_is_exit_2_at_start(
    tmp_path: Path,
    started: list[NodeConfig],
    text: str,
    env: dict[str, str],
    needles: tuple[str, ...],
) -> None:
    """With --config, a bad name from the file, a bad host from the environment or a variable
    the loader cannot place stops the start with exit 2 naming the key (or the variable)."""
    path = tmp_path / "node.toml"
    path.write_text(text)
    result = _node(tmp_path, "--config", str(path), env=env)
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output
    if env:  # the variable is named, not the file
        assert "from file" not in result.output
    assert started == []


# ---------------------------------------------------------------------- a real node process


def _next_event(process: subprocess.Popen[str], event: str, deadline: float) -> dict[str, Any]:
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


def _http(url: str, *, method: str = "GET", token: str | None = None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our node
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """A real node (its exchange unreachable) run with --config and a status service."""
    conf = tmp_path / "node.toml"
    _write(conf, "[ingest]\nbatch_size = 500\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            *("-m", "strategylab", "node"),
            *("--exchange-url", f"ws://127.0.0.1:{_closed_port()}/ws"),
            *("--data-dir", str(tmp_path / "node"), "--symbols", "A"),
            *("--status-port", "0", "--config", str(conf)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**env, "STRATEGYLAB_ADMIN_TOKEN": TOKEN},
    )
    try:
        ready = _next_event(process, "ready", time.monotonic() + 20)
        yield process, ready["status_url"], conf
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


def _batch_size_becomes(url: str, wanted: int, limit: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        _, status = _http(f"{url}/status")
        if status["ingest"]["batch_size"] == wanted:
            return cast("dict[str, Any]", status)
        time.sleep(0.1)  # polling a real process's HTTP answer
    pytest.fail(f"batch_size never became {wanted}")


def test_a_node_process_outlives_a_directory_at_its_config_path(
    node_process: tuple[subprocess.Popen[str], str, Path],
) -> None:
    """The reviewer's run: rm node.toml; mkdir node.toml. POST /admin/reload is 422 naming
    the path; the node keeps running; the good file put back is applied by the poll (no
    SIGHUP, no reload call)."""
    process, url, conf = node_process
    _to_directory(conf)
    code, body = _http(f"{url}/admin/reload", method="POST", token=TOKEN)
    assert code == 422, body
    assert f"{conf}: not a regular file (a directory)" in body["error"]
    assert process.poll() is None
    _back_to_file(conf, "[ingest]\nbatch_size = 700\n")
    status = _batch_size_becomes(url, 700, limit=15)
    assert status["extra"]["config"]["last_error"] is None
    assert status["extra"]["config"]["polling"] is True
    assert process.poll() is None
