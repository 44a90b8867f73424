"""Issue 9 review: the read-only commands name a planted -wal/-shm symlink or a FIFO database in
one line (they said "attempt to write a readonly database", or blocked on the FIFO)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def make_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE ticks (symbol TEXT, seq INTEGER, ts INTEGER, bid REAL, ask REAL,"
            " bid_size REAL, ask_size REAL, PRIMARY KEY (symbol, seq))"
        )
        db.execute("INSERT INTO ticks VALUES ('A', 1, 1, 1.0, 1.1, 1.0, 1.0)")
    db.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "strategylab", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def backtest(db: str) -> tuple[str, ...]:
    return ("backtest", "--db", db, "--symbols", "A", "--strategy", "ma_crossover")


def check(db: str) -> tuple[str, ...]:
    return ("check", str(Path(db).with_name("emitted.log")), db)


COMMANDS: dict[str, Callable[[str], tuple[str, ...]]] = {"backtest": backtest, "check": check}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("sibling", ["-wal", "-shm"])
def test_a_planted_sibling_symlink_is_named_in_one_line(
    tmp_path: Path, command: str, sibling: str
) -> None:
    db = tmp_path / "ticks.db"
    make_db(db)
    victim = tmp_path / "victim"
    Path(f"{db}{sibling}").symlink_to(victim)
    result = run(*COMMANDS[command](str(db)))
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr
    assert f"ticks.db{sibling}" in result.stderr, result.stderr
    assert "symlink" in result.stderr
    assert not victim.exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_fifo_database_is_refused_not_waited_on(tmp_path: Path, command: str) -> None:
    db = tmp_path / "ticks.db"
    os.mkfifo(db)
    result = run(*COMMANDS[command](str(db)))
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr
    assert "ticks.db" in result.stderr
