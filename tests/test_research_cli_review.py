"""The review of `backtest`, `optimize` and `check` (issue 10): each kind of bad input, many forms.

Usage errors (a bad flag value) exit 2 with one line naming the flag as typed; a store or a log
that cannot be used exits 1, naming it; outputs are never replaced without ``--overwrite`` and
never written through a symbolic link.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from strategylab.chaos import CheckInputError, check_sqlite
from strategylab.cli import app
from strategylab.errors import ConfigurationError
from strategylab.market import EmittedLog, SQLiteTickStore, Tick, TickBounds, open_tick_reader

SYMBOL = "AAA"
TICKS = 600
PARAMS = ("--param", "fast=5", "--param", "slow=20")


def _walk(n: int) -> list[Tick]:
    rng = random.Random(7)
    mid, out = 100.0, []
    for seq in range(1, n + 1):
        mid = max(1.0, mid + rng.gauss(0.0, 0.2))
        out.append(Tick(SYMBOL, seq, 1_700_000_000_000_000_000 + seq * 1_000_000, mid - 0.01,
                        mid + 0.01, 1.0, 1.0))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SQLite tick store."""
    path = tmp_path_factory.mktemp("review") / "ticks.db"

    async def write() -> None:
        store = SQLiteTickStore(path)
        await store.open()
        try:
            await store.write(_walk(TICKS))
        finally:
            await store.aclose()

    asyncio.run(write())
    return path


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emitted log of the same ticks."""
    log = EmittedLog(tmp_path_factory.mktemp("review-log") / "emitted.log")
    log.append(_walk(TICKS))
    log.close()
    return log.path


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _one_line_naming(result: Result, status: int, named: str) -> str:
    """The result's last line, after checking the status, no traceback, and ``named`` in it."""
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert named in last, result.output
    return last


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------- 1. --from/--to within 64 bits

BOUNDS = [
    ("--from", "99999999999999999999999"),
    ("--to", "99999999999999999999999"),
    ("--from", "9223372036854775808"),  # 2**63
    ("--from", "0"),
    ("--to", "0"),
    ("--from", "0001-01-01"),
    ("--to", "9999-12-31T23:59:59"),
    ("--from", "1969-12-31T23:59:59"),
    ("--to", "2262-04-12"),
    ("--from", "²"),  # a digit to str.isdigit, not to int()
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["backtest", "optimize"])
@pytest.mark.parametrize(("flag", "value"), BOUNDS)
def test_a_bound_beyond_64_bits_is_a_usage_error_naming_the_flag(
    db: Path, command: str, flag: str, value: str
) -> None:
    """A sequence number outside 1..2**63-1 or a time outside 1970..2262: exit 2, the flag."""
    extra = ["--grid", "fast=5", "--param", "slow=20"] if command == "optimize" else []
    result = _invoke(command, "--db", str(db), "--symbols", SYMBOL, *extra, flag, value)
    last = _one_line_naming(result, 2, f"{flag} {value!r}")
    assert "Overflow" not in last


@pytest.mark.timeout(30)
def test_the_largest_bounds_are_accepted(db: Path) -> None:
    """2**63-1 and the last 64-bit nanosecond are bounds, not errors (no ticks there: exit 2)."""
    result = _invoke("backtest", "--db", str(db), "--symbols", SYMBOL, "--from",
                     str((1 << 63) - 1))  # fmt: skip
    _one_line_naming(result, 2, "no ticks between")
    whole = _invoke("backtest", "--db", str(db), "--symbols", SYMBOL, *PARAMS, "--from",
                    "1970-01-01", "--to", "2262-04-11T23:47:16+00:00", "--json")  # fmt: skip
    assert whole.exit_code == 0, whole.output


@pytest.mark.parametrize("key", ["from_seq", "to_seq", "start_ns", "end_ns"])
@pytest.mark.parametrize("value", [1 << 63, -(1 << 63) - 1, 10**30])
def test_tick_bounds_refuse_what_a_database_cannot_hold(key: str, value: int) -> None:
    """TickBounds names the field of a value beyond 64 bits instead of an OverflowError later."""
    with pytest.raises(ConfigurationError, match=key):
        TickBounds(**{key: value})


# ------------------------------------------------- 2./3. numbers: finite, in range, the flag named

NUMBERS = [
    (flag, value)
    for flag in ("--fee-bps", "--slippage-bps")
    for value in ("nan", "inf", "-inf", "-1", "10000", "1e308")
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["backtest", "optimize"])
@pytest.mark.parametrize(("flag", "value"), NUMBERS)
def test_a_cost_that_is_not_finite_or_in_range_names_the_flag(
    db: Path, command: str, flag: str, value: str
) -> None:
    """--fee-bps/--slippage-bps NaN, infinite, negative or >= 10000: exit 2 naming the flag."""
    extra = ["--grid", "fast=5", "--param", "slow=20"] if command == "optimize" else []
    result = _invoke(command, "--db", str(db), "--symbols", SYMBOL, *extra, flag, value)
    last = _one_line_naming(result, 2, flag)
    assert "_bps" not in last  # never the Python field


OPTIMIZE_NUMBERS = [
    ("--timeout", "inf"),
    ("--timeout", "nan"),
    ("--timeout", "-1"),
    ("--timeout", "0"),
    ("--timeout", "1e300"),
    ("--workers", "0"),
    ("--workers", "99999999999999"),
    ("--top", "0"),
    ("--top", "99999999999999999999999999"),
    ("--seed", "-1"),
    ("--seed", "99999999999999999999999999"),
    ("--random", "0"),
    ("--random", "99999999999"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("flag", "value"), OPTIMIZE_NUMBERS)
def test_an_optimize_number_out_of_range_names_the_flag(db: Path, flag: str, value: str) -> None:
    """Every numeric option of optimize: NaN, infinite, negative, zero or huge: exit 2, named."""
    search = ["--random", "2", "--range", "fast=2:9"] if flag != "--random" else []
    search = search or ["--range", "fast=2:9"]
    result = _invoke("optimize", "--db", str(db), "--symbols", SYMBOL, "--param", "slow=20",
                     *search, flag, value)  # fmt: skip
    assert flag in _one_line_naming(result, 2, flag)


PARAMETERS = [
    ("--param", "fast=nan"),
    ("--param", "fast=inf"),
    ("--param", "fast=-Infinity"),
    ("--param", "fast=99999999999999999999999"),
    ("--grid", "fast=5,nan"),
    ("--grid", "fast=1e999"),
    ("--range", "fast=nan:inf"),
    ("--range", "fast=2:inf"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("flag", "item"), PARAMETERS)
def test_a_parameter_value_that_is_not_finite_names_the_flag_and_item(
    db: Path, flag: str, item: str
) -> None:
    """--param/--grid/--range with NaN, an infinity or a 100-bit integer: exit 2, flag and item."""
    search = {"--param": ["--grid", "slow=20"], "--grid": [], "--range": ["--random", "2"]}[flag]
    result = _invoke("optimize", "--db", str(db), "--symbols", SYMBOL, *search, flag, item)
    assert item in _one_line_naming(result, 2, f"{flag} {item!r}: value")


# ---------------------------------------------- 4. a store that cannot be used: operational, 1


def _stores(root: Path, db: Path) -> dict[str, str]:
    (root / "empty.db").write_bytes(b"")
    (root / "text.db").write_text("not a database\n")
    (root / "truncated.db").write_bytes(db.read_bytes()[:50])
    (root / "dir.db").mkdir()
    with sqlite3.connect(root / "other.db") as conn:
        conn.execute("CREATE TABLE notes (a TEXT)")
    conn.close()
    return {
        "missing": str(root / "missing.db"),
        "empty": str(root / "empty.db"),
        "not SQLite": str(root / "text.db"),
        "truncated": str(root / "truncated.db"),
        "a directory": str(root / "dir.db"),
        "not a tick store": str(root / "other.db"),
        "unreachable": f"postgresql://u:pw@127.0.0.1:{_closed_port()}/d?connect_timeout=2",
    }


KINDS = ["missing", "empty", "not SQLite", "truncated", "a directory", "not a tick store",
         "unreachable"]  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["backtest", "optimize", "check"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_store_that_cannot_be_used_exits_1_naming_it(
    db: Path, emitted: Path, tmp_path: Path, command: str, kind: str
) -> None:
    """Missing, empty, not SQLite, truncated, a directory, not a tick store, unreachable: 1."""
    store = _stores(tmp_path, db)[kind]
    if command == "check":
        result = _invoke("check", str(emitted), store)
        named = "DB "
    else:
        extra = ["--grid", "fast=5", "--param", "slow=20"] if command == "optimize" else []
        result = _invoke(command, "--db", store, "--symbols", SYMBOL, *extra)
        named = "--db "
    last = _one_line_naming(result, 1, named)
    assert "pw" not in last  # the password is never shown


@pytest.mark.timeout(30)
def test_the_help_states_the_exit_statuses() -> None:
    """backtest and optimize say that an unusable store exits 1; check says what -shm may do."""
    for command in ("backtest", "optimize"):
        text = " ".join(_invoke(command, "--help").output.split())
        assert "the store cannot be opened or used" in text, text
    check = " ".join(_invoke("check", "--help").output.split())
    assert "may still update the -shm file" in check


# ------------------------------------------------------ 5. an emitted log that is not one


def _logs(root: Path, db: Path, emitted: Path) -> dict[str, tuple[Path, str]]:
    good = emitted.read_bytes()
    (root / "empty.log").write_bytes(b"")
    (root / "short.log").write_bytes(b"\x00\x01")
    (root / "garbage.log").write_bytes(bytes(random.Random(3).randrange(256) for _ in range(5000)))
    (root / "torn.log").write_bytes(good[:100])  # the first record cut short
    (root / "undecodable.log").write_bytes(b"\x00\x00\x00\x03\xc1\xc1\xc1")
    (root / "dir.log").mkdir()
    return {
        "empty": (root / "empty.log", "(empty: 0 bytes)"),
        "shorter than a length": (root / "short.log", "less than one record"),
        "random bytes": (root / "garbage.log", "no complete record"),
        "a torn first record": (root / "torn.log", "no complete record"),
        "an undecodable first record": (root / "undecodable.log", "does not decode"),
        "the tick store": (db, "no complete record"),
        "a directory": (root / "dir.log", "(a directory)"),
    }


LOGS = ["empty", "shorter than a length", "random bytes", "a torn first record",
        "an undecodable first record", "the tick store", "a directory"]  # fmt: skip


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", LOGS)
def test_an_emitted_log_that_is_not_one_exits_1_naming_it(
    db: Path, emitted: Path, tmp_path: Path, kind: str
) -> None:
    """check EMITTED DB where EMITTED holds no complete, decodable record: exit 1, one line."""
    path, why = _logs(tmp_path, db, emitted)[kind]
    result = _invoke("check", str(path), str(db))
    last = _one_line_naming(result, 1, f"EMITTED {path}: not an emitted log")
    assert why in last
    assert "integrity" not in result.output


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["empty", "random bytes", "the tick store"])
async def test_check_store_refuses_a_file_that_is_not_an_emitted_log(
    db: Path, emitted: Path, tmp_path: Path, kind: str
) -> None:
    """The library, too: CheckInputError, never a report of 0 emitted ticks."""
    path, _ = _logs(tmp_path, db, emitted)[kind]
    with pytest.raises(CheckInputError, match="not an emitted log"):
        await check_sqlite(path, db)


@pytest.mark.timeout(30)
def test_a_real_emitted_log_still_checks_clean(db: Path, emitted: Path) -> None:
    """The good log against its store: exit 0 (the refusals above are not false alarms)."""
    result = _invoke("check", str(emitted), str(db))
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------- 6. store names and URLs


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["backtest", "check"])
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://x:PW@127.0.0.1:{port}/t",
        "postgres://x:PW@127.0.0.1:{port}/t",
        "postgresql://x@127.0.0.1:{port}/t?password=PW",
    ],
)
def test_a_postgres_url_is_shown_without_its_password(
    emitted: Path, command: str, url: str
) -> None:
    """The --db/DB value is shown as the URL, user and host but never the password."""
    store = url.format(port=_closed_port())
    if command == "check":
        result = _invoke("check", str(emitted), store)
    else:
        result = _invoke("backtest", "--db", store, "--symbols", SYMBOL)
    last = _one_line_naming(result, 1, "x@127.0.0.1:")
    assert "PW" not in last
    assert "'postgres'" not in last


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["backtest", "optimize", "check"])
@pytest.mark.parametrize(
    ("store", "named"),
    [
        ("mysql://x", "unsupported URL scheme 'mysql'"),
        ("mysql://u:PW@h/d", "mysql://u@h/d: unsupported URL scheme"),
        ("sqlite:///tmp/x.db", "unsupported URL scheme 'sqlite'"),
        ("file:///tmp/x.db", "unsupported URL scheme 'file'"),
        ("http://127.0.0.1:1/", "unsupported URL scheme 'http'"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
    ],
)
def test_a_value_that_cannot_name_a_store_is_a_usage_error(
    emitted: Path, command: str, store: str, named: str
) -> None:
    """An empty value, or a URL other than postgresql://: exit 2, the flag and the reason."""
    if command == "check":
        result = _invoke("check", str(emitted), store)
        flag = "DB"
    else:
        extra = ["--grid", "fast=5", "--param", "slow=20"] if command == "optimize" else []
        result = _invoke(command, "--db", store, "--symbols", SYMBOL, *extra)
        flag = "--db"
    last = _one_line_naming(result, 2, named)
    assert flag in last
    assert "PW" not in last
    assert "'.'" not in last


def test_open_tick_reader_names_a_postgres_store_by_its_url() -> None:
    """The reader's name is the URL without its password, not the component name."""
    reader = open_tick_reader("postgresql://x:PW@127.0.0.1:1/t")
    assert reader.name == "postgresql://x@127.0.0.1:1/t"


# ------------------------------------------------------------------ 7. outputs and --overwrite

OUTPUTS = [("--trades-out", "t.csv"), ("--equity-out", "e.parquet"), ("--plot", "p.png")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flag", "name"), OUTPUTS)
def test_an_existing_output_is_refused_without_overwrite(
    db: Path, tmp_path: Path, flag: str, name: str
) -> None:
    """An output file that exists: exit 2 naming the flag, the file kept byte for byte."""
    target = tmp_path / name
    target.write_bytes(b"the user's own file")
    result = _invoke("backtest", "--db", str(db), "--symbols", SYMBOL, *PARAMS, flag, str(target))
    _one_line_naming(result, 2, f"{flag} {str(target)!r}: exists; give --overwrite to replace it")
    assert target.read_bytes() == b"the user's own file"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flag", "name"), OUTPUTS)
def test_overwrite_replaces_an_existing_output(
    db: Path, tmp_path: Path, flag: str, name: str
) -> None:
    """With --overwrite the file is replaced by the backtest's output."""
    target = tmp_path / name
    target.write_bytes(b"the user's own file")
    result = _invoke("backtest", "--db", str(db), "--symbols", SYMBOL, *PARAMS, flag,
                     str(target), "--overwrite")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert target.read_bytes() != b"the user's own file"
    assert target.stat().st_size > 100


@pytest.mark.timeout(60)
def test_overwrite_replaces_per_symbol_files_too(db: Path, tmp_path: Path) -> None:
    """Several symbols' NAME.SYMBOL files: refused when one exists, replaced with --overwrite."""
    existing = tmp_path / f"t.{SYMBOL}.csv"
    existing.write_text("old\n")
    args = ["backtest", "--db", str(db), "--symbols", f"{SYMBOL},ZZZ", *PARAMS]
    refused = _invoke(*args, "--trades-out", str(tmp_path / "t.csv"))
    _one_line_naming(refused, 2, "exists; give --overwrite")
    assert existing.read_text() == "old\n"
    # ZZZ has no ticks: the run stops there, after the output check passed with --overwrite.
    passed = _invoke(*args, "--trades-out", str(tmp_path / "t.csv"), "--overwrite")
    _one_line_naming(passed, 2, "--symbols 'ZZZ'")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-file"])
def test_an_output_is_never_written_through_a_symlink(
    db: Path, tmp_path: Path, overwrite: list[str], *, dangling: bool
) -> None:
    """A link at the output path, dangling or not, is refused even with --overwrite."""
    victim = tmp_path / "victim.csv"
    if not dangling:
        victim.write_text("precious\n")
    link = tmp_path / "t.csv"
    link.symlink_to(victim)
    result = _invoke("backtest", "--db", str(db), "--symbols", SYMBOL, *PARAMS,
                     "--trades-out", str(link), *overwrite)  # fmt: skip
    _one_line_naming(result, 2, "is a symbolic link")
    assert link.is_symlink()
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "precious\n"


# ------------------------------------------------------------------------- 8. --help metavars


@pytest.mark.parametrize("command", ["backtest", "optimize", "check"])
def test_help_shows_no_python_types(command: str) -> None:
    """No <list[str]>, <int>, <float>, <str> or <int range> in --help: metavars name the form."""
    text = _invoke(command, "--help").output.partition("Options:")[2]
    for python in ("list[", "<int", "<float", "<str>", "<path>"):
        assert python not in text.lower(), text


def test_optimize_help_names_the_search_forms_and_defaults() -> None:
    """--grid NAME=V1,V2,..., --range NAME=LOW:HIGH, and --random's default is shown."""
    text = " ".join(_invoke("optimize", "--help").output.split())
    assert "--grid NAME=V1,V2,..." in text
    assert "--range NAME=LOW:HIGH" in text
    random_help = text.split("--random N", 1)[1].split("--range NAME", 1)[0]
    assert "[default: (grid search)" in random_help
