"""Private files and quoted SQLite URIs: the helpers, the store and the real backtest command."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from strategylab._files import (
    UnsafePathError,
    make_private_dir,
    open_private,
    refuse_symlinks,
    sqlite_uri,
)
from strategylab.market import SQLiteTickStore, Tick

SYMBOL = "BTC-USD"


def _ticks(n: int) -> list[Tick]:
    base = 1_700_000_000_000_000_000
    return [
        Tick(SYMBOL, seq, base + seq * 1_000_000, 100.0 + seq % 7, 100.1 + seq % 7, 1.0, 1.0)
        for seq in range(1, n + 1)
    ]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_open_private_creates_0600(tmp_path: Path) -> None:
    """A file created through open_private has mode 0600."""
    os.close(open_private(tmp_path / "f", os.O_WRONLY | os.O_CREAT))
    assert _mode(tmp_path / "f") == 0o600


def test_open_private_refuses_a_symlink_and_names_it(tmp_path: Path) -> None:
    """A symlink at the path is refused, naming the path, and its target is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="link"):
        open_private(tmp_path / "link", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert victim.read_bytes() == b"keep"


def test_make_private_dir_creates_0700_and_refuses_a_symlink(tmp_path: Path) -> None:
    """A new directory is 0700; a symlinked one is refused."""
    assert _mode(make_private_dir(tmp_path / "a" / "b")) == 0o700
    (tmp_path / "outside").mkdir()
    (tmp_path / "ln").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="ln"):
        make_private_dir(tmp_path / "ln")


def test_refuse_symlinks_accepts_missing_and_regular(tmp_path: Path) -> None:
    """Missing and regular files pass; a dangling symlink does not."""
    (tmp_path / "real").write_bytes(b"")
    refuse_symlinks(tmp_path / "missing", tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafePathError, match="dangling"):
        refuse_symlinks(tmp_path / "real", tmp_path / "dangling")


@pytest.mark.parametrize("name", ["real.db#", "%41.db", "a?mode=rwc.db", "sp ace.db"])
def test_sqlite_uri_opens_exactly_that_file(tmp_path: Path, name: str) -> None:
    """Characters special in a URI are part of the file name, never a fragment/query/escape."""
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(sqlite_uri(tmp_path / name, "rwc"), uri=True)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert _names(tmp_path) == [name]


def test_sqlite_uri_rejects_an_unknown_mode(tmp_path: Path) -> None:
    """A mode other than ro/rw/rwc names the value."""
    with pytest.raises(ValueError, match="mode='memory'"):
        sqlite_uri(tmp_path / "x.db", "memory")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["real.db#", "%41.db"])
async def test_store_writes_exactly_the_named_file_privately(tmp_path: Path, name: str) -> None:
    """SQLiteTickStore at 'real.db#' or '%41.db' writes that file (0600), not real.db or A.db."""
    store = SQLiteTickStore(tmp_path / name)
    await store.open()
    try:
        await store.write(_ticks(10))
    finally:
        await store.aclose()
    names = set(_names(tmp_path))
    assert name in names
    assert not names & {"real.db", "A.db"}
    assert _mode(tmp_path / name) == 0o600


async def _make_db(path: Path, n: int) -> None:
    store = SQLiteTickStore(path)
    await store.open()
    try:
        await store.write(_ticks(n))
    finally:
        await store.aclose()


def _backtest(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [
            sys.executable,
            "-m",
            "strategylab",
            "backtest",
            "--db",
            str(db),
            "--symbols",
            SYMBOL,
            "--param",
            "fast=5",
            "--param",
            "slow=20",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_backtest_db_with_hash_reads_that_file_and_creates_nothing(tmp_path: Path) -> None:
    """`backtest --db dir/real.db#` reads real.db# and never creates dir/real.db; the only
    thing it adds is that file's own columnar snapshot, real.db#.columnar."""
    await _make_db(tmp_path / "real.db#", 500)
    before = _names(tmp_path)
    result = await asyncio.to_thread(_backtest, tmp_path / "real.db#")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["ticks"] == 500
    assert not (tmp_path / "real.db").exists()
    assert sorted(_names(tmp_path)) == sorted([*before, "real.db#.columnar"])


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_backtest_db_with_percent_reads_that_file_not_the_decoded_one(
    tmp_path: Path,
) -> None:
    """`backtest --db dir/%41.db` reads %41.db (500 ticks), not dir/A.db (50 ticks)."""
    await _make_db(tmp_path / "%41.db", 500)
    await _make_db(tmp_path / "A.db", 50)
    wanted = await asyncio.to_thread(_backtest, tmp_path / "%41.db")
    decoy = await asyncio.to_thread(_backtest, tmp_path / "A.db")
    assert wanted.returncode == 0, wanted.stderr
    assert decoy.returncode == 0, decoy.stderr
    assert json.loads(wanted.stdout)[0]["ticks"] == 500
    assert json.loads(decoy.stdout)[0]["ticks"] == 50
