"""The spool's file side: its state, and what runs in a worker thread (opening and repairing
the directory, rewriting a damaged file, the resume limits on disk, appending a record).

:class:`~strategylab.market._spool.SpoolStore` builds its API on top of this class."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO

from strategylab._durable import fsync_dir, write_atomic
from strategylab._files import make_private_dir, read_private, refuse_symlinks, remove_leftover

from ._spool_damage import SpoolCorruption, _corruptions_of, _Found, _Hole, _hole_of
from ._spool_format import (
    _APPEND,
    _HOLES,
    _PROBE,
    _QUARANTINE,
    _REPLACE,
    _SUFFIX,
    _append,
    _intact,
    _open_private,
    _scan_bytes,
    _Survey,
    _survey,
    _truncate,
)
from ._store import TickStore

_log = logging.getLogger("strategylab.market._spool")


class _SpoolFiles:
    """The spool's state and its file operations (run in worker threads)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        drain_batch: int = 10_000,
        name: str = "spool",
    ) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes={segment_bytes!r}: must be >= 1")
        if drain_batch < 1:
            raise ValueError(f"drain_batch={drain_batch!r}: must be >= 1")
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._drain_batch = drain_batch
        self._name = name
        self._lock = asyncio.Lock()
        self._drain_lock = asyncio.Lock()
        self._file: BinaryIO | None = None
        self._file_index = 0
        self._next_index = 1
        self._opened = False
        self._last: dict[str, int] = {}
        self._first: dict[str, int] = {}
        """Per symbol, the lowest sequence in a segment found at open (a lower bound later)."""
        self._holes: list[_Hole] = []
        self._corruptions: list[SpoolCorruption] = []
        self._pending: dict[Path, int] = {}
        """Intact batches per segment file, for the segments not yet drained."""
        self._file_path: Path | None = None
        self._holes_lock = asyncio.Lock()
        self._batches_written = 0
        self._ticks_written = 0
        self._batches_drained = 0
        self._truncated = 0
        self._corrupt_bytes = 0

    @property
    def name(self) -> str:
        """The component name (``"spool"`` unless given)."""
        return self._name

    def segments(self) -> list[Path]:
        """The segment files, oldest first."""
        return sorted(self.directory.glob(f"*{_SUFFIX}"))

    # ------------------------------------------------------------------ file side (threads)

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError(f"{self._name}: spool is not open (call open() first)")

    def _open(self) -> None:
        make_private_dir(self.directory)
        # An interrupted rewrite (write_atomic's ``.NAME.PID.tmp``, or ``NAME.tmp`` from before it):
        # the file it replaced is intact. ``glob`` matches the dot-names too.
        for leftover in self.directory.glob("*.tmp"):
            remove_leftover(leftover)
        holes, holes_lost = self._load_holes()
        segments = self.segments()
        # A planted symlink is never read as spooled data nor written through.
        refuse_symlinks(*segments, self.directory / _QUARANTINE)
        surveys = [
            _survey(path, tail=index == len(segments) - 1) for index, path in enumerate(segments)
        ]
        found = _corruptions_of(surveys)
        if found or holes_lost:
            # Durable before the damaged bytes are moved: a crash in between finds them again.
            holes.append(_hole_of(surveys, found))
        self._holes = holes
        self._store_holes(self._holes_body())
        for survey in surveys:
            if survey.damaged or survey.torn is not None:
                self._rewrite(survey, found)
        self._open_quarantine()
        self._pending = {survey.path: survey.batches for survey in surveys}
        for survey in surveys:
            for _, bounds in survey.records:
                for symbol, (low, high) in bounds.items():
                    if high > self._last.get(symbol, 0):
                        self._last[symbol] = high
                    if low < self._first.get(symbol, low + 1):
                        self._first[symbol] = low
        self._next_index = max((int(path.stem) for path in segments), default=0) + 1

    def _rewrite(self, survey: _Survey, found: list[_Found]) -> None:
        """Move the damaged spans of a file aside, cut a torn tail, keep the intact records."""
        path = survey.path
        data = read_private(path)
        for each in found:
            if each.path == path:
                self._set_aside(data, each)
        if survey.torn is not None:
            self._truncated += survey.torn[1] - survey.torn[0]
            if not survey.damaged:
                _truncate(path, survey.torn[0])
                return
            data = data[: survey.torn[0]]
        write_atomic(path, _intact(data, survey.damaged))

    def _set_aside(self, data: bytes, found: _Found) -> None:
        start, end = found.span
        aside = found.path.with_name(f"{found.path.stem}.{start:012d}.corrupt")
        write_atomic(aside, data[start:end])
        corruption = SpoolCorruption(
            path=found.path, offset=start, length=end - start, moved_to=aside, ranges=found.ranges
        )
        self._corruptions.append(corruption)
        self._corrupt_bytes += end - start
        _log.warning("%s: CORRUPTION %s", self._name, corruption.describe())

    def _open_quarantine(self) -> None:
        path = self.directory / _QUARANTINE
        if path.exists():
            survey = _survey(path, tail=True, quarantine=True)
            if survey.damaged or survey.torn is not None:
                self._rewrite(survey, [_Found(path, span, {}) for span in survey.damaged])

    async def _repair_sealed(self, survey: _Survey, into: TickStore) -> None:
        """Damage in a segment being drained: every damaged span held acknowledged batches."""
        found = _corruptions_of([survey])
        first = found[0].span[0]
        limits: dict[str, int] = {}
        high = dict(self._last)
        for offset, bounds in survey.records:
            for symbol, (_low, top) in bounds.items():
                high[symbol] = max(top, high.get(symbol, 0))
                if offset < first:
                    limits[symbol] = max(top, limits.get(symbol, 0))
        # Earlier segments are in ``into`` already (drained in order) and nothing later is, so
        # its positions are what was stored before the damage.
        stored = await into.last_seqs()
        hole = _Hole(
            found=f"{survey.path.name}@{first}",
            limits={s: max(limits.get(s, 0), stored.get(s, 0)) for s in high},
            high=high,
            settled=True,
        )
        hole.prune()
        self._holes.append(hole)
        await self._save_holes()
        await asyncio.to_thread(self._rewrite, survey, found)

    # ------------------------------------------------------------------ resume limits on disk

    def _holes_body(self) -> bytes | None:
        self._holes = [hole for hole in self._holes if hole.limits]
        if not self._holes:
            return None
        return json.dumps({"holes": [hole.to_json() for hole in self._holes]}, indent=1).encode()

    async def _save_holes(self) -> None:
        async with self._holes_lock:
            await asyncio.to_thread(self._store_holes, self._holes_body())

    def _store_holes(self, body: bytes | None) -> None:
        path = self.directory / _HOLES
        if body is not None:
            write_atomic(path, body)
        elif path.exists():
            path.unlink()
            fsync_dir(self.directory)

    def _load_holes(self) -> tuple[list[_Hole], bool]:
        """The stored resume limits, and True if the file was there but unreadable."""
        path = self.directory / _HOLES
        refuse_symlinks(path)
        if not path.exists():
            return [], False
        try:
            raw = json.loads(read_private(path))
            return [_Hole.from_json(item) for item in raw["holes"]], False
        except (ValueError, TypeError, KeyError) as exc:
            # The limits are lost: hold every spooled symbol at what the primary has (settle).
            aside = path.with_name(f"{_HOLES}.corrupt")
            path.replace(aside)
            _log.warning(
                "%s: CORRUPTION %s unreadable (%s), moved to %s: every spooled symbol resumes "
                "from what the primary store holds",
                self._name,
                path,
                exc,
                aside.name,
            )
            return [], True

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _append_record(self, payload: bytes) -> None:
        file = self._file
        if file is None or file.tell() >= self._segment_bytes:
            self._close_file()
            path = self.directory / f"{self._next_index:012d}{_SUFFIX}"
            file = self._file = _open_private(path, _APPEND, "ab")
            self._file_path = path
            self._file_index = self._next_index
            self._next_index += 1
            fsync_dir(self.directory)
        try:
            _append(file, payload)
        except OSError:
            # A failed append may have left a partial record: cut it off so the next append
            # does not follow garbage.
            self._close_file()
            self._repair(self.directory / f"{self._file_index:012d}{_SUFFIX}")
            raise

    def _repair(self, path: Path) -> None:
        scan = _scan_bytes(read_private(path))
        if scan.damaged and scan.damaged[-1][1] == scan.size:
            _truncate(path, scan.damaged[-1][0])

    def _append_quarantine(self, payload: bytes) -> None:
        path = self.directory / _QUARANTINE
        created = not path.exists()
        with _open_private(path, _APPEND, "ab") as file:
            _append(file, payload)
        if created:
            fsync_dir(self.directory)

    def _remove(self, path: Path) -> None:
        path.unlink()
        fsync_dir(self.directory)

    def _probe(self) -> None:
        path = self.directory / _PROBE
        with _open_private(path, _REPLACE, "wb") as file:
            file.write(time.time_ns().to_bytes(8, "big"))
            file.flush()
            os.fsync(file.fileno())
        path.unlink()
