"""The node's configuration file: tables to NodeConfig, env overrides, reload and rejection."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import MAX_CONFIG_BYTES
from strategylab.node._config import NodeConfig
from strategylab.node._settings import (
    RELOADABLE_KEYS,
    RESTART_KEYS,
    NodeReloader,
    load_node_config,
)
from strategylab.testing import FakeClock

_DEFAULT = {f.name: f.default for f in dataclasses.fields(NodeConfig)}

_GOOD = """\
[node]
node_name = "east-1"
drain_timeout = 2.5

[feed]
exchange_url = "ws://127.0.0.1:9001/ws"
symbols = ["BTC-USD", "ETH-USD"]
connect_timeout = 4.0

[ingest]
batch_size = 5000
max_queue = 50000

[status]
status_interval = 0.5

[degradation]
memory_budget = "512MiB"
"""


def _write(path: Path, text: str | bytes) -> None:
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    # A new mtime even within the file system's timestamp granularity.
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def _base(path: Path, **changes: object) -> NodeConfig:
    config = NodeConfig(
        exchange_url="ws://127.0.0.1:9001/ws",
        symbols=("BTC-USD", "ETH-USD"),
        data_dir=path.parent,
        config_file=path,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    return path


class Applied:
    """The configurations a reloader applied, in order."""

    def __init__(self) -> None:
        self.configs: list[NodeConfig] = []

    async def __call__(self, config: NodeConfig) -> None:
        self.configs.append(config)


async def _started(
    conf: Path, *, environ: dict[str, str] | None = None, explicit: frozenset[str] = frozenset()
) -> tuple[NodeReloader, Applied, FakeClock]:
    env = {} if environ is None else environ
    config = load_node_config(_base(conf), environ=env, explicit=explicit)
    applied = Applied()
    clock = FakeClock(1000.0, autojump_threshold=None)
    reloader = NodeReloader(
        config, applied, clock=clock, poll_interval=1.0, explicit=explicit, environ=env
    )
    await reloader.start()
    return reloader, applied, clock


# ---------------------------------------------------------------------- load_node_config


def test_tables_map_to_node_config_fields(conf: Path) -> None:
    """Every table's keys land in the NodeConfig fields of the same names; sizes take units."""
    config = load_node_config(_base(conf), environ={})
    assert config.node_name == "east-1"
    assert config.drain_timeout == 2.5
    assert config.connect_timeout == 4.0
    assert (config.batch_size, config.max_queue) == (5000, 50000)
    assert config.status_interval == 0.5
    assert config.memory_budget == 512 * 1024 * 1024
    assert config.linger == _DEFAULT["linger"]  # not in the file: the default stays


def test_without_a_file_the_base_is_returned(tmp_path: Path) -> None:
    """No config_file: nothing is read, the base comes back as it was."""
    base = _base(tmp_path / "x.toml", config_file=None)
    assert load_node_config(base, environ={"STRATEGYLAB_NODE_INGEST__BATCH_SIZE": "7"}) is base


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("[ingest]\nbatch_size = 0\n", "ingest.batch_size", "0"),
        ('[ingest]\nbatch_size = "many"\n', "ingest.batch_size", "'many'"),
        ("[ingest]\nbatchsize = 10\n", "ingest.batchsize", "10"),
        ("[feed]\nbatch_size = 10\n", "feed.batch_size", "10"),
        ('[feed]\nexchange_url = "http://x:1"\n', "feed.exchange_url", "'http://x:1'"),
        ("[feed]\nsymbols = []\n", "feed.symbols", "[]"),
        ("[status]\nstatus_port = 70000\n", "status.status_port", "70000"),
        ("[ingest]\nlinger = -1\n", "ingest.linger", "-1"),
        ("[ingest]\nspool = 1\n", "ingest.spool", "1"),
        ('[degradation]\nmemory_budget = "lots"\n', "degradation.memory_budget", "'lots'"),
        ("[feed]\nbackoff_floor = 3.0\nbackoff_cap = 1.0\n", "feed.backoff_cap", "1.0"),
        ("[mystery]\nx = 1\n", "mystery", "{'x': 1}"),
        ("batch_size = 10\n", "batch_size", "10"),
    ],
)
def test_bad_key_or_value_names_both(tmp_path: Path, text: str, key: str, value: str) -> None:
    """An unknown key, a wrong type or a bad value: the error names the key and the value."""
    path = tmp_path / "node.toml"
    _write(path, text)
    with pytest.raises(ConfigurationError) as info:
        load_node_config(_base(path), environ={})
    assert info.value.key == key
    assert f"{key}={value}" in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    """A syntax error names the file, the line and the column."""
    path = tmp_path / "node.toml"
    _write(path, "[ingest]\nbatch_size = = 3\n")
    with pytest.raises(ConfigurationError, match=r"invalid TOML.*line 2"):
        load_node_config(_base(path), environ={})


def test_secrets_are_refused_and_not_echoed(tmp_path: Path) -> None:
    """A secret in the file is refused; its value does not appear in the error."""
    path = tmp_path / "node.toml"
    _write(path, '[status]\nadmin_token = "hunter2-secret"\n')
    with pytest.raises(ConfigurationError) as info:
        load_node_config(_base(path), environ={})
    assert info.value.key == "status.admin_token"
    assert "hunter2" not in str(info.value)


def test_environment_beats_the_file(conf: Path) -> None:
    """STRATEGYLAB_NODE_INGEST__BATCH_SIZE overrides [ingest] batch_size."""
    env = {"STRATEGYLAB_NODE_INGEST__BATCH_SIZE": "300", "STRATEGYLAB_ADMIN_TOKEN": "x"}
    config = load_node_config(_base(conf), environ=env)
    assert config.batch_size == 300
    assert config.max_queue == 50000  # the file's value for the key not overridden


def test_command_line_beats_environment_and_file(conf: Path) -> None:
    """A field the user gave on the command line is overridden by neither."""
    base = _base(conf, batch_size=77, connect_timeout=9.0)
    env = {"STRATEGYLAB_NODE_INGEST__BATCH_SIZE": "300"}
    config = load_node_config(base, environ=env, explicit=frozenset({"batch_size"}))
    assert config.batch_size == 77
    assert config.connect_timeout == 4.0  # given by default, not by the user: the file wins


def test_bad_environment_value_names_the_variable(conf: Path) -> None:
    """A bad override is reported with the key, the value and the variable that set it."""
    env = {"STRATEGYLAB_NODE_INGEST__MAX_QUEUE": "-5"}
    with pytest.raises(ConfigurationError) as info:
        load_node_config(_base(conf), environ=env)
    assert info.value.key == "ingest.max_queue"
    assert "ingest.max_queue=-5" in str(info.value)
    assert "STRATEGYLAB_NODE_INGEST__MAX_QUEUE" in str(info.value)


def test_explicit_must_name_fields(conf: Path) -> None:
    """A typo in ``explicit`` is a programming error named at once."""
    with pytest.raises(ConfigurationError, match="batchsize"):
        load_node_config(_base(conf), environ={}, explicit=frozenset({"batchsize"}))


def test_the_documented_example_loads_and_every_key_is_documented(tmp_path: Path) -> None:
    """docs/node-config.md's example file is valid, and its table lists every key."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "node-config.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "node.toml"
    _write(path, example)
    config = load_node_config(_base(path), environ={})
    assert config.node_name == "east-1"
    assert config.memory_budget == 1 << 30
    for key in RELOADABLE_KEYS + RESTART_KEYS:
        table, name = key.split(".")
        variable = f"STRATEGYLAB_NODE_{table.upper()}__{name.upper()}"
        assert f"| `{key}` |" in doc
        assert variable in doc


def test_reloadable_and_restart_keys_partition_the_file() -> None:
    """Each key is either reloadable or needs a restart; the lists name real tables."""
    assert not set(RELOADABLE_KEYS) & set(RESTART_KEYS)
    assert "ingest.batch_size" in RELOADABLE_KEYS
    assert "feed.exchange_url" in RESTART_KEYS
    assert {key.split(".")[0] for key in RELOADABLE_KEYS + RESTART_KEYS} == {
        "node",
        "feed",
        "ingest",
        "status",
        "degradation",
    }


# ---------------------------------------------------------------------- NodeReloader


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[ingest]\nbatch_size = = 3\n", "line 2"),
        ("[ingest]\nbatch_sise = 10\n", "ingest.batch_sise=10"),
        ("[ingest]\nbatch_size = -4\n", "ingest.batch_size=-4"),
        ("[node]\nshutdown_deadline = true\n", "node.shutdown_deadline=True"),
    ],
)
async def test_bad_file_is_rejected_and_the_last_good_stays(
    conf: Path, text: str, needle: str
) -> None:
    """A bad edit is rejected with its key and value; the node keeps its config; no apply."""
    reloader, applied, _ = await _started(conf)
    try:
        good = reloader.current
        _write(conf, text)
        result = await reloader.reload()
        assert result["ok"] is False
        assert needle in result["error"]
        assert result["changed"] == []
        assert reloader.current is good
        assert applied.configs == []
        assert reloader.status()["last_error"] == result["error"]
        assert reloader.status()["rejections"] == 1
    finally:
        await reloader.aclose()


async def test_a_change_is_applied_when_the_poller_sees_it(conf: Path) -> None:
    """Editing the file is noticed at the next poll on the clock and applied."""
    reloader, applied, clock = await _started(conf)
    try:
        assert reloader.status()["version"] == 1
        _write(conf, _GOOD.replace("batch_size = 5000", "batch_size = 8000"))
        for _ in range(10):  # let the poller reach its sleep
            await asyncio.sleep(0)
        assert applied.configs == []
        clock.advance(1.0)
        status = await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
        assert status["version"] == 2
        assert reloader.current.batch_size == 8000
        assert applied.configs == [reloader.current]
        assert status["last_changed"] == ["ingest.batch_size"]
    finally:
        await reloader.aclose()


async def test_sighup_reloads_and_aclose_removes_the_handler(conf: Path) -> None:
    """A real SIGHUP to this process reloads the file; aclose removes the handler."""
    reloader, applied, _ = await _started(conf)
    try:
        assert reloader.status()["sighup"] is True
        _write(conf, _GOOD.replace("linger", "x").replace("max_queue = 50000", "linger = 0.5"))
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
        assert reloader.current.linger == 0.5
        assert reloader.current.max_queue == _DEFAULT["max_queue"]  # removed: the default
        assert len(applied.configs) == 1
    finally:
        await reloader.aclose()
    assert asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP) is False


async def test_restart_only_key_is_rejected(conf: Path) -> None:
    """Changing a key that needs a restart is refused by name; nothing is applied."""
    reloader, applied, _ = await _started(conf)
    try:
        _write(
            conf,
            _GOOD.replace("9001", "9002").replace("batch_size = 5000", "batch_size = 6000"),
        )
        result = await reloader.reload()
        assert result["ok"] is False
        assert "feed.exchange_url='ws://127.0.0.1:9002/ws'" in result["error"]
        assert "needs a restart" in result["error"]
        assert reloader.current.batch_size == 5000  # the reloadable part is not half-applied
        assert applied.configs == []
    finally:
        await reloader.aclose()


async def test_deleted_and_oversized_files_are_rejected(conf: Path) -> None:
    """A deleted file, then one over the size bound: each rejected, the node keeps going."""
    reloader, _, _ = await _started(conf)
    try:
        good = reloader.current
        conf.unlink()  # noqa: ASYNC240 - a test's one file operation
        gone = await reloader.reload()
        assert gone["ok"] is False
        assert "cannot be read" in gone["error"]
        _write(conf, b"#" * (MAX_CONFIG_BYTES + 1))
        big = await reloader.reload()
        assert big["ok"] is False
        assert "bytes" in big["error"]
        assert reloader.current is good
        _write(conf, _GOOD.replace("status_interval = 0.5", "status_interval = 0.25"))
        back = await reloader.reload()
        assert back == {
            "ok": True,
            "version": 2,
            "error": None,
            "changed": ["status.status_interval"],
        }
    finally:
        await reloader.aclose()


async def test_explicit_fields_survive_a_reload(conf: Path) -> None:
    """A field from the command line keeps its value when the file changes it."""
    reloader, applied, _ = await _started(conf, explicit=frozenset({"batch_size"}))
    try:
        assert reloader.current.batch_size == _DEFAULT["batch_size"]
        _write(conf, _GOOD.replace("batch_size = 5000", "batch_size = 9").replace("2.5", "3.5"))
        result = await reloader.reload()
        assert result["ok"] is True
        assert result["changed"] == ["node.drain_timeout"]
        assert reloader.current.batch_size == _DEFAULT["batch_size"]
        assert applied.configs[-1].drain_timeout == 3.5
    finally:
        await reloader.aclose()


async def test_environment_override_is_read_at_each_reload(conf: Path) -> None:
    """An override beats the file on reload too; the error of a bad one names the variable."""
    env = {"STRATEGYLAB_NODE_INGEST__BATCH_SIZE": "300"}
    reloader, _, _ = await _started(conf, environ=env)
    try:
        assert reloader.current.batch_size == 300
        env["STRATEGYLAB_NODE_INGEST__BATCH_SIZE"] = "0"
        result = await reloader.reload()
        assert result["ok"] is False
        assert "STRATEGYLAB_NODE_INGEST__BATCH_SIZE" in result["error"]
        assert "ingest.batch_size=0" in result["error"]
        assert reloader.current.batch_size == 300
    finally:
        await reloader.aclose()


async def test_a_failing_apply_rejects_the_change(conf: Path) -> None:
    """When the node cannot apply a configuration it is not put in force."""
    config = load_node_config(_base(conf), environ={})

    async def refuse(_new: NodeConfig) -> None:
        raise RuntimeError("queue cannot shrink now")

    reloader = NodeReloader(config, refuse, clock=FakeClock(autojump_threshold=None), environ={})
    await reloader.start()
    try:
        _write(conf, _GOOD.replace("batch_size = 5000", "batch_size = 6000"))
        result = await reloader.reload()
        assert result["ok"] is False
        assert "queue cannot shrink now" in result["error"]
        assert reloader.current.batch_size == 5000
    finally:
        await reloader.aclose()


def test_a_reloader_needs_a_file(tmp_path: Path) -> None:
    """Without a config_file there is nothing to reload: a ConfigurationError says so."""

    async def apply(_new: NodeConfig) -> None:
        return None

    with pytest.raises(ConfigurationError, match="config_file"):
        NodeReloader(_base(tmp_path / "x.toml", config_file=None), apply)


async def test_a_file_gone_bad_before_start_keeps_the_given_config(conf: Path) -> None:
    """start() with a file broken since the node loaded it: logged, the given config stays."""
    config = load_node_config(_base(conf), environ={})
    applied = Applied()
    reloader = NodeReloader(config, applied, clock=FakeClock(autojump_threshold=None), environ={})
    _write(conf, "[ingest]\nmax_queue = 0\n")
    await reloader.start()
    try:
        assert reloader.current is config
        assert "ingest.max_queue=0" in (reloader.status()["last_error"] or "")
        assert reloader.status()["version"] == 0
        _write(conf, _GOOD.replace("max_queue = 50000", "max_queue = 60000"))
        result = await reloader.reload()
        assert result["ok"] is True
        assert result["changed"] == ["ingest.max_queue"]
        assert [c.max_queue for c in applied.configs] == [60000]
    finally:
        await reloader.aclose()
