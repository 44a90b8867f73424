"""The process commands on the one typer app: option forms, help, strategies, log files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from strategylab._node_cli import feed_url, node_config
from strategylab.cli import app
from strategylab.errors import ConfigurationError
from strategylab.exchange import ExchangeConfig
from strategylab.node import load_factory
from strategylab.strategy import MeanReversion, MovingAverageCrossover
from strategylab.strategy._examples import TickTrader

PROCESS_COMMANDS = ("exchange", "node", "trade", "proxy")


def _command(name: str) -> Any:
    """The click command of ``name`` (typer vendors its own click: attributes, not classes)."""
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name", [*PROCESS_COMMANDS, "demo", "demo-core", "check", "backtest", "optimize", "audit"]
)
def test_every_option_has_a_help_line_and_log_level(name: str) -> None:
    """Every option of the command says what it is, and --log-level is one of them."""
    command = _command(name)
    if hasattr(command, "commands"):  # audit: its one subcommand, verify
        command = command.commands["verify"]
    options = [p for p in command.params if p.param_type_name == "option"]
    assert all(option.help for option in options), [o.name for o in options if not o.help]
    assert any("--log-level" in option.opts for option in options)


def test_exchange_default_symbols_are_the_exchanges() -> None:
    """`exchange --help` shows the symbols the exchange really defaults to."""
    symbols = next(p for p in _command("exchange").params if p.name == "symbols")
    assert tuple(str(symbols.default).split(",")) == ExchangeConfig().symbols


@pytest.mark.parametrize(
    ("given", "feed"),
    [
        ("http://127.0.0.1:9", "ws://127.0.0.1:9/ws"),
        ("http://127.0.0.1:9/", "ws://127.0.0.1:9/ws"),
        ("https://ex.example:443", "wss://ex.example:443/ws"),
        ("ws://127.0.0.1:9/ws", "ws://127.0.0.1:9/ws"),
        ("wss://ex.example/feed", "wss://ex.example/feed"),
    ],
)
def test_node_takes_the_exchange_or_its_feed(given: str, feed: str) -> None:
    """An exchange's http URL means its /ws feed; a ws URL is the feed itself."""
    assert feed_url("--exchange-url", given) == feed


@pytest.mark.parametrize("given", ["ftp://x", "127.0.0.1:9", "http://", ""])
def test_node_refuses_other_urls_naming_the_flag(given: str) -> None:
    """Anything but http(s) or ws(s) is refused with the flag named."""
    with pytest.raises(ConfigurationError, match="--backup-url"):
        feed_url("--backup-url", given)


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


def test_node_db_postgresql_url_is_the_postgres_store(tmp_path: Path) -> None:
    """`--db postgresql://...` means what `--postgres` means."""
    config = _node(tmp_path, db="postgresql://u@h/d")
    assert getattr(config, "postgres", None) == "postgresql://u@h/d"
    assert getattr(config, "db", "x") is None


def test_node_db_and_postgres_together_are_refused(tmp_path: Path) -> None:
    """Two PostgreSQL stores is a usage error naming both flags."""
    with pytest.raises(ConfigurationError) as caught:
        _node(tmp_path, db="postgresql://u@h/d", postgres="postgresql://u@h/e")
    assert "--db" in str(caught.value)
    assert "--postgres" in str(caught.value)


def test_node_feed_url_wins_and_backups_take_both_forms(tmp_path: Path) -> None:
    """--feed-url is the feed; each --backup-url is an exchange or a feed."""
    config = _node(
        tmp_path,
        feed="ws://127.0.0.1:7/ws",
        backup_urls=["http://127.0.0.1:8", "ws://127.0.0.1:6/ws"],
    )
    assert getattr(config, "exchange_url", None) == "ws://127.0.0.1:7/ws"
    assert getattr(config, "backup_urls", None) == ("ws://127.0.0.1:8/ws", "ws://127.0.0.1:6/ws")


@pytest.mark.parametrize(
    ("spec", "cls", "name"),
    [
        ("ma_crossover", MovingAverageCrossover, "ma_crossover"),
        ("fast=ma_crossover", MovingAverageCrossover, "fast"),
        ("mean_reversion", MeanReversion, "mean_reversion"),
        ("strategylab.strategy._examples:TickTrader", TickTrader, "TickTrader"),
        ("t=strategylab.strategy._examples:TickTrader", TickTrader, "t"),
    ],
)
def test_trade_strategy_is_a_builtin_name_or_a_class(spec: str, cls: type, name: str) -> None:
    """Built-in names as in backtest, or module:Class; NAME= names the instance in the book."""
    strategy = load_factory(spec, ("A",), {})()
    assert isinstance(strategy, cls)
    assert strategy.name == name


@pytest.mark.parametrize("spec", ["nonsense", "=ma_crossover", "a=:X", "a=strategylab.errors:X"])
def test_trade_strategy_refuses_what_is_not_a_strategy(spec: str) -> None:
    """An unknown built-in, an empty NAME= or a module without the class is refused."""
    with pytest.raises((ConfigurationError, AttributeError)):
        load_factory(spec, ("A",), {})


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("command", "log"),
    [
        (["exchange", "--port", "0", "--data-dir", "{d}", "--symbols", "A"], "logs/exchange.log"),
        (["proxy", "--port", "0", "--data-dir", "{d}"], "logs/proxy.log"),
    ],
    ids=["exchange", "proxy"],
)
def test_servers_write_their_log_file_under_the_data_dir(
    tmp_path: Path, command: list[str], log: str
) -> None:
    """A server started with --data-dir D logs to D/logs/PROCESS.log (0600) and stops on SIGTERM."""
    data = tmp_path / "data"
    argv = [part.format(d=data) for part in command]
    with subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", *argv, "--log-level", "INFO"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as proc:
        assert proc.stdout is not None
        try:
            assert json.loads(proc.stdout.readline())["event"] == "listening"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    assert proc.returncode == 0
    path = data / log
    assert path.is_file()
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_trade_against_a_closed_port_says_cannot_connect_and_logs_beside_the_book(
    tmp_path: Path,
) -> None:
    """No exchange: exit 1, one line 'cannot connect to URL', and logs/trader.log by the book."""
    book = tmp_path / "t" / "book.db"
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            *(sys.executable, "-m", "strategylab", "trade"),
            *("--exchange-url", "http://127.0.0.1:9", "--book", str(book)),
            *("--strategy", "ma_crossover", "--symbols", "A", "--param", "fast=5"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        env=_env(),
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("strategylab trade: error: cannot connect to http://127.0.0.1:9")
    assert "circuit" not in lines[-1]
    assert "Traceback" not in done.stderr
    assert (tmp_path / "t" / "logs" / "trader.log").is_file()
