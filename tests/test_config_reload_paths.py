"""Config reload when the path is not a readable regular file, and overrides named by variable.

Real files: a directory, a symlink loop, a FIFO, a dangling symlink and an unreadable file at
the configuration path. Each is a rejection naming the path and why, never an exception out of
``reload()`` or the polling task; the poller keeps polling and loads a good file put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import ConfigReloader, apply_env_overrides, load_toml_config
from strategylab.testing import FakeClock

pytestmark = pytest.mark.timeout(30)


@dataclasses.dataclass(frozen=True)
class _Config:
    batch_size: int


def _parse(data: dict[str, object]) -> _Config:
    store = data.get("store", {})
    if not isinstance(store, dict):
        raise ConfigurationError("store", store, "must be a table")
    batch = store.get("batch_size", 100)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError("store.batch_size", batch, "must be an int >= 1")
    return _Config(batch_size=batch)


def _write(path: Path, batch_size: int) -> None:
    path.write_text(f"[store]\nbatch_size = {batch_size}\n")
    # A new mtime even within the file system's timestamp granularity.
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def _directory(path: Path) -> None:
    path.mkdir()


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)  # node.toml -> node.toml


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere.toml")


_BAD_PATHS: list[tuple[Callable[[Path], None], str]] = [
    (_directory, "not a regular file (a directory)"),
    (_symlink_loop, "cannot be read (Too many levels of symbolic links)"),
    (_fifo, "not a regular file (a FIFO)"),
    (_dangling, "cannot be read (No such file or directory)"),
]
_IDS = ["directory", "symlink-loop", "fifo", "dangling-symlink"]


@pytest.mark.parametrize(("plant", "reason"), _BAD_PATHS, ids=_IDS)
def test_load_toml_config_names_the_path_and_why(
    tmp_path: Path, plant: Callable[[Path], None], reason: str
) -> None:
    """Whatever sits at the path, the error is a ConfigurationError naming it and why."""
    path = tmp_path / "node.toml"
    plant(path)
    with pytest.raises(ConfigurationError) as info:
        load_toml_config(path, environ={})
    assert f"{path}: {reason}" in str(info.value)


@pytest.mark.parametrize(("plant", "reason"), _BAD_PATHS, ids=_IDS)
async def test_reload_rejects_a_bad_path_and_keeps_the_config(
    tmp_path: Path, plant: Callable[[Path], None], reason: str
) -> None:
    """reload() answers False with the path and why; the last good configuration stays."""
    path = tmp_path / "node.toml"
    _write(path, 200)
    reloader = ConfigReloader(path, _parse, environ={}, clock=FakeClock(autojump_threshold=None))
    good = reloader.load()
    _remove(path)
    plant(path)
    assert await reloader.reload() is False
    status = reloader.status()
    assert status.last_error is not None
    assert f"{path}: {reason}" in status.last_error
    assert (status.version, status.rejections) == (1, 1)
    assert reloader.current is good


@contextlib.contextmanager
def _unprivileged() -> Iterator[None]:
    """As root, act as ``nobody`` (effective uid) for the block, so that a file's mode is
    enforced; as anyone else, nothing changes."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


async def test_a_file_it_may_not_read_is_a_rejection(tmp_path: Path) -> None:
    """A permission refused is a rejection naming the path, not a PermissionError (run as root,
    the reload runs with the effective uid of ``nobody``, which the mode then applies to)."""
    path = tmp_path / "node.toml"
    _write(path, 200)
    reloader = ConfigReloader(path, _parse, environ={}, clock=FakeClock(autojump_threshold=None))
    good = reloader.load()
    path.chmod(0)
    try:
        with _unprivileged():
            assert await reloader.reload() is False
    finally:
        path.chmod(0o600)
    assert f"{path}: cannot be read (Permission denied)" in (reloader.status().last_error or "")
    assert reloader.current is good


async def _settle() -> None:
    for _ in range(20):  # let the poller reach its next sleep
        await asyncio.sleep(0)


@pytest.mark.parametrize(("plant", "reason"), _BAD_PATHS, ids=_IDS)
async def test_the_poller_survives_a_bad_path_and_loads_a_good_file_put_back(
    tmp_path: Path, plant: Callable[[Path], None], reason: str
) -> None:
    """The poll sees the bad path, rejects it naming the path, keeps polling, and loads a good
    file put back at its next look: no SIGHUP, no reload() call needed."""
    path = tmp_path / "node.toml"
    _write(path, 200)
    clock = FakeClock(autojump_threshold=None)
    changes: list[_Config] = []
    reloader = ConfigReloader(path, _parse, environ={}, clock=clock, on_change=changes.append)
    await reloader.start()
    try:
        _remove(path)
        plant(path)
        await _settle()
        clock.advance(1.0)
        status = await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
        assert f"{path}: {reason}" in (status.last_error or "")
        _remove(path)
        _write(path, 700)
        await _settle()
        clock.advance(1.0)
        status = await asyncio.wait_for(reloader.wait_for_attempt(3), timeout=10)
        assert status.last_error is None
        assert status.version == 2
        assert reloader.current.batch_size == 700
        assert changes == [reloader.current]
    finally:
        await reloader.stop()


async def test_an_unforeseen_failure_does_not_end_the_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A parser raising what no rejection foresaw is logged and counted; polling goes on."""
    path = tmp_path / "node.toml"
    _write(path, 200)
    failures: list[Exception] = []

    def parse(data: dict[str, object]) -> _Config:
        if failures:
            raise failures.pop()
        return _parse(data)

    clock = FakeClock(autojump_threshold=None)
    reloader = ConfigReloader(path, parse, environ={}, clock=clock)
    await reloader.start()
    try:
        failures.append(RuntimeError("parser bug"))
        _write(path, 300)
        await _settle()
        with caplog.at_level(logging.ERROR, logger="strategylab.fault_tolerance._reload"):
            clock.advance(1.0)
            status = await asyncio.wait_for(reloader.wait_for_attempt(2), timeout=10)
        assert "RuntimeError: parser bug" in (status.last_error or "")
        assert status.rejections == 1
        assert "polling goes on" in caplog.text
        _write(path, 400)
        await _settle()
        clock.advance(1.0)
        status = await asyncio.wait_for(reloader.wait_for_attempt(3), timeout=10)
        assert reloader.current.batch_size == 400
    finally:
        await reloader.stop()


# ---------------------------------------------------------------------- overrides by variable


def test_a_table_only_an_override_created_is_named_by_its_variable() -> None:
    """An unknown table from the environment maps to the variable that created it."""
    _, sources = apply_env_overrides(
        {"store": {"batch_size": 1}},
        {"APP_BOGUS__X": "1", "APP_BOGUS__Y": "2", "APP_STORE__BATCH_SIZE": "5"},
        prefix="APP_",
    )
    assert sources == {
        "bogus": "APP_BOGUS__X",
        "bogus.x": "APP_BOGUS__X",
        "bogus.y": "APP_BOGUS__Y",
        "store.batch_size": "APP_STORE__BATCH_SIZE",
    }  # "store" is the file's table: no variable for it


@pytest.mark.parametrize("bare_keys", [False, True])
def test_a_variable_without_a_key_is_skipped_or_a_top_level_key(*, bare_keys: bool) -> None:
    """Without ``__``: skipped by default (STRATEGYLAB_ADMIN_TOKEN); a top-level key named by
    its variable with ``bare_keys``."""
    merged, sources = apply_env_overrides(
        {"store": {"batch_size": 1}}, {"APP_STORE": "1"}, prefix="APP_", bare_keys=bare_keys
    )
    if bare_keys:
        assert merged == {"store": 1}
        assert sources == {"store": "APP_STORE"}
    else:
        assert merged == {"store": {"batch_size": 1}}
        assert sources == {}


async def test_a_rejection_caused_by_a_bare_variable_names_it(tmp_path: Path) -> None:
    """With ``bare_env_keys`` the reloader's rejection names the variable, not the file."""
    path = tmp_path / "node.toml"
    _write(path, 200)
    environ: dict[str, str] = {}
    reloader = ConfigReloader(
        path,
        _parse,
        env_prefix="APP_",
        environ=environ,
        bare_env_keys=True,
        clock=FakeClock(autojump_threshold=None),
    )
    reloader.load()
    environ["APP_STORE"] = "1"
    assert await reloader.reload() is False
    error = reloader.status().last_error or ""
    assert error.startswith("environment APP_STORE: store=1: must be a table"), error
