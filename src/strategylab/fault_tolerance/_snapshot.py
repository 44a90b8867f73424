"""The kill switch's state snapshot and the unclean-shutdown marker.

An emergency shutdown writes two files in the data directory
(:class:`~strategylab._layout.DataLayout`):

``snapshot.json``
    One :class:`StateSnapshot`: positions, open orders, the last durable sequence per symbol,
    the reason and the time, as canonical JSON (sorted keys, ``,``/``:`` separators, UTF-8, no NaN)
    with a ``sha256`` field, the hex SHA-256 of the canonical encoding of every other field. A
    flipped byte, a truncated file or a hand edit fails :func:`read_snapshot`, which names the file
    and what is wrong (:class:`SnapshotError`). Written with
    :func:`~strategylab._durable.write_atomic` (temporary file, fsync, rename, fsync of the
    directory; mode 0600): after a crash the path holds the old snapshot or the new one.

``UNCLEAN_SHUTDOWN``
    The marker, written last. It says "this node did not stop cleanly; restore and reconcile
    before trading". It holds the reason, the time, the writer's pid, the digest of the snapshot
    written just before it (``null`` when none could be written) and a random ``token``, so that
    :func:`clear_unclean` removes only the marker that was read (not a newer one written since).

Neither file is ever followed through a symlink: a link (or a FIFO, a directory) planted at either
name is refused with :class:`~strategylab._files.UnsafePathError` naming the path. Reads are
bounded (:data:`MAX_SNAPSHOT_BYTES`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import secrets
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final, NoReturn, TypeAlias

from strategylab._durable import fsync_dir, write_atomic
from strategylab._files import (
    UnsafePathError,
    make_private_dir,
    open_private,
    refuse_symlinks,
)
from strategylab._layout import DataLayout
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import StrategyLabError

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_VERSION",
    "JSONValue",
    "SnapshotError",
    "StateSnapshot",
    "UncleanMarker",
    "clear_unclean",
    "mark_unclean",
    "read_snapshot",
    "unclean_marker",
    "write_snapshot",
]

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
"""A plain JSON value."""

SNAPSHOT_VERSION: Final = 1
"""The format version this module writes; a file of a newer version is refused."""
MAX_SNAPSHOT_BYTES: Final = 64 * 1024 * 1024
"""The largest snapshot or marker file read, in bytes; a larger one is refused, never loaded."""
_MAX_DEPTH: Final = 100
_FIELDS: Final = frozenset(
    {"version", "reason", "time", "positions", "open_orders", "last_sequence", "sha256"}
)
_MARKER_FIELDS: Final = frozenset({"reason", "time", "pid", "snapshot_sha256", "token"})


class SnapshotError(StrategyLabError):
    """A snapshot or marker file is damaged or not what it must be; names the file and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


def _canonical(obj: object) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _plain(value: object, where: str, depth: int = 0) -> JSONValue:
    """A plain-JSON deep copy of ``value``; ``ValueError`` naming ``where`` for anything else."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}={value!r}: must be a finite number")
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _bad(where, key, "keys must be strings")
            out[key] = _plain(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise ValueError(f"{where}={value!r}: not a JSON value ({type(value).__name__})")


def _bad(where: str, value: object, reason: str) -> NoReturn:
    raise ValueError(f"{where}={value!r}: {reason}")


def _object(where: str, value: object) -> dict[str, JSONValue]:
    if not isinstance(value, Mapping):
        _bad(where, value, "must be a JSON object")
    plain = _plain(value, where)
    assert isinstance(plain, dict)  # noqa: S101 - a Mapping stays a dict
    return plain


def _orders(value: object) -> tuple[Mapping[str, JSONValue], ...]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        _bad("open_orders", value, "must be a list of JSON objects")
    return tuple(
        MappingProxyType(_object(f"open_orders[{i}]", order)) for i, order in enumerate(value)
    )


def _sequences(value: object) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        _bad("last_sequence", value, "must be a JSON object")
    sequences: dict[str, int] = {}
    for symbol, seq in value.items():
        if not isinstance(symbol, str) or not symbol:
            _bad("last_sequence", symbol, "keys must be non-empty symbols")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            _bad(f"last_sequence.{symbol}", seq, "must be an int >= 0")
        sequences[symbol] = int(seq)
    return MappingProxyType(sequences)


def _utc_time(value: object, where: str) -> str:
    if not isinstance(value, str):
        _bad(where, value, "must be an ISO-8601 string")
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where}={value!r}: not ISO-8601") from None
    if at.tzinfo is None or at.utcoffset() != dt.timedelta(0):
        raise ValueError(f"{where}={value!r}: must be timezone-aware UTC")
    return value


def _iso(clock: Clock) -> str:
    return dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC).isoformat()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StateSnapshot:
    """What an emergency shutdown preserves, frozen; checked on construction.

    - ``positions``: JSON object, whatever the trading side keeps per key (a quantity, or an
      object per strategy and symbol);
    - ``open_orders``: JSON objects, one per order open at the exchange when the snapshot was taken;
    - ``last_sequence``: symbol -> the last sequence number durably stored (an int >= 0);
    - ``reason``: why (a non-empty str); ``time``: when, an aware-UTC ISO-8601 string;
    - ``version``: the format version (:data:`SNAPSHOT_VERSION`).

    Mappings and lists are deep-copied into plain JSON (the top levels read-only), so the caller's
    objects cannot change a snapshot behind its back. Raises ``ValueError`` naming the field for a
    bad value. :attr:`digest` is the SHA-256 stored in the file.
    """

    reason: str
    time: str
    positions: Mapping[str, JSONValue] = dataclasses.field(default_factory=dict)
    open_orders: Sequence[Mapping[str, JSONValue]] = ()
    last_sequence: Mapping[str, int] = dataclasses.field(default_factory=dict)
    version: int = SNAPSHOT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason:
            _bad("reason", self.reason, "must be a non-empty str")
        _utc_time(self.time, "time")
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int)
            or not 1 <= self.version <= SNAPSHOT_VERSION
        ):
            _bad("version", self.version, f"must be an int within 1..{SNAPSHOT_VERSION}")
        object.__setattr__(
            self, "positions", MappingProxyType(_object("positions", self.positions))
        )
        object.__setattr__(self, "open_orders", _orders(self.open_orders))
        object.__setattr__(self, "last_sequence", _sequences(self.last_sequence))

    @classmethod
    def create(
        cls,
        *,
        reason: str,
        positions: Mapping[str, object] | None = None,
        open_orders: Sequence[Mapping[str, object]] = (),
        last_sequence: Mapping[str, int] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> StateSnapshot:
        """A snapshot taken now (``clock.time()``, as aware UTC)."""
        return cls(
            reason=reason,
            time=_iso(clock),
            positions=positions or {},  # type: ignore[arg-type]  # checked in __post_init__
            open_orders=open_orders,  # type: ignore[arg-type]
            last_sequence=last_sequence or {},
        )

    def body(self) -> dict[str, JSONValue]:
        """Every field as plain JSON (a deep copy), without the digest."""
        return {
            "version": self.version,
            "reason": self.reason,
            "time": self.time,
            "positions": _plain(self.positions, "positions"),
            "open_orders": [_plain(order, "open_orders") for order in self.open_orders],
            "last_sequence": dict(self.last_sequence),
        }

    @property
    def digest(self) -> str:
        """The hex SHA-256 of the canonical JSON of :meth:`body`."""
        return hashlib.sha256(_canonical(self.body())).hexdigest()

    def to_bytes(self) -> bytes:
        """The file's content: canonical JSON with ``sha256``, newline-terminated."""
        body = self.body()
        body["sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
        return _canonical(body) + b"\n"

    @classmethod
    def from_bytes(
        cls, data: bytes, *, source: str | os.PathLike[str] = "<bytes>"
    ) -> StateSnapshot:
        """Parse and verify a snapshot file's content. Raises :class:`SnapshotError` naming
        ``source`` and what is wrong: not UTF-8 JSON, a missing or unknown field, a digest that
        does not match (a damaged file), an unsupported version, a bad field value."""
        obj = _load_object(data, source, "snapshot")
        keys = set(obj)
        if keys != _FIELDS:
            missing = sorted(_FIELDS - keys)
            extra = sorted(keys - _FIELDS)
            raise SnapshotError(
                source,
                "not a snapshot: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(extra)}" if extra else "",
                    )
                    if part
                ),
            )
        stored = obj.pop("sha256")
        expected = hashlib.sha256(_canonical(obj)).hexdigest()
        if stored != expected:
            raise SnapshotError(
                source,
                f"damaged: its sha256 {str(stored)[:64]!r} does not match its content ({expected})",
            )
        version = obj["version"]
        if (
            isinstance(version, int)
            and not isinstance(version, bool)
            and version > SNAPSHOT_VERSION
        ):
            raise SnapshotError(
                source, f"version {version} is newer than this program reads ({SNAPSHOT_VERSION})"
            )
        try:
            return cls(
                version=version,  # type: ignore[arg-type]  # checked in __post_init__
                reason=obj["reason"],  # type: ignore[arg-type]
                time=obj["time"],  # type: ignore[arg-type]
                positions=obj["positions"],  # type: ignore[arg-type]
                open_orders=obj["open_orders"],  # type: ignore[arg-type]
                last_sequence=obj["last_sequence"],  # type: ignore[arg-type]
            )
        except ValueError as exc:
            raise SnapshotError(source, f"bad field: {exc}") from None


def _reject_constant(name: str) -> JSONValue:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(data: bytes, source: str | os.PathLike[str], what: str) -> dict[str, JSONValue]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SnapshotError(source, f"not UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SnapshotError(
            source, f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise SnapshotError(source, f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise SnapshotError(source, f"not a {what}: a JSON {type(obj).__name__}, not an object")
    return obj


def _as_layout(layout: DataLayout) -> DataLayout:
    """``layout`` with a :class:`~pathlib.Path` root (a caller may have given a str)."""
    return layout if isinstance(layout.root, Path) else DataLayout(Path(layout.root))


def _target(layout_or_path: DataLayout | str | os.PathLike[str], *, marker: bool) -> Path:
    if isinstance(layout_or_path, DataLayout):
        layout = _as_layout(layout_or_path)
        return layout.unclean_marker if marker else layout.snapshot
    return Path(layout_or_path)


def _read_bounded(path: Path) -> bytes:
    """The content of the private regular file ``path``, refused when over the size bound."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_SNAPSHOT_BYTES:
            raise SnapshotError(path, f"{size} bytes, more than the {MAX_SNAPSHOT_BYTES} read")
        data = file.read(MAX_SNAPSHOT_BYTES + 1)
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(path, f"more than the {MAX_SNAPSHOT_BYTES} bytes read")
    return data


def _write_private(path: Path, data: bytes) -> None:
    make_private_dir(path.parent)
    refuse_symlinks(path)  # rename(2) would replace a planted link; refuse it, as everywhere
    write_atomic(path, data)


def write_snapshot(
    layout_or_path: DataLayout | str | os.PathLike[str], snapshot: StateSnapshot
) -> Path:
    """Write ``snapshot`` atomically and durably (0600) to ``layout.snapshot`` or the path given.

    Missing parent directories are created 0700. Returns the path written. Raises
    :class:`~strategylab._files.UnsafePathError` when a symlink (or a FIFO, directory, hard-linked
    file) is at the path or a parent is a symlink, and ``OSError`` when it cannot be written (the
    old file, if any, is then untouched).
    """
    path = _target(layout_or_path, marker=False)
    _write_private(path, snapshot.to_bytes())
    return path


def read_snapshot(layout_or_path: DataLayout | str | os.PathLike[str]) -> StateSnapshot:
    """The verified snapshot at ``layout.snapshot`` or the path given.

    Raises ``FileNotFoundError`` when there is none, :class:`~strategylab._files.UnsafePathError`
    when the path is a symlink or not a private regular file (refused, never read), and
    :class:`SnapshotError` naming the file and the problem when it is damaged or malformed.
    """
    path = _target(layout_or_path, marker=False)
    return StateSnapshot.from_bytes(_read_bounded(path), source=path)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UncleanMarker:
    """What an unclean-shutdown marker says.

    ``reason`` and ``time`` (aware-UTC ISO-8601) of the emergency shutdown, ``pid`` of the process
    that wrote it, ``snapshot_sha256`` (the digest of the snapshot written before it, None when
    none was), ``token`` (random; :func:`clear_unclean` checks it), ``path``. A marker file whose
    content cannot be read as one still marks an unclean shutdown: ``problem`` then says what is
    wrong with it and the other fields are placeholders.
    """

    path: Path
    reason: str
    time: str
    pid: int | None
    snapshot_sha256: str | None
    token: str
    problem: str | None = None

    def to_bytes(self) -> bytes:
        """The marker file's content: canonical JSON, newline-terminated."""
        return (
            _canonical(
                {
                    "reason": self.reason,
                    "time": self.time,
                    "pid": self.pid,
                    "snapshot_sha256": self.snapshot_sha256,
                    "token": self.token,
                }
            )
            + b"\n"
        )


def mark_unclean(
    layout: DataLayout,
    reason: str,
    *,
    snapshot_sha256: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> UncleanMarker:
    """Write the unclean-shutdown marker (atomically, 0600) and return what it says.

    ``snapshot_sha256`` is the :attr:`StateSnapshot.digest` of the snapshot just written (None
    when none could be). Raises ``ValueError`` for an empty ``reason``,
    :class:`~strategylab._files.UnsafePathError` for a symlink or special file at the marker's
    path, ``OSError`` when it cannot be written.
    """
    if not isinstance(reason, str) or not reason:
        raise ValueError(f"reason={reason!r}: must be a non-empty str")
    marker = UncleanMarker(
        path=_as_layout(layout).unclean_marker,
        reason=reason,
        time=_iso(clock),
        pid=os.getpid(),
        snapshot_sha256=snapshot_sha256,
        token=secrets.token_hex(16),
    )
    _write_private(marker.path, marker.to_bytes())
    return marker


def _parse_marker(path: Path, data: bytes) -> UncleanMarker:
    obj = _load_object(data, path, "marker")
    if set(obj) != _MARKER_FIELDS:
        raise SnapshotError(path, f"not a marker: fields {sorted(obj)}")
    reason, time, pid, digest, token = (
        obj["reason"],
        obj["time"],
        obj["pid"],
        obj["snapshot_sha256"],
        obj["token"],
    )
    if not isinstance(reason, str) or not isinstance(token, str) or not token:
        raise SnapshotError(path, "not a marker: reason and token must be strings")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise SnapshotError(path, f"not a marker: pid={pid!r}")
    if digest is not None and not isinstance(digest, str):
        raise SnapshotError(path, f"not a marker: snapshot_sha256={digest!r}")
    try:
        _utc_time(time, "time")
    except ValueError as exc:
        raise SnapshotError(path, f"not a marker: {exc}") from None
    assert isinstance(time, str)  # noqa: S101 - checked by _utc_time
    return UncleanMarker(
        path=path, reason=reason, time=time, pid=pid, snapshot_sha256=digest, token=token
    )


def unclean_marker(layout: DataLayout) -> UncleanMarker | None:
    """The unclean-shutdown marker, or None when the last shutdown was clean (no marker).

    A marker whose content is damaged is still returned (the shutdown was unclean), with
    :attr:`UncleanMarker.problem` set. Raises :class:`~strategylab._files.UnsafePathError` when a
    symlink, FIFO, directory or hard-linked file is at the marker's path (refused, never read).
    """
    path = _as_layout(layout).unclean_marker
    try:
        data = _read_bounded(path)
    except FileNotFoundError:
        return None
    except SnapshotError as exc:
        return _damaged_marker(path, exc.reason)
    try:
        return _parse_marker(path, data)
    except SnapshotError as exc:
        return _damaged_marker(path, exc.reason)


def _damaged_marker(path: Path, problem: str) -> UncleanMarker:
    return UncleanMarker(
        path=path,
        reason="<unreadable marker>",
        time="",
        pid=None,
        snapshot_sha256=None,
        token="",
        problem=problem,
    )


def clear_unclean(layout: DataLayout, expected: UncleanMarker | None = None) -> bool:
    """Remove the unclean-shutdown marker, once its snapshot was restored and reconciled.

    Only a regular file is removed, never a symlink (nor what it points to), a directory or a
    special file (:class:`~strategylab._files.UnsafePathError`). With ``expected`` (the marker
    :func:`unclean_marker` returned) the file must still be that marker (same ``token``): a marker
    written since, by another shutdown, is kept and :class:`SnapshotError` raised. Returns True
    when a marker was removed, False when there was none. The directory is fsynced after.
    """
    path = _as_layout(layout).unclean_marker
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode):
        refuse_symlinks(path)  # raises, naming what is there
        raise UnsafePathError(0, f"{path}: refusing to remove a non-regular file", str(path))
    if expected is not None and expected.problem is None:
        current = unclean_marker(layout)
        if current is None:
            return False
        if current.token != expected.token:
            raise SnapshotError(
                path, "the marker changed since it was read (a newer shutdown?); kept"
            )
    else:
        refuse_symlinks(path)  # a regular file with a second hard link is not ours either
    path.unlink()
    fsync_dir(path.parent)
    return True
