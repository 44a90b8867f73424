"""A damaged SQLite header is corruption for the store to repair; a non-SQLite file is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from strategylab.errors import ConfigurationError
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick
from strategylab.node._store_check import _check_sqlite


async def _database(path: Path) -> None:
    store = SQLiteTickStore(path)
    await store.open()
    await store.write([Tick("A", i, i, 1.0, 2.0, 1.0, 1.0) for i in range(1, 200)])
    await store.aclose()


@pytest.mark.parametrize(("start", "end"), [(16, 24), (18, 22), (28, 40)])
async def test_damaged_header_of_our_database_is_left_to_the_store(
    tmp_path: Path, start: int, end: int
) -> None:
    """The start-up check does not refuse it; the store moves it aside and starts afresh."""
    path = tmp_path / "ticks.db"
    await _database(path)
    data = bytearray(path.read_bytes())
    data[start:end] = b"\xff" * (end - start)
    path.write_bytes(bytes(data))
    _check_sqlite(path, must_exist_dir=True)
    store = SQLiteTickStore(path)
    await store.open()
    try:
        assert await store.last_seqs() == {}
    finally:
        await store.aclose()
    assert [p.name for p in tmp_path.glob("ticks.db.corrupt-*")]  # noqa: ASYNC240


@pytest.mark.parametrize("content", [b"hello world" * 100, b"\x00" * 4096, b"PK\x03\x04zip"])
def test_a_file_that_is_not_sqlite_is_refused_naming_the_option(
    tmp_path: Path, content: bytes
) -> None:
    """The user's file is never moved aside: the node refuses it at start."""
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match="--db"):
        _check_sqlite(path, must_exist_dir=True)
    assert path.read_bytes() == content
