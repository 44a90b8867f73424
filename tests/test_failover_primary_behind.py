"""A primary that ends before the spool begins (a rebuilt file): the gap is fetched again."""

from __future__ import annotations

from pathlib import Path

import pytest

from strategylab.market._failover_store import FailoverStore
from strategylab.market._spool import SpoolStore
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [Tick(symbol, s, s * 1_000, 100.0, 100.5, 1.0, 2.0) for s in range(first, last + 1)]


async def _prepare(tmp_path: Path, stored: int, spooled: tuple[int, int]) -> FailoverStore:
    """A primary holding 1..stored of A and B, and a spool left holding ``spooled`` of A only."""
    primary = SQLiteTickStore(tmp_path / "ticks.db")
    await primary.open()
    await primary.write(ticks("A", 1, stored) + ticks("B", 1, stored))
    await primary.aclose()
    spool = SpoolStore(tmp_path / "spool")
    await spool.open()
    await spool.write(ticks("A", *spooled))
    await spool.aclose()
    store = FailoverStore(SQLiteTickStore(tmp_path / "ticks.db"), SpoolStore(tmp_path / "spool"))
    await store.open()
    return store


@pytest.mark.parametrize(("stored", "spooled"), [(100, (201, 300)), (0, (51, 60)), (10, (12, 12))])
async def test_resume_point_stays_at_the_primary_when_the_spool_does_not_continue_it(
    tmp_path: Path, stored: int, spooled: tuple[int, int]
) -> None:
    """The range between the primary's end and the spool's start is asked for again."""
    store = await _prepare(tmp_path, stored, spooled)
    try:
        positions = await store.last_seqs()
        assert positions.get("A", 0) == stored
        assert positions.get("B", 0) == stored
    finally:
        await store.aclose()


async def test_the_hold_is_lifted_once_the_range_is_fetched_again(tmp_path: Path) -> None:
    """Writing the missing range, then the rest, moves the resume point past the spool's end."""
    store = await _prepare(tmp_path, 100, (201, 300))
    try:
        await store.write(ticks("A", 101, 250))
        assert (await store.last_seqs())["A"] == 250
        await store.write(ticks("A", 251, 320))
        assert (await store.last_seqs())["A"] == 320
    finally:
        await store.aclose()


async def test_a_spool_that_continues_the_primary_holds_nothing(tmp_path: Path) -> None:
    """The ordinary outage: the spool starts right after the primary; resume at its end."""
    store = await _prepare(tmp_path, 100, (101, 300))
    try:
        assert (await store.last_seqs())["A"] == 300
    finally:
        await store.aclose()
