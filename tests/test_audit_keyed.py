"""A keyed audit chain (HMAC-SHA256) and anchors: an insider cannot forge or shorten the log."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from strategylab.errors import AuditIntegrityError
from strategylab.fault_tolerance import AuditLog
from strategylab.fault_tolerance._audit import GENESIS_HASH, load_audit_key, read_anchors
from strategylab.testing import FakeClock

KEY = b"k" * 32
OTHER_KEY = b"x" * 32


def _write(
    path: Path,
    records: int,
    *,
    key: bytes | None = KEY,
    anchor: Path | None = None,
    anchor_every: int = 5,
) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    with AuditLog(
        path,
        clock=FakeClock(),
        fsync=True,
        key=key,
        anchor=anchor,
        anchor_every=anchor_every,
        on_anchor=lambda s, h: seen.append((s, h)),
    ) as log:
        for n in range(records):
            log.append("recovery", {"n": n, "component": f"store-{n % 3}"})
    return seen


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _forge_plain(prev: dict[str, object], seq: int) -> bytes:
    """A record chained on ``prev`` whose hash is recomputed with plain SHA-256 (no key)."""
    body = {
        "seq": seq,
        "timestamp": prev["timestamp"],
        "kind": "recovery",
        "data": {"forged": True},
        "prev_hash": prev["hash"],
    }
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    record = {**body, "hash": hashlib.sha256(canon.encode()).hexdigest()}
    return (
        json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n"
    )


def test_keyed_log_verifies_with_its_key(tmp_path: Path) -> None:
    """Every record carries an HMAC; verify with the key checks them all."""
    path = tmp_path / "audit.jsonl"
    _write(path, 12)
    result = AuditLog.verify(path, key=KEY)
    assert (result.records, result.head_seq, result.keyed) == (12, 12, True)
    assert all(b'"mac":"' in line for line in _lines(path))


def test_keyed_log_without_the_key_fails(tmp_path: Path) -> None:
    """A keyed log verified without its key is an error naming record 1, never a pass."""
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    with pytest.raises(AuditIntegrityError, match="keyed") as info:
        AuditLog.verify(path)
    assert info.value.line == 1


def test_wrong_key_fails_at_record_one(tmp_path: Path) -> None:
    """The wrong key fails at line 1, naming the HMAC."""
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    with pytest.raises(AuditIntegrityError, match="HMAC does not match") as info:
        AuditLog.verify(path, key=OTHER_KEY)
    assert info.value.line == 1


@pytest.mark.parametrize("records", [1, 7])
def test_forged_append_with_recomputed_sha256_is_detected(tmp_path: Path, records: int) -> None:
    """An appended record with a valid plain SHA-256 chain but no HMAC is named at its line."""
    path = tmp_path / "audit.jsonl"
    _write(path, records)
    last = json.loads(_lines(path)[-1])
    with path.open("ab") as file:
        file.write(_forge_plain(last, records + 1))
    with pytest.raises(AuditIntegrityError, match="no HMAC") as info:
        AuditLog.verify(path, key=KEY)
    assert info.value.line == records + 1


def test_forged_append_copying_a_mac_is_detected(tmp_path: Path) -> None:
    """A forged record that reuses another record's mac fails its HMAC check."""
    path = tmp_path / "audit.jsonl"
    _write(path, 4)
    last = json.loads(_lines(path)[-1])
    forged = json.loads(_forge_plain(last, 5))
    forged["mac"] = last["mac"]
    with path.open("ab") as file:
        file.write(json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    with pytest.raises(AuditIntegrityError, match="HMAC does not match") as info:
        AuditLog.verify(path, key=KEY)
    assert info.value.line == 5


def test_edited_record_is_detected(tmp_path: Path) -> None:
    """Editing a record's data (even re-hashing it) is named at that line."""
    path = tmp_path / "audit.jsonl"
    _write(path, 6)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"n":2', b'"n":9')
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditIntegrityError) as info:
        AuditLog.verify(path, key=KEY)
    assert info.value.line == 3


def test_opening_a_keyed_log_with_the_wrong_key_or_none_refuses(tmp_path: Path) -> None:
    """Appending to a keyed log needs its key; the wrong key or none is refused, nothing written."""
    path = tmp_path / "audit.jsonl"
    _write(path, 2)
    before = path.read_bytes()
    for key in (None, OTHER_KEY):
        with pytest.raises(AuditIntegrityError, match=r"HMAC|keyed"):
            AuditLog(path, key=key, fsync=False)
    assert path.read_bytes() == before
    with AuditLog(path, key=KEY, fsync=False, clock=FakeClock()) as log:
        log.append("recovery", {"n": 99})
    assert AuditLog.verify(path, key=KEY).records == 3


def test_anchor_file_gets_head_every_n_and_on_close(tmp_path: Path) -> None:
    """Anchors land every anchor_every records and on close, 0600, and reach on_anchor."""
    path, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    seen = _write(path, 12, anchor=anchor, anchor_every=5)
    assert [s for s, _ in seen] == [5, 10, 12]
    assert list(read_anchors(anchor, key=KEY).items()) == seen
    assert stat.S_IMODE(anchor.stat().st_mode) == 0o600
    result = AuditLog.verify(path, key=KEY, anchor=anchor)
    assert (result.records, result.anchors) == (12, 3)


@pytest.mark.parametrize("keep", [11, 8, 4, 0])
def test_truncated_tail_is_detected_by_the_anchor(tmp_path: Path, keep: int) -> None:
    """Removing records from the end (a valid prefix) fails against the anchor, naming the cut."""
    path, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    _write(path, 12, anchor=anchor, anchor_every=5)
    path.write_bytes(b"".join(_lines(path)[:keep]))
    assert AuditLog.verify(path, key=KEY).records == keep  # the chain alone cannot tell
    with pytest.raises(AuditIntegrityError, match="truncated") as info:
        AuditLog.verify(path, key=KEY, anchor=anchor)
    assert info.value.line == keep + 1


def test_unkeyed_rewrite_of_the_tail_is_detected_by_the_anchor(tmp_path: Path) -> None:
    """Without a key, a truncated and re-forged tail with recomputed hashes fails the anchor."""
    path, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    _write(path, 10, key=None, anchor=anchor, anchor_every=5)
    lines = _lines(path)[:9]
    lines.append(_forge_plain(json.loads(lines[-1]), 10))
    path.write_bytes(b"".join(lines))
    assert AuditLog.verify(path).records == 10  # a valid unkeyed chain on its own
    with pytest.raises(AuditIntegrityError, match="anchored head") as info:
        AuditLog.verify(path, anchor=anchor)
    assert info.value.line == 10


def test_deleting_the_last_anchor_still_leaves_earlier_anchors_guarding(tmp_path: Path) -> None:
    """With the anchor's last entry deleted, a cut below an earlier anchor is still caught."""
    path, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    _write(path, 12, anchor=anchor, anchor_every=5)
    anchor.write_bytes(b"".join(_lines(anchor)[:-1]))
    assert AuditLog.verify(path, key=KEY, anchor=anchor).anchors == 2
    path.write_bytes(b"".join(_lines(path)[:7]))
    with pytest.raises(AuditIntegrityError, match="record 10 was anchored"):
        AuditLog.verify(path, key=KEY, anchor=anchor)


def test_forged_anchor_line_is_named(tmp_path: Path) -> None:
    """An anchor whose hash was edited fails its HMAC, naming the anchor file and line."""
    path, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    _write(path, 10, anchor=anchor, anchor_every=5)
    lines = _lines(anchor)
    entry = json.loads(lines[1])
    entry["hash"] = GENESIS_HASH.replace("0", "a")
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    anchor.write_bytes(b"".join(lines))
    with pytest.raises(AuditIntegrityError, match="anchor of record 10") as info:
        AuditLog.verify(path, key=KEY, anchor=anchor)
    assert (info.value.path, info.value.line) == (os.fspath(anchor), 2)


def test_anchor_symlink_is_refused(tmp_path: Path) -> None:
    """The anchor file is never opened through a planted symlink."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "anchor.jsonl").symlink_to(target)
    with pytest.raises(OSError, match="symlink"):
        AuditLog(tmp_path / "audit.jsonl", anchor=tmp_path / "anchor.jsonl", fsync=False)
    assert target.read_bytes() == b""


def test_load_audit_key_from_file_and_environment(tmp_path: Path) -> None:
    """The key comes from a file (newline stripped) or the environment; a short key is named."""
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    key_file.chmod(0o600)  # a key file others can read is refused
    assert load_audit_key(key_file) == KEY
    assert load_audit_key(environ={"STRATEGYLAB_AUDIT_KEY": "e" * 20}) == b"e" * 20
    assert load_audit_key(environ={}) is None
    key_file.write_bytes(b"short")
    with pytest.raises(ValueError, match=r"audit-key-file.* at least 16 bytes"):
        load_audit_key(key_file)
