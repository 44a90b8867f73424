"""Every command, fed a catalogue of bad input: the right exit status and no traceback.

Exit status 2 is a usage error (the message names the flag, not a Python field), 1 an
operational failure (a file that cannot be used, an exchange that cannot be reached).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from strategylab.market import SQLiteTickStore, Tick

SYMBOL = "A"
MA = "a=strategylab.strategy._builtin:MovingAverageCrossover"

# (command line with {placeholders}, exit status, text stderr must contain)
CATALOGUE: list[tuple[str, int, str]] = [
    # demo
    ("demo --bogus", 2, "--bogus"),
    ("demo --ticks abc", 2, "--ticks"),
    ("demo --ticks 5", 2, "--ticks"),
    ("demo --tick-rate -5", 2, "--tick-rate"),
    ("demo --data-dir {file}", 2, "--data-dir"),
    # demo-core
    ("demo-core --calls -5", 2, "--calls"),
    ("demo-core --faults abc", 2, "--faults"),
    ("demo-core --log-level bogus", 2, "--log-level"),
    ("demo --log-level bogus", 2, "--log-level"),
    # exchange
    ("exchange --bogus", 2, "--bogus"),
    ("exchange --port -5", 2, "--port"),
    ("exchange --port abc", 2, "--port"),
    ("exchange --port 70000", 2, "--port"),
    ("exchange --tick-rate abc", 2, "--tick-rate"),
    ("exchange --heartbeat-interval -1", 2, "--heartbeat-interval"),
    ("exchange --ticks-per-frame 0", 2, "--ticks-per-frame"),
    ("exchange --max-body -1", 2, "--max-body"),
    ("exchange --signing-key-file {missing}", 2, "--signing-key-file"),
    ("exchange --symbols ,", 2, "--symbols"),
    ("exchange --max-json-depth 0", 2, "--max-json-depth"),
    ("exchange --log-level bogus", 2, "--log-level"),
    ("exchange --admin-token x --admin-token-file {missing}", 2, "--admin-token-file"),
    ("exchange --data-dir ", 2, "--data-dir: must not be empty"),
    ("exchange --signing-key-file ", 2, "--signing-key-file"),
    ("exchange --symbols A\x1b[31mB", 2, "--symbols"),
    ("exchange --admin-open --admin-token t", 2, "contradicts --admin-token"),
    ("exchange --host 999.1.1.1 --data-dir {tmp}/x", 1, "--host '999.1.1.1': cannot listen"),
    # node
    ("node --data-dir {tmp}/n --symbols A", 2, "--exchange-url"),
    ("node --exchange-url ws://127.0.0.1:1/ws --symbols A", 2, "--data-dir"),
    ("node --exchange-url ftp://127.0.0.1:1 --data-dir {tmp}/n --symbols A", 2, "--exchange-url"),
    ("node --exchange-url {http} --data-dir {tmp}/n --symbols A --backup-url x", 2, "--backup-url"),
    ("node --feed-url {http} --data-dir {tmp}/n --symbols A", 2, "--feed-url"),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --batch-size 0", 2, "--batch-size"),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --batch-size x", 2, "--batch-size"),
    ("node --exchange-url {http} --data-dir {tmp}/n --symbols A --batch-size 0", 2, "--batch-size"),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --stale-after -1",
        2,
        "--stale-after",
    ),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols ,", 2, "--symbols"),
    ("node --exchange-url {ws} --data-dir {file} --symbols A", 2, "--data-dir"),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --db {dir}", 2, "--db"),
    (
        (
            "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --db postgresql://u@h/d "
            "--postgres postgresql://u@h/d"
        ),
        2,
        "--postgres",
    ),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --log-level bogus", 2, "--log-level"),
    ("node --exchange-url http://h:99999 --data-dir {tmp}/n --symbols A", 2, "--exchange-url"),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --backup-url ws://h:0/ws",
        2,
        "--backup-url",
    ),
    ("node --exchange-url {ws} --data-dir  --symbols A", 2, "--data-dir: must not be empty"),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --db ", 2, "--db"),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --db mysql://x",
        2,
        "unsupported URL scheme",
    ),
    (
        (
            "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --db {tmp}/x.db --postgres "
            "postgresql://u@h/d"
        ),
        2,
        "--postgres",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --signing-key-file {missing}",
        2,
        "--signing-key-file",
    ),
    # trade
    ("trade --exchange-url {http} --strategy " + MA + " --symbols A", 2, "--book"),
    ("trade {trade} --db {tmp}/t/book.db", 2, "--db"),
    ("trade {trade} --params {{}}", 2, "--params"),
    ("trade {trade} --param fast", 2, "--param"),
    ("trade {trade} --param bogus=1", 2, "--param"),
    ("trade {trade} --param fast=50 --param slow=10", 2, "--param"),
    ("trade {trade} --param fast=5 --param fast=6", 2, "--param"),
    ("trade {trade} --status-interval abc", 2, "--status-interval"),
    ("trade {trade} --status-interval -1", 2, "--status-interval"),
    ("trade {trade} --status-interval nan", 2, "--status-interval"),
    ("trade {trade} --max-retry-after 0", 2, "--max-retry-after"),
    ("trade {trade} --max-position abc", 2, "--max-position"),
    ("trade {trade} --max-position -1", 2, "--max-position"),
    ("trade {trade} --max-violations 0", 2, "--max-violations"),
    ("trade {trade} --log-level bogus", 2, "--log-level"),
    ("trade {trade} --audit-key-file {missing}", 2, "--audit-key-file"),
    # ws://HOST:PORT/ws is the feed: orders go to http://HOST:PORT (the node's meaning too).
    (
        "trade --exchange-url {ws} --book {tmp}/t/book.db --strategy " + MA + " --symbols A",
        1,
        "cannot connect to {http}",
    ),
    (
        (
            "trade --exchange-url http://h:99999 --book {tmp}/t/book.db --strategy ma_crossover "
            "--symbols A"
        ),
        2,
        "--exchange-url",
    ),
    ("trade {trade} --feed-url ws://:5/ws", 2, "--feed-url"),
    ("trade {trade} --symbols A\nB", 2, "--symbols"),
    ("trade --exchange-url {http} --book  --strategy ma_crossover --symbols A", 2, "--book"),
    ("trade {trade} --audit-key-file ", 2, "--audit-key-file"),
    ("trade --exchange-url {http} --book {db} --strategy ma_crossover --symbols A", 2, "--book"),
    ("trade {trade} --strategy a=mean_reversion", 2, "--strategy"),
    ("trade {trade} --feed-url {http}", 2, "--feed-url"),
    (
        "trade --exchange-url {http} --book {tmp}/t/book.db --strategy nonsense --symbols A",
        2,
        "--strategy",
    ),
    (
        "trade --exchange-url {http} --book {tmp}/t/book.db --strategy =ma_crossover --symbols A",
        2,
        "--strategy",
    ),
    (
        "trade --exchange-url {http} --book {tmp}/t/book.db --strategy a=no_such_mod:X --symbols A",
        2,
        "--strategy",
    ),
    (
        "trade --exchange-url {http} --book {tmp}/t/book.db --strategy a=strategylab:X --symbols A",
        2,
        "--strategy",
    ),
    (
        (
            "trade --exchange-url {http} --book {tmp}/t/book.db --strategy ma_crossover "
            "--symbols A --param fast=50 --param slow=10"
        ),
        2,
        "--param",
    ),
    (
        "trade --exchange-url {http} --book {tmp}/t/book.db --strategy " + MA + " --symbols ,",
        2,
        "--symbols",
    ),
    ("trade --exchange-url {http} --book {dir} --strategy " + MA + " --symbols A", 2, "--book"),
    ("trade {trade}", 1, "cannot connect to {http}"),
    (
        "trade --exchange-url {http} --book {tmp}/t/b2.db --strategy ma_crossover --symbols A",
        1,
        "cannot connect to {http}",
    ),
    (
        (
            "trade --exchange-url {http} --book {tmp}/t/b3.db --strategy m=mean_reversion "
            "--symbols A --param window=10"
        ),
        1,
        "cannot connect to {http}",
    ),
    # proxy
    ("proxy --bogus", 2, "--bogus"),
    ("proxy --port -5", 2, "--port"),
    ("proxy --port abc", 2, "--port"),
    ("proxy --seed abc", 2, "--seed"),
    ("proxy --max-body -1", 2, "--max-body"),
    ("proxy --max-json-depth 0", 2, "--max-json-depth"),
    ("proxy --config {missing}", 2, "--config"),
    ("proxy --config {empty}", 2, "--config"),
    ("proxy --config {dir}", 2, "--config"),
    ("proxy --config {notjson}", 2, "--config"),
    ("proxy --port 70000", 2, "--port"),
    ("proxy --log-level bogus", 2, "--log-level"),
    ("proxy --admin-open --host 10.0.0.1", 2, "--admin-open"),
    ("proxy --admin-token-file {missing}", 2, "--admin-token-file"),
    ("proxy --data-dir {file}", 2, "{file}"),
    ("proxy --config ", 2, "--config: must not be empty"),
    ("proxy --data-dir ", 2, "--data-dir: must not be empty"),
    ("proxy --admin-open --admin-token t", 2, "contradicts --admin-token"),
    ("proxy --host 999.1.1.1", 1, "--host '999.1.1.1': cannot listen"),
    # check
    ("check", 2, "EMITTED"),
    ("check {missing} {db}", 1, "missing"),
    ("check {notjson} {empty}", 1, "empty"),
    ("check {notjson} {dir}", 1, "dir"),
    ("check {notjson} {garbage}", 1, "garbage"),
    ("check {notjson} {db} --acks {missing}", 1, "missing"),
    ("check {notjson} {db} --acks {garbage}", 1, "garbage"),
    ("check {notjson} {db} --bogus", 2, "--bogus"),
    ("check {empty} {db}", 1, "EMITTED {empty}: not an emitted log (empty"),
    ("check {garbage} {db}", 1, "EMITTED {garbage}: not an emitted log"),
    ("check {db} {db}", 1, "EMITTED {db}: not an emitted log"),
    ("check {notjson} mysql://u:secret@h/d", 2, "DB mysql://u@h/d: unsupported URL scheme"),
    # backtest
    ("backtest --db {db}", 2, "--symbols"),
    ("backtest --db {missing} --symbols A", 1, "--db"),
    ("backtest --db {empty} --symbols A", 1, "--db"),
    ("backtest --db {dir} --symbols A", 1, "--db"),
    ("backtest --db {garbage} --symbols A", 1, "--db"),
    ("backtest --db mysql://u:secret@h/d --symbols A", 2, "unsupported URL scheme 'mysql'"),
    ("backtest --db {db} --symbols A --from 99999999999999999999999", 2, "--from"),
    ("backtest --db {db} --symbols A --to 9999-12-31", 2, "--to"),
    ("backtest --db {db} --symbols A --fee-bps -1", 2, "--fee-bps"),
    ("backtest --db {db} --symbols A --slippage-bps inf", 2, "--slippage-bps"),
    ("backtest --db {db} --symbols A --param fast=nan", 2, "--param"),
    ("backtest --db {db} --symbols Z", 2, "--symbols"),
    ("backtest --db {db} --symbols A --fee-bps abc", 2, "--fee-bps"),
    ("backtest --db {db} --symbols A --param fast", 2, "--param"),
    ("backtest --db {db} --symbols A --param fast=50 --param slow=10", 2, "fast"),
    ("backtest --db {db} --symbols A --strategy nonsense", 2, "--strategy"),
    ("backtest --db {db} --symbols A --from yesterday", 2, "--from"),
    # optimize
    ("optimize --db {db} --symbols A", 2, "--grid"),
    ("optimize --db {db} --symbols A --grid fast=2 --workers 0", 2, "--workers"),
    ("optimize --db {db} --symbols A --grid fast=50 --param slow=10", 2, "no valid parameter set"),
    ("optimize --db {db} --symbols A --grid fast=2 --metric bogus", 2, "--metric"),
    ("optimize --db {missing} --symbols A --grid fast=2", 1, "--db"),
    ("optimize --db {garbage} --symbols A --grid fast=2", 1, "--db"),
    ("optimize --db {db} --symbols A --grid fast=2 --timeout inf", 2, "--timeout"),
    ("optimize --db {db} --symbols A --grid fast=2 --workers 99999999", 2, "--workers"),
    ("optimize --db {db} --symbols A --grid fast=2 --seed -1", 2, "--seed"),
    ("optimize --db {db} --symbols A --random 3 --range fast=nan:inf", 2, "--range"),
    # Event-driven over 20,000 ticks overruns 1 ms at every scope: every run skipped.
    (
        "optimize --db {db} --symbols A --grid fast=2,3 --workers 1 --timeout 0.001 --event-driven",
        1,
        "every run failed",
    ),
    # audit verify
    ("audit verify", 2, "PATH"),
    ("audit verify {missing}", 2, "missing"),
    ("audit verify {dir}", 2, "dir"),
    ("audit verify {garbage}", 1, "FAILED"),
    ("audit verify {empty} --head bad", 2, "--head"),
    ("audit verify {empty} --max-line 5", 2, "--max-line"),
    ("audit verify {empty} --key-file {missing}", 2, "--key-file"),
    ("audit verify {empty} --log-level bogus", 2, "--log-level"),
    ("audit bogus", 2, "bogus"),
    # node: the operations options (status service, admin token, config file, memory budget)
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --status-port -1",
        2,
        "--status-port",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --status-port 70000",
        2,
        "--status-port",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --status-port abc",
        2,
        "--status-port",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --status-host bad_host!",
        2,
        "--status-host",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --status-host 999.1.1.1",
        2,
        "--status-host",
    ),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --status-host ", 2, "--status-host"),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --admin-token-file {missing}",
        2,
        "--admin-token-file",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --admin-token-file {dir}",
        2,
        "--admin-token-file",
    ),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --admin-token t", 2, "--admin-token"),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --config {missing}", 2, "--config"),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --config {dir}", 2, "--config"),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --config ",
        2,
        "--config: must not be empty",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --config {notjson}",
        2,
        "{notjson}: invalid TOML",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --memory-budget 0",
        2,
        "--memory-budget",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --memory-budget 12X",
        2,
        "--memory-budget",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --memory-budget -5",
        2,
        "--memory-budget",
    ),
    (
        "node --exchange-url {ws} --data-dir {tmp}/n --symbols A --memory-budget 1.5G",
        2,
        "--memory-budget",
    ),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --name a/b", 2, "--name"),
    ("node --exchange-url {ws} --data-dir {tmp}/n --symbols A --name ", 2, "--name"),
    # status
    ("status", 2, "--url"),
    ("status --url ", 2, "--url"),
    ("status --url ftp://127.0.0.1:1", 2, "--url"),
    ("status --url http://h:99999", 2, "--url"),
    ("status --url http://u:secret@h:1", 2, "--url"),
    ("status --url {http} --timeout 0", 2, "--timeout"),
    ("status --url {http} --timeout abc", 2, "--timeout"),
    ("status --url {http} --timeout nan", 2, "--timeout"),
    ("status --url {http} --bogus", 2, "--bogus"),
    ("status --url {http}", 1, "{http}: cannot connect"),
    ("status --url {http} --json", 1, "{http}: cannot connect"),
    # kill
    ("kill --url {http}", 2, "--reason"),
    ("kill --reason x", 2, "--url"),
    ("kill --url {http} --reason ", 2, "--reason"),
    ("kill --url {http} --reason " + "x" * 501, 2, "--reason"),
    ("kill --url {http} --reason a\x1bb", 2, "--reason"),
    ("kill --url {http} --reason x", 2, "$STRATEGYLAB_ADMIN_TOKEN or give --admin-token-file"),
    ("kill --url {http} --reason x --admin-token-file {missing}", 2, "--admin-token-file"),
    ("kill --url {http} --reason x --admin-token-file {empty}", 2, "--admin-token-file"),
    ("kill --url {http} --reason x --admin-token t", 2, "--admin-token"),
    ("kill --url ws://127.0.0.1:1/ws --reason x", 2, "--url"),
    ("kill --url {http} --reason x --timeout -1", 2, "--timeout"),
    # node: its trader child (--strategy, --book, --param)
    (
        "node --exchange-url {http} --data-dir {tmp}/n --symbols A --strategy ma_crossover",
        2,
        "--book",
    ),
    ("node --exchange-url {http} --data-dir {tmp}/n --symbols A --book {tmp}/t/b.db", 2, "--book"),
    ("node --exchange-url {http} --data-dir {tmp}/n --symbols A --param fast=2", 2, "--param"),
    (
        (
            "node --exchange-url {http} --data-dir {tmp}/n --symbols A --strategy bogus "
            "--book {tmp}/t/b.db"
        ),
        2,
        "--strategy",
    ),
    (
        (
            "node --exchange-url {http} --data-dir {tmp}/n --symbols A --strategy ma_crossover "
            "--book {tmp}/n/b.db"
        ),
        2,
        "--book",
    ),
    (
        (
            "node --exchange-url {http} --data-dir {tmp}/n --symbols A --strategy ma_crossover "
            "--book {tmp}/t/b.db --param nope=1"
        ),
        2,
        "--param",
    ),
    (
        (
            "node --exchange-url {http} --data-dir {tmp}/n --symbols A --strategy ma_crossover "
            "--book {tmp}/t/b.db --param fast"
        ),
        2,
        "--param",
    ),
    (
        "node --exchange-url {http} --data-dir {tmp}/n --symbols A --strategy ma_crossover --book ",
        2,
        "--book: must not be empty",
    ),
]


def _ticks(n: int) -> list[Tick]:
    return [
        Tick(SYMBOL, seq, 1_700_000_000_000_000_000 + seq * 1_000_000, bid, bid + 0.02, 1.0, 1.0)
        for seq in range(1, n + 1)
        for bid in [99.99 + (seq % 7) * 0.01]
    ]


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The files the catalogue refers to: a real tick store, and wrong things of each kind."""
    root = tmp_path_factory.mktemp("bad-input")

    async def write(path: Path) -> None:
        store = SQLiteTickStore(path)
        await store.open()
        try:
            await store.write(_ticks(20_000))
        finally:
            await store.aclose()

    asyncio.run(write(root / "ticks.db"))
    (root / "empty").write_bytes(b"")
    (root / "dir").mkdir()
    (root / "file").write_text("a file where a directory belongs\n")
    (root / "garbage").write_bytes(b"\x00not a database, not JSON {{\n" * 64)
    (root / "notjson").write_text("this is not json\n")
    port = _closed_port()
    http = f"http://127.0.0.1:{port}"
    return {
        "tmp": str(root),
        "db": str(root / "ticks.db"),
        "empty": str(root / "empty"),
        "dir": str(root / "dir"),
        "file": str(root / "file"),
        "garbage": str(root / "garbage"),
        "notjson": str(root / "notjson"),
        "missing": str(root / "missing"),
        "http": http,
        "ws": f"ws://127.0.0.1:{port}/ws",
        "trade": f"--exchange-url {http} --book {root}/t/book.db --strategy {MA} --symbols A",
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("line", "status", "named"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_exits_with_one_line_naming_the_option(
    places: dict[str, str], line: str, status: int, named: str
) -> None:
    """Bad input: exit 2 (usage) or 1 (operational), no traceback, the last line names the flag."""
    argv = line.format(**places).split(" ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", *argv],
        capture_output=True,
        text=True,
        timeout=45,
        env=env,
        cwd=places["tmp"],
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert named.format(**places) in last, done.stderr
