"""`strategylab demo` never harms the user's data, and its numbers do not mislead.

The data directory: the demo clears only what its marker says it created, never follows a
symlink while clearing, and refuses (exit 2, one line) a non-empty directory it did not create.
The numbers: "stored" never above "emitted", rates over a recent window, the link's real state
during a partition, tables that fit 80 columns without cutting a number.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from strategylab._demo_dir import MARKER, OWNED, DataDirError, prepare_data_dir
from strategylab._demo_live import RATE_WINDOW, Progress
from strategylab._demo_report import integrity_tables, print_report, print_trading
from strategylab._layout import DataLayout
from strategylab.chaos import IntegrityReport, SymbolIntegrity, TickSet

VICTIM = b"precious, not the demo's\n"

# --------------------------------------------------------------------------- the data directory


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the data directory holding a file whose content must survive."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_bytes(VICTIM)
    return path


def _intact(outside: Path) -> bool:
    return (outside / "victim").read_bytes() == VICTIM


def _marked(data: Path, owned: object = OWNED) -> Path:
    """A data directory as an earlier run left it: the marker and some of what it created."""
    data.mkdir()
    (data / MARKER).write_text(json.dumps({"tool": "strategylab demo", "owned": owned}))
    (data / "node").mkdir()
    (data / "node" / "ticks.db").write_bytes(b"old run")
    (data / "exchange.log").write_text("old run\n")
    return data


@pytest.mark.timeout(60)
def test_demo_refuses_a_non_empty_directory_it_did_not_create(tmp_path: Path) -> None:
    """The real command: exit 2, one line naming the directory, nothing removed or written."""
    data = tmp_path / "mine"
    (data / "node").mkdir(parents=True)
    (data / "node" / "thesis.tex").write_bytes(VICTIM)
    (data / "exchange").mkdir()
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", "demo", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(data) in lines[0]
    assert MARKER in lines[0]
    assert (data / "node" / "thesis.tex").read_bytes() == VICTIM
    assert sorted(p.name for p in data.iterdir()) == ["exchange", "node"]


def test_a_new_directory_is_created_private_with_the_marker(tmp_path: Path) -> None:
    """A missing data directory is created 0700 and marked as the demo's."""
    data = tmp_path / "a" / "b"
    prepare_data_dir(data)
    assert data.stat().st_mode & 0o777 == 0o700
    marker = json.loads((data / MARKER).read_text())
    assert marker == {"tool": "strategylab demo", "owned": list(OWNED)}


def test_an_empty_directory_is_adopted(tmp_path: Path) -> None:
    """An existing empty directory (say, from mktemp -d) is marked and used."""
    data = tmp_path / "empty"
    data.mkdir()
    prepare_data_dir(data)
    assert [p.name for p in data.iterdir()] == [MARKER]


def test_only_what_the_marker_owns_is_cleared(tmp_path: Path) -> None:
    """The previous run's entries go; a file the user put beside them stays."""
    data = _marked(tmp_path / "data")
    (data / "notes.txt").write_bytes(VICTIM)
    prepare_data_dir(data)
    assert sorted(p.name for p in data.iterdir()) == [MARKER, "notes.txt"]
    assert (data / "notes.txt").read_bytes() == VICTIM


def test_clearing_never_follows_a_symlink(tmp_path: Path, outside: Path) -> None:
    """Links inside an owned directory, or standing for one, are removed; their targets stay."""
    data = _marked(tmp_path / "data")
    (data / "node" / "link-to-file").symlink_to(outside / "victim")
    (data / "node" / "link-to-dir").symlink_to(outside)
    (data / "exchange").symlink_to(outside)
    (data / "trading.log").symlink_to(outside / "victim")
    prepare_data_dir(data)
    assert [p.name for p in data.iterdir()] == [MARKER]
    assert _intact(outside)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_a_marker_cannot_name_anything_but_the_demo_s_own_entries(
    tmp_path: Path, outside: Path
) -> None:
    """Names outside the demo's own list ("..", absolute paths, user files) are ignored."""
    data = _marked(tmp_path / "data", owned=["node", "../outside", str(outside), "notes.txt"])
    (data / "notes.txt").write_bytes(VICTIM)
    (data / "exchange.log").unlink()
    prepare_data_dir(data)
    assert _intact(outside)
    assert (data / "notes.txt").read_bytes() == VICTIM
    assert not (data / "node").exists()


def test_an_owned_name_the_marker_does_not_list_is_refused(tmp_path: Path) -> None:
    """An entry in the way that the marker does not claim is the user's: refused, kept."""
    data = _marked(tmp_path / "data", owned=["node"])
    with pytest.raises(DataDirError, match=r"exchange\.log: in the way"):
        prepare_data_dir(data)
    assert (data / "exchange.log").read_text() == "old run\n"


@pytest.mark.parametrize(
    "marker",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('{"tool": "someone else", "owned": ["node"]}', id="other-tool"),
        pytest.param('{"tool": "strategylab demo", "owned": "node"}', id="owned-not-a-list"),
        pytest.param('["node"]', id="not-an-object"),
    ],
)
def test_a_marker_that_is_not_the_demo_s_is_refused(tmp_path: Path, marker: str) -> None:
    """A damaged or foreign marker clears nothing."""
    data = _marked(tmp_path / "data")
    (data / MARKER).write_text(marker)
    with pytest.raises(DataDirError, match="not a marker written by"):
        prepare_data_dir(data)
    assert (data / "node" / "ticks.db").read_bytes() == b"old run"


def test_a_symlinked_marker_is_not_trusted(tmp_path: Path, outside: Path) -> None:
    """A marker that is a symlink (to a real marker elsewhere) does not make a directory ours."""
    elsewhere = _marked(tmp_path / "elsewhere")
    data = tmp_path / "data"
    data.mkdir()
    (data / "node").mkdir()
    (data / "node" / "work").write_bytes(VICTIM)
    (data / MARKER).symlink_to(elsewhere / MARKER)
    with pytest.raises(DataDirError):
        prepare_data_dir(data)
    assert (data / "node" / "work").read_bytes() == VICTIM
    assert _intact(outside)


def test_a_symlink_or_a_file_as_the_data_directory_is_refused(
    tmp_path: Path, outside: Path
) -> None:
    """--data-dir itself must be a real directory."""
    link = tmp_path / "link"
    link.symlink_to(outside)
    with pytest.raises(DataDirError, match="a symlink"):
        prepare_data_dir(link)
    with pytest.raises(DataDirError, match="not a directory"):
        prepare_data_dir(outside / "victim")
    assert _intact(outside)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


# ---------------------------------------------------------------------------------- the numbers


def _status(stored: int, *, connected: bool = True) -> dict[str, object]:
    return {"event": "status", "ticks_stored": stored, "connected": connected, "reconnects": 0}


def _rows(progress: Progress, now: float) -> dict[str, str]:
    """The live screen as {label: value}, rendered the way a terminal shows it."""
    console = Console(width=80, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        console.print(progress.render(now))
    rows: dict[str, str] = {}
    for line in capture.get().splitlines():
        label, _, value = line.partition("  ")
        if label.strip():
            rows[label.strip()] = value.strip()
    return rows


def _number(text: str) -> int:
    return int(text.split(maxsplit=1)[0].replace(",", ""))


def test_stored_is_not_shown_above_emitted_when_a_status_line_overtakes_a_poll() -> None:
    """The node's newer count (1,000) arrives while the exchange is asked; the exchange answers
    950: the screen pairs 950 with the count read before asking (900), never with 1,000."""
    progress = Progress(total=10_000)
    progress.on_node_status(_status(900), now=1.0)
    asked_with = progress.stored  # the poll is sent
    progress.on_node_status(_status(1_000), now=1.1)  # overtakes the answer
    progress.on_exchange_status({"ticks_emitted": 950}, now=1.2, stored_before=asked_with)
    rows = _rows(progress, now=1.2)
    assert progress.stored > 950  # what the old screen showed as "stored"
    assert _number(rows["stored by the node"]) == 900
    assert _number(rows["emitted by the exchange"]) == 950


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["emit", "store", "status", "ask", "answer"]),
                          st.integers(1, 500)), max_size=60))  # fmt: skip
def test_stored_never_exceeds_emitted_whatever_the_interleaving(
    events: list[tuple[str, int]],
) -> None:
    """The exchange emits, the node stores (never more than was emitted), status lines and polls
    interleave at random: the pair on the screen always has stored <= emitted."""
    progress = Progress(total=10**9)
    emitted = stored = 0
    asked: tuple[int, int] | None = None  # (stored read when asking, emitted when answering)
    for now, (kind, n) in enumerate(events):
        if kind == "emit":
            emitted += n
        elif kind == "store":
            stored = min(emitted, stored + n)
        elif kind == "status":
            progress.on_node_status(_status(stored), now=float(now))
        elif kind == "ask":
            asked = (progress.stored, emitted)
        elif asked is not None:  # the exchange answers with its count at answer time
            progress.on_exchange_status({"ticks_emitted": emitted}, float(now), asked[0])
            asked = None
        assert progress.shown_stored <= progress.emitted


def test_rates_are_over_the_recent_window_not_the_lifetime() -> None:
    """After 10 s at 1,000 ticks/s and 3 s of partition, the stored rate is 0, not 769."""
    progress = Progress(total=100_000)
    t = 0.0
    while t <= 10.0:
        progress.on_node_status(_status(int(t * 1000)), now=t)
        progress.on_exchange_status({"ticks_emitted": int(t * 1000)}, t, int(t * 1000))
        t = round(t + 0.25, 2)
    rows = _rows(progress, now=10.0)
    assert f"stored/s, last {RATE_WINDOW:g} s" in rows
    assert _number(rows[f"stored/s, last {RATE_WINDOW:g} s"]) == 1_000
    while t <= 13.0:  # a partition: the exchange goes on, nothing reaches the node
        progress.on_node_status(_status(10_000), now=t)
        progress.on_exchange_status({"ticks_emitted": int(t * 1000)}, t, 10_000)
        t = round(t + 0.25, 2)
    rows = _rows(progress, now=13.0)
    assert _number(rows[f"stored/s, last {RATE_WINDOW:g} s"]) == 0
    assert _number(rows[f"emitted/s, last {RATE_WINDOW:g} s"]) == 1_000


def test_a_rate_is_not_shown_before_there_is_a_window_of_data() -> None:
    """One sample is not a rate."""
    progress = Progress(total=1_000)
    progress.on_node_status(_status(500), now=5.0)
    assert _rows(progress, now=5.0)[f"stored/s, last {RATE_WINDOW:g} s"] == "measuring"


def test_the_link_is_silent_during_a_partition_although_the_node_says_connected() -> None:
    """The node reports connected=True (it has not declared the feed stale): the screen says
    the link is silent, and for how long."""
    progress = Progress(total=100_000)
    progress.on_exchange_status({"ticks_emitted": 5_000, "generating": True}, 0.0, 0)
    progress.on_node_status(_status(4_000), now=0.0)
    progress.on_node_status(_status(4_500), now=0.25)
    assert progress.link(0.3) == "up, ticks arriving"
    for t in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75):
        progress.on_node_status(_status(4_500, connected=True), now=t)
    link = _rows(progress, now=1.75)["link to the exchange"]
    assert link.startswith("silent for 1.5 s")
    assert "True" not in link


def test_the_link_states_from_the_status_lines() -> None:
    """Down when the node says so; unknown without status lines; idle once everything is in."""
    progress = Progress(total=1_000)
    assert progress.link(0.0).startswith("unknown")
    progress.on_node_status(_status(10, connected=False), now=1.0)
    assert progress.link(1.1).startswith("down, reconnecting")
    assert progress.link(4.0).startswith("unknown (no status from the node for 3.0 s)")
    progress.on_node_status(_status(1_000), now=5.0)
    progress.on_exchange_status({"ticks_emitted": 1_000, "generating": False}, 5.0, 1_000)
    assert progress.link(9.0 - 3.5) == "up, idle (every emitted tick is stored)"


def _report(symbols: list[str], n: int) -> IntegrityReport:
    rows = tuple(
        SymbolIntegrity(
            symbol=s, emitted=n + i, stored=n - i, rows=n, acknowledged=n - 2 * i,
            last_emitted=n, last_stored=n, lost=i * 1_111, missing=i * 22_222,
            duplicated=i * 3, unexpected=i * 4, corrupted=i * 5, quarantined=i * 6,
            invalid_stored=0, gaps=(), gap_count=i * 7,
        )
        for i, s in enumerate(symbols)
    )  # fmt: skip

    def tick_set(name: str) -> TickSet:
        return TickSet(count=sum(getattr(r, name) for r in rows))

    return IntegrityReport(
        emitted=sum(r.emitted for r in rows), stored=sum(r.stored for r in rows),
        rows=sum(r.rows for r in rows), acknowledged=sum(r.acknowledged for r in rows),
        lost=tick_set("lost"), missing=tick_set("missing"), duplicated=tick_set("duplicated"),
        unexpected=tick_set("unexpected"), corrupted=tick_set("corrupted"),
        quarantined=tick_set("quarantined"), invalid_stored=TickSet(count=0), gaps=(),
        gap_count=sum(r.gap_count for r in rows), corruptions=(), symbols=rows,
        require_complete=True, acks_checked=True, elapsed_s=1.25,
    )  # fmt: skip


def _numbers(report: IntegrityReport) -> set[str]:
    """The report's counts of four digits or more, as the tables print them."""
    values = {getattr(r, a) for r in report.symbols for a in ("emitted", "missing", "lost")}
    values |= {report.emitted, report.missing.count, report.lost.count}
    return {f"{n:,}" for n in values if n >= 1_000}


@pytest.mark.parametrize(
    "symbols",
    [
        pytest.param(["BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT"], id="the-demo-s-five"),
        pytest.param([f"SYM{i:02d}-USD" for i in range(12)], id="twelve"),
    ],
)
def test_the_integrity_tables_fit_80_columns_and_keep_every_number(symbols: list[str]) -> None:
    """Ten-million-tick counts, five or twelve symbols: no line over 80, no number cut."""
    report = _report(symbols, 12_345_678)
    console = Console(width=80, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        for table in integrity_tables(console, report):
            console.print(table)
    text = capture.get()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    found = set(re.findall(r"\d{1,3}(?:,\d{3})+", text))
    assert _numbers(report) <= found
    assert all(s in text for s in symbols)


def test_the_whole_report_fits_80_columns() -> None:
    """The feed, recovery and trading tables too, with large counts and long names."""
    console = Console(width=80, file=io.StringIO(), color_system=None)
    stopped = {
        "ticks_stored": 98_765_432, "reconnects": 12_345, "crc_errors": 1_234_567,
        "recovery": {"errors": 123_456, "succeeded": 123_400, "failed": 56,
                     "success_rate": 0.9995, "p50_ms": 1_596.2, "p95_ms": 13_087.9,
                     "p99_ms": 1_234_567.0,
                     "by_type": {"websocket_connection_dropped": 12, "invalid_market_data": 3},
                     "by_strategy": {"retry": 12, "cache_clear_reload": 3},
                     "sla_compliance": {"critical": 0.5}},
    }  # fmt: skip
    strategy = {"name": "ma", "enabled": False, "disabled_reason": "a " * 60}
    traded = {"orders_sent": 1_234_567, "risk_state": "halted", "risk_reason": "[red]x[/red]",
              "strategies": [strategy]}  # fmt: skip
    with console.capture() as capture:
        print_report(console, _report(["AAPL", "MSFT"], 1_000_000), stopped, ["partition 2 s"])
        print_trading(console, traded)
    text = capture.get()
    assert max(len(line) for line in text.splitlines()) <= 80
    for number in ("98,765,432", "1,234,567", "1,596 / 13,088 / 1,234,567"):
        assert number in text
    assert "[red]x[/red]" in text  # a child's text is shown as text, not as markup


def test_the_live_screen_fits_80_columns() -> None:
    """Every row of the live screen stays within 80 columns, with large counts."""
    progress = Progress(total=123_456_789)
    for t in range(20):
        progress.on_node_status(_status(t * 5_000_000), now=t / 4)
        progress.on_exchange_status({"ticks_emitted": t * 6_000_000}, t / 4, t * 5_000_000)
    progress.faults_done = ["connection reset", "partition 2 s", "connection dropped 1.5 s"]
    console = Console(width=80, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        console.print(progress.render(5.0))
    text = capture.get()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "114,000,000 / 123,456,789" in text


def test_the_children_s_log_directories_go_with_their_data_directories(tmp_path: Path) -> None:
    """``node/logs`` and ``exchange/logs`` (the children's log files) are the demo's too: a
    later run clears them with the rest, and still touches nothing it did not create."""
    data = tmp_path / "data"
    prepare_data_dir(data)
    layout = DataLayout(data)
    for child in (layout.node_dir, layout.exchange_dir):
        child.logs.mkdir(parents=True)
        child.log_file("node").write_text('{"event": "old run"}\n')
    (data / "notes.txt").write_bytes(VICTIM)
    prepare_data_dir(data)
    assert sorted(p.name for p in data.iterdir()) == [MARKER, "notes.txt"]
    assert (data / "notes.txt").read_bytes() == VICTIM


def test_the_owned_names_are_the_layout_s() -> None:
    """The marker's names for the node's and the exchange's directories are the layout's."""
    layout = DataLayout(Path("d"))
    assert layout.demo_marker.name == MARKER
    assert {layout.node_dir.root.name, layout.exchange_dir.root.name} <= set(OWNED)
