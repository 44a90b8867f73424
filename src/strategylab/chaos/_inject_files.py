"""File corruption: bytes of a stored file overwritten, as a failing disk or a stray write would.

Both injectors flip bytes in place (each damaged byte XORed with ``0xA5``, so every one of them
really changes), ``fsync`` the file, and keep the original bytes. Heal puts them back only when
built with ``restore=True`` (and only if the damaged bytes are still what the fault wrote: a
file the system already repaired or rewrote is left alone, and that is an
:class:`InjectorError`); by default the damage stays, because finding and repairing it is what
the lab measures. The file's SHA-256 before the damage, after it and after heal is recorded.

The owner of the file must not be writing it meanwhile: stop it first (:class:`KillProcess`, or
:class:`PauseProcess` for the time of the damage). Given an ``owner`` pid getter, inject refuses
(:class:`InjectorError`) while that process is running (any state but stopped, zombie or gone).
A paused owner that resumes may write back a page it had cached over the damage; that is what
a real process does.

Errors: bad arguments raise :class:`~strategylab.errors.ConfigurationError` naming them; a file
that is missing, a symlink, or not of the expected format raises :class:`InjectorError`.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Final

from strategylab import _validate
from strategylab._files import open_private
from strategylab.errors import ConfigurationError, StrategyLabError

from ._inject_process import process_state
from ._injector import Injector, InjectorError
from ._severity import Severity

__all__ = ["FileDamage", "SQLitePageDamage", "SpoolSegmentDamage"]

_MASK: Final = 0xA5
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_SQLITE_HEADER: Final = 100
_WAL_HEADER: Final = 32
_WAL_FRAME_HEADER: Final = 24
# The spool's record layout, as documented in strategylab.market's spool module (a private
# module of another package, so restated here): magic, length, payload CRC, header CRC.
_SPOOL_MAGIC: Final = b"SLsp"
_SPOOL_HEAD: Final = struct.Struct(">4sIII")
_SPOOL_SUFFIX: Final = ".seg"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _flipped(data: bytes) -> bytes:
    return bytes(b ^ _MASK for b in data)


class FileDamage(Injector):
    """Bytes of ``path`` overwritten in place; subclasses choose where (:meth:`locate`).

    After inject: :attr:`offset` and :attr:`original` (the bytes replaced), :attr:`sha256`
    (``before``, ``damaged``, ``healed``), :attr:`restored` after heal.
    """

    kind: ClassVar[str] = "corruption"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        severity: Severity,
        owner: Callable[[], int | None] | None,
        restore: bool,
    ) -> None:
        if not isinstance(severity, Severity):
            raise ConfigurationError("severity", severity, "must be a chaos.Severity")
        if owner is not None and not callable(owner):
            raise ConfigurationError("owner", _validate.shown(owner), "must be a pid getter")
        if not isinstance(restore, bool):
            raise ConfigurationError("restore", restore, "must be a boolean")
        super().__init__(name, severity)
        self.path = Path(path)
        self._owner = owner
        self.restore = restore
        self.target: Path | None = None
        self.offset: int | None = None
        self.original = b""
        self.sha256: dict[str, str] = {}
        self.restored = False

    @abc.abstractmethod
    def locate(self) -> tuple[Path, int, int]:
        """``(file, offset, length)`` to damage (subclass hook); :class:`InjectorError` when the
        file holds nothing to damage."""

    def _check_owner(self) -> None:
        if self._owner is None:
            return
        pid = self._owner()
        if pid is None:
            return
        state = process_state(pid)
        if state not in (None, "T", "t", "Z", "X"):
            raise InjectorError(
                f"{self.name}: the owner (pid {pid}) is running (state {state}): "
                "stop or pause it before damaging its file"
            )

    def _damage(self) -> None:
        self._check_owner()
        target, offset, length = self.locate()
        fd = self._open(target)
        try:
            before = _sha256(target)
            original = os.pread(fd, length, offset)
            if len(original) != length:
                raise InjectorError(f"{self.name}: {target} is shorter than {offset + length}")
            os.pwrite(fd, _flipped(original), offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.target, self.offset, self.original = target, offset, original
        self.restored = False
        self.sha256 = {"before": before, "damaged": _sha256(target)}

    def _open(self, target: Path) -> int:
        try:
            return open_private(target, os.O_RDWR)
        except (OSError, StrategyLabError) as exc:
            raise InjectorError(f"{self.name}: cannot open {target}: {exc}") from exc

    def _undo(self) -> None:
        target, offset = self.target, self.offset
        assert target is not None  # noqa: S101 - set by inject
        assert offset is not None  # noqa: S101
        if not self.restore:
            return
        fd = self._open(target)
        try:
            now = os.pread(fd, len(self.original), offset)
            if now != _flipped(self.original):
                raise InjectorError(
                    f"{self.name}: {target} changed at {offset} since the damage "
                    "(repaired or rewritten): not restored"
                )
            os.pwrite(fd, self.original, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.restored = True
        self.sha256["healed"] = _sha256(target)

    async def _inject(self) -> None:
        await asyncio.to_thread(self._damage)

    async def _heal(self) -> None:
        await asyncio.to_thread(self._undo)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "path": str(self.target or self.path),
            "offset": self.offset,
            "length": len(self.original),
            "restore": self.restore,
            "restored": self.restored,
            "sha256": dict(self.sha256),
        }


def _length(key: str, value: int | None, medium: int, severity: Severity) -> int:
    if value is None:
        return max(1, round(medium * severity.scale))
    return _validate.integer(key, value, minimum=1, maximum=1 << 30, unit=" bytes")


class SQLitePageDamage(FileDamage):
    """Bytes at the start of one page of an SQLite database overwritten (the b-tree page
    header and cell pointers: any read of that page reports the database malformed, and
    ``PRAGMA integrity_check`` finds it).

    ``page`` (1-based) chooses the page; by default the middle one of the pages 2..N that have
    no newer copy in the ``-wal`` file (a page the WAL holds would be read from there, hiding
    the damage). On page 1 the damage starts after the 100-byte file header. Medium: 64 bytes,
    multiplied by the severity's scale (critical 128), at most a page; ``length`` overrides.
    Raises :class:`InjectorError` for a file that is not an SQLite database or has one page.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        page: int | None = None,
        length: int | None = None,
        owner: Callable[[], int | None] | None = None,
        restore: bool = False,
        severity: Severity = Severity.MEDIUM,
        name: str = "corruption.sqlite_page",
    ) -> None:
        super().__init__(db_path, name=name, severity=severity, owner=owner, restore=restore)
        self.page = None if page is None else _validate.integer("page", page, minimum=1)
        self.length = _length("length", length, 64, severity)
        self.damaged_page: int | None = None

    def _wal_pages(self) -> set[int]:
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            data = wal.read_bytes()
        except FileNotFoundError:
            return set()
        if len(data) < _WAL_HEADER:
            return set()
        page_size = int.from_bytes(data[8:12], "big")
        if page_size < 512:
            return set()
        frame = _WAL_FRAME_HEADER + page_size
        return {
            int.from_bytes(data[at : at + 4], "big")
            for at in range(_WAL_HEADER, len(data) - frame + 1, frame)
        }

    def locate(self) -> tuple[Path, int, int]:
        try:
            with self.path.open("rb") as file:
                header = file.read(_SQLITE_HEADER)
            size = self.path.stat().st_size
        except OSError as exc:
            raise InjectorError(f"{self.name}: cannot read {self.path}: {exc}") from exc
        if len(header) < _SQLITE_HEADER or not header.startswith(_SQLITE_MAGIC):
            raise InjectorError(f"{self.name}: {self.path} is not an SQLite database")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = size // page_size
        if self.page is not None:
            if self.page > pages:
                raise InjectorError(f"{self.name}: page {self.page} > the file's {pages} pages")
            page = self.page
        else:
            in_wal = self._wal_pages()
            candidates = [p for p in range(2, pages + 1) if p not in in_wal]
            if not candidates:
                raise InjectorError(
                    f"{self.name}: {self.path} has no page beyond the first outside the WAL"
                )
            page = candidates[len(candidates) // 2]
        start = (page - 1) * page_size + (_SQLITE_HEADER if page == 1 else 0)
        end = page * page_size
        self.damaged_page = page
        length = min(self.length, end - start)
        return self.path, start, length

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "page": self.damaged_page}


class SpoolSegmentDamage(FileDamage):
    """Payload bytes of the first record of a spool segment overwritten: a complete record whose
    CRC no longer matches, which the spool must report as corruption (not cut off as a torn
    append), move aside, and fetch again through its resume limits.

    ``spool_dir`` is the spool's directory; ``segment`` (a file name, ``000000000001.seg``)
    chooses the segment, by default the oldest. Medium: 16 bytes of the payload, multiplied by
    the severity's scale, at most the payload; ``length`` overrides. Raises
    :class:`InjectorError` when there is no segment or it does not start with a record.
    """

    def __init__(
        self,
        spool_dir: str | os.PathLike[str],
        *,
        segment: str | None = None,
        length: int | None = None,
        owner: Callable[[], int | None] | None = None,
        restore: bool = False,
        severity: Severity = Severity.MEDIUM,
        name: str = "corruption.spool_segment",
    ) -> None:
        super().__init__(spool_dir, name=name, severity=severity, owner=owner, restore=restore)
        if segment is not None and (
            not isinstance(segment, str)
            or not segment.endswith(_SPOOL_SUFFIX)
            or Path(segment).name != segment
        ):
            raise ConfigurationError("segment", segment, "must be a segment file name (*.seg)")
        self.segment = segment
        self.length = _length("length", length, 16, severity)

    def locate(self) -> tuple[Path, int, int]:
        if self.segment is not None:
            path = self.path / self.segment
        else:
            segments = sorted(self.path.glob(f"*{_SPOOL_SUFFIX}"))
            if not segments:
                raise InjectorError(f"{self.name}: no spool segment in {self.path}")
            path = segments[0]
        try:
            with path.open("rb") as file:
                head = file.read(_SPOOL_HEAD.size)
            size = path.stat().st_size
        except OSError as exc:
            raise InjectorError(f"{self.name}: cannot read {path}: {exc}") from exc
        if len(head) < _SPOOL_HEAD.size:
            raise InjectorError(f"{self.name}: {path} holds no complete spool record")
        magic, payload, _crc, _head_crc = _SPOOL_HEAD.unpack(head)
        if magic != _SPOOL_MAGIC or payload == 0 or _SPOOL_HEAD.size + payload > size:
            raise InjectorError(f"{self.name}: {path} does not start with a complete spool record")
        return path, _SPOOL_HEAD.size, min(self.length, payload)
