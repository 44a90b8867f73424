"""A data directory is not trusted: FIFOs, hard links and symlinks planted there are refused.

Review of issue 9 (a hostile machine): what the node, the exchange and the trader open in their
data directories must be a private regular file (never a FIFO, which blocks the open, nor a
second hard link to a file elsewhere, nor a symlink); what they create is 0600 in 0700
directories, missing parents included, whatever the umask.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strategylab._files import (
    UnsafePathError,
    check_sqlite_files,
    make_private_dir,
    open_private,
    read_private,
    refuse_symlinks,
)
from strategylab.market import SpoolStore, SQLiteTickStore, Tick
from strategylab.market._store import StoreCorruptedError
from strategylab.research._backtest import _write_atomically
from strategylab.testing import FakeClock
from strategylab.trading._positions import PositionStore

VICTIM = b"precious, outside the data directory\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the data directory whose content must never change."""
    path = tmp_path / "outside" / "victim"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run the block under ``mask`` (the process's umask is restored after)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _content(path: Path) -> bytes:
    return path.read_bytes()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _tick(seq: int) -> Tick:
    return Tick("A", seq, 1_700_000_000_000_000_000 + seq, 1.0, 1.1, 1.0, 1.0)


def _plant(path: Path, kind: str, victim: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "hardlink":
        os.link(victim, path)
    else:
        path.symlink_to(victim)


# ------------------------------------------------------------------------------ the helpers


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "flags",
    [
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        os.O_RDWR | os.O_CREAT | os.O_APPEND,
        os.O_RDONLY,
    ],
    ids=["append", "read-write", "read"],
)
def test_open_private_refuses_a_fifo_at_once(tmp_path: Path, flags: int) -> None:
    """A FIFO is refused, naming it, without blocking on the open (no writer/reader comes)."""
    fifo = tmp_path / "acks.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePathError, match=r"acks\.jsonl: refusing to use a FIFO"):
        open_private(fifo, flags)


@pytest.mark.timeout(10)
def test_open_private_refuses_a_hard_link_and_never_truncates_it(
    tmp_path: Path, victim: Path
) -> None:
    """A second hard link to a file elsewhere is refused before O_TRUNC could empty it."""
    link = tmp_path / "probe"
    os.link(victim, link)
    with pytest.raises(UnsafePathError, match="probe: refusing to use a file with 2 hard links"):
        open_private(link, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert victim.read_bytes() == VICTIM


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_open_private_refuses_other_special_files(tmp_path: Path, kind: str) -> None:
    """A directory or a socket at a file's name is refused, naming what it is."""
    path = tmp_path / "audit.jsonl"
    if kind == "directory":
        path.mkdir()
        flags = os.O_RDONLY
    else:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(os.fspath(path))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    with pytest.raises(UnsafePathError, match=f"refusing to use a {kind}"):
        open_private(path, flags)


def test_open_private_creates_0600_whatever_the_umask(tmp_path: Path) -> None:
    """Under a umask that would make it 0400 (unwritable when reopened), a new file is 0600."""
    with umask(0o277):
        os.close(open_private(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    assert _mode(tmp_path / "f") == 0o600


def test_make_private_dir_creates_every_missing_parent_0700(tmp_path: Path) -> None:
    """`a/b/data` makes a, a/b and data 0700 under umask 022 (not 0755 parents)."""
    with umask(0o022):
        make_private_dir(tmp_path / "a" / "b" / "data")
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "data"):
        assert _mode(path) == 0o700, path


@pytest.mark.parametrize("kind", ["fifo", "hardlink", "directory"])
def test_refuse_symlinks_refuses_anything_but_a_private_regular_file(
    tmp_path: Path, victim: Path, kind: str
) -> None:
    """A FIFO, a second hard link or a directory is refused like a symlink, naming it."""
    path = tmp_path / "ticks.db"
    if kind == "directory":
        path.mkdir()
    else:
        _plant(path, kind, victim)
    with pytest.raises(UnsafePathError, match=r"ticks\.db: refusing"):
        refuse_symlinks(tmp_path / "missing", path)


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_check_sqlite_files_names_the_symlinked_sibling(
    tmp_path: Path, victim: Path, suffix: str
) -> None:
    """A symlink at ticks.db-wal/-shm/-journal is named (not 'attempt to write a readonly db')."""
    db = tmp_path / "ticks.db"
    sqlite3.connect(db).close()
    Path(f"{db}{suffix}").symlink_to(victim)
    with pytest.raises(UnsafePathError, match=f"ticks.db{suffix}: refusing to use a symlink"):
        check_sqlite_files(db)


@pytest.mark.timeout(10)
def test_read_private_refuses_a_fifo_instead_of_blocking(tmp_path: Path) -> None:
    """Reading a FIFO planted as a spool file is refused at once."""
    os.mkfifo(tmp_path / "holes.json")
    with pytest.raises(UnsafePathError, match="FIFO"):
        read_private(tmp_path / "holes.json")


# ------------------------------------------------------------------------------ real stores


async def _crash_image_with_damaged_wal(tmp_path: Path) -> Path:
    """The files of a store whose WAL has a damaged first frame and later commits."""
    live = tmp_path / "live"
    store = SQLiteTickStore(live / "ticks.db")
    await store.open()
    crashed = tmp_path / "crashed"
    try:
        for first in range(1, 601, 100):
            await store.write([_tick(seq) for seq in range(first, first + 100)])
        crashed.mkdir(mode=0o700)
        for name in ("ticks.db", "ticks.db-wal"):
            shutil.copy(live / name, crashed / name)
    finally:
        await store.aclose()
    wal = crashed / "ticks.db-wal"
    data = bytearray(wal.read_bytes())
    data[32 + 24 + 100] ^= 0x01  # the first frame's page: SQLite drops every later commit
    wal.write_bytes(bytes(data))
    return crashed / "ticks.db"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("planted", ["dangling-symlink", "symlink", "file"])
async def test_damaged_wal_copy_never_writes_through_what_is_at_its_name(
    tmp_path: Path, planted: str
) -> None:
    """The copy of a damaged WAL is created exclusively: a symlink (dangling or not) or a file
    already at ``ticks.db.corrupt-<stamp>-wal`` is left alone and the next name is used."""
    db = await _crash_image_with_damaged_wal(tmp_path)
    damaged = _content(Path(f"{db}-wal"))
    clock = FakeClock()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock.time()))
    taken = db.with_name(f"ticks.db.corrupt-{stamp}-wal")
    target = tmp_path / "outside-target"
    if planted == "file":
        taken.write_bytes(VICTIM)
    else:
        if planted == "symlink":
            target.write_bytes(VICTIM)
        taken.symlink_to(target)
    store = SQLiteTickStore(db, clock=clock)
    await store.open()
    try:
        found = store.wal_damage
        assert found is not None
        assert found.moved_to == db.with_name(f"ticks.db.corrupt-{stamp}-2-wal")
        assert found.moved_to.read_bytes() == damaged
        assert _mode(found.moved_to) == 0o600
    finally:
        await store.aclose()
    if planted == "file":
        assert taken.read_bytes() == VICTIM
    elif planted == "symlink":
        assert target.read_bytes() == VICTIM
    else:
        assert not target.exists()


@pytest.mark.timeout(30)
async def test_spool_health_probe_never_truncates_a_planted_hard_link(
    tmp_path: Path, victim: Path
) -> None:
    """A hard link planted at the spool's probe file makes the probe fail, not empty the victim."""
    spool = SpoolStore(tmp_path / "spool")
    await spool.open()
    try:
        os.link(victim, tmp_path / "spool" / ".health")
        assert not await spool.health()
    finally:
        await spool.aclose()
    assert _content(victim) == VICTIM


def test_backtest_checkpoint_never_writes_through_a_planted_temporary_name(
    tmp_path: Path, victim: Path
) -> None:
    """A symlink planted at the checkpoint's temporary name is replaced, never written through;
    the checkpoint is 0600 in 0700 directories created for it."""
    path = tmp_path / "a" / "b" / "run.ckpt"
    (tmp_path / "a" / "b").mkdir(parents=True, mode=0o700)
    (tmp_path / "a" / "b" / f".run.ckpt.{os.getpid()}.tmp").symlink_to(victim)
    _write_atomically(path, b"{}")
    assert victim.read_bytes() == VICTIM
    assert path.read_bytes() == b"{}"
    assert _mode(path) == 0o600
    fresh = tmp_path / "c" / "d" / "run.ckpt"
    with umask(0o022):
        _write_atomically(fresh, b"{}")
    assert _mode(tmp_path / "c") == _mode(tmp_path / "c" / "d") == 0o700


def test_book_is_0600_with_its_wal_and_shm_in_0700_directories(tmp_path: Path) -> None:
    """A fresh book (and the -wal/-shm SQLite makes beside it) is 0600 in 0700 directories,
    even under umask 0 (SQLite alone would make them 0644, the directories 0777)."""
    db = tmp_path / "a" / "b" / "book.db"
    with umask(0):
        store = PositionStore(db)
    try:
        store.ensure_strategy("s")
        for name in ("book.db", "book.db-wal", "book.db-shm"):
            assert _mode(db.with_name(name)) == 0o600, name
        assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink"])
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
@pytest.mark.timeout(10)
def test_book_refuses_what_is_planted_at_its_files(
    tmp_path: Path, victim: Path, kind: str, suffix: str
) -> None:
    """A symlink, FIFO or hard link at book.db or its -wal/-shm is refused, naming it."""
    db = tmp_path / "book.db"
    _plant(Path(f"{db}{suffix}"), kind, victim)
    with pytest.raises(UnsafePathError, match=f"book.db{suffix}: refusing"):
        PositionStore(db)
    assert victim.read_bytes() == VICTIM


def test_book_that_is_not_a_database_is_one_error_naming_it(tmp_path: Path) -> None:
    """A --db that is not SQLite raises StoreCorruptedError naming the file; it is left as is."""
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are my notes, not a book\n" * 100)
    with pytest.raises(StoreCorruptedError, match=r"notes\.db: corrupted: not a usable SQLite"):
        PositionStore(db)
    assert db.read_bytes() == b"these are my notes, not a book\n" * 100


# ------------------------------------------------------------------------------ real processes


async def _run(
    *args: str, umask: int = 0o022, until: str | None = None
) -> tuple[int, str, list[str]]:
    """Run ``python -m strategylab *args``; with ``until``, SIGTERM it once that event is out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        umask=umask,
    )
    assert proc.stdout is not None
    events: list[str] = []
    try:
        async with asyncio.timeout(40):
            if until is not None:
                while line := await proc.stdout.readline():
                    events.append(json.loads(line)["event"])
                    if events[-1] == until:
                        proc.send_signal(signal.SIGTERM)
                        break
            _out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode(), events


def _node(data: Path) -> tuple[str, ...]:
    return (
        "node",
        *("--exchange-url", "ws://127.0.0.1:9/ws", "--data-dir", str(data)),
        *("--symbols", "A", "--status-interval", "0.2"),
    )


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


NODE_FILES = [
    "acks.jsonl",
    "audit.jsonl",
    "audit.anchor.jsonl",
    "ticks.db",
    "ticks.db-wal",
    "ticks.db-shm",
    "spool/000000000001.seg",
    "spool/holes.json",
    "spool/quarantine.log",
]


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", NODE_FILES)
async def test_node_refuses_a_fifo_in_its_data_dir_at_once(tmp_path: Path, name: str) -> None:
    """A real node with a FIFO planted at a data file exits 2 with one line naming it, instead
    of blocking forever in open() (deaf to SIGTERM)."""
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    os.mkfifo(_mkparent(data / name))
    code, err, _ = await _run(*_node(data))
    line = _one_line(err)
    assert code == 2, err
    assert name in line
    assert "FIFO" in line


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return path


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["acks.jsonl", "audit.jsonl", "ticks.db"])
async def test_node_refuses_a_planted_hard_link(tmp_path: Path, victim: Path, name: str) -> None:
    """A hard link planted at a data file (to a file elsewhere) is refused, not appended to."""
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    os.link(victim, data / name)
    code, err, _ = await _run(*_node(data))
    line = _one_line(err)
    assert code == 2, err
    assert name in line
    assert "hard link" in line
    assert _content(victim) == VICTIM


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_node_creates_missing_parents_of_its_data_dir_0700(tmp_path: Path) -> None:
    """`node --data-dir a/b/data` under umask 022 makes a, a/b and data 0700."""
    data = tmp_path / "a" / "b" / "data"
    code, err, events = await _run(*_node(data), until="started")
    assert "started" in events, err
    assert code == 0, err
    for path in (tmp_path / "a", tmp_path / "a" / "b", data):
        assert _mode(path) == 0o700, path


def _exchange(data: Path) -> tuple[str, ...]:
    return ("exchange", "--port", "0", "--data-dir", str(data), "--symbols", "A")


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "hardlink"])
async def test_exchange_refuses_what_is_planted_at_its_emitted_log(
    tmp_path: Path, victim: Path, kind: str
) -> None:
    """A FIFO (which blocked the exchange) or a hard link at emitted.log: one line, exit 2."""
    data = tmp_path / "ex"
    data.mkdir(mode=0o700)
    _plant(data / "emitted.log", kind, victim)
    code, err, _ = await _run(*_exchange(data))
    line = _one_line(err)
    assert code == 2, err
    assert "emitted.log" in line
    assert _content(victim) == VICTIM


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_exchange_creates_missing_parents_of_its_data_dir_0700(tmp_path: Path) -> None:
    """`exchange --data-dir a/b/ex` under umask 022 makes a, a/b and ex 0700, the log 0600."""
    data = tmp_path / "a" / "b" / "ex"
    code, err, events = await _run(*_exchange(data), until="listening")
    assert events == ["listening"], err
    assert code == 0, err
    for path in (tmp_path / "a", tmp_path / "a" / "b", data):
        assert _mode(path) == 0o700, path
    assert _mode(data / "emitted.log") == 0o600


def _trade(db: Path) -> tuple[str, ...]:
    return (
        "trade",
        *("--exchange-url", "http://127.0.0.1:9", "--book", str(db)),
        *("--strategy", "bids=strategylab.strategy._examples:RestingBids", "--symbols", "A"),
    )


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["missing", "empty"])
async def test_trade_refuses_a_symlinked_book(tmp_path: Path, target: str) -> None:
    """`trade --book` at a symlink (dangling or to an empty file) exits 2 with one line naming it;
    the target is neither created nor given a schema."""
    outside = tmp_path / "outside.db"
    if target == "empty":
        outside.write_bytes(b"")
    (tmp_path / "tr").mkdir(mode=0o700)
    (tmp_path / "tr" / "book.db").symlink_to(outside)
    code, err, _ = await _run(*_trade(tmp_path / "tr" / "book.db"))
    line = _one_line(err)
    assert code == 2, err
    assert "book.db" in line
    assert "symlink" in line
    if target == "empty":
        assert outside.read_bytes() == b""
    else:
        assert not outside.exists()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_trade_refuses_a_fifo_as_its_book(tmp_path: Path) -> None:
    """`trade --book` at a FIFO exits 2 (as the node), one line naming it, instead of blocking."""
    os.mkfifo(tmp_path / "book.db")
    code, err, _ = await _run(*_trade(tmp_path / "book.db"))
    line = _one_line(err)
    assert code == 2, err
    assert "book.db" in line
    assert "FIFO" in line


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_trade_with_a_book_that_is_not_a_database_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    """`trade --book notes.db` (not SQLite) exits 1 with one line naming the file, no traceback."""
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are my notes, not a book\n" * 100)
    code, err, _ = await _run(*_trade(db))
    line = _one_line(err)
    assert code == 1, err
    assert "notes.db" in line


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_trade_creates_its_book_0600_in_0700_directories(tmp_path: Path) -> None:
    """`trade --book tr/sub/book.db` under umask 022 makes tr and tr/sub 0700, the book 0600."""
    db = tmp_path / "tr" / "sub" / "book.db"
    code, err, _ = await _run(*_trade(db))
    assert code == 1, err  # nothing to reconcile with: the exchange is not there
    assert _mode(tmp_path / "tr") == _mode(tmp_path / "tr" / "sub") == 0o700
    assert _mode(db) == 0o600


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("db", [".", "/", ""])
async def test_trade_with_a_book_that_names_no_file_is_a_usage_error(db: str) -> None:
    """`trade --book .` (or `/`, or empty) is one line naming --book, exit 2, no traceback."""
    code, err, _ = await _run(*_trade(Path(db)))
    line = _one_line(err)
    assert code == 2, err
    assert "--book" in line


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["x.tmp", "holes.json.tmp"])
async def test_a_directory_planted_at_a_spool_temporary_is_refused(
    tmp_path: Path, name: str
) -> None:
    """A directory where the spool recreates a temporary is refused as a planted non-file
    (UnsafePathError, exit 2 in the node), never an errno from unlink (second review)."""
    from strategylab._files import UnsafePathError  # noqa: PLC0415
    from strategylab.market._spool import SpoolStore  # noqa: PLC0415

    (tmp_path / "spool").mkdir(mode=0o700)
    (tmp_path / "spool" / name).mkdir()
    spool = SpoolStore(tmp_path / "spool")
    with pytest.raises(UnsafePathError, match="a directory"):
        await spool.open()
    assert (tmp_path / "spool" / name).is_dir()
