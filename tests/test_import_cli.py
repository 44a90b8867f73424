"""``strategylab import``: what it writes, how re-runs and later files meet the stored ticks, and
every kind of bad input refused with the file, row and column named and the right exit status."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from rich.console import Console
from typer.testing import CliRunner

from strategylab._import_cli import _Progress
from strategylab.cli import app
from strategylab.market import SQLiteTickReader, SQLiteTickStore, Tick
from strategylab.research import ImportProgress, _import, read_columnar

HEADER = "ts,bid,ask,bid_size,ask_size\n"


def _quotes(start: int, n: int) -> str:
    """``n`` quote rows, one a second from ``2024-01-01T00:00:<start>Z``."""
    return "".join(
        f"2024-01-01T00:{k // 60:02d}:{k % 60:02d}Z,{100 + k / 100:.2f},{100.05 + k / 100:.2f},"
        f"{k + 1},{k + 2}\n"
        for k in range(start, start + n)
    )


def _invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["import", *map(str, args)])


def _stored(db: Path, symbol: str) -> list[Tick]:
    async def read() -> list[Tick]:
        reader = SQLiteTickReader(db, verify=False)
        await reader.open()
        try:
            return await reader.read(symbol)
        finally:
            await reader.aclose()

    return asyncio.run(read())


@pytest.fixture
def quotes(tmp_path: Path) -> Path:
    path = tmp_path / "quotes.csv"
    path.write_text(HEADER + _quotes(0, 50))
    return path


def test_import_writes_quotes_with_seqs_from_1(tmp_path: Path, quotes: Path) -> None:
    """Every row becomes a tick of the symbol, seq 1.. in file order, prices and sizes kept."""
    db = tmp_path / "ticks.db"
    result = _invoke(quotes, "--db", db, "--symbol", "EURUSD", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["kind"], report["written"], report["first_seq"], report["last_seq"]) == (
        "quotes",
        50,
        1,
        50,
    )
    ticks = _stored(db, "EURUSD")
    assert [t.seq for t in ticks] == list(range(1, 51))
    assert (ticks[0].ts, ticks[0].bid, ticks[0].ask, ticks[0].bid_size) == (
        1_704_067_200_000_000_000,
        100.0,
        100.05,
        1.0,
    )
    assert ticks[-1].ts - ticks[0].ts == 49 * 1_000_000_000


def test_import_updates_the_columnar_snapshot(tmp_path: Path, quotes: Path) -> None:
    """After an import the columnar read path serves the same rows as SQLite."""
    db = tmp_path / "ticks.db"
    assert _invoke(quotes, "--db", db, "--symbol", "X").exit_code == 0
    snapshot = read_columnar(db, "X")
    assert snapshot is not None
    assert snapshot.rows["seq"].tolist() == list(range(1, 51))


def test_rerun_writes_nothing_and_a_later_file_appends(tmp_path: Path, quotes: Path) -> None:
    """The same import twice stores each row once; a later file continues the seqs."""
    db = tmp_path / "ticks.db"
    assert _invoke(quotes, "--db", db, "--symbol", "X").exit_code == 0
    again = _invoke(quotes, "--db", db, "--symbol", "X", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["written"] == 0
    assert json.loads(again.stdout)["already_stored"] == 50
    later = tmp_path / "later.csv"
    later.write_text(HEADER + _quotes(50, 20))
    appended = _invoke(later, "--db", db, "--symbol", "X", "--json")
    assert json.loads(appended.stdout)["first_seq"] == 51
    ticks = _stored(db, "X")
    assert [t.seq for t in ticks] == list(range(1, 71))
    assert all(a.ts < b.ts for a, b in itertools.pairwise(ticks))


def test_a_grown_file_appends_only_its_new_rows(tmp_path: Path) -> None:
    """A file that repeats the stored ticks and goes on: the repeat skipped, the rest appended."""
    db = tmp_path / "ticks.db"
    first, grown = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(HEADER + _quotes(0, 30))
    grown.write_text(HEADER + _quotes(10, 40))  # rows 10..49: 20 stored, 20 new
    assert _invoke(first, "--db", db, "--symbol", "X").exit_code == 0
    result = _invoke(grown, "--db", db, "--symbol", "X", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["already_stored"], report["written"], report["first_seq"]) == (20, 20, 31)
    assert len(_stored(db, "X")) == 50


def test_parquet_with_epoch_ms_and_a_pandas_index(tmp_path: Path) -> None:
    """Parquet: epoch numbers with --ts-unit; a pandas DatetimeIndex found without --ts-col."""
    epoch = tmp_path / "epoch.parquet"
    pq.write_table(pa.table({"t": [1_000, 2_000], "price": [10.0, 11.0], "qty": [1.0, 2.0]}), epoch)
    db = tmp_path / "ticks.db"
    result = _invoke(
        epoch, "--db", db, "--symbol", "T", "--ts-col", "t", "--ts-unit", "ms",
        "--half-spread", "0.5", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ticks = _stored(db, "T")
    assert [(t.ts, t.bid, t.ask, t.bid_size) for t in ticks] == [
        (1_000_000_000, 9.5, 10.5, 1.0),
        (2_000_000_000, 10.5, 11.5, 2.0),
    ]


def test_naive_times_are_local_in_tz(tmp_path: Path) -> None:
    """A time without a zone is read in --tz (New York in winter: UTC-5)."""
    path = tmp_path / "bars.csv"
    path.write_text("Date,Close\n2024-01-02 09:30:00,10\n2024-01-02 09:31:00,11\n")
    db = tmp_path / "ticks.db"
    result = _invoke(path, "--db", db, "--symbol", "Y", "--tz", "America/New_York")
    assert result.exit_code == 0, result.output
    assert _stored(db, "Y")[0].ts == 1_704_205_800_000_000_000  # 14:30 UTC


def test_bar_offset_moves_bars_to_their_close(tmp_path: Path) -> None:
    """--bar-offset 1d: a daily bar stamped at its date is quoted at the next midnight."""
    path = tmp_path / "bars.csv"
    path.write_text("Date,Open,High,Low,Close\n2024-01-02,1,2,0.5,1.5\n")
    db = tmp_path / "ticks.db"
    assert _invoke(path, "--db", db, "--symbol", "Y", "--bar-offset", "1d").exit_code == 0
    assert _stored(db, "Y")[0].ts == 1_704_240_000_000_000_000  # 2024-01-03T00:00Z


# (file content, extra options, exit status, texts stderr must contain)
BAD: list[tuple[str, list[str], int, list[str]]] = [
    (
        HEADER + _quotes(0, 3) + "2024-01-01T00:00:09Z,1.2,1.1,1,1\n",
        [],
        2,
        ["row 4 (line 5)", "column 'bid'", "crossed"],
    ),
    (
        HEADER + _quotes(0, 3) + "2024-01-01T00:00:09Z,abc,1.1,1,1\n",
        [],
        2,
        ["row 4", "column 'bid'", "'abc' is not a number"],
    ),
    (
        HEADER + _quotes(0, 3) + "2024-01-01T00:00:09Z,,1.1,1,1\n",
        [],
        2,
        ["row 4", "column 'bid'", "missing value"],
    ),
    (
        HEADER + _quotes(0, 3) + "2024-01-01T00:00:09Z,NaN,1.1,1,1\n",
        [],
        2,
        ["row 4", "column 'bid'", "missing value"],
    ),
    (
        HEADER + _quotes(0, 3) + "2024-01-01T00:00:09Z,inf,inf,1,1\n",
        [],
        2,
        ["row 4", "column 'bid'", "not a finite number"],
    ),
    (
        HEADER + _quotes(5, 3) + _quotes(0, 1),
        [],
        2,
        ["row 4", "column 'ts'", "before the previous row"],
    ),
    (
        HEADER + _quotes(0, 2) + "yesterday,1,2,1,1\n",
        [],
        2,
        ["row 3", "column 'ts'", "'yesterday' is not an ISO-8601 time"],
    ),
    (
        HEADER + _quotes(0, 2) + "2024-01-01T00:00:09Z,1,2,-1,1\n",
        [],
        2,
        ["row 3", "column 'bid_size'", "must be >= 0"],
    ),
    (
        HEADER + _quotes(0, 2) + "2024-01-01T00:00:09Z,0,2,1,1\n",
        [],
        2,
        ["row 3", "column 'bid'", "must be > 0"],
    ),
    ("ts,bid\n2024-01-01T00:00:00Z,1\n", [], 2, ["cannot tell quotes, trades or bars", "--kind"]),
    ("ts,bid\n2024-01-01T00:00:00Z,1\n", ["--kind", "quotes"], 2, ["no ask column", "--ask-col"]),
    (HEADER + _quotes(0, 2), ["--bid-col", "BidPx"], 2, ["--bid-col='BidPx': no such column"]),
    ("when,bid,ask\n2024-01-01T00:00:00Z,1,2\n", [], 2, ["no timestamp column", "--ts-col"]),
    ("ts,bid,ask\n1704067200,1,2\n", [], 2, ["row 1", "--ts-unit"]),
    (
        "Date,Open,High,Low,Close\n2024-01-02,1,2,0.5,3\n",
        [],
        2,
        ["row 1", "column 'High'", "close 3.0 > high 2.0"],
    ),
    (
        "Date,Close\n2024-01-02,1\n2024-01-02,2\n",
        [],
        2,
        ["row 2", "column 'Date'", "two bars never share a time"],
    ),
    (HEADER + _quotes(0, 2), ["--ts-unit", "hours"], 2, ["--ts-unit 'hours'"]),
    (HEADER + _quotes(0, 2), ["--tz", "Mars/Olympus"], 2, ["--tz 'Mars/Olympus'"]),
    (HEADER + _quotes(0, 2), ["--half-spread", "-1"], 2, ["--half-spread -1.0"]),
    (HEADER + _quotes(0, 2), ["--bar-offset", "soon"], 2, ["--bar-offset 'soon'"]),
    (HEADER + _quotes(0, 2), ["--format", "xlsx"], 2, ["--format 'xlsx'"]),
    (HEADER + _quotes(0, 2), ["--price-col", "bid", "--bid-col", "bid"], 2, ["choose one kind"]),
]


@pytest.mark.parametrize(("content", "options", "status", "texts"), BAD)
def test_bad_input_is_refused_naming_file_row_and_column(
    tmp_path: Path, content: str, options: list[str], status: int, texts: list[str]
) -> None:
    """One line on stderr naming the problem, the exit status, and no store written."""
    path = tmp_path / "bad.csv"
    path.write_text(content)
    db = tmp_path / "ticks.db"
    result = _invoke(path, "--db", db, "--symbol", "X", *options)
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    for text in texts:
        assert text in result.stderr
    assert not db.exists()  # nothing created, nothing half-imported


def test_bad_row_late_in_a_large_file_writes_nothing(tmp_path: Path) -> None:
    """A bad row after many good batches: refused before the first write, store unchanged."""
    db = tmp_path / "ticks.db"
    good = tmp_path / "good.csv"
    good.write_text(HEADER + _quotes(0, 10))
    assert _invoke(good, "--db", db, "--symbol", "X").exit_code == 0
    rows = [
        f"{1_704_067_300 + i},{100 + (i % 7) / 10:.1f},{101 + (i % 7) / 10:.1f},1,1\n"
        for i in range(200_000)
    ]
    rows[150_000] = "1704217300,1,x,1,1\n"
    big = tmp_path / "big.csv"
    big.write_text(HEADER + "".join(rows))
    result = _invoke(big, "--db", db, "--symbol", "X", "--ts-unit", "s")
    assert result.exit_code == 2, result.output
    assert "row 150001 (line 150002), column 'ask': 'x' is not a number" in result.stderr
    assert "nothing was written" in result.stderr
    assert len(_stored(db, "X")) == 10


def test_overlapping_other_data_is_refused(tmp_path: Path, quotes: Path) -> None:
    """A file over the stored period with other prices: refused, naming the row and column."""
    db = tmp_path / "ticks.db"
    assert _invoke(quotes, "--db", db, "--symbol", "X").exit_code == 0
    other = tmp_path / "other.csv"
    other.write_text(HEADER + _quotes(0, 5).replace("100.02", "99.99"))
    result = _invoke(other, "--db", db, "--symbol", "X")
    assert result.exit_code == 2, result.output
    assert "row 3 (line 4), column 'bid'" in result.stderr
    assert "differs from the stored tick 'X' seq 3" in result.stderr
    inside = tmp_path / "inside.csv"
    inside.write_text(HEADER + "2024-01-01T00:00:10.5Z,1,2,1,1\n")
    result = _invoke(inside, "--db", db, "--symbol", "X")
    assert result.exit_code == 2, result.output
    assert "row 1 (line 2), column 'ts'" in result.stderr
    assert "no stored tick has that time" in result.stderr
    assert len(_stored(db, "X")) == 50


def test_a_db_that_is_not_a_tick_store_is_refused_untouched(tmp_path: Path, quotes: Path) -> None:
    """An SQLite file of something else, or not SQLite at all: exit 2, the file unchanged."""
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    for db in (other, text):
        before = db.read_bytes()
        result = _invoke(quotes, "--db", db, "--symbol", "X")
        assert result.exit_code == 2, result.output
        assert f"--db {db}" in result.stderr
        assert "not" in result.stderr
        assert db.read_bytes() == before


def test_missing_file_and_missing_directory_are_usage_errors(tmp_path: Path, quotes: Path) -> None:
    """No such FILE, or a --db in a directory that does not exist: exit 2, named."""
    result = _invoke(tmp_path / "nope.csv", "--db", tmp_path / "t.db", "--symbol", "X")
    assert result.exit_code == 2
    assert "nope.csv: no such file" in result.stderr
    result = _invoke(quotes, "--db", tmp_path / "no" / "t.db", "--symbol", "X")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_another_writer_of_the_symbol_stops_the_import(tmp_path: Path, quotes: Path) -> None:
    """Seqs taken meanwhile by another writer: exit 1, and the message says what is kept."""
    db = tmp_path / "ticks.db"

    async def plant() -> None:
        store = SQLiteTickStore(db)
        await store.open()
        try:
            await store.write([Tick("X", 1, 1, 1.0, 2.0, 0.0, 0.0)])
        finally:
            await store.aclose()

    asyncio.run(plant())
    # The stored tick is at ts=1 ns: the file starts after it, so seqs 2.. are planned; a
    # second planted row at seq 2 (written between check and write) is the other writer.
    original = _import._write

    async def racing(*args, **kwargs):  # type: ignore[no-untyped-def]
        store = SQLiteTickStore(db)
        await store.open()
        try:
            await store.write([Tick("X", 2, 2, 1.0, 2.0, 0.0, 0.0)])
        finally:
            await store.aclose()
        return await original(*args, **kwargs)

    _import._write = racing
    try:
        result = _invoke(quotes, "--db", db, "--symbol", "X")
    finally:
        _import._write = original
    assert result.exit_code == 1, result.output
    assert "changed during the import" in result.stderr
    assert len(_stored(db, "X")) == 2


def test_the_progress_bar_draws_both_passes_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal: a bar for the check and one for the write; elsewhere: nothing at all."""
    for terminal in (True, False):
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal, width=120)
        with _Progress(console, tmp_path / "q.csv", "X") as show:
            show(ImportProgress(phase="check", done=512, total=1024, unit="bytes"))
            show(ImportProgress(phase="write", done=10, total=20, unit="rows"))
        text = out.getvalue()
        if terminal:
            assert "checking q.csv" in text
            assert "writing X" in text
            assert "10 / 20 rows" in text
        else:
            assert text == ""


def test_rows_appended_after_the_check_are_not_written(tmp_path: Path, quotes: Path) -> None:
    """The file grows between the check pass and the write pass: only checked rows are stored;
    exit 1 says the appended ones were left out and which ticks are kept."""
    db = tmp_path / "ticks.db"
    original = _import._write

    async def growing(*args, **kwargs):  # type: ignore[no-untyped-def]
        with quotes.open("a") as f:
            f.write(_quotes(50, 3))
        return await original(*args, **kwargs)

    _import._write = growing
    try:
        result = _invoke(quotes, "--db", db, "--symbol", "X")
    finally:
        _import._write = original
    assert result.exit_code == 1, result.output
    assert "3 rows appended, not written" in result.stderr
    assert "kept: 50 ticks, seq 1..50" in result.stderr
    assert [t.seq for t in _stored(db, "X")] == list(range(1, 51))
    again = _invoke(quotes, "--db", db, "--symbol", "X", "--json")  # a re-run takes the rest
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["written"] == 3


def test_an_empty_file_into_a_new_store_creates_nothing_and_warns_of_nothing(
    tmp_path: Path,
) -> None:
    source = tmp_path / "empty.csv"
    source.write_text(HEADER)
    db = tmp_path / "new.db"
    result = _invoke(source, "--db", db, "--symbol", "X")
    assert result.exit_code == 0, result.output
    assert "0 ticks written" in result.stdout
    assert result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv"]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ctrl_c_while_writing_exits_130_naming_what_the_store_keeps(tmp_path: Path) -> None:
    """SIGINT in the write pass: no traceback, exit 130, and the ticks it says are kept are
    exactly the ones in the store (a write in flight that committed counts); a re-run resumes."""
    source = tmp_path / "big.csv"
    with source.open("w") as f:
        f.write(HEADER)
        for chunk in range(0, 400_000, 20_000):
            f.write(
                "".join(
                    f"{1_704_067_200 + k}.5,{100 + k % 97 / 100:.2f},{101 + k % 97 / 100:.2f},1,2\n"
                    for k in range(chunk, chunk + 20_000)
                )
            )
    db = tmp_path / "big.db"
    command = [sys.executable, "-m", "strategylab", "import", str(source), "--db", str(db)]
    command += ["--symbol", "X", "--ts-unit", "s"]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:  # until the first chunk has committed
            if db.exists():
                with (
                    contextlib.suppress(sqlite3.Error),
                    sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn,
                ):
                    if conn.execute("SELECT count(*) FROM ticks").fetchone()[0]:
                        break
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    kept = len(_stored(db, "X"))
    assert 0 < kept < 400_000
    assert f"interrupted; kept: {kept:,} ticks, seq 1..{kept}" in err
    rerun = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [*command, "--json"], check=False, capture_output=True, text=True, timeout=60
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["written"] == 400_000 - kept
