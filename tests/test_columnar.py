"""The columnar read path: Arrow snapshots of a real SQLite tick store, kept in step with it.

Every read through the snapshot is compared with the SQLite read of the same range (``==`` on the
raw rows, and on whole backtest results): after a first build, after the store grew, after it was
replaced by another file, after the snapshot was damaged in each way we can think of, and with
several processes syncing at once.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from strategylab.market import SQLiteTickStore, Tick
from strategylab.research import (
    BacktestSpec,
    ColumnarUnavailableError,
    _columnar,
    columnar_statistics,
    load_research_arrays,
    read_columnar,
    run_backtest,
    snapshot_directory,
    sync_columnar,
)
from strategylab.research._backtest import new_fill
from strategylab.research._data import TickArrays, load_sqlite_arrays
from strategylab.strategy import Fill, Side

T0 = 1_700_000_000_000_000_000
MA = {"fast": 5, "slow": 20, "qty": 1.0}


def walk(first: int, n: int, symbol: str = "AAA", seed: int = 7) -> list[Tick]:
    """Ticks ``first..first+n-1`` of a seeded random walk in cents, one cent half spread."""
    rng = np.random.default_rng(seed + first)
    mids = np.round(100 + np.cumsum(rng.normal(0, 0.05, n)), 2)
    return [
        Tick(symbol, first + i, T0 + (first + i) * 1_000_000, m - 0.01, m + 0.01, 5.0 + i % 7, 6.0)
        for i, m in enumerate(mids.tolist())
    ]


def write(db: Path, ticks: list[Tick]) -> None:
    async def go() -> None:
        store = SQLiteTickStore(db, synchronous="NORMAL")
        await store.open()
        try:
            await store.write(ticks)
        finally:
            await store.aclose()

    asyncio.run(go())


def same(a: TickArrays, b: TickArrays) -> bool:
    return a.rows.tobytes() == b.rows.tobytes() and a.symbol == b.symbol


def spec(db: Path, **kw: object) -> BacktestSpec:
    base: dict[str, object] = {
        "db_path": str(db),
        "strategy": "ma_crossover",
        "symbol": "AAA",
        "parameters": MA,
        "fee_bps": 1.0,
        "slippage_bps": 0.5,
        "sample_every": 50,
    }
    return BacktestSpec(**{**base, **kw})  # type: ignore[arg-type]


def assert_results_equal(db: Path) -> None:
    """Event-driven and vectorised, through the snapshot and through SQLite: all four equal."""
    results = [
        run_backtest(spec(db, vectorized=v, columnar=c))
        for v in (False, True)
        for c in (True, False)
    ]
    assert len(results[0].trades) > 10
    assert all(r == results[0] for r in results)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ticks.db"
    write(path, walk(1, 3_000) + walk(1, 500, symbol="BBB"))
    return path


def test_first_sync_builds_every_symbol_and_reads_equal_sqlite(db: Path) -> None:
    """A first sync writes all rows of every symbol; reads equal the SQLite read bit for bit."""
    result = sync_columnar(db)
    assert result.available
    assert dict(result.appended) == {"AAA": 3_000, "BBB": 500}
    assert dict(result.rebuilt) == {"AAA": "new", "BBB": "new"}
    assert result.directory == snapshot_directory(db)
    for symbol in ("AAA", "BBB"):
        assert same(read_columnar(db, symbol), load_sqlite_arrays(db, symbol))
    assert same(read_columnar(db, "AAA", 100, 250), load_sqlite_arrays(db, "AAA", 100, 250))
    again = sync_columnar(db)
    assert dict(again.appended) == {"AAA": 0, "BBB": 0}
    assert not again.rebuilt
    assert again.versions == result.versions
    assert_results_equal(db)


def test_appended_ticks_are_synced_incrementally(db: Path) -> None:
    """Only the new rows are written, as a new segment; the read and the results stay equal."""
    first = sync_columnar(db, ["AAA"])
    write(db, walk(3_001, 700))
    result = sync_columnar(db, ["AAA"])
    assert dict(result.appended) == {"AAA": 700}
    assert not result.rebuilt
    assert result.versions["AAA"] != first.versions["AAA"]
    assert same(read_columnar(db, "AAA"), load_sqlite_arrays(db, "AAA"))
    manifest = json.loads(next(snapshot_directory(db).glob("sym-*/manifest.json")).read_bytes())
    assert [s["rows"] for s in manifest["segments"]] == [3_000, 700]
    assert_results_equal(db)  # read_columnar syncs first: never stale


def test_a_read_syncs_first_so_it_is_never_stale(db: Path) -> None:
    """Ticks written after a sync are in the next read (which syncs), not lost."""
    sync_columnar(db)
    write(db, walk(3_001, 10))
    assert len(read_columnar(db, "AAA")) == 3_010
    assert same(read_columnar(db, "AAA"), load_sqlite_arrays(db, "AAA"))


def test_many_small_appends_are_merged(db: Path) -> None:
    """More than MAX_SMALL_SEGMENTS short segments become one; content unchanged."""
    sync_columnar(db)
    seq = 3_001
    for _ in range(_columnar.MAX_SMALL_SEGMENTS + 3):
        write(db, walk(seq, 40))
        seq += 40
        sync_columnar(db, ["AAA"])
    segments = list(snapshot_directory(db).glob("sym-*/seg-*.arrow"))
    manifests = list(snapshot_directory(db).glob("sym-*/manifest.json"))
    listed = {s["file"] for m in manifests for s in json.loads(m.read_bytes())["segments"]}
    assert {p.name for p in segments} == listed  # merged-away files removed
    assert len(listed) <= _columnar.MAX_SMALL_SEGMENTS + 2  # AAA's and BBB's
    assert same(read_columnar(db, "AAA"), load_sqlite_arrays(db, "AAA"))


def test_a_replaced_store_is_detected_and_rebuilt(db: Path, tmp_path: Path) -> None:
    """A store moved aside and recreated (same symbol, same seqs, other prices) is rebuilt."""
    sync_columnar(db)
    db.rename(tmp_path / "ticks.db.corrupt")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    write(db, walk(1, 3_000, seed=99))
    result = sync_columnar(db, ["AAA"])
    assert "replaced" in result.rebuilt["AAA"]
    assert same(read_columnar(db, "AAA"), load_sqlite_arrays(db, "AAA"))
    assert_results_equal(db)


def test_rows_written_below_the_snapshot_are_detected(tmp_path: Path) -> None:
    """A late backfill below the snapshot's first seq makes it rebuild, not miss them."""
    db = tmp_path / "ticks.db"
    write(db, walk(101, 400))
    sync_columnar(db)
    write(db, walk(1, 100))
    result = sync_columnar(db)
    assert "below" in result.rebuilt["AAA"]
    assert len(read_columnar(db, "AAA")) == 500
    assert same(read_columnar(db, "AAA"), load_sqlite_arrays(db, "AAA"))


def test_a_filled_gap_inside_the_snapshot_is_detected(tmp_path: Path) -> None:
    """Rows filling a gap inside the snapshot's range change the count: rebuilt."""
    db = tmp_path / "ticks.db"
    write(db, walk(1, 100) + walk(201, 100))
    sync_columnar(db)
    write(db, walk(101, 100))
    assert "other rows" in sync_columnar(db).rebuilt["AAA"]
    assert same(read_columnar(db, "AAA"), load_sqlite_arrays(db, "AAA"))


def _segment(db: Path, symbol_index: int = 0) -> Path:
    return sorted(snapshot_directory(db).glob("sym-*/seg-*.arrow"))[symbol_index]


def _aaa_dir(db: Path) -> Path:
    for manifest in snapshot_directory(db).glob("sym-*/manifest.json"):
        if json.loads(manifest.read_bytes())["symbol"] == "AAA":
            return manifest.parent
    raise AssertionError("no snapshot of AAA")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # same size, one bit of one price or size
    path.write_bytes(bytes(data))


def _garbage_manifest(path: Path) -> None:
    (path.parent / "manifest.json").write_bytes(b'{"format": 1, "segments": [')


def _unlink(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "bytes"),
        (_flip_middle, "checksum"),
        (_garbage_manifest, "manifest"),
        (_unlink, "No such file"),
    ],
    ids=["truncated", "bit-flipped", "manifest-garbled", "segment-missing"],
)
def test_a_damaged_snapshot_is_rebuilt_never_served(db: Path, damage: object, reason: str) -> None:
    """Each kind of damage is detected (in a fresh process cache too) and the snapshot rebuilt."""
    sync_columnar(db)
    segment = next(_aaa_dir(db).glob("seg-*.arrow"))
    assert callable(damage)
    damage(segment)
    _columnar._MAPPED.clear()  # as a new process would: no mapping cached
    result = sync_columnar(db, ["AAA"])
    assert reason in result.rebuilt["AAA"]
    assert same(read_columnar(db, "AAA"), load_sqlite_arrays(db, "AAA"))
    _columnar._MAPPED.clear()
    assert same(read_columnar(db, "AAA", sync=False), load_sqlite_arrays(db, "AAA"))
    assert_results_equal(db)


def test_a_segment_rewritten_in_place_is_not_served_from_the_process_cache(db: Path) -> None:
    """A changed file (other size or mtime) is re-validated, even by a process that mapped it."""
    sync_columnar(db)
    read_columnar(db, "AAA", sync=False)
    _flip_middle(next(_aaa_dir(db).glob("seg-*.arrow")))
    os.utime(next(_aaa_dir(db).glob("seg-*.arrow")), ns=(1, 1))
    assert same(read_columnar(db, "AAA", sync=False), load_sqlite_arrays(db, "AAA"))


def test_a_directory_that_is_not_ours_is_left_alone_and_reads_fall_back(db: Path) -> None:
    """NAME.columnar without the marker: untouched, unavailable, and the SQLite read is used."""
    directory = snapshot_directory(db)
    directory.mkdir()
    (directory / "mine.txt").write_text("the user's")
    result = sync_columnar(db)
    assert not result.available
    assert "not a strategylab snapshot" in str(result.unavailable)
    assert sorted(p.name for p in directory.iterdir()) == ["mine.txt"]
    with pytest.raises(ColumnarUnavailableError):
        read_columnar(db, "AAA")
    arrays, source = load_research_arrays(db, "AAA")
    assert source == "sqlite"
    assert same(arrays, load_sqlite_arrays(db, "AAA"))
    assert_results_equal(db)


def test_a_file_at_the_snapshot_path_makes_it_unavailable(db: Path) -> None:
    """A regular file named NAME.columnar: not overwritten; backtests read SQLite."""
    snapshot_directory(db).write_text("not a directory")
    assert not sync_columnar(db).available
    assert snapshot_directory(db).read_text() == "not a directory"
    assert_results_equal(db)


_READ_ONLY_CHECK = """
import json, sys
from strategylab.research import load_research_arrays, sync_columnar
from strategylab.research._data import load_sqlite_arrays
db = sys.argv[1]
result = sync_columnar(db)
arrays, source = load_research_arrays(db, "AAA")
plain = load_sqlite_arrays(db, "AAA")
print(json.dumps({"available": result.available, "source": source,
                  "equal": bool((arrays.rows == plain.rows).all()), "n": len(arrays)}))
"""


def test_a_read_only_directory_falls_back_to_sqlite(db: Path) -> None:
    """Where the snapshot cannot be created the SQLite read is used (same ticks), and nothing is
    created. As root (CI), permissions do not stop a write, so the directory is made read-only
    by a read-only bind mount in a private mount namespace (``unshare -m``)."""
    if os.geteuid() != 0:
        db.parent.chmod(0o555)
        try:
            result = sync_columnar(db)
            assert not result.available
            assert load_research_arrays(db, "AAA")[1] == "sqlite"
            assert_results_equal(db)
        finally:
            db.parent.chmod(0o755)
        return
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux unshare is needed to make a read-only mount as root"
    before = sorted(p.name for p in db.parent.iterdir())
    where = str(db.parent)
    script = (
        f"mount --bind {shlex.quote(where)} {shlex.quote(where)} && "
        f"mount -o remount,bind,ro {shlex.quote(where)} && "
        f"exec {shlex.quote(sys.executable)} -c {shlex.quote(_READ_ONLY_CHECK)} "
        f"{shlex.quote(str(db))}"
    )
    run = subprocess.run(  # noqa: S603 - our own interpreter, script and path
        [unshare, "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen == {"available": False, "source": "sqlite", "equal": True, "n": 3_000}
    assert sorted(p.name for p in db.parent.iterdir()) == before  # nothing was created


def test_only_files_this_module_writes_are_removed_on_rebuild(db: Path) -> None:
    """A rebuild removes stale segments, never another file in the snapshot's directories."""
    sync_columnar(db)
    sdir = _aaa_dir(db)
    (sdir / "notes.txt").write_text("keep me")
    _garbage_manifest(next(sdir.glob("seg-*.arrow")))
    old = {p.name for p in sdir.glob("seg-*.arrow")}
    sync_columnar(db, ["AAA"])
    assert (sdir / "notes.txt").read_text() == "keep me"
    assert not old & {p.name for p in sdir.glob("seg-*.arrow")}


def test_read_without_sync_maps_each_segment_once_per_process(db: Path) -> None:
    """The optimiser's workers' read: no sync, and the mapping is reused across reads."""
    sync_columnar(db)
    _columnar._MAPPED.clear()
    before = columnar_statistics()
    for _ in range(5):
        assert len(read_columnar(db, "AAA", sync=False)) == 3_000
    after = columnar_statistics()
    assert after.syncs == before.syncs
    assert after.segments_mapped - before.segments_mapped == 1
    assert after.reads - before.reads == 5


def test_pinned_spec_reads_the_snapshot_as_synced(db: Path) -> None:
    """``pinned=True`` reads what the last sync left, even after the store grew; no sync."""
    sync_columnar(db)
    write(db, walk(3_001, 200))
    before = columnar_statistics()
    pinned = run_backtest(spec(db, pinned=True))
    assert pinned.ticks == 3_000
    assert columnar_statistics().syncs == before.syncs
    assert run_backtest(spec(db)).ticks == 3_200  # unpinned: synced first


def _sync_in_child(db: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    result = sync_columnar(db)
    out.put((dict(result.appended), result.unavailable))


@pytest.mark.timeout(120)
def test_concurrent_syncs_from_several_processes_do_not_corrupt_it(db: Path) -> None:
    """Four processes sync the same fresh store at once: the lock serialises them, the rows are
    written once, and the snapshot that results equals the store."""
    write(db, walk(3_001, 20_000))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_sync_in_child, args=(str(db), out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=100) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(unavailable is None for _, unavailable in results)
    assert sum(r["AAA"] for r, _ in results) == 23_000  # written once, by whoever came first
    assert sum(r["BBB"] for r, _ in results) == 500
    _columnar._MAPPED.clear()
    assert same(read_columnar(db, "AAA", sync=False), load_sqlite_arrays(db, "AAA"))
    assert not list(snapshot_directory(db).glob("sym-*/.tmp-*"))


def test_a_closed_wal_store_gets_no_wal_or_shm_from_a_sync(db: Path, tmp_path: Path) -> None:
    """The sync reads a closed WAL database immutable: nothing new beside it but the snapshot."""
    copy = tmp_path / "copy" / "ticks.db"
    copy.parent.mkdir()
    shutil.copy(db, copy)
    sync_columnar(copy)
    assert sorted(p.name for p in copy.parent.iterdir()) == ["ticks.db", "ticks.db.columnar"]


def test_new_fill_equals_the_dataclass_constructor() -> None:
    """The engine's fast Fill is the same value (==, hash, repr) as Fill(...)."""
    args = ("bt-1", "s-1", "AAA", Side.SELL, 2.0, 101.25, 0.02, T0)
    fast = new_fill(*args)
    names = ("order_id", "client_order_id", "symbol", "side", "qty", "price", "fee", "ts")
    slow = Fill(**dict(zip(names, args, strict=True)))  # type: ignore[arg-type]
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    with pytest.raises(AttributeError):
        fast.qty = 3.0  # type: ignore[misc]


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner  # noqa: PLC0415

    from strategylab.cli import app  # noqa: PLC0415

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.timeout(60)
def test_cli_backtest_uses_the_snapshot_and_falls_back_where_it_cannot(db: Path) -> None:
    """``strategylab backtest`` builds NAME.columnar by default; with a file in its place it
    reads SQLite instead and prints the same result."""
    args = ["backtest", "--db", str(db), "--symbols", "AAA", "--param", "fast=5"]
    args += ["--param", "slow=20", "--fee-bps", "1", "--json"]
    code, through_snapshot = _cli(*args)
    assert code == 0, through_snapshot
    assert (snapshot_directory(db) / _columnar.MARKER).is_file()
    shutil.rmtree(snapshot_directory(db))
    snapshot_directory(db).write_text("in the way")
    code, through_sqlite = _cli(*args)
    assert code == 0, through_sqlite
    assert json.loads(through_sqlite) == json.loads(through_snapshot)
    assert snapshot_directory(db).read_text() == "in the way"


def test_a_sync_bigger_than_a_chunk_streams_into_several_segments(db: Path) -> None:
    """Rows read a chunk at a time (several batches a segment, several segments) equal SQLite,
    and appends plus the merge of short segments keep them equal."""
    result = sync_columnar(db, ["AAA"], chunk_rows=128, segment_rows=1_000)
    assert result.appended == {"AAA": 3_000}
    sdir = next(snapshot_directory(db).glob("sym-*"))
    manifest = json.loads((sdir / "manifest.json").read_bytes())
    assert [s["rows"] for s in manifest["segments"]] == [1_000, 1_000, 1_000]
    for entry in manifest["segments"]:  # each segment written as ceil(1000 / 128) batches
        reader = pa_ipc_open(sdir / entry["file"])
        assert reader.num_record_batches == 8
    _columnar._MAPPED.clear()  # as a new process would: map and validate every batch
    _columnar._JOINED.clear()
    assert same(read_columnar(db, "AAA", sync=False), load_sqlite_arrays(db, "AAA"))
    seq = 3_001
    for n in (300, 7, 1_500, 13, 5, 2):  # short segments pile up, then are merged (streamed)
        write(db, walk(seq, n))
        seq += n
        assert sync_columnar(db, ["AAA"], chunk_rows=128, segment_rows=1_000).appended == {"AAA": n}
        listed = json.loads((sdir / "manifest.json").read_bytes())["segments"]
        assert sum(1 for s in listed if s["rows"] < 1_000) <= _columnar.MAX_SMALL_SEGMENTS
        assert all(s["rows"] <= 1_000 for s in listed)
        assert {p.name for p in sdir.glob("seg-*.arrow")} == {s["file"] for s in listed}
        _columnar._MAPPED.clear()
        _columnar._JOINED.clear()
        assert same(read_columnar(db, "AAA", sync=False), load_sqlite_arrays(db, "AAA"))
    assert_results_equal(db)


def test_sync_sizes_are_checked(db: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows=0"):
        sync_columnar(db, chunk_rows=0)
    with pytest.raises(ValueError, match="chunk_rows=10: must be <= segment_rows=5"):
        sync_columnar(db, chunk_rows=10, segment_rows=5)


def pa_ipc_open(path: Path) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]  # noqa: PLC0415

    return pa.ipc.open_file(pa.memory_map(str(path)))
