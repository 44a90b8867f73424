"""The spool's rewrites go through ``strategylab._durable.write_atomic``: what they leave behind
after an interruption is recognised and removed, and a repair leaves no temporary."""

from __future__ import annotations

from pathlib import Path

import pytest

from strategylab.market import SpoolStore, Tick

pytestmark = pytest.mark.timeout(10)


def ticks(first: int, last: int) -> list[Tick]:
    return [Tick("AAA", seq, 1_000 + seq, 100.0, 100.5, 1.0, 2.0) for seq in range(first, last + 1)]


async def spool_of(directory: Path, *batches: list[Tick]) -> None:
    spool = SpoolStore(directory)
    await spool.open()
    try:
        for batch in batches:
            await spool.write(batch)
    finally:
        await spool.aclose()


@pytest.mark.parametrize(
    "leftover", [".holes.json.4242.tmp", ".000000000001.seg.4242.tmp", "holes.json.tmp"]
)
async def test_a_leftover_of_an_interrupted_rewrite_is_removed_at_open(
    tmp_path: Path, leftover: str
) -> None:
    """A temporary of write_atomic (``.NAME.PID.tmp``) or of the spool's former writer
    (``NAME.tmp``) is removed at open; the spooled batches are intact."""
    directory = tmp_path / "spool"
    await spool_of(directory, ticks(1, 5), ticks(6, 9))
    (directory / leftover).write_bytes(b"half a rewrite")
    spool = SpoolStore(directory)
    await spool.open()
    try:
        assert not (directory / leftover).exists()
        assert list(spool.pending()) == [ticks(1, 5), ticks(6, 9)]
    finally:
        await spool.aclose()


async def test_a_repaired_segment_leaves_no_temporary_and_keeps_its_mode(tmp_path: Path) -> None:
    """Damage in the middle of a segment is moved aside and the segment rewritten atomically:
    the intact records stay, no ``*.tmp`` is left, and both files are private (0600)."""
    directory = tmp_path / "spool"
    await spool_of(directory, ticks(1, 5), ticks(6, 10), ticks(11, 15))
    segment = directory / "000000000001.seg"
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xA5 for b in data[middle : middle + 4])
    segment.write_bytes(bytes(data))
    spool = SpoolStore(directory)
    await spool.open()
    try:
        assert len(spool.corruptions()) == 1
        assert list(spool.pending()) == [ticks(1, 5), ticks(11, 15)]
    finally:
        await spool.aclose()
    names = sorted(p.name for p in directory.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    aside = spool.corruptions()[0].moved_to
    assert aside.exists()
    assert segment.stat().st_mode & 0o777 == 0o600
    assert aside.stat().st_mode & 0o777 == 0o600
