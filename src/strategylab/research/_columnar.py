"""The columnar read path: Apache Arrow IPC snapshots of an SQLite tick store, kept in step.

Why Arrow IPC files (uncompressed): a backtest reads a symbol's whole
range, in order, every run. An Arrow IPC file is the in-memory layout written down, so reading it
is ``mmap`` plus parsing a small footer: the columns become numpy arrays that *are* views of the
page cache (zero copy, nothing decoded), shared by every process that maps the same file (the
optimiser's workers). Parquet would compress better but must be decoded on every read (the cost
this path exists to remove); DuckDB or Polars would add a second engine and a second copy of the
data format for what is, here, a sequential scan of six fixed-width columns. pyarrow is already a
dependency (the export path writes Parquet with it), and the format is the Arrow project's
stable, versioned IPC format (https://arrow.apache.org/docs/format/Columnar.html#ipc-file-format).

Layout, beside the database ``ticks.db``::

    ticks.db.columnar/                      created by this module, 0700, with its marker file
        STRATEGYLAB-COLUMNAR.json           {"format": 1, "database": "ticks.db"}
        .lock                               flock: exclusive to sync, shared to read
        sym-<sha256(symbol)[:24]>/
            manifest.json                   the symbol's snapshot (replaced atomically)
            seg-<random>-<first seq>.arrow  segments, each one Arrow IPC file of record batches

The manifest records the store's file identity (``st_dev``, ``st_ino``), the snapshot ``id``
(random, new at every rebuild), the first and last seq it holds with a SHA-256 of those two rows,
and per segment its seq range, row count, byte size and a 64-bit word-sum checksum.

**Kept up to date incrementally, in bounded memory.** :func:`sync_columnar` appends only the rows
with a seq above the snapshot's last as new segments (temp file, fsync, rename; then the
manifest, atomically). It reads them from SQLite :data:`CHUNK_ROWS` at a time and writes each
chunk as one record batch of the open segment (at most :data:`SEGMENT_ROWS` rows a segment),
then drops it: a sync's memory is a chunk's, whatever the store's size. Once more than
:data:`MAX_SMALL_SEGMENTS` segments are short, those from the first short one on are rewritten
into as few segments as fit, read back batch by batch from the files (not mapped), so the merge
is bounded the same way. A snapshot of one batch is served zero copy; one of several batches is
joined once per process and version (a copy). Before
trusting a snapshot it checks, against the store: the same database file (a store replaced by a
new file, e.g. a corrupt one moved aside, has another inode), no rows below the snapshot's first
seq, the first and boundary (last) rows byte-equal to the hashes recorded, and, only when the
snapshot has seq gaps, the row count in its range (a late-filled gap). Against the files: each
segment a regular file of the recorded size, its checksum (read from the file in blocks, not
through the mapping), a readable Arrow IPC file (footer, schema, every batch non-empty,
``validate()``, no nulls), seq increasing across its batches, its first/last seq as recorded.
Anything that does not hold makes it rebuild the symbol's snapshot from the store; a snapshot is
never served stale or wrong. A :func:`read_columnar` equals :func:`~strategylab.research._data.
load_sqlite_arrays` of the same range bit for bit (tested).

**Ownership.** The directory is created under a temporary name with its marker and lock file,
then renamed into place, so it is either absent or complete. A directory of that name without
the marker is not ours: it is left alone and the snapshot is unavailable. Inside, only files with
the names this module writes are ever removed. **Concurrency.** ``flock`` on ``.lock``: sync holds
it exclusively, a read without sync shares it; segments are never changed after their rename (a
mapped file cannot change or shrink under a reader; a removed one stays readable while mapped).
**Fallback.** Where the directory cannot be created, locked or written (a read-only data
directory), :class:`ColumnarUnavailableError` says why and :func:`load_research_arrays` reads
SQLite instead; a snapshot that is already complete is still read from a read-only directory.

Mapped, validated segments are cached per process, keyed by file identity (path, inode, size,
mtime); an optimiser worker therefore maps and checks a snapshot once for all its jobs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import mmap
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]

from strategylab._durable import fsync_dir, write_atomic
from strategylab._files import open_private
from strategylab.errors import StrategyLabError

from ._data import (
    COLUMNS,
    MAX_SEQ,
    ROW_DTYPE,
    Rows,
    StoreChangedError,
    StoreRows,
    TickArrays,
    load_sqlite_arrays,
)

__all__ = [
    "CHUNK_ROWS",
    "MAX_SMALL_SEGMENTS",
    "SEGMENT_ROWS",
    "ColumnarStatistics",
    "ColumnarSync",
    "ColumnarUnavailableError",
    "columnar_statistics",
    "load_research_arrays",
    "read_columnar",
    "snapshot_directory",
    "sync_columnar",
]

FORMAT: Final = 1
MARKER: Final = "STRATEGYLAB-COLUMNAR.json"
LOCK: Final = ".lock"
MANIFEST: Final = "manifest.json"
SEGMENT_ROWS: Final = 1 << 22
"""Rows per segment at most by default (4,194,304: 192 MiB of columns)."""
CHUNK_ROWS: Final = 1 << 20
"""Rows read from the store and written as one record batch at a time by default (1,048,576:
48 MiB of columns): what bounds a sync's memory (about twice that at its peak). A snapshot of
up to this many rows is one batch, read zero copy; a bigger one is joined (copied) once per
process when read."""
MAX_SMALL_SEGMENTS: Final = 4
"""More segments shorter than :data:`SEGMENT_ROWS` than this are merged into one."""

_SEGMENT_NAME: Final = re.compile(r"seg-[0-9a-f]{16}-[0-9]{20}\.arrow")
_TEMP_NAME: Final = re.compile(r"\.tmp-[0-9]+-[0-9a-f]{16}")
_SCHEMA: Final = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("bid", pa.float64(), nullable=False),
        pa.field("ask", pa.float64(), nullable=False),
        pa.field("bid_size", pa.float64(), nullable=False),
        pa.field("ask_size", pa.float64(), nullable=False),
    ]
)

Columns = dict[str, npt.NDArray[Any]]


class ColumnarUnavailableError(StrategyLabError):
    """No columnar snapshot can be kept here (the reason is the message); read SQLite instead."""


class _Invalid(Exception):  # noqa: N818 - private signal: "rebuild, because ..."
    """The snapshot on disk does not hold (the message says why): rebuild it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnarSync:
    """What :func:`sync_columnar` did.

    ``appended`` maps every symbol synced to the rows written (0: already up to date);
    ``rebuilt`` maps the symbols whose snapshot was (re)built from scratch to why (``"new"`` for
    a first build); ``versions`` maps each symbol to its snapshot version (changes whenever the
    snapshot does). ``unavailable`` is None, or why no snapshot could be kept (reads fall back to
    SQLite); ``seconds`` is the wall time taken.
    """

    db_path: Path
    directory: Path
    appended: Mapping[str, int] = field(default_factory=dict)
    rebuilt: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    unavailable: str | None = None

    @property
    def available(self) -> bool:
        """True when the snapshot of every symbol asked for is up to date."""
        return self.unavailable is None

    @property
    def rows_appended(self) -> int:
        """The rows written, all symbols together."""
        return sum(self.appended.values())


def snapshot_directory(db_path: str | Path) -> Path:
    """Where the snapshot of the SQLite file ``db_path`` lives: ``<db_path>.columnar``."""
    path = Path(db_path)
    return path.with_name(path.name + ".columnar")


# ------------------------------------------------------------------ public entry points


def sync_columnar(
    db_path: str | Path,
    symbols: Sequence[str] | None = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
    segment_rows: int = SEGMENT_ROWS,
) -> ColumnarSync:
    """Bring the columnar snapshot of the SQLite tick store ``db_path`` up to date.

    ``symbols``: those symbols (a symbol without stored ticks gets an empty snapshot), or every
    stored symbol (None). Only rows with a seq above a snapshot's last are appended; a snapshot
    that no longer matches the store or is damaged is rebuilt (see the module doc). Blocking.
    Returns a :class:`ColumnarSync`; when the location is not usable (cannot be created, locked
    or written) it says why in ``unavailable`` rather than raising. Raises
    ``FileNotFoundError`` for a missing database and :class:`~strategylab.market.
    StoreUnusableError` / :class:`~strategylab.market.StoreCorruptedError` for one that cannot be
    read. Not from inside a running event loop (use ``asyncio.to_thread``).

    New rows are read ``chunk_rows`` at a time (default :data:`CHUNK_ROWS`), each chunk written
    as one record batch and dropped, into segments of at most ``segment_rows`` rows (default
    :data:`SEGMENT_ROWS`): memory is bounded by a chunk (about 48 bytes a row), not by the store.
    Raises ``ValueError`` naming ``chunk_rows``/``segment_rows`` unless ``1 <= chunk_rows <=
    segment_rows``.
    """
    sizes = _sizes(chunk_rows, segment_rows)
    started = time.perf_counter()
    db = Path(db_path)
    directory = snapshot_directory(db)
    appended: dict[str, int] = {}
    rebuilt: dict[str, str] = {}
    versions: dict[str, str] = {}
    unavailable: str | None = None
    with StoreRows(db) as store:
        wanted = list(symbols) if symbols is not None else store.symbols()
    try:
        with _locked(directory, exclusive=True, create=True):
            for symbol in wanted:
                snap, added, why = _sync_one(db, directory, symbol, sizes)
                appended[symbol] = added
                versions[symbol] = snap.version
                if why is not None:
                    rebuilt[symbol] = why
    except ColumnarUnavailableError as exc:
        unavailable = str(exc)
    return ColumnarSync(
        db_path=db,
        directory=directory,
        appended=appended,
        rebuilt=rebuilt,
        versions=versions,
        seconds=time.perf_counter() - started,
        unavailable=unavailable,
    )


def read_columnar(
    db_path: str | Path,
    symbol: str,
    from_seq: int = 1,
    to_seq: int | None = None,
    *,
    sync: bool = True,
) -> TickArrays:
    """``symbol``'s ticks ``from_seq..to_seq`` of the SQLite store ``db_path``, from its snapshot.

    With ``sync`` (the default) the snapshot is brought up to date first, so the result equals
    the SQLite read of the same range (``==``, bit for bit). Without it the snapshot is read as
    it stands (what a previous :func:`sync_columnar` left; the optimiser's workers, after the
    parent synced), still validated; a missing or invalid one is then synced after all. The
    columns are read-only views of memory-mapped files. Raises
    :class:`ColumnarUnavailableError` when no snapshot can be kept here and ``FileNotFoundError``
    for a missing database.
    """
    db = Path(db_path)
    directory = snapshot_directory(db)
    if not sync:
        with contextlib.suppress(_Invalid, ColumnarUnavailableError, FileNotFoundError):
            with _locked(directory, exclusive=False, create=False):
                manifest = _read_manifest(directory / _symbol_dirname(symbol))
                if manifest is None:
                    raise _Invalid("no snapshot")
                snap = _open_snapshot(directory / _symbol_dirname(symbol), manifest)
            return snap.arrays(symbol).seq_range(from_seq, to_seq)
    if not db.exists():
        raise FileNotFoundError(f"{db}: no such tick database")
    with _locked(directory, exclusive=True, create=True):
        snap, _, _ = _sync_one(db, directory, symbol, (CHUNK_ROWS, SEGMENT_ROWS))
    return snap.arrays(symbol).seq_range(from_seq, to_seq)


def load_research_arrays(
    db_path: str | Path,
    symbol: str,
    from_seq: int = 1,
    to_seq: int | None = None,
    *,
    columnar: bool = True,
    sync: bool = True,
) -> tuple[TickArrays, str]:
    """The ticks a backtest reads, and where they came from (``"columnar"`` or ``"sqlite"``).

    Through the snapshot (:func:`read_columnar`) when ``columnar`` and it can be kept here; else
    (or when it is unavailable: a read-only directory) straight from SQLite. Equal either way.
    """
    if columnar:
        with contextlib.suppress(ColumnarUnavailableError):
            return read_columnar(db_path, symbol, from_seq, to_seq, sync=sync), "columnar"
    return load_sqlite_arrays(db_path, symbol, from_seq, to_seq), "sqlite"


# ------------------------------------------------------------------ the directory and its lock


def _identity(db: Path) -> list[int]:
    info = db.stat()
    return [info.st_dev, info.st_ino]


def _symbol_dirname(symbol: str) -> str:
    return "sym-" + hashlib.sha256(symbol.encode()).hexdigest()[:24]


def _marker_bytes(directory: Path) -> bytes:
    name = directory.name.removesuffix(".columnar")
    return json.dumps({"format": FORMAT, "database": name}, sort_keys=True).encode()


def _is_ours(directory: Path) -> bool:
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    try:
        marker = json.loads((directory / MARKER).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT


def _create(directory: Path) -> None:
    """Create ``directory`` complete (marker, lock file) or not at all; a concurrent creator's
    directory is as good as ours."""
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    try:
        tmp.mkdir(mode=0o700)
    except OSError as exc:
        raise ColumnarUnavailableError(f"{directory}: cannot create it: {exc.strerror}") from None
    try:
        for name, data in ((MARKER, _marker_bytes(directory)), (LOCK, b"")):
            fd = open_private(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        fsync_dir(tmp)
        try:
            tmp.rename(directory)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        fsync_dir(directory.parent)
    except OSError as exc:
        raise ColumnarUnavailableError(f"{directory}: cannot create it: {exc}") from None
    finally:
        for name in (MARKER, LOCK):
            with contextlib.suppress(OSError):
                (tmp / name).unlink()
        with contextlib.suppress(OSError):
            tmp.rmdir()


@contextlib.contextmanager
def _locked(directory: Path, *, exclusive: bool, create: bool) -> Iterator[None]:
    if not _is_ours(directory):
        if os.path.lexists(directory):
            raise ColumnarUnavailableError(
                f"{directory}: exists and is not a strategylab snapshot (left alone)"
            )
        if not create:
            raise ColumnarUnavailableError(f"{directory}: no snapshot yet")
        _create(directory)
        if not _is_ours(directory):
            raise ColumnarUnavailableError(f"{directory}: not a strategylab snapshot")
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ColumnarUnavailableError(f"{directory / LOCK}: cannot open: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------ manifests and segments


@dataclass(frozen=True, slots=True)
class _Segment:
    file: str
    first_seq: int
    last_seq: int
    rows: int
    size: int
    checksum: str

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "rows": self.rows,
            "bytes": self.size,
            "checksum": self.checksum,
        }


@dataclass(frozen=True, slots=True)
class _Manifest:
    symbol: str
    snapshot_id: str
    store: list[int]
    segments: tuple[_Segment, ...]
    first_hash: str
    last_hash: str

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def first_seq(self) -> int:
        return self.segments[0].first_seq if self.segments else 0

    @property
    def last_seq(self) -> int:
        return self.segments[-1].last_seq if self.segments else 0

    @property
    def version(self) -> str:
        return f"{self.snapshot_id}-{self.last_seq}-{len(self.segments)}"

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "symbol": self.symbol,
            "id": self.snapshot_id,
            "store": self.store,
            "first_hash": self.first_hash,
            "last_hash": self.last_hash,
            "segments": [s.as_json() for s in self.segments],
        }
        return json.dumps(doc, sort_keys=True).encode()


def _read_manifest(sdir: Path) -> _Manifest | None:
    """The manifest in ``sdir`` (None if there is none); :class:`_Invalid` if it is unreadable."""
    try:
        raw = (sdir / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Invalid(f"manifest unreadable: {exc}") from None
    try:
        doc = json.loads(raw)
        if doc["format"] != FORMAT:
            raise _Invalid(f"manifest format {doc['format']!r}")
        segments = tuple(
            _Segment(
                str(s["file"]),
                int(s["first_seq"]),
                int(s["last_seq"]),
                int(s["rows"]),
                int(s["bytes"]),
                str(s["checksum"]),
            )
            for s in doc["segments"]
        )
        manifest = _Manifest(
            symbol=str(doc["symbol"]),
            snapshot_id=str(doc["id"]),
            store=[int(v) for v in doc["store"]],
            segments=segments,
            first_hash=str(doc["first_hash"]),
            last_hash=str(doc["last_hash"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise _Invalid(f"manifest damaged: {exc!r}") from None
    if any(not _SEGMENT_NAME.fullmatch(s.file) for s in segments):
        raise _Invalid("manifest names a file this module does not write")
    return manifest


def _row_hash(rows: Rows) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()


_READ_BLOCK: Final = 1 << 23
"""Bytes read at a time to checksum a file (a multiple of 8; the file is never mapped for it)."""


def _checksum_file(fd: int, size: int) -> str:
    """A 64-bit sum of the first ``size`` bytes of the open file ``fd`` as little-endian words
    (the tail zero-padded), as hex; read in blocks of :data:`_READ_BLOCK` bytes (bounded memory:
    the page cache, not this process, holds the file)."""
    total = 0
    offset = 0
    while offset < size:
        block = os.pread(fd, min(_READ_BLOCK, size - offset), offset)
        if not block:
            raise _Invalid(f"file shorter than {size} bytes")
        whole = len(block) // 8 * 8
        total += int(np.frombuffer(block, dtype="<u8", count=whole // 8).sum(dtype=np.uint64))
        if whole < len(block):  # only the file's last block can end off a word
            total += int.from_bytes(block[whole:].ljust(8, b"\0"), "little")
        offset += len(block)
    return f"{total & 0xFFFFFFFFFFFFFFFF:016x}"


class _SegmentWriter:
    """One new segment file, written batch by batch (each batch a chunk of rows, dropped once
    written): memory stays bounded by one chunk whatever the segment's size.

    Written to a temp file; :meth:`close` fsyncs it, checksums it from the file and renames it
    to a fresh random name (never replacing a file); :meth:`discard` removes the temp file.
    """

    def __init__(self, sdir: Path) -> None:
        self._sdir = sdir
        self._tmp = sdir / f".tmp-{os.getpid()}-{secrets.token_hex(8)}"
        fd = open_private(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        self._out = os.fdopen(fd, "wb")
        self._writer = pa.ipc.new_file(self._out, _SCHEMA)
        self.rows = 0
        self.first_seq = 0
        self.last_seq = 0

    def write(self, columns: Mapping[str, npt.NDArray[Any]]) -> None:
        """Append the rows ``columns`` (non-empty, seq above every row written) as one batch."""
        seq = columns["seq"]
        batch = pa.RecordBatch.from_arrays(
            [pa.array(np.ascontiguousarray(columns[name])) for name in COLUMNS], schema=_SCHEMA
        )
        self._writer.write_batch(batch)
        if not self.rows:
            self.first_seq = int(seq[0])
        self.last_seq = int(seq[-1])
        self.rows += len(seq)

    def close(self) -> _Segment:
        """Finish the file and give it its name; the :class:`_Segment` to record."""
        try:
            self._writer.close()
            self._out.flush()
            fd = self._out.fileno()
            os.fsync(fd)
            size = os.fstat(fd).st_size
            self._out.close()
            fd = os.open(self._tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                checksum = _checksum_file(fd, size)
            finally:
                os.close(fd)
            name = f"seg-{secrets.token_hex(8)}-{self.first_seq:020d}.arrow"
            self._tmp.rename(self._sdir / name)
        except BaseException:
            self.discard()
            raise
        return _Segment(name, self.first_seq, self.last_seq, self.rows, size, checksum)

    def discard(self) -> None:
        """Give up: close and remove the temp file (safe to call after a failure)."""
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(OSError):
            self._out.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


_MAPPED: dict[tuple[str, int, int, int, int], tuple[Columns, ...]] = {}
"""Validated, mapped segments of this process, by (path, device, inode, size, mtime_ns)."""
_JOINED: dict[tuple[str, str], Columns] = {}
"""Snapshots of several segments, joined once, by (symbol directory, snapshot version)."""
_JOINED_KEEP: Final = 4
_COUNTS: dict[str, int] = {"syncs": 0, "segments_mapped": 0, "reads": 0, "rebuilds": 0}


@dataclass(frozen=True, slots=True)
class ColumnarStatistics:
    """What this process did with snapshots: syncs run, segments mapped and validated (each one
    once per process while its file is unchanged), reads served, snapshots rebuilt."""

    syncs: int
    segments_mapped: int
    reads: int
    rebuilds: int


def columnar_statistics() -> ColumnarStatistics:
    """A snapshot of this process's counters (see :class:`ColumnarStatistics`)."""
    return ColumnarStatistics(**_COUNTS)


def _map_segment(path: Path, segment: _Segment) -> tuple[Columns, ...]:
    """The batches of the segment file ``path`` as columns (views of a read-only mapping),
    checked against ``segment``; :class:`_Invalid` if anything differs. The checksum is read
    from the file in blocks, so only the pages later used are touched through the mapping."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _Invalid(f"{path.name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        cached = _MAPPED.get(key)
        if cached is not None:
            return cached
        if not stat.S_ISREG(info.st_mode) or info.st_size != segment.size or not info.st_size:
            raise _Invalid(f"{path.name}: {info.st_size} bytes, manifest says {segment.size}")
        try:
            if _checksum_file(fd, info.st_size) != segment.checksum:
                raise _Invalid(f"{path.name}: checksum differs (damaged)")
        except OSError as exc:
            raise _Invalid(f"{path.name}: unreadable: {exc.strerror}") from None
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    batches = _batches(path, mapped, segment)
    _MAPPED[key] = batches
    _COUNTS["segments_mapped"] += 1
    return batches


def _batches(path: Path, mapped: mmap.mmap, segment: _Segment) -> tuple[Columns, ...]:
    """The batches of the mapped segment file, validated against ``segment``."""
    batches: list[Columns] = []
    try:
        reader = pa.ipc.open_file(pa.py_buffer(mapped))
        if not reader.num_record_batches or not reader.schema.equals(_SCHEMA):
            raise _Invalid(f"{path.name}: not a segment of this format")
        rows = 0
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            batch.validate()
            if not batch.num_rows or any(c.null_count for c in batch.columns):
                raise _Invalid(f"{path.name}: batch {index} empty or with nulls")
            rows += batch.num_rows
            batches.append(
                {
                    name: batch.column(i).to_numpy(zero_copy_only=True)
                    for i, name in enumerate(COLUMNS)
                }
            )
    except (pa.ArrowException, ValueError) as exc:
        raise _Invalid(f"{path.name}: unreadable Arrow file: {exc}") from None
    if rows != segment.rows:
        raise _Invalid(f"{path.name}: {rows} rows, manifest says {segment.rows}")
    previous = None
    for columns in batches:
        seq = columns["seq"]
        if previous is not None and int(seq[0]) <= previous:
            raise _Invalid(f"{path.name}: seq not increasing")
        if len(seq) > 1 and not bool(np.all(seq[1:] > seq[:-1])):
            raise _Invalid(f"{path.name}: seq not increasing")
        previous = int(seq[-1])
    if int(batches[0]["seq"][0]) != segment.first_seq or previous != segment.last_seq:
        raise _Invalid(f"{path.name}: seq range differs from the manifest")
    return tuple(batches)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    sdir: Path
    manifest: _Manifest
    parts: tuple[Columns, ...]
    """Every batch of every segment, in seq order."""

    @property
    def version(self) -> str:
        return self.manifest.version

    def arrays(self, symbol: str) -> TickArrays:
        _COUNTS["reads"] += 1
        if not self.parts:
            return TickArrays(symbol, np.empty(0, dtype=ROW_DTYPE))
        if len(self.parts) == 1:
            return TickArrays(symbol, columns=self.parts[0])
        key = (str(self.sdir), self.version)
        joined = _JOINED.get(key)
        if joined is None:
            joined = {name: np.concatenate([p[name] for p in self.parts]) for name in COLUMNS}
            while len(_JOINED) >= _JOINED_KEEP:
                del _JOINED[next(iter(_JOINED))]
            _JOINED[key] = joined
        return TickArrays(symbol, columns=joined)


def _open_snapshot(sdir: Path, manifest: _Manifest) -> _Snapshot:
    segments = [_map_segment(sdir / s.file, s) for s in manifest.segments]
    for before, after in itertools.pairwise(segments):
        if int(after[0]["seq"][0]) <= int(before[-1]["seq"][-1]):
            raise _Invalid("segments overlap or are out of order")
    parts = tuple(batch for segment in segments for batch in segment)
    if parts:
        if _row_hash(_row(parts[0], 0)) != manifest.first_hash:
            raise _Invalid("first row differs from the manifest")
        if _row_hash(_row(parts[-1], -1)) != manifest.last_hash:
            raise _Invalid("last row differs from the manifest")
    return _Snapshot(sdir, manifest, parts)


def _row(columns: Mapping[str, npt.NDArray[Any]], index: int) -> Rows:
    row = np.empty(1, dtype=ROW_DTYPE)
    for name in COLUMNS:
        row[name] = columns[name][index]
    return row


# ------------------------------------------------------------------ sync of one symbol


def _check_store(store: StoreRows, manifest: _Manifest, identity: list[int], symbol: str) -> None:
    """Raise :class:`_Invalid` unless the store still holds what the snapshot was made of."""
    if manifest.symbol != symbol:
        raise _Invalid("manifest of another symbol")
    if manifest.store != identity:
        raise _Invalid("the database file was replaced")
    if not manifest.segments:
        if len(store.fetch(manifest.symbol, 1, MAX_SEQ, limit=1)):
            raise _Invalid("the store has rows the empty snapshot lacks")  # rebuilt cheaply
        return
    first, last = manifest.first_seq, manifest.last_seq
    if first > 1 and len(store.fetch(manifest.symbol, 1, first - 1, limit=1)):
        raise _Invalid("the store has rows below the snapshot's first seq")
    for seq, expected in ((first, manifest.first_hash), (last, manifest.last_hash)):
        if _row_hash(store.fetch(manifest.symbol, seq, seq)) != expected:
            raise _Invalid(f"the store's row at seq {seq} differs from the snapshot's")
    gaps = manifest.rows != last - first + 1
    if gaps and store.count(manifest.symbol, first, last) != manifest.rows:
        raise _Invalid("the store holds other rows in the snapshot's range")


def _remove_ours(sdir: Path, keep: set[str]) -> None:
    """Remove the files this module writes in ``sdir`` (segments, temp files) except ``keep``."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(sdir):
            name = entry.name
            if name in keep or not (_SEGMENT_NAME.fullmatch(name) or _TEMP_NAME.fullmatch(name)):
                continue
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)  # noqa: PTH108 - a name this module wrote


def _sizes(chunk_rows: int, segment_rows: int) -> tuple[int, int]:
    for key, value in (("chunk_rows", chunk_rows), ("segment_rows", segment_rows)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value!r}: must be an integer >= 1")
    if chunk_rows > segment_rows:
        raise ValueError(f"chunk_rows={chunk_rows!r}: must be <= segment_rows={segment_rows!r}")
    return chunk_rows, segment_rows


def _sync_one(
    db: Path, directory: Path, symbol: str, sizes: tuple[int, int]
) -> tuple[_Snapshot, int, str | None]:
    """:func:`_sync_symbol` on a fresh read of the store; once more if a writer started while
    it was read as immutable (nothing read then is trusted: the manifest was not replaced)."""
    _COUNTS["syncs"] += 1
    try:
        with StoreRows(db) as store:
            return _sync_symbol(store, directory, symbol, _identity(db), sizes)
    except StoreChangedError:
        with StoreRows(db) as store:
            return _sync_symbol(store, directory, symbol, _identity(db), sizes)


def _sync_symbol(
    store: StoreRows, directory: Path, symbol: str, identity: list[int], sizes: tuple[int, int]
) -> tuple[_Snapshot, int, str | None]:
    """Bring ``symbol``'s snapshot up to date (the exclusive lock held): (snapshot, rows
    appended, why it was rebuilt or None)."""
    sdir = directory / _symbol_dirname(symbol)
    why: str | None = None
    snap: _Snapshot | None = None
    try:
        manifest = _read_manifest(sdir)
        if manifest is None:
            why = "new"
        else:
            _check_store(store, manifest, identity, symbol)
            snap = _open_snapshot(sdir, manifest)
    except _Invalid as exc:
        why = str(exc)
    try:
        if snap is None:
            _COUNTS["rebuilds"] += 1
            _ensure_dir(sdir)
            _remove_ours(sdir, keep=set())
            manifest = _Manifest(symbol, secrets.token_hex(8), identity, (), "", "")
            snap = _Snapshot(sdir, manifest, ())
        result = _append(store, sdir, snap, why is not None, sizes)
    except OSError as exc:
        raise ColumnarUnavailableError(f"{sdir}: cannot write the snapshot: {exc}") from None
    return result[0], result[1], why


def _ensure_dir(sdir: Path) -> None:
    try:
        sdir.mkdir(mode=0o700)
    except FileExistsError:
        info = os.lstat(sdir)
        if not stat.S_ISDIR(info.st_mode):
            raise ColumnarUnavailableError(f"{sdir}: exists and is not a directory") from None


@dataclass(slots=True)
class _Output:
    """Rows being written as segments of at most ``segment_rows`` rows, batch by batch."""

    sdir: Path
    segment_rows: int
    segments: list[_Segment]
    written: list[str] = field(default_factory=list)
    writer: _SegmentWriter | None = None

    def room(self) -> int:
        """Rows the open segment still takes (a new one takes ``segment_rows``)."""
        return self.segment_rows - (self.writer.rows if self.writer is not None else 0)

    def write(self, columns: Mapping[str, npt.NDArray[Any]]) -> None:
        """Write ``columns`` (at most :meth:`room` rows) as a batch; a full segment is closed."""
        if self.writer is None:
            self.writer = _SegmentWriter(self.sdir)
        self.writer.write(columns)
        if self.writer.rows >= self.segment_rows:
            self.close()

    def close(self) -> None:
        """Finish the open segment, if any."""
        writer, self.writer = self.writer, None
        if writer is not None:
            segment = writer.close()
            self.segments.append(segment)
            self.written.append(segment.file)

    def discard(self) -> None:
        """Remove every file written (nothing recorded them yet)."""
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        for name in self.written:
            with contextlib.suppress(FileNotFoundError):
                (self.sdir / name).unlink()


def _segment_batches(path: Path, chunk_rows: int) -> Iterator[dict[str, npt.NDArray[Any]]]:
    """The rows of the (validated) segment file ``path`` in pieces of at most ``chunk_rows``,
    each read from the file in turn (not mapped: memory stays bounded by a batch)."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            for lo in range(0, batch.num_rows, chunk_rows):
                piece = batch.slice(lo, chunk_rows)
                yield {
                    name: piece.column(i).to_numpy(zero_copy_only=True)
                    for i, name in enumerate(COLUMNS)
                }
            del batch


def _merge_small(out: _Output, chunk_rows: int) -> list[str]:
    """Rewrite the segments from the first short one on (once more than
    :data:`MAX_SMALL_SEGMENTS` are shorter than ``segment_rows``) into as few as fit, streaming
    a chunk at a time (``out.segments`` changed in place); returns the files merged (to remove
    once the new manifest is in place)."""
    segments = out.segments
    small = [i for i, s in enumerate(segments) if s.rows < out.segment_rows]
    if len(small) <= MAX_SMALL_SEGMENTS:
        return []
    start = small[0]
    sources = segments[start:]
    del segments[start:]
    for segment in sources:
        for columns in _segment_batches(out.sdir / segment.file, chunk_rows):
            rows = len(columns["seq"])
            done = 0
            while done < rows:
                take = min(rows - done, out.room())
                out.write({name: column[done : done + take] for name, column in columns.items()})
                done += take
    out.close()
    return [s.file for s in sources]


def _append(
    store: StoreRows,
    sdir: Path,
    snap: _Snapshot,
    fresh: bool,
    sizes: tuple[int, int],
) -> tuple[_Snapshot, int]:
    """Append the store's rows above the snapshot's last seq: fetched ``chunk_rows`` at a time,
    each chunk written as one batch of the open segment (``segment_rows`` rows a segment at
    most) and dropped, so memory is bounded by a chunk whatever the number of rows."""
    chunk_rows, segment_rows = sizes
    manifest = snap.manifest
    out = _Output(sdir, segment_rows, list(manifest.segments))
    last = manifest.last_seq
    appended = 0
    first_hash, last_hash = manifest.first_hash, manifest.last_hash
    dropped: list[str] = []
    try:
        while True:
            limit = min(chunk_rows, out.room())
            rows = store.fetch(manifest.symbol, last + 1, MAX_SEQ, limit=limit)
            if not len(rows):
                break
            if not first_hash:
                first_hash = _row_hash(rows[:1])
            last_hash = _row_hash(rows[-1:])
            out.write({name: rows[name] for name in COLUMNS})
            count = len(rows)
            appended += count
            last = int(rows["seq"][-1])
            del rows
            if count < limit:  # a short chunk: the store has no more
                break
        out.close()
        if not appended and not fresh:
            return snap, 0
        dropped = _merge_small(out, chunk_rows)
        new = _Manifest(
            manifest.symbol,
            manifest.snapshot_id,
            manifest.store,
            tuple(out.segments),
            first_hash,
            last_hash,
        )
        store.verify()  # what was read is what the file holds: only then commit it
        write_atomic(sdir / MANIFEST, new.to_bytes())
    except BaseException:
        out.discard()
        raise
    for name in dropped:
        with contextlib.suppress(FileNotFoundError):
            (sdir / name).unlink()
    # Serve what is now on disk (mapped, validated) rather than the rows read.
    return _open_snapshot(sdir, new), appended
