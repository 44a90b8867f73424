"""Inputs a second review found getting through, by kind: malformed URLs (brackets, credentials,
queries), blank paths, an empty EMITTED or --acks, malformed PostgreSQL URLs, and a --book that
is another application's SQLite file, which must be refused without a file created beside it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from strategylab._cli_options import check_postgres_url, check_url
from strategylab.errors import ConfigurationError

CLI = [sys.executable, "-m", "strategylab"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [*CLI, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://[zz]:80",
        "http://[::1",
        "http://[1.2.3.4]:80",
        "http://[::1]]:80",
        "ws://[v1.x]:5/ws",
        "http://127.0.0.1:80/x?y=1",
        "http://127.0.0.1:80/#f",
        "http://user:secret@127.0.0.1:80",
        "http://user@127.0.0.1:80",
    ],
)
def test_malformed_or_credentialed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_url("--exchange-url", url, ("http", "https", "ws", "wss"))
    assert caught.value.key == "--exchange-url"
    assert "secret" not in str(caught.value)


def test_a_well_formed_ipv6_url_is_accepted() -> None:
    assert check_url("--feed-url", "ws://[::1]:8080/ws", ("ws",)) == "ws://[::1]:8080/ws"


@pytest.mark.parametrize(
    "url", ["postgres://", "postgresql:///", "postgresql://[::1/db", "postgresql://h:99999/d"]
)
def test_malformed_postgres_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        check_postgres_url("--db", url)


def test_a_postgres_password_is_never_shown() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_postgres_url("--db", "postgresql://u:hunter2@h:0/db")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("blank", [" ", "\t", "  "])
def test_a_blank_data_dir_is_refused_and_nothing_created(tmp_path: Path, blank: str) -> None:
    done = _run(
        "node", "--data-dir", blank, "--symbols", "A", "--exchange-url", "http://127.0.0.1:1",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--data-dir" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("emitted", "acks"), [("", None), (" ", None), ("E", ""), ("E", " ")])
def test_check_refuses_a_blank_emitted_or_acks(
    tmp_path: Path, emitted: str, acks: str | None
) -> None:
    args = ["check", emitted, str(tmp_path / "ticks.db")]
    if acks is not None:
        args += ["--acks", acks]
    done = _run(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert ("EMITTED" if acks is None else "--acks") in done.stderr


@pytest.mark.parametrize(
    "schema",
    [
        ["CREATE TABLE orders(x)"],  # another application's `orders`
        ["CREATE TABLE ticks(symbol TEXT, seq INTEGER)"],  # a tick store
        ["CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)"],  # no engine id
        ["CREATE TABLE meta(x)", "CREATE TABLE orders(y)"],  # a `meta` of another shape
    ],
)
def test_a_foreign_sqlite_file_as_book_is_refused_untouched(
    tmp_path: Path, schema: list[str]
) -> None:
    book = tmp_path / "other.db"
    with sqlite3.connect(book) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in schema:
            db.execute(statement)
    db.close()
    for leftover in tmp_path.glob("other.db-*"):
        leftover.unlink()
    before = book.read_bytes()
    done = _run(
        "trade", "--book", str(book), "--strategy", "ma_crossover", "--symbols", "AAPL",
        "--exchange-url", "http://127.0.0.1:1",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "is not an order book" in done.stderr
    assert book.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
