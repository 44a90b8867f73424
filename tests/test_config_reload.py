"""Config reload: TOML plus environment overrides; a bad file keeps the last good config."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance._component import Reloadable
from strategylab.fault_tolerance._reload import (
    ConfigReloader,
    apply_env_overrides,
    load_toml_config,
)
from strategylab.testing import FakeClock


@dataclasses.dataclass(frozen=True)
class _Config:
    batch_size: int
    url: str
    debug: bool


def _parse(data: dict[str, object]) -> _Config:
    store = data.get("store", {})
    feed = data.get("feed", {})
    assert isinstance(store, dict)
    assert isinstance(feed, dict)
    batch = store.get("batch_size", 100)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
        raise ConfigurationError("store.batch_size", batch, "must be an int within 1..10000")
    url = feed.get("url", "ws://127.0.0.1:1")
    if not isinstance(url, str) or not url.startswith("ws"):
        raise ConfigurationError("feed.url", url, "must be a ws:// or wss:// URL")
    debug = data.get("debug", False)
    if not isinstance(debug, bool):
        raise ConfigurationError("debug", debug, "must be true or false")
    return _Config(batch_size=batch, url=url, debug=debug)


_GOOD = '[store]\nbatch_size = 200\n\n[feed]\nurl = "ws://a:1"\n'


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    # A new mtime even within the file system's timestamp granularity.
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def _reloader(
    path: Path,
    *,
    environ: dict[str, str] | None = None,
    clock: FakeClock | None = None,
    changes: list[_Config] | None = None,
) -> ConfigReloader[_Config]:
    return ConfigReloader(
        path,
        _parse,
        environ={} if environ is None else environ,
        clock=FakeClock(1000.0) if clock is None else clock,
        on_change=None if changes is None else changes.append,
    )


def test_load_reads_the_file(tmp_path: Path) -> None:
    """The first load puts the file's configuration in force, version 1."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    reloader = _reloader(path)
    config = reloader.load()
    assert config == _Config(batch_size=200, url="ws://a:1", debug=False)
    assert reloader.current is config
    status = reloader.status()
    assert status.version == 1
    assert status.last_error is None
    assert status.last_reload == 1000.0


def test_bad_first_load_names_key_and_value(tmp_path: Path) -> None:
    """A bad value at start is a ConfigurationError naming the file, key and value."""
    path = tmp_path / "node.toml"
    _write(path, "[store]\nbatch_size = 0\n")
    with pytest.raises(ConfigurationError, match=r"store\.batch_size=0: must be an int"):
        _reloader(path).load()


async def test_bad_value_keeps_the_last_good_config(tmp_path: Path) -> None:
    """A reload with a bad value is rejected, names the key and value, and changes nothing."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    changes: list[_Config] = []
    reloader = _reloader(path, changes=changes)
    good = reloader.load()
    _write(path, "[store]\nbatch_size = -5\n")
    assert await reloader.reload() is False
    assert reloader.current is good
    status = reloader.status()
    assert status.version == 1
    assert status.rejections == 1
    assert status.last_error is not None
    assert "store.batch_size=-5" in status.last_error
    assert str(path) in status.last_error
    assert changes == []


async def test_bad_toml_names_the_line_and_keeps_config(tmp_path: Path) -> None:
    """Broken TOML is rejected naming the file and the line; the old config stays in force."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    reloader = _reloader(path)
    good = reloader.load()
    _write(path, '[store]\nbatch_size = 200\nurl = "unterminated\n')
    assert await reloader.reload() is False
    error = reloader.status().last_error or ""
    assert "invalid TOML" in error
    assert "line 3" in error
    assert reloader.current is good
    assert await reloader.health() is True


async def test_good_reload_calls_on_change_and_bumps_version(tmp_path: Path) -> None:
    """A valid new file is put in force, on_change gets it, and the version goes up."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    changes: list[_Config] = []
    reloader = _reloader(path, changes=changes)
    reloader.load()
    _write(path, "[store]\nbatch_size = 300\n")
    assert await reloader.reload() is True
    assert reloader.current.batch_size == 300
    assert changes == [reloader.current]
    assert reloader.status().version == 2
    assert await reloader.reload() is True  # unchanged: no new version, no on_change
    assert reloader.status().version == 2
    assert len(changes) == 1


async def test_on_change_failure_rejects_the_new_config(tmp_path: Path) -> None:
    """When applying the new config fails, it is not put in force."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)

    def refuse(config: _Config) -> None:
        raise RuntimeError("pool cannot shrink now")

    reloader = ConfigReloader(path, _parse, environ={}, clock=FakeClock(), on_change=refuse)
    good = reloader.load()
    _write(path, "[store]\nbatch_size = 5\n")
    assert await reloader.reload() is False
    assert reloader.current is good
    assert "pool cannot shrink now" in (reloader.status().last_error or "")


def test_env_override_parsed_as_toml(tmp_path: Path) -> None:
    """STRATEGYLAB_SECTION__KEY overrides the file, values read as TOML or as plain strings."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    environ = {
        "STRATEGYLAB_STORE__BATCH_SIZE": "750",
        "STRATEGYLAB_FEED__URL": "wss://b:2/feed",
        "STRATEGYLAB_ADMIN_TOKEN": "not-an-override",
        "OTHER_STORE__BATCH_SIZE": "1",
    }
    config = _reloader(path, environ=environ).load()
    assert config == _Config(batch_size=750, url="wss://b:2/feed", debug=False)


def test_bad_env_override_names_the_variable(tmp_path: Path) -> None:
    """A bad value from the environment names the variable, not the file."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    reloader = _reloader(path, environ={"STRATEGYLAB_STORE__BATCH_SIZE": "true"})
    with pytest.raises(ConfigurationError, match="environment STRATEGYLAB_STORE__BATCH_SIZE"):
        reloader.load()


def test_override_under_a_scalar_is_refused() -> None:
    """An override below a key that is not a table names the variable and the key."""
    with pytest.raises(ConfigurationError, match=r"STRATEGYLAB_DEBUG__X.*debug is not a table"):
        apply_env_overrides({"debug": True}, {"STRATEGYLAB_DEBUG__X": "1"})


def test_override_value_cannot_inject_keys() -> None:
    """A value with a newline stays one string; it cannot add keys of its own."""
    merged, _ = apply_env_overrides({}, {"STRATEGYLAB_FEED__URL": '"x"\nevil = 1'})
    assert merged == {"feed": {"url": '"x"\nevil = 1'}}


def test_load_toml_config_refuses_a_fifo(tmp_path: Path) -> None:
    """A FIFO at the config path is refused at once (never blocks on open)."""
    path = tmp_path / "node.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        load_toml_config(path, environ={})


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing config file is a one-line error naming it."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigurationError, match=r"absent\.toml: cannot be read"):
        _reloader(path).load()


async def test_reloader_is_a_reloadable_component(tmp_path: Path) -> None:
    """The reloader fits the CACHE_CLEAR_RELOAD capability protocol."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    assert isinstance(_reloader(path), Reloadable)


async def test_file_change_is_seen_by_polling_on_the_clock(tmp_path: Path) -> None:
    """The poller notices a changed file at its next interval on the fake clock."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    clock = FakeClock(autojump_threshold=None)
    changes: list[_Config] = []
    reloader = _reloader(path, clock=clock, changes=changes)
    await reloader.start()
    try:
        _write(path, "[store]\nbatch_size = 400\n")
        for _ in range(10):  # let the poller reach its sleep
            await asyncio.sleep(0)
        assert changes == []
        clock.advance(1.0)
        status = await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
        assert status.version == 2
        assert reloader.current.batch_size == 400
        assert changes == [reloader.current]
    finally:
        await reloader.stop()


async def test_sighup_reloads(tmp_path: Path) -> None:
    """A real SIGHUP to this process reloads the file through the loop's signal handler."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    reloader = _reloader(path)
    reloader.load()
    reloader.install_sighup()
    try:
        _write(path, "[store]\nbatch_size = 900\n")
        os.kill(os.getpid(), signal.SIGHUP)
        status = await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
        assert status.version == 2
        assert reloader.current.batch_size == 900
    finally:
        await reloader.stop()
    # stop() removed the handler: there is none left for the loop to remove.
    assert asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP) is False


async def test_sighup_with_a_bad_file_keeps_the_config(tmp_path: Path) -> None:
    """SIGHUP after a bad edit is rejected and the node keeps its last good configuration."""
    path = tmp_path / "node.toml"
    _write(path, _GOOD)
    reloader = _reloader(path)
    good = reloader.load()
    reloader.install_sighup()
    try:
        _write(path, '[feed]\nurl = "http://wrong"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        status = await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
    finally:
        await reloader.stop()
    assert status.version == 1
    assert "feed.url='http://wrong'" in (status.last_error or "")
    assert reloader.current is good
