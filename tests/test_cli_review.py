"""The review of the process commands (issue 10): each finding's *kind*, with other inputs.

URLs checked at parse time for every URL flag; one meaning of --exchange-url in node and trade;
an order book and a tick store never mistaken for each other; empty paths refused; errors in the
flags a user typed; an empty audit log; signals right after the ready line; symbols' characters.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from strategylab._cli_options import EXCHANGE_SCHEMES, FEED_SCHEMES, check_url, split_symbols
from strategylab._node_cli import exchange_endpoints, node_config
from strategylab.cli import app
from strategylab.errors import ConfigurationError
from strategylab.trading import PositionStore
from strategylab.trading._engine_params import parameters_refused


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}


def _run(*argv: str, cwd: Path, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=cwd,
        check=False,
    )


def _one_line_error(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The one stderr line of a refused command (exit ``status``, no traceback)."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if "warning:" not in line]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    [
        "http://h:99999",
        "http://h:0",
        "http://h:-1",
        "http://h:abc",
        "http://h:",
        "ws://:5/ws",
        "http://",
        "http:/h:1",
        "h:1",
        "ftp://h:1",
        "http://h :1",
        "http://h:1/\x1b[31m",
        "",
    ],
)
def test_a_bad_url_is_refused_naming_the_flag(url: str) -> None:
    """Out-of-range or non-numeric port, no host, a wrong scheme, blanks: refused by flag."""
    with pytest.raises(ConfigurationError) as caught:
        check_url("--backup-url", url, EXCHANGE_SCHEMES)
    assert caught.value.key == "--backup-url"


@pytest.mark.parametrize(
    "url", ["http://h", "http://h:1", "https://h:65535/", "ws://[::1]:9/ws", "wss://h/feed"]
)
def test_a_good_url_is_accepted(url: str) -> None:
    """A host, a port in 1..65535 or none, an allowed scheme: the URL as given."""
    assert check_url("--exchange-url", url, EXCHANGE_SCHEMES) == url


def test_feed_url_takes_only_websockets() -> None:
    """--feed-url is a WebSocket: an http URL is refused naming it."""
    with pytest.raises(ConfigurationError, match="--feed-url"):
        check_url("--feed-url", "http://h:1", FEED_SCHEMES)


@pytest.mark.parametrize(
    ("url", "orders", "feed"),
    [
        ("http://127.0.0.1:9", "http://127.0.0.1:9", "ws://127.0.0.1:9/ws"),
        ("https://ex.example:443/", "https://ex.example:443", "wss://ex.example:443/ws"),
        ("ws://127.0.0.1:9/ws", "http://127.0.0.1:9", "ws://127.0.0.1:9/ws"),
        ("wss://ex.example:8443/ws", "https://ex.example:8443", "wss://ex.example:8443/ws"),
    ],
)
def test_exchange_url_has_one_meaning(url: str, orders: str, feed: str) -> None:
    """The exchange's http URL or its feed's ws URL: the same orders and feed either way."""
    assert exchange_endpoints("--exchange-url", url) == (orders, feed)


_NODE = ("node", "--data-dir", "{tmp}/n", "--symbols", "A")
_TRADE = ("trade", "--book", "{tmp}/b.db", "--strategy", "ma_crossover", "--symbols", "A")


@pytest.mark.parametrize(
    ("argv", "flag", "bad"),
    [
        ((*_NODE, "--exchange-url", "http://h:70000"), "--exchange-url", "http://h:70000"),
        ((*_NODE, "--feed-url", "ws://h:0/ws"), "--feed-url", "ws://h:0/ws"),
        ((*_NODE, "--exchange-url", "http://h:1", "--backup-url", "https://:9"), "--backup-url",
         "https://:9"),
        ((*_TRADE, "--exchange-url", "ws://h:123456/ws"), "--exchange-url", "ws://h:123456/ws"),
        ((*_TRADE, "--exchange-url", "http://h:1", "--feed-url", "wss://h:x/ws"), "--feed-url",
         "wss://h:x/ws"),
    ],
)  # fmt: skip
def test_url_flags_are_checked_before_anything_starts(
    tmp_path: Path, argv: tuple[str, ...], flag: str, bad: str
) -> None:
    """Every URL flag of node and trade: exit 2 naming it, nothing created."""
    done = _run(*(a.format(tmp=tmp_path) for a in argv), cwd=tmp_path)
    assert f"{flag}={bad!r}" in _one_line_error(done, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_trade_takes_the_exchanges_feed_url_as_node_does(tmp_path: Path) -> None:
    """`trade --exchange-url ws://HOST:PORT/ws` reconciles with http://HOST:PORT, then trades."""
    with subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            *(sys.executable, "-m", "strategylab", "exchange", "--port", "0", "--symbols", "A"),
            *("--data-dir", str(tmp_path / "ex")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as exchange:
        assert exchange.stdout is not None
        try:
            port = json.loads(exchange.stdout.readline())["port"]
            with subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    *(sys.executable, "-m", "strategylab", "trade"),
                    *("--exchange-url", f"ws://127.0.0.1:{port}/ws"),
                    *("--book", str(tmp_path / "t" / "book.db"), "--strategy", "ma_crossover"),
                    *("--symbols", "A"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            ) as trader:
                assert trader.stdout is not None
                try:
                    events = [json.loads(trader.stdout.readline())["event"] for _ in range(2)]
                finally:
                    trader.send_signal(signal.SIGTERM)
                    _, err = trader.communicate(timeout=20)
        finally:
            exchange.send_signal(signal.SIGTERM)
            exchange.wait(timeout=20)
    assert events == ["reconciled", "trading"], err
    assert trader.returncode == 0, err


# ------------------------------------------------------------------------ book versus tick store


def _tick_store(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE ticks (symbol TEXT, seq INTEGER)")
        db.execute("CREATE TABLE quarantine (raw BLOB)")
    db.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("tables", [["ticks", "quarantine"], ["users"], ["orders", "users"]])
def test_a_book_is_not_opened_on_another_kind_of_database(
    tmp_path: Path, tables: list[str]
) -> None:
    """An SQLite file with tables a book has not is refused naming --book; it is not changed."""
    path = tmp_path / "victim.db"
    with sqlite3.connect(path) as db:
        for table in tables:
            db.execute(f"CREATE TABLE {table} (x)")
    db.close()
    before = _digest(path)
    with pytest.raises(ConfigurationError) as caught:
        PositionStore(path)
    assert caught.value.key == "--book"
    assert "is not an order book (it holds tables: " + ", ".join(sorted(tables)) in str(
        caught.value
    )
    assert _digest(path) == before


def test_a_tick_store_with_a_live_wal_is_refused_without_a_checkpoint(tmp_path: Path) -> None:
    """A WAL-mode store left by a killed writer: refused, its file and -wal byte for byte."""
    path = tmp_path / "ticks.db"
    writer = (
        "import os, sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
        "db.execute('PRAGMA journal_mode=WAL'); db.execute('CREATE TABLE ticks (x)'); "
        "db.execute('INSERT INTO ticks VALUES (1)'); db.commit(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", writer, str(path)], check=True, timeout=30)  # noqa: S603
    wal = path.with_name("ticks.db-wal")
    before = (_digest(path), _digest(wal))
    with pytest.raises(ConfigurationError, match="is not an order book"):
        PositionStore(path)
    assert (_digest(path), _digest(wal)) == before


def test_an_empty_or_missing_book_file_is_created(tmp_path: Path) -> None:
    """A 0-byte file and a missing one become books, as before."""
    (tmp_path / "empty.db").write_bytes(b"")
    for name in ("empty.db", "new.db"):
        PositionStore(tmp_path / name).close()
        with sqlite3.connect(tmp_path / name) as db:
            assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)
        db.close()


def test_trade_refuses_a_tick_store_as_its_book_writing_nothing(tmp_path: Path) -> None:
    """`trade --book TICKS.db`: exit 2, one line; no audit log or log file is left beside it."""
    victim = tmp_path / "victim.db"
    _tick_store(victim)
    before = _digest(victim)
    done = _run(
        *("trade", "--exchange-url", "http://127.0.0.1:9", "--book", str(victim)),
        *("--strategy", "ma_crossover", "--symbols", "A"),
        cwd=tmp_path,
    )
    line = _one_line_error(done, 2)
    assert "--book" in line
    assert "is not an order book (it holds tables: quarantine, ticks)" in line
    assert _digest(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.db"]


def test_node_refuses_an_order_book_as_its_tick_store(tmp_path: Path) -> None:
    """`node --db BOOK.db`: exit 2 naming --db and the book's tables; the book is not changed."""
    book = tmp_path / "book.db"
    PositionStore(book).close()
    before = _digest(book)
    done = _run(
        *("node", "--data-dir", str(tmp_path / "n"), "--symbols", "A"),
        *("--exchange-url", "http://127.0.0.1:9", "--db", str(book)),
        cwd=tmp_path,
    )
    line = _one_line_error(done, 2)
    assert "--db" in line
    assert "is not a tick store (it holds tables: fills, meta, orders, positions, strategies)" in (
        line
    )
    assert _digest(book) == before


# ------------------------------------------------------------------------------------ empty paths

_NODE_N = ("node", "--data-dir", "n", "--symbols", "A", "--exchange-url", "http://h:1")
_TRADE_H = ("trade", "--exchange-url", "http://h:1", "--strategy", "ma_crossover", "--symbols", "A")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["exchange", "--data-dir", ""], "--data-dir"),
        (["exchange", "--signing-key-file", ""], "--signing-key-file"),
        (["exchange", "--admin-token-file", ""], "--admin-token-file"),
        (["proxy", "--config", ""], "--config"),
        (["proxy", "--data-dir", ""], "--data-dir"),
        ([*_NODE_N[:2], "", *_NODE_N[3:]], "--data-dir"),
        ([*_NODE_N, "--db", ""], "--db"),
        ([*_NODE_N, "--audit-key-file", ""], "--audit-key-file"),
        ([*_TRADE_H, "--book", ""], "--book"),
        (["audit", "verify", ""], "PATH"),
        (["audit", "verify", "x", "--key-file", ""], "--key-file"),
        (["backtest", "--db", "", "--symbols", "A"], "--db"),
    ],
)  # fmt: skip
def test_an_empty_path_is_refused_and_nothing_is_written_here(
    tmp_path: Path, argv: list[str], flag: str
) -> None:
    """An empty path would be the current directory: exit 2 'FLAG: must not be empty'."""
    done = _run(*argv, cwd=tmp_path)
    assert f"{flag}: must not be empty" in _one_line_error(done, 2)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- --db


def _node(tmp_path: Path, **given: object) -> object:
    options: dict[str, object] = {
        "data_dir": tmp_path,
        "symbols": "A",
        "exchange_url": "http://127.0.0.1:9",
        "feed": None,
        "backup_urls": [],
        "db": None,
        "postgres": None,
        "signing_key": None,
        "audit_key": None,
    }
    return node_config(**{**options, **given})  # type: ignore[arg-type]


@pytest.mark.parametrize("db", ["x.db", "../ticks.db", "postgres://u@h/d"])
def test_any_db_with_postgres_is_refused_naming_both(tmp_path: Path, db: str) -> None:
    """--db and --postgres both name the tick store: whichever --db, both flags named."""
    with pytest.raises(ConfigurationError) as caught:
        _node(tmp_path, db=db, postgres="postgresql://u@h/e")
    assert caught.value.key == "--db"
    assert "--postgres" in caught.value.reason


@pytest.mark.parametrize("db", ["mysql://x", "sqlite://x.db", "http://h/x", "file:///tmp/x.db"])
def test_a_db_url_of_another_scheme_is_refused(tmp_path: Path, db: str) -> None:
    """A URL that is not postgresql:// is not mangled into a file path: refused."""
    with pytest.raises(ConfigurationError, match="unsupported URL scheme"):
        _node(tmp_path, db=db)


# ------------------------------------------------------------------------------ flags, not fields


@pytest.mark.parametrize("command", ["exchange", "proxy"])
@pytest.mark.parametrize(
    ("given", "source"),
    [
        (["--admin-token", "t"], "--admin-token"),
        (["--admin-token-file", "{tok}"], "--admin-token-file"),
    ],
)
def test_admin_open_with_a_token_names_the_tokens_flag(
    tmp_path: Path, command: str, given: list[str], source: str
) -> None:
    """--admin-open with a token names the option that gave the token, not admin_token."""
    token = tmp_path / "tok"
    token.write_text("secret\n")
    token.chmod(0o600)
    argv = [command, "--admin-open", *(g.format(tok=token) for g in given)]
    line = _one_line_error(_run(*argv, "--data-dir", str(tmp_path / "d"), cwd=tmp_path), 2)
    assert f"contradicts {source} " in line
    assert "admin_token" not in line


def test_two_strategies_of_one_name_name_the_strategy_flag(tmp_path: Path) -> None:
    """Two --strategy NAME=… with one NAME: refused naming --strategy, not a Python field."""
    done = _run(
        *("trade", "--exchange-url", "http://127.0.0.1:9", "--book", str(tmp_path / "b.db")),
        *("--strategy", "x=mean_reversion", "--strategy", "x=ma_crossover", "--symbols", "A"),
        cwd=tmp_path,
    )
    line = _one_line_error(done, 2)
    assert "--strategy='x'" in line
    assert "factories" not in line


@pytest.mark.parametrize("command", ["exchange", "proxy"])
@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid", "10.255.255.254"])
def test_a_host_that_cannot_be_listened_on_names_host(
    tmp_path: Path, command: str, host: str
) -> None:
    """A name that does not resolve, an address not ours: exit 1 '--host H: cannot listen'."""
    done = _run(command, "--host", host, "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert f"--host {host!r}: cannot listen: " in _one_line_error(done, 1)


@pytest.mark.parametrize("command", ["exchange", "proxy"])
def test_a_port_in_use_names_port(tmp_path: Path, command: str) -> None:
    """A port another socket holds: exit 1 '--port N: cannot listen'."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(command, "--port", str(port), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert f"--port {port}: cannot listen" in _one_line_error(done, 1)


@pytest.mark.parametrize(
    ("new", "flag", "now"),
    [
        ({"symbol": "ZZZ"}, "--symbols", "now --symbols ZZZ:"),
        ({"fast": 7}, "--param", "now --param fast=7:"),
        ({"symbol": "B", "slow": 30}, "--symbols", "now --symbols B and --param slow=30:"),
    ],
)
def test_a_changed_strategy_setting_names_the_flag_that_changed(
    new: dict[str, object], flag: str, now: str
) -> None:
    """The book's refusal says which flag changed, and what the book was written with."""
    old = {"fast": 20, "slow": 200, "symbol": "AAPL"}
    error = parameters_refused(
        "ma-aapl", Path("b1/book.db"), json.dumps(old), json.dumps({**old, **new})
    )
    assert error.key == flag
    assert (
        "strategy ma-aapl's order book b1/book.db was written with --symbols AAPL and "
        "--param fast=20 slow=200; " in error.reason
    )
    assert now in error.reason
    assert error.reason.endswith("start with those, or use a new --book")


# ------------------------------------------------------------------------------- empty audit log


def test_an_empty_audit_log_is_refused(tmp_path: Path) -> None:
    """A 0-byte log proves nothing (a truncated log looks the same): exit 1 'holds no records'."""
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    assert "holds no records" in _one_line_error(_run("audit", "verify", str(log), cwd=tmp_path), 1)


def test_an_empty_audit_log_is_accepted_only_with_allow_empty(tmp_path: Path) -> None:
    """--allow-empty: exit 0, saying plainly that nothing was verified."""
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    done = _run("audit", "verify", str(log), "--allow-empty", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ok: EMPTY log, 0 records: nothing was verified" in done.stdout


# ------------------------------------------------------------------------- signals at ready time


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize(
    ("argv", "ready"),
    [
        (["exchange", "--port", "0", "--symbols", "A", "--data-dir", "{d}"], "listening"),
        (["proxy", "--port", "0", "--data-dir", "{d}"], "listening"),
        (["node", "--data-dir", "{d}", "--symbols", "A", "--exchange-url", "{url}"], "started"),
    ],
    ids=["exchange", "proxy", "node"],
)
def test_a_signal_right_after_the_ready_line_is_a_clean_stop(
    tmp_path: Path, argv: list[str], ready: str, sig: signal.Signals
) -> None:
    """The handlers are installed before the ready line: a signal sent on reading it exits 0."""
    url = f"http://127.0.0.1:{_free_port()}"
    args = [a.format(d=tmp_path / "d", url=url) for a in argv]
    with subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    ) as proc:
        assert proc.stdout is not None
        try:
            first = json.loads(proc.stdout.readline())
        finally:
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
    assert first["event"] == ready
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------- symbols


@pytest.mark.parametrize(
    "text", ["AA\x1b[31mPL", "AAPL\nMSFT", "A B", "A\tB", "A;B", "É", "A" * 33, "A,B\x00"]
)
def test_a_symbol_of_other_characters_is_refused(text: str) -> None:
    """Only ASCII letters, digits and . _ - : /, 1..32 of them: --symbols named."""
    with pytest.raises(ConfigurationError) as caught:
        split_symbols(text)
    assert caught.value.key == "--symbols"


def test_symbols_of_the_allowed_characters_are_split() -> None:
    """Blanks around commas are dropped; every item is a symbol."""
    assert split_symbols(" BTC-USD, ES.F ,x_1:2/3," + "Z" * 32) == (
        "BTC-USD",
        "ES.F",
        "x_1:2/3",
        "Z" * 32,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("AAPL,,MSFT", "empty item"),
        ("AAPL,", "empty item"),
        (",AAPL", "empty item"),
        ("AAPL, ,MSFT", "empty item"),
        ("AAPL,MSFT,AAPL", "twice"),
        ("ES.F,ES.F", "twice"),
        (" , ", "at least one"),
    ],
)
def test_symbols_with_an_empty_item_or_a_repeat_are_refused(text: str, reason: str) -> None:
    """An empty item or a symbol given twice is a typo, never silently dropped or merged."""
    with pytest.raises(ConfigurationError, match=reason) as caught:
        split_symbols(text)
    assert caught.value.key == "--symbols"


@pytest.mark.parametrize(
    "argv",
    [
        ["exchange", "--symbols", "AAPL\nMSFT"],
        ["node", "--data-dir", "n", "--exchange-url", "http://h:1", "--symbols", "A\x1bB"],
        [
            "trade",
            "--exchange-url",
            "http://h:1",
            "--book",
            "b.db",
            "--strategy",
            "ma_crossover",
            "--symbols",
            "A B",
        ],
        ["backtest", "--db", "x.db", "--symbols", "A\x7f"],
        ["optimize", "--db", "x.db", "--symbols", "A\nB", "--grid", "fast=2"],
    ],
    ids=["exchange", "node", "trade", "backtest", "optimize"],
)
def test_every_command_refuses_bad_symbols_in_one_line(tmp_path: Path, argv: list[str]) -> None:
    """Every command that takes --symbols: exit 2, one line naming it, nothing created."""
    assert "--symbols=" in _one_line_error(_run(*argv, cwd=tmp_path), 2)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- help


def _command(*names: str) -> typer.core.TyperCommand:
    command = typer.main.get_command(app)
    for name in names:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["exchange", "proxy"])
def test_seed_has_one_meaning(name: str) -> None:
    """--seed: the seed of this command's pseudo-random choices, in every command."""
    seed = next(p for p in _command(name).params if p.name == "seed")
    assert str(getattr(seed, "help", "")).startswith(
        "Seed of this command's pseudo-random choices: "
    )


def test_audit_anchor_shows_path() -> None:
    """`audit verify --anchor PATH`, not a Python type."""
    anchor = next(p for p in _command("audit", "verify").params if p.name == "anchor")
    assert anchor.metavar == "PATH"
