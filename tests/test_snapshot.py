"""The kill switch's state snapshot and the unclean-shutdown marker: round trip, damage, links."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from strategylab._files import UnsafePathError
from strategylab._layout import DataLayout
from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance._snapshot import (
    SnapshotError,
    StateSnapshot,
    clear_unclean,
    mark_unclean,
    read_snapshot,
    unclean_marker,
    write_snapshot,
)
from strategylab.testing import FakeClock


def _snapshot(reason: str = "bad signature") -> StateSnapshot:
    return StateSnapshot.create(
        reason=reason,
        positions={"momentum/BTC-USD": {"quantity": 1.5, "average_price": 100.25}},
        open_orders=[{"order_id": "o-1", "symbol": "BTC-USD", "side": "buy", "quantity": 2}],
        last_sequence={"BTC-USD": 1234, "ETH-USD": 0},
        clock=FakeClock(1_700_000_000.0),
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    """A snapshot written and read back is equal to the original, digest included."""
    layout = DataLayout(tmp_path)
    snapshot = _snapshot()
    path = write_snapshot(layout, snapshot)
    assert path == layout.snapshot
    back = read_snapshot(layout)
    assert back == snapshot
    assert back.digest == snapshot.digest
    assert back.last_sequence["BTC-USD"] == 1234
    assert back.open_orders[0]["order_id"] == "o-1"
    assert back.time == "2023-11-14T22:13:20+00:00"


def test_snapshot_file_is_private(tmp_path: Path) -> None:
    """The snapshot file is created mode 0600, the missing directory 0700."""
    layout = DataLayout(tmp_path / "data")
    write_snapshot(layout, _snapshot())
    assert stat.S_IMODE(layout.snapshot.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.root.stat().st_mode) == 0o700


def test_snapshot_is_frozen_against_the_callers_objects() -> None:
    """Changing the dict given to the snapshot does not change the snapshot."""
    positions: dict[str, object] = {"BTC-USD": 1}
    snapshot = StateSnapshot.create(reason="r", positions=positions, clock=FakeClock(0))
    positions["BTC-USD"] = 99
    assert snapshot.positions["BTC-USD"] == 1
    with pytest.raises(TypeError):
        snapshot.positions["BTC-USD"] = 2  # type: ignore[index]


@pytest.mark.parametrize("offset", [0, 10, 40, -30, -3])
def test_a_flipped_byte_is_detected(tmp_path: Path, offset: int) -> None:
    """One flipped bit anywhere in snapshot.json fails the read, naming the file."""
    layout = DataLayout(tmp_path)
    write_snapshot(layout, _snapshot())
    data = bytearray(layout.snapshot.read_bytes())
    data[offset] ^= 0x01
    layout.snapshot.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as caught:
        read_snapshot(layout)
    assert str(layout.snapshot) in str(caught.value)
    assert isinstance(caught.value, StrategyLabError)


def test_a_changed_value_with_valid_json_is_detected(tmp_path: Path) -> None:
    """Editing a sequence number (still valid JSON) breaks the digest, and the error says so."""
    layout = DataLayout(tmp_path)
    write_snapshot(layout, _snapshot())
    obj = json.loads(layout.snapshot.read_bytes())
    obj["last_sequence"]["BTC-USD"] = 1235
    layout.snapshot.write_text(json.dumps(obj))
    with pytest.raises(SnapshotError, match="damaged: its sha256"):
        read_snapshot(layout)


def test_truncated_file_is_reported_as_not_json(tmp_path: Path) -> None:
    """A torn snapshot names the file and where the JSON stops."""
    layout = DataLayout(tmp_path)
    write_snapshot(layout, _snapshot())
    layout.snapshot.write_bytes(layout.snapshot.read_bytes()[:50])
    with pytest.raises(SnapshotError, match=r"not JSON .*line 1"):
        read_snapshot(layout)


def test_missing_field_is_named(tmp_path: Path) -> None:
    """A file without one of the fields names it."""
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"reason": "r"}))
    with pytest.raises(SnapshotError, match="missing last_sequence, open_orders"):
        read_snapshot(path)


def test_newer_version_is_refused(tmp_path: Path) -> None:
    """A snapshot of a future format version is refused, naming the version."""
    body = _snapshot().body()
    body["version"] = 9
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    body["sha256"] = hashlib.sha256(raw).hexdigest()
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(body))
    with pytest.raises(SnapshotError, match="version 9 is newer"):
        read_snapshot(path)


def test_missing_snapshot_is_file_not_found(tmp_path: Path) -> None:
    """No snapshot is FileNotFoundError, not a damaged one."""
    with pytest.raises(FileNotFoundError):
        read_snapshot(DataLayout(tmp_path))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reason", "", "reason=''"),
        ("time", "2024-01-01T00:00:00", "timezone-aware UTC"),
        ("last_sequence", {"BTC-USD": -1}, "last_sequence.BTC-USD=-1"),
        ("open_orders", [1], r"open_orders\[0\]=1"),
        ("positions", {"x": float("nan")}, "positions.x=nan"),
    ],
)
def test_bad_field_is_named(field: str, value: object, message: str) -> None:
    """A bad value is refused with a ValueError naming the field."""
    fields: dict[str, object] = {"reason": "r", "time": "2024-01-01T00:00:00+00:00"}
    fields[field] = value
    with pytest.raises(ValueError, match=message):
        StateSnapshot(**fields)  # type: ignore[arg-type]


def test_symlink_at_snapshot_is_refused_and_target_untouched(tmp_path: Path) -> None:
    """A symlink planted at snapshot.json is refused; the file it points to is not written."""
    layout = DataLayout(tmp_path / "data")
    layout.root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    layout.snapshot.symlink_to(victim)
    with pytest.raises(UnsafePathError, match=r"snapshot\.json"):
        write_snapshot(layout, _snapshot())
    assert victim.read_text() == "precious"
    assert layout.snapshot.is_symlink()
    with pytest.raises(UnsafePathError):
        read_snapshot(layout)


def test_fifo_at_snapshot_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO planted at snapshot.json is refused on read (never opened blocking)."""
    layout = DataLayout(tmp_path)
    os.mkfifo(layout.snapshot)
    with pytest.raises(UnsafePathError, match="FIFO"):
        read_snapshot(layout)


def test_marker_round_trip_and_clear(tmp_path: Path) -> None:
    """The marker says why and which snapshot; clearing it with the marker read removes it."""
    layout = DataLayout(tmp_path)
    assert unclean_marker(layout) is None
    snapshot = _snapshot()
    written = mark_unclean(
        layout, "crash loop", snapshot_sha256=snapshot.digest, clock=FakeClock(0)
    )
    read = unclean_marker(layout)
    assert read == written
    assert read.reason == "crash loop"
    assert read.snapshot_sha256 == snapshot.digest
    assert read.pid == os.getpid()
    assert stat.S_IMODE(layout.unclean_marker.stat().st_mode) == 0o600
    assert clear_unclean(layout, read) is True
    assert not layout.unclean_marker.exists()
    assert clear_unclean(layout) is False


def test_clear_keeps_a_newer_marker(tmp_path: Path) -> None:
    """A marker rewritten after it was read (another shutdown) is not removed."""
    layout = DataLayout(tmp_path)
    mark_unclean(layout, "first")
    first = unclean_marker(layout)
    assert first is not None
    mark_unclean(layout, "second")
    with pytest.raises(SnapshotError, match="changed since it was read"):
        clear_unclean(layout, first)
    assert layout.unclean_marker.exists()


def test_symlink_at_marker_is_refused(tmp_path: Path) -> None:
    """A symlink at UNCLEAN_SHUTDOWN is refused on write, read and clear; its target is kept."""
    layout = DataLayout(tmp_path / "data")
    layout.root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    layout.unclean_marker.symlink_to(victim)
    with pytest.raises(UnsafePathError, match="UNCLEAN_SHUTDOWN"):
        mark_unclean(layout, "r")
    with pytest.raises(UnsafePathError):
        unclean_marker(layout)
    with pytest.raises(UnsafePathError):
        clear_unclean(layout)
    assert layout.unclean_marker.is_symlink()
    assert victim.read_text() == "precious"


def test_directory_at_marker_is_not_removed(tmp_path: Path) -> None:
    """clear_unclean refuses a directory planted at the marker's name."""
    layout = DataLayout(tmp_path)
    layout.unclean_marker.mkdir()
    with pytest.raises(UnsafePathError):
        clear_unclean(layout)
    assert layout.unclean_marker.is_dir()


def test_damaged_marker_still_marks_unclean(tmp_path: Path) -> None:
    """A marker with garbage in it is still an unclean shutdown, with the problem named."""
    layout = DataLayout(tmp_path)
    layout.unclean_marker.write_bytes(b"\x00garbage")
    marker = unclean_marker(layout)
    assert marker is not None
    assert marker.problem is not None
    assert "not JSON" in marker.problem
