"""The streaming importer: a CSV or Parquet file of quotes, trades or bars into an SQLite tick
store, then its columnar snapshot (what ``strategylab import`` runs).

The file is read in batches (``pyarrow.csv.open_csv`` blocks of 1 MiB, Parquet record batches
of ``batch_rows``), never whole, and every batch becomes ticks by the rules of
:mod:`._frame` (one converter for files and frames).

**Two passes, so bad input writes nothing.** The first pass reads and checks the whole file
(every value, the time order, and how the file meets the ticks already stored) and writes
nothing; only then does the second pass read it again and write. A bad row is therefore reported
(:class:`~strategylab.research.TickDataError`: the file, the row, the column) with the store
untouched. What can still stop the second pass is operational (a full disk, a damaged store,
another writer, the file changed in between, Ctrl-C): every batch committed before it is kept,
:class:`ImportFailedError` says which seqs, and re-running the same import continues from there.

**Sequence numbers.** The ticks of a symbol are numbered 1, 2, 3, ... in time order, as the feed
numbers them; an import appends after the highest stored seq of ``symbol``. How a file meets the
stored ticks of its symbol:

* none stored, or the file starts after the last stored tick's time: every row is appended;
* the file starts at or before the last stored time: its first rows must be stored ticks,
  exactly (same time, prices and sizes, from the first stored tick at the file's first time on).
  Those rows are skipped, the rest appended. So re-running an import writes nothing, a file that
  grew since its last import appends only its new rows, and an interrupted import resumes;
* anything else (a file of other data over the stored period, older history) is refused, naming
  the first row that differs: seqs only grow, a stored tick is never rewritten.

Rows written are idempotent on ``(symbol, seq)`` in the store; a write that finds a seq already
taken (another process writing the symbol meanwhile) stops the import.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from strategylab.errors import StrategyLabError
from strategylab.market import (
    SQLiteTickStore,
    StoreCorruptedError,
    Tick,
    TickReader,
    is_postgres_url,
    open_tick_reader,
)

from ._data import ROW_DTYPE, Rows
from ._frame import ColumnMap, ColumnPlan, TickConverter, TickDataError, _iso, _pandas_index

__all__ = [
    "FileFormat",
    "ImportFailedError",
    "ImportProgress",
    "ImportReport",
    "detect_format",
    "import_ticks",
]

FileFormat = Literal["csv", "parquet"]
_SUFFIXES: Final[dict[str, FileFormat]] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_CSV_BLOCK: Final = 1 << 20
"""CSV bytes per block: 1 MiB keeps the reader's peak near 70 MiB (4 MiB: ~220 MiB)."""
_WRITE_CHUNK: Final = 50_000
_COMPARED: Final = ("ts", "bid", "ask", "bid_size", "ask_size")


class ImportFailedError(StrategyLabError):
    """The import stopped for an operational reason (the store, the disk, another writer).

    ``written`` ticks (seqs ``first_seq..first_seq + written - 1``) were committed and are kept;
    re-running the same import continues after them.
    """

    def __init__(self, message: str, *, written: int = 0, first_seq: int | None = None) -> None:
        super().__init__(message)
        self.written = written
        self.first_seq = first_seq
        self.interrupted = False
        """True when the import was interrupted (Ctrl-C, SIGINT): what it says is kept, is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportProgress:
    """Where an import stands: ``phase`` (``check`` reads and checks, ``write`` writes), ``done``
    of ``total`` ``unit`` (bytes of a CSV file, rows of a Parquet file or of the write)."""

    phase: Literal["check", "write"]
    done: int
    total: int
    unit: Literal["bytes", "rows"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportReport:
    """What an import did: rows read, found already stored, written (and their seqs)."""

    source: str
    db_path: str
    symbol: str
    kind: str
    """``quotes``, ``trades`` or ``bars``."""
    rows: int
    already_stored: int
    """Rows that were stored ticks already (a re-run, or a file that grew): skipped."""
    written: int
    first_seq: int | None
    """Seq of the first tick written (None when nothing was)."""
    last_seq: int | None
    first_ts: int | None
    """The file's first and last tick times, ns since the epoch (UTC)."""
    last_ts: int | None
    columnar: str | None = None
    """Why the columnar snapshot could not be brought up to date (None: it is)."""


def detect_format(path: str | os.PathLike[str], given: str | None = None) -> FileFormat:
    """``given`` (``csv``/``parquet``), else the format the suffix says; ``ValueError`` if none."""
    if given is not None:
        if given not in {"csv", "parquet"}:
            raise ValueError(f"format={given!r}: expected csv or parquet")
        return "csv" if given == "csv" else "parquet"
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIXES[suffix]
    except KeyError:
        raise ValueError(
            f"{os.fspath(path)}: cannot tell the format from the suffix {suffix or '(none)'!r} "
            "(.csv, .parquet or .pq): give format csv or parquet"
        ) from None


# ------------------------------------------------------------------------------------ reading


class _Source:
    """One pass over the file: its columns, then its record batches with progress."""

    def __init__(self, path: Path, fmt: FileFormat, delimiter: str, batch_rows: int) -> None:
        self.path = path
        self.fmt = fmt
        self.shown = str(path)
        self._delimiter = delimiter
        self._batch_rows = batch_rows
        self.names: list[str] = []
        self.index_columns: list[str] = []
        self.total = 0
        self.unit: Literal["bytes", "rows"] = "bytes" if fmt == "csv" else "rows"
        self._inspect()

    def _fail(self, exc: Exception) -> TickDataError:
        return TickDataError(self.shown, f"not a readable {self.fmt.upper()} file: {exc}")

    def _inspect(self) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]  # noqa: PLC0415

        try:
            if self.fmt == "csv":
                self.total = self.path.stat().st_size
                with self._csv_reader(None) as (reader, _):
                    self.names = list(reader.schema.names)
            else:
                import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415

                with pq.ParquetFile(self.path) as file:
                    schema = file.schema_arrow
                    self.names = list(schema.names)
                    self.index_columns = _pandas_index(schema)
                    self.total = int(file.metadata.num_rows)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise self._fail(exc) from None

    @contextlib.contextmanager
    def _csv_reader(self, plan: ColumnPlan | None) -> Iterator[tuple[Any, Any]]:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.csv as pcsv  # type: ignore[import-untyped]  # noqa: PLC0415

        convert = pcsv.ConvertOptions(strings_can_be_null=True)
        if plan is not None:
            # Every column read as text and converted by the converter: one place that finds
            # the row of a bad value, whatever the type inference of the first block would be.
            convert = pcsv.ConvertOptions(
                include_columns=plan.used,
                column_types=dict.fromkeys(plan.used, pa.string()),
                strings_can_be_null=True,
            )
        stream = pa.OSFile(str(self.path), "rb")
        try:
            reader = pcsv.open_csv(
                stream,
                read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK if plan else 1 << 20),
                parse_options=pcsv.ParseOptions(delimiter=self._delimiter),
                convert_options=convert,
            )
            yield reader, stream
        finally:
            stream.close()

    def plan(self, columns: ColumnMap) -> ColumnPlan:
        return columns.plan(
            self.names,
            source=self.shown,
            index_columns=self.index_columns,
            line_offset=1 if self.fmt == "csv" else None,
        )

    def batches(self, plan: ColumnPlan) -> Iterator[tuple[Any, int]]:
        """``(batch, done)``: each record batch and the progress after it."""
        import pyarrow as pa  # noqa: PLC0415

        rows = 0
        try:
            if self.fmt == "csv":
                with self._csv_reader(plan) as (reader, stream):
                    for batch in reader:
                        rows += batch.num_rows
                        yield batch, min(int(stream.tell()), self.total)
            else:
                import pyarrow.parquet as pq  # noqa: PLC0415

                with pq.ParquetFile(self.path) as file:
                    for batch in file.iter_batches(batch_size=self._batch_rows, columns=plan.used):
                        rows += batch.num_rows
                        yield batch, rows
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TickDataError(
                self.shown, f"cannot be read after data row {rows}: {exc}"
            ) from None


# ------------------------------------------------------------------------------------ stored


@dataclass(slots=True)
class _Stored:
    """The symbol's stored ticks as the import meets them: the last seq and time."""

    last_seq: int = 0
    last_ts: int | None = None
    first_seq: int = 1


async def _stored(reader: TickReader | None, symbol: str) -> _Stored:
    if reader is None:
        return _Stored()
    last = (await reader.last_seqs()).get(symbol)
    if last is None:
        return _Stored()
    span = await reader.span(symbol)
    tail = await reader.read(symbol, last, last)
    return _Stored(last_seq=last, last_ts=tail[0].ts, first_seq=span.first_seq or 1)


async def _seek(reader: TickReader, symbol: str, stored: _Stored, ts: int) -> tuple[int, int]:
    """The first stored seq whose time is >= ``ts`` (binary search by seq), and its time."""
    lo, hi = stored.first_seq, stored.last_seq
    while lo < hi:
        mid = (lo + hi) // 2
        found = await reader.read(symbol, mid, mid)
        if not found:
            raise ImportFailedError(f"the stored ticks of {symbol!r} have a gap at seq {mid}")
        if found[0].ts < ts:
            lo = mid + 1
        else:
            hi = mid
    found = await reader.read(symbol, lo, lo)
    return lo, found[0].ts


def _rows_of(ticks: Sequence[Tick]) -> Rows:
    return np.fromiter(
        ((t.seq, t.ts, t.bid, t.ask, t.bid_size, t.ask_size) for t in ticks),
        dtype=ROW_DTYPE,
        count=len(ticks),
    )


@dataclass(slots=True)
class _Overlap:
    """Matches the file's leading rows with the stored ticks (see the module docstring)."""

    reader: TickReader | None
    symbol: str
    stored: _Stored
    plan: ColumnPlan
    next_seq: int | None = None
    """The stored seq the next row must equal; None: not decided yet (before the first row)."""
    matched: int = 0
    done: bool = False

    async def feed(self, rows: Rows, first_row: int) -> int:
        """How many of ``rows`` (the file's rows from ``first_row``, 0-based) are stored."""
        stored = self.stored
        if self.done or not len(rows):
            return 0
        if self.next_seq is None:
            first_ts = int(rows["ts"][0])
            if self.reader is None or stored.last_ts is None or first_ts > stored.last_ts:
                self.done = True
                return 0
            seq, ts = await _seek(self.reader, self.symbol, stored, first_ts)
            if ts != first_ts:
                raise TickDataError(
                    self.plan.source,
                    f"starts at {_iso(first_ts)}, within the stored ticks of {self.symbol!r} "
                    f"(up to seq {stored.last_seq} at {_iso(stored.last_ts)}), but no stored "
                    "tick has that time: a file for a symbol must start after its last stored "
                    "tick, or repeat stored ticks exactly (a re-run); older history or other "
                    "data goes to another symbol or store",
                    row=first_row + 1,
                    column=self.plan.ts,
                    line_offset=self.plan.line_offset,
                )
            self.next_seq = seq
        assert self.reader is not None  # noqa: S101 - set whenever next_seq is
        take = min(len(rows), stored.last_seq - self.next_seq + 1)
        if take <= 0:
            self.done = True
            return 0
        theirs = _rows_of(
            await self.reader.read(self.symbol, self.next_seq, self.next_seq + take - 1)
        )
        if len(theirs) != take:
            raise ImportFailedError(
                f"the stored ticks of {self.symbol!r} have a gap after seq {self.next_seq}"
            )
        ours = rows[:take]
        for name in _COMPARED:
            differ = np.flatnonzero(ours[name] != theirs[name])
            if differ.size:
                i = int(differ[0])
                raise TickDataError(
                    self.plan.source,
                    f"{name} {ours[name][i].item()!r} differs from the stored tick "
                    f"{self.symbol!r} seq {int(theirs['seq'][i])} "
                    f"({theirs[name][i].item()!r}): the file repeats stored times with other "
                    "data (stored ticks are never rewritten; import it under another symbol or "
                    "into another store)",
                    row=first_row + i + 1,
                    column=_column_of(self.plan, name),
                    line_offset=self.plan.line_offset,
                )
        self.next_seq += take
        self.matched += take
        if take < len(rows):
            self.done = True
        return take


def _column_of(plan: ColumnPlan, field: str) -> str:
    if field == "ts":
        return plan.ts
    roles = plan.roles
    if plan.kind == "quotes":
        return roles.get(field, field)
    price = "price" if plan.kind == "trades" else "close"
    if field in {"bid", "ask"}:
        return roles[price]
    return roles.get("size") or roles.get("volume") or field


# ------------------------------------------------------------------------------------- import


def _open_reader(db: Path) -> TickReader | None:
    """A read-only reader of an existing store (None for a new file); refuses a non-store."""
    if not db.exists() and not db.is_symlink():
        parent = db.parent
        if not parent.is_dir():
            raise ValueError(f"{db}: the directory {str(parent)!r} does not exist")
        return None
    return open_tick_reader(db, verify=False)


def import_ticks(
    path: str | os.PathLike[str],
    *,
    db_path: str | os.PathLike[str],
    symbol: str,
    columns: ColumnMap | None = None,
    file_format: FileFormat | None = None,
    delimiter: str = ",",
    batch_rows: int = 65_536,
    progress: Callable[[ImportProgress], None] | None = None,
) -> ImportReport:
    """Import the quotes, trades or bars of the file at ``path`` as ``symbol``'s ticks into the
    SQLite tick store ``db_path`` (created if missing), then sync its columnar snapshot.

    See the module docstring for the passes and the sequence numbers, and :mod:`._frame` for
    the column mapping (``columns``) and what a row becomes. ``file_format``: by the suffix
    unless given. ``progress`` is called after every batch. Blocking.

    Raises ``ValueError`` (a bad argument: format, delimiter, symbol, a ``postgresql://`` store,
    a missing directory), ``FileNotFoundError`` (no such file), :class:`TickDataError` (the file:
    a column mapping that does not fit, a bad row; nothing written),
    :class:`~strategylab.market.StoreUnusableError` (``db_path`` exists but is not a tick store;
    never written), :class:`~strategylab.market.StoreCorruptedError` (a damaged store) and
    :class:`ImportFailedError` (stopped while writing; says what is kept).
    """
    source_path = Path(path)
    fmt = detect_format(source_path, file_format)
    if not symbol:
        raise ValueError("symbol='': a tick needs a symbol")
    if len(delimiter) != 1 or delimiter in {"\n", "\r", '"'}:
        raise ValueError(f"delimiter={delimiter!r}: must be one character (not a quote or newline)")
    if isinstance(batch_rows, bool) or batch_rows < 1:
        raise ValueError(f"batch_rows={batch_rows!r}: must be >= 1")
    if is_postgres_url(os.fspath(db_path)):
        raise ValueError(
            f"{os.fspath(db_path)}: import writes SQLite tick stores only (a file path)"
        )
    if not source_path.is_file():
        raise FileNotFoundError(f"{source_path}: no such file")
    db = Path(db_path)
    source = _Source(source_path, fmt, delimiter, batch_rows)
    plan = source.plan(columns or ColumnMap())
    report = asyncio.run(_import(source, plan, db, symbol, progress))
    return _sync(report)


def _sync(report: ImportReport) -> ImportReport:
    from dataclasses import replace  # noqa: PLC0415

    from ._columnar import sync_columnar  # noqa: PLC0415

    if not Path(report.db_path).exists():
        return report  # nothing imported into a new file: no store, no snapshot to keep
    try:
        sync = sync_columnar(report.db_path, [report.symbol])
    except KeyboardInterrupt:
        interrupted = ImportFailedError(
            "interrupted while bringing the columnar snapshot up to date; the import itself is "
            f"complete ({report.written:,} ticks written); backtests read SQLite until a sync"
        )
        interrupted.interrupted = True
        raise interrupted from None
    except Exception as exc:
        why: str | None = f"{type(exc).__name__}: {exc}"
    else:
        why = sync.unavailable
    return report if why is None else replace(report, columnar=why)


async def _import(
    source: _Source,
    plan: ColumnPlan,
    db: Path,
    symbol: str,
    progress: Callable[[ImportProgress], None] | None,
) -> ImportReport:
    reader = _open_reader(db)
    if reader is not None:
        await reader.open()  # StoreUnusableError: not a tick store; never written
    try:
        stored = await _stored(reader, symbol)
        overlap = _Overlap(reader, symbol, stored, plan)
        converter = TickConverter(plan)
        first_ts: int | None = None
        for batch, done in source.batches(plan):
            start = converter.rows_seen
            rows = converter.convert(batch)
            if first_ts is None and len(rows):
                first_ts = int(rows["ts"][0])
            await overlap.feed(rows, start)
            if progress is not None:
                progress(
                    ImportProgress(phase="check", done=done, total=source.total, unit=source.unit)
                )
    finally:
        if reader is not None:
            await reader.aclose()
    total = converter.rows_seen
    skip = overlap.matched
    report = ImportReport(
        source=source.shown,
        db_path=str(db),
        symbol=symbol,
        kind=plan.kind,
        rows=total,
        already_stored=skip,
        written=0,
        first_seq=None,
        last_seq=None,
        first_ts=first_ts,
        last_ts=converter.last_ts,
    )
    if total == skip and (reader is not None or total == 0):
        return report  # nothing new (and nothing to create)
    job = _Plan(
        source=source,
        plan=plan,
        db=db,
        symbol=symbol,
        stored=stored,
        skip=skip,
        new=total - skip,
    )
    written = await _write(job, progress)
    first = stored.last_seq + 1
    return ImportReport(
        source=report.source,
        db_path=report.db_path,
        symbol=symbol,
        kind=plan.kind,
        rows=total,
        already_stored=skip,
        written=written,
        first_seq=first if written else None,
        last_seq=first + written - 1 if written else None,
        first_ts=first_ts,
        last_ts=converter.last_ts,
    )


@dataclass(slots=True, kw_only=True)
class _Plan:
    """What the write pass does: ``new`` rows after the first ``skip``, from ``first_seq``."""

    source: _Source
    plan: ColumnPlan
    db: Path
    symbol: str
    stored: _Stored
    skip: int
    new: int


class _Writer:
    """Writes rows to the store in chunks, one write in flight while the next rows are built."""

    def __init__(
        self,
        store: SQLiteTickStore,
        job: _Plan,
        progress: Callable[[ImportProgress], None] | None,
    ) -> None:
        self._store = store
        self._job = job
        self._progress = progress
        self.first_seq = job.stored.last_seq + 1
        self.written = 0
        self._pending: asyncio.Future[int] | None = None
        self._pending_count = 0
        self._assigned = 0
        self._buffered: list[Rows] = []
        self._count = 0

    def kept(self) -> str:
        """What a failure leaves in the store, for its message."""
        if not self.written:
            return "nothing was written"
        last = self.first_seq + self.written - 1
        return (
            f"kept: {self.written:,} ticks, seq {self.first_seq}..{last}; "
            "re-run the same import to continue"
        )

    def failed(self, message: str) -> ImportFailedError:
        return ImportFailedError(
            f"{message}; {self.kept()}", written=self.written, first_seq=self.first_seq
        )

    async def settle(self, *, quiet: bool = False) -> None:
        """Wait for the write in flight and count it; ``quiet``: a failure is not raised."""
        task, self._pending = self._pending, None
        if task is None:
            return
        try:
            added = await task
        except Exception:
            if quiet:
                return
            raise
        if added != self._pending_count and not quiet:
            start = self.first_seq + self.written
            raise ImportFailedError(
                f"{self._job.db}: {self._pending_count - added} of seqs {start}.."
                f"{start + self._pending_count - 1} of {self._job.symbol!r} were already "
                "stored (is another process writing this symbol?)"
            )
        self.written += added

    async def add(self, rows: Rows) -> None:
        self._buffered.append(rows)
        self._count += len(rows)
        if self._count >= _WRITE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if not self._count:
            return
        parts, self._buffered, self._count = self._buffered, [], 0
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
        base = self.first_seq + self._assigned
        rows["seq"] = np.arange(base, base + len(rows), dtype=np.int64)
        self._assigned += len(rows)
        symbol = self._job.symbol
        ticks = [Tick(symbol, *values) for values in rows.tolist()]
        await self.settle()
        self._pending_count = len(ticks)
        self._pending = asyncio.ensure_future(self._store.write(ticks))
        self.report()

    def report(self) -> None:
        if self._progress is not None:
            self._progress(
                ImportProgress(phase="write", done=self.written, total=self._job.new, unit="rows")
            )


async def _write(job: _Plan, progress: Callable[[ImportProgress], None] | None) -> int:
    db = job.db
    created = not db.exists()
    store = SQLiteTickStore(db, on_corruption="raise", name="import")
    try:
        await store.open()
    except StoreCorruptedError:
        raise
    except Exception as exc:
        raise ImportFailedError(f"{db}: cannot open the tick store: {exc}") from exc
    writer = _Writer(store, job, progress)
    try:
        await _write_rows(store, job, writer)
    except TickDataError as exc:
        await writer.settle(quiet=True)
        raise writer.failed(
            f"{job.source.shown}: changed since it was checked ({exc.reason})"
        ) from exc
    except ImportFailedError as exc:
        await writer.settle(quiet=True)
        if exc.written or not writer.written:
            raise
        raise writer.failed(str(exc)) from exc
    except Exception as exc:
        await writer.settle(quiet=True)
        raise writer.failed(f"{db}: writing stopped: {type(exc).__name__}: {exc}") from exc
    except asyncio.CancelledError:
        # Ctrl-C (asyncio.run cancels this task): the write in flight either committed or not;
        # say which ticks are kept instead of a bare KeyboardInterrupt.
        with contextlib.suppress(BaseException):
            await writer.settle(quiet=True)
        with contextlib.suppress(BaseException):
            # A write cancelled here may still have committed (its thread runs on): what is
            # kept is what the store holds, not what was counted.
            last = (await store.last_seqs()).get(job.symbol, 0)
            writer.written = max(writer.written, last - job.stored.last_seq)
        interrupted = writer.failed("interrupted")
        interrupted.interrupted = True
        raise interrupted from None
    finally:
        try:
            with contextlib.suppress(BaseException):
                await writer.settle(quiet=True)
            await store.aclose()
        finally:
            if created and not writer.written:
                _remove_store(db)
    return writer.written


async def _write_rows(store: SQLiteTickStore, job: _Plan, writer: _Writer) -> None:
    now = (await store.last_seqs()).get(job.symbol, 0)
    if now != job.stored.last_seq:
        raise ImportFailedError(
            f"{job.db}: the stored ticks of {job.symbol!r} changed during the import (last "
            f"seq {job.stored.last_seq}, now {now}: another writer?); run the import again"
        )
    converter = TickConverter(job.plan)
    seen = added = 0
    for batch, _ in job.source.batches(job.plan):
        rows = converter.convert(batch)
        n = len(rows)
        if seen + n > job.skip:
            # Only rows the check pass saw are written: rows appended to the file since are
            # not checked, so they are left out (and reported below).
            fresh = rows[max(job.skip - seen, 0) :][: job.new - added]
            added += len(fresh)
            if len(fresh):
                await writer.add(fresh)
        seen += n
    await writer.flush()
    await writer.settle()
    writer.report()
    if seen > job.skip + job.new:
        raise writer.failed(
            f"{job.source.shown}: changed since it was checked ({seen - job.skip - job.new:,} "
            "rows appended, not written: they were not checked)"
        )
    if writer.written != job.new:
        raise writer.failed(
            f"{job.source.shown}: changed since it was checked ({writer.written:,} new rows "
            f"read, {job.new:,} checked)"
        )


def _remove_store(db: Path) -> None:
    """Remove a store this import created and wrote nothing into (and its -wal, -shm)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            db.with_name(db.name + suffix).unlink()
