"""The hash-chained audit log: format, chain continuation, tamper detection, crash repair."""

from __future__ import annotations

import asyncio
import decimal
import errno
import hashlib
import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategylab.fault_tolerance import (
    AuditIntegrityError,
    AuditLog,
    AuditRecord,
    AuditVerification,
    _audit,
)
from strategylab.testing import FakeClock

if TYPE_CHECKING:
    from pathlib import Path

GENESIS = "0" * 64
EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def make_log(path: Path, count: int, *, fsync: bool = False) -> list[AuditRecord]:
    """Write ``count`` records to a fresh log at ``path`` and close it."""
    clock = FakeClock(EPOCH)
    with AuditLog(path, clock=clock, fsync=fsync) as log:
        records = []
        for i in range(1, count + 1):
            records.append(log.append("recovery", {"n": i, "component": f"feed-{i}"}))
            clock.advance(1.0)
    return records


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, content: list[bytes]) -> None:
    path.write_bytes(b"".join(content))


def forge(**fields: Any) -> bytes:
    """A record line with a correct hash for its own contents, as an attacker would compute."""
    return AuditRecord.seal(**fields).to_line()


def record_at(path: Path, line: int) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(lines(path)[line - 1])
    return obj


# --- format -------------------------------------------------------------------------------------


def test_fresh_log_verifies(tmp_path: Path) -> None:
    """A log written by AuditLog verifies, and reports its record count and head."""
    records = make_log(tmp_path / "audit.jsonl", 5)
    result = AuditLog.verify(tmp_path / "audit.jsonl")
    assert result == AuditVerification(
        path=str(tmp_path / "audit.jsonl"),
        records=5,
        head_seq=5,
        head_hash=records[-1].hash,
    )


def test_empty_log_verifies_with_genesis_head(tmp_path: Path) -> None:
    """A log with no records verifies with head (0, 64 zeros)."""
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        assert log.head == (0, GENESIS)
    assert AuditLog.verify(tmp_path / "audit.jsonl").head == (0, GENESIS)


def test_first_record_starts_the_chain(tmp_path: Path) -> None:
    """Record 1 has seq 1 and the genesis prev_hash."""
    first = make_log(tmp_path / "audit.jsonl", 1)[0]
    assert (first.seq, first.prev_hash) == (1, GENESIS)


def test_each_record_carries_the_previous_hash(tmp_path: Path) -> None:
    """Every record's prev_hash is the hash of the record before it."""
    records = make_log(tmp_path / "audit.jsonl", 4)
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]


def test_hash_is_sha256_of_canonical_json_without_hash(tmp_path: Path) -> None:
    """The hash is sha256 over sorted-key compact UTF-8 JSON of every field but hash."""
    record = make_log(tmp_path / "audit.jsonl", 1)[0]
    body = {k: v for k, v in record.to_dict().items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record.hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_line_on_disk_is_canonical_json_of_the_record(tmp_path: Path) -> None:
    """Each line is the record's canonical JSON followed by a newline."""
    record = make_log(tmp_path / "audit.jsonl", 1)[0]
    expected = json.dumps(
        record.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert (tmp_path / "audit.jsonl").read_bytes() == expected.encode("utf-8") + b"\n"


def test_non_ascii_data_is_stored_as_raw_utf8(tmp_path: Path) -> None:
    """ensure_ascii=False: non-ASCII text is written as UTF-8, not as \\u escapes."""
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        log.append("recovery", {"symbol": "€/¥"})
    assert "€/¥".encode() in (tmp_path / "audit.jsonl").read_bytes()


def test_timestamp_is_aware_utc_iso_from_the_clock(tmp_path: Path) -> None:
    """The timestamp is the injected clock's time as an ISO-8601 UTC string."""
    record = make_log(tmp_path / "audit.jsonl", 1)[0]
    assert record.timestamp == "2023-11-14T22:13:20.000000+00:00"


def test_record_at_parses_the_timestamp(tmp_path: Path) -> None:
    """AuditRecord.at is the timestamp as an aware datetime."""
    record = make_log(tmp_path / "audit.jsonl", 1)[0]
    assert record.at.timestamp() == EPOCH


def test_read_yields_the_appended_records(tmp_path: Path) -> None:
    """AuditLog.read returns exactly the records append returned."""
    records = make_log(tmp_path / "audit.jsonl", 3)
    assert list(AuditLog.read(tmp_path / "audit.jsonl")) == records


def test_open_creates_parent_directories(tmp_path: Path) -> None:
    """Opening a log in a directory that does not exist creates it."""
    path = tmp_path / "a" / "b" / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:
        log.append("recovery", {})
    assert AuditLog.verify(path).records == 1


def test_append_with_fsync_writes_a_verifiable_record(tmp_path: Path) -> None:
    """The default fsync=True path writes a record that verifies."""
    with AuditLog(tmp_path / "audit.jsonl") as log:
        log.append("shutdown", {"reason": "security_violation"})
    assert AuditLog.verify(tmp_path / "audit.jsonl").records == 1


def test_data_is_copied_at_append(tmp_path: Path) -> None:
    """Mutating the caller's dict after append does not change the returned record."""
    data: dict[str, Any] = {"items": [1, 2]}
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        record = log.append("recovery", data)
    data["items"].append(3)
    assert record.data == {"items": [1, 2]}


def test_tuples_are_stored_as_lists(tmp_path: Path) -> None:
    """A tuple in the data reads back as a JSON array, and the record equals what was read."""
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        record = log.append("recovery", {"pair": ("a", 1)})
    assert list(AuditLog.read(tmp_path / "audit.jsonl")) == [record]


# --- reopening ----------------------------------------------------------------------------------


def test_reopen_continues_seq(tmp_path: Path) -> None:
    """A reopened log numbers its next record after the last one on disk."""
    make_log(tmp_path / "audit.jsonl", 3)
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        assert log.append("recovery", {}).seq == 4


def test_reopen_continues_prev_hash(tmp_path: Path) -> None:
    """A reopened log chains its next record onto the last record's hash."""
    last = make_log(tmp_path / "audit.jsonl", 3)[-1]
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        assert log.append("recovery", {}).prev_hash == last.hash


def test_reopen_head_is_the_last_record(tmp_path: Path) -> None:
    """head after reopening is (seq, hash) of the last record on disk."""
    last = make_log(tmp_path / "audit.jsonl", 3)[-1]
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        assert log.head == (3, last.hash)


def test_reopened_log_verifies_as_one_chain(tmp_path: Path) -> None:
    """Records written across two opens form one verifiable chain."""
    make_log(tmp_path / "audit.jsonl", 3)
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        log.append("recovery", {})
    assert AuditLog.verify(tmp_path / "audit.jsonl").records == 4


def test_open_refuses_a_corrupt_tail(tmp_path: Path) -> None:
    """Opening a log whose last record was altered raises instead of chaining onto it."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    content = lines(path)
    content[2] = content[2].replace(b'"n":3', b'"n":4')
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="hash mismatch") as info:
        AuditLog(path, fsync=False)
    assert info.value.line == 3


def test_second_writer_is_refused(tmp_path: Path) -> None:
    """A second AuditLog on a file that is open for append fails instead of forking the chain."""
    with (
        AuditLog(tmp_path / "audit.jsonl", fsync=False),
        pytest.raises(BlockingIOError, match="already open"),
    ):
        AuditLog(tmp_path / "audit.jsonl", fsync=False)


# --- tampering ----------------------------------------------------------------------------------


def test_deleted_middle_record_is_detected(tmp_path: Path) -> None:
    """Deleting record 5 breaks the chain at line 5, which names the missing record."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 10)
    content = lines(path)
    del content[4]
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="record 5 is missing") as info:
        AuditLog.verify(path)
    assert info.value.line == 5


def test_altered_data_is_detected(tmp_path: Path) -> None:
    """Changing a data value of record 7 is a hash mismatch at line 7."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 10)
    content = lines(path)
    content[6] = content[6].replace(b"feed-7", b"feed-X")
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="record 7 was altered: hash mismatch") as info:
        AuditLog.verify(path)
    assert info.value.line == 7


def test_altered_and_rehashed_record_breaks_the_next_link(tmp_path: Path) -> None:
    """Re-hashing an altered record 7 leaves record 8's prev_hash mismatched, at line 8."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 10)
    content = lines(path)
    original = record_at(path, 7)
    original["data"]["component"] = "forged"
    del original["hash"]
    content[6] = forge(**original)
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="record 8 does not chain") as info:
        AuditLog.verify(path)
    assert info.value.line == 8


def test_swapped_records_are_detected_as_out_of_order(tmp_path: Path) -> None:
    """Swapping records 4 and 5 is reported as out of order at line 4."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 10)
    content = lines(path)
    content[3], content[4] = content[4], content[3]
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="out of order") as info:
        AuditLog.verify(path)
    assert info.value.line == 4


def test_inserted_forged_record_is_detected(tmp_path: Path) -> None:
    """A forged record 6 chained onto record 5 and inserted before it shows up at line 7."""
    path = tmp_path / "audit.jsonl"
    records = make_log(path, 10)
    content = lines(path)
    forged = forge(
        seq=6,
        timestamp=records[5].timestamp,
        kind="recovery",
        data={"n": 6, "component": "forged"},
        prev_hash=records[4].hash,
    )
    content.insert(5, forged)
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="record 6 appears twice") as info:
        AuditLog.verify(path)
    assert info.value.line == 7


def test_deleted_first_record_is_detected(tmp_path: Path) -> None:
    """Deleting record 1 is reported at line 1."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    write_lines(path, lines(path)[1:])
    with pytest.raises(AuditIntegrityError, match="record 1 is missing") as info:
        AuditLog.verify(path)
    assert info.value.line == 1


def test_truncated_tail_is_detected_with_expected_head(tmp_path: Path) -> None:
    """Deleting the last 3 records is detected against an anchored head, at line 8."""
    path = tmp_path / "audit.jsonl"
    records = make_log(path, 10)
    write_lines(path, lines(path)[:7])
    with pytest.raises(AuditIntegrityError, match="truncated") as info:
        AuditLog.verify(path, expected_head=(10, records[-1].hash))
    assert info.value.line == 8


def test_truncated_tail_is_undetectable_without_expected_head(tmp_path: Path) -> None:
    """Documented limit: without an anchor, a log cut after record 7 is a valid 7-record chain."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 10)
    write_lines(path, lines(path)[:7])
    assert AuditLog.verify(path).records == 7


def test_rewritten_last_record_is_detected_with_expected_head(tmp_path: Path) -> None:
    """A re-hashed last record passes the chain but not the anchored head hash."""
    path = tmp_path / "audit.jsonl"
    records = make_log(path, 10)
    content = lines(path)
    original = record_at(path, 10)
    original["data"]["component"] = "forged"
    del original["hash"]
    content[9] = forge(**original)
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="anchored head hash") as info:
        AuditLog.verify(path, expected_head=(10, records[-1].hash))
    assert info.value.line == 10


def test_expected_head_behind_a_grown_log_still_verifies(tmp_path: Path) -> None:
    """An anchor taken earlier still verifies after the log has grown past it."""
    path = tmp_path / "audit.jsonl"
    records = make_log(path, 5)
    with AuditLog(path, fsync=False) as log:
        log.append("recovery", {})
    assert AuditLog.verify(path, expected_head=(5, records[-1].hash)).records == 6


def test_non_canonical_encoding_is_detected(tmp_path: Path) -> None:
    """A same-valued but re-encoded line (a space added) is reported as altered."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    content = lines(path)
    content[1] = content[1].replace(b'"seq":2', b'"seq": 2')
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="canonical") as info:
        AuditLog.verify(path)
    assert info.value.line == 2


def test_unparsable_line_is_detected(tmp_path: Path) -> None:
    """A line that is not JSON is reported with its line number."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    content = lines(path)
    content[1] = b"garbage\n"
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="not valid UTF-8 JSON") as info:
        AuditLog.verify(path)
    assert info.value.line == 2


def test_extra_field_is_detected(tmp_path: Path) -> None:
    """A record with a field beyond the six is rejected, naming the field."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 2)
    content = lines(path)
    obj = record_at(path, 2)
    obj["extra"] = 1
    content[1] = json.dumps(obj).encode() + b"\n"
    write_lines(path, content)
    with pytest.raises(AuditIntegrityError, match="unexpected: extra") as info:
        AuditLog.verify(path)
    assert info.value.line == 2


def test_read_raises_at_the_broken_line(tmp_path: Path) -> None:
    """read yields the good records, then raises AuditIntegrityError at the altered one."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 4)
    content = lines(path)
    content[2] = content[2].replace(b"feed-3", b"feed-X")
    write_lines(path, content)
    seen: list[int] = []
    with pytest.raises(AuditIntegrityError) as info:
        seen.extend(record.seq for record in AuditLog.read(path))
    assert (seen, info.value.line) == ([1, 2], 3)


def test_expected_head_is_validated(tmp_path: Path) -> None:
    """A malformed expected_head is a ValueError naming it."""
    make_log(tmp_path / "audit.jsonl", 1)
    with pytest.raises(ValueError, match=r"expected_head\[1\]"):
        AuditLog.verify(tmp_path / "audit.jsonl", expected_head=(1, "nothex"))


# --- torn writes and failed writes --------------------------------------------------------------


def tear(path: Path) -> bytes:
    """Append half of a would-be next record without its newline, as a crash mid-write would."""
    with AuditLog(path.parent / "scratch.jsonl", clock=FakeClock(EPOCH), fsync=False) as scratch:
        partial = scratch.append("recovery", {"lost": True}).to_line()[:40]
    with path.open("ab") as file:
        file.write(partial)
    return partial


def test_torn_last_line_fails_verify_of_the_path(tmp_path: Path) -> None:
    """verify on a path does not repair: a torn last line is an error naming that line."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    tear(path)
    with pytest.raises(AuditIntegrityError, match="torn") as info:
        AuditLog.verify(path)
    assert info.value.line == 4


def test_torn_last_line_is_truncated_on_open(tmp_path: Path) -> None:
    """Opening the log removes a torn last line, restoring the file to its acknowledged records."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    before = path.read_bytes()
    tear(path)
    AuditLog(path, fsync=False).close()
    assert path.read_bytes() == before


def test_chain_continues_after_a_repaired_tear(tmp_path: Path) -> None:
    """After the repair, the next record is seq 4 chained onto record 3, and the log verifies."""
    path = tmp_path / "audit.jsonl"
    records = make_log(path, 3)
    tear(path)
    with AuditLog(path, fsync=False) as log:
        record = log.append("recovery", {})
    assert (record.seq, record.prev_hash, AuditLog.verify(path).records) == (
        4,
        records[-1].hash,
        4,
    )


def test_repaired_tear_is_reported_by_instance_verify(tmp_path: Path) -> None:
    """The open log's verify() reports the repair and how many bytes it discarded."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    partial = tear(path)
    with AuditLog(path, fsync=False) as log:
        result = log.verify()
    assert (result.repaired_tear, result.discarded_bytes) == (True, len(partial))


def test_repaired_tear_is_logged_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The repair is logged at WARNING, naming the file."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 2)
    tear(path)
    with caplog.at_level(logging.WARNING, logger=_audit.__name__):
        AuditLog(path, fsync=False).close()
    assert any("torn" in r.message and str(path) in r.message for r in caplog.records)


def test_torn_only_line_leaves_an_empty_log(tmp_path: Path) -> None:
    """A log whose only line is torn reopens empty and starts again at record 1."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"data":{')
    with AuditLog(path, fsync=False) as log:
        assert log.append("recovery", {}).seq == 1


def test_failed_write_leaves_no_partial_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way (disk full) is rolled back, and the next append chains on."""
    path = tmp_path / "audit.jsonl"
    real_write = os.write

    def half_then_enospc(fd: int, data: Any) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with AuditLog(path, fsync=False) as log:
        log.append("recovery", {"n": 1})
        monkeypatch.setattr(os, "write", half_then_enospc)
        with pytest.raises(OSError, match="No space"):
            log.append("recovery", {"n": 2})
        monkeypatch.setattr(os, "write", real_write)
        log.append("recovery", {"n": 3})
    assert [r.data["n"] for r in AuditLog.read(path)] == [1, 3]


def test_instance_verify_detects_truncation_by_someone_else(tmp_path: Path) -> None:
    """An open log's verify() checks the file against its own head, so a cut tail is caught."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:
        for i in range(5):
            log.append("recovery", {"n": i})
        os.truncate(path, len(b"".join(lines(path)[:3])))
        with pytest.raises(AuditIntegrityError, match="truncated"):
            log.verify()


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"amount": decimal.Decimal("1.5")}, "data['amount']"),
        ({"order": {"tags": {"a", "b"}}}, "data['order']['tags']"),
        ({"items": [1, object()]}, "data['items'][1]"),
        ({1: "int key"}, "data[1]"),
    ],
)
def test_non_json_data_is_rejected_naming_the_key(
    tmp_path: Path, data: dict[Any, Any], key: str
) -> None:
    """Data JSON cannot represent raises TypeError naming the key path."""
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        with pytest.raises(TypeError) as info:
            log.append("recovery", data)
        assert str(info.value).startswith(key)


def test_rejected_data_writes_nothing(tmp_path: Path) -> None:
    """A rejected append leaves the file and the head unchanged."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 2)
    before = path.read_bytes()
    with AuditLog(path, fsync=False) as log:
        head = log.head
        with pytest.raises(TypeError):
            log.append("recovery", {"amount": decimal.Decimal(1)})  # type: ignore[dict-item]
        assert (path.read_bytes(), log.head) == (before, head)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "\ud800"])
def test_values_json_cannot_encode_are_rejected(tmp_path: Path, value: object) -> None:
    """NaN, infinity and lone surrogates raise ValueError naming the key."""
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        with pytest.raises(ValueError, match=r"data\['x'\]"):
            log.append("recovery", {"x": value})  # type: ignore[dict-item]
        assert log.head == (0, GENESIS)


def test_circular_data_is_rejected(tmp_path: Path) -> None:
    """A self-referencing structure raises ValueError instead of recursing forever."""
    loop: list[Any] = []
    loop.append(loop)
    with (
        AuditLog(tmp_path / "audit.jsonl", fsync=False) as log,
        pytest.raises(ValueError, match="circular"),
    ):
        log.append("recovery", {"loop": loop})


def test_empty_kind_is_rejected(tmp_path: Path) -> None:
    """kind must be a non-empty string."""
    with (
        AuditLog(tmp_path / "audit.jsonl", fsync=False) as log,
        pytest.raises(ValueError, match="kind"),
    ):
        log.append("", {})


def test_append_after_close_raises(tmp_path: Path) -> None:
    """A closed log refuses appends."""
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append("recovery", {})


def test_close_releases_the_writer_lock(tmp_path: Path) -> None:
    """After close, the same file can be opened for append again."""
    AuditLog(tmp_path / "audit.jsonl", fsync=False).close()
    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as log:
        assert not log.closed


def test_record_rejects_a_wrong_hash() -> None:
    """Constructing an AuditRecord whose hash does not match its contents is a ValueError."""
    good = AuditRecord.seal(
        seq=1, timestamp="2024-01-01T00:00:00+00:00", kind="recovery", data={}, prev_hash=GENESIS
    )
    with pytest.raises(ValueError, match="hash="):
        AuditRecord(**{**good.to_dict(), "hash": "f" * 64})  # type: ignore[arg-type]


def test_record_rejects_a_naive_timestamp() -> None:
    """A timestamp without a UTC offset is rejected, naming the field."""
    with pytest.raises(ValueError, match="timestamp="):
        AuditRecord.seal(
            seq=1, timestamp="2024-01-01T00:00:00", kind="recovery", data={}, prev_hash=GENESIS
        )


def test_record_rejects_genesis_prev_hash_after_record_one() -> None:
    """Only record 1 may carry the genesis prev_hash."""
    with pytest.raises(ValueError, match="prev_hash="):
        AuditRecord.seal(
            seq=2, timestamp="2024-01-01T00:00:00+00:00", kind="r", data={}, prev_hash=GENESIS
        )


def test_verification_rejects_inconsistent_tear_fields() -> None:
    """AuditVerification requires repaired_tear exactly when bytes were discarded."""
    with pytest.raises(ValueError, match="repaired_tear"):
        AuditVerification(path="x", records=0, head_seq=0, head_hash=GENESIS, repaired_tear=True)


# --- concurrency and async ----------------------------------------------------------------------


def test_concurrent_appends_form_a_gapless_chain(tmp_path: Path) -> None:
    """8 threads appending at once produce seq 1..200 and a chain that verifies."""
    path = tmp_path / "audit.jsonl"
    start = threading.Barrier(8)
    with AuditLog(path, fsync=False) as log:

        def worker(n: int) -> None:
            start.wait()
            for i in range(25):
                log.append("recovery", {"thread": n, "i": i})

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    result = AuditLog.verify(path)
    assert (result.records, [r.seq for r in AuditLog.read(path)]) == (200, list(range(1, 201)))


@pytest.mark.parametrize("fsync", [True, False], ids=["thread", "inline"])
async def test_aappend_writes_a_chained_record(tmp_path: Path, fsync: bool) -> None:
    """aappend (in a thread with fsync, inline without) appends the next record of the chain."""
    with AuditLog(tmp_path / "audit.jsonl", fsync=fsync) as log:
        first = await log.aappend("recovery", {"n": 1})
        second = await log.aappend("escalation", {"n": 2})
    assert (second.seq, second.prev_hash) == (2, first.hash)


async def test_concurrent_aappends_form_a_gapless_chain(tmp_path: Path) -> None:
    """Many tasks awaiting aappend at once (in threads) still produce a verifiable chain."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        await asyncio.gather(*(log.aappend("recovery", {"n": n}) for n in range(20)))
    assert AuditLog.verify(path).records == 20


# --- property -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payloads=st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=3), min_size=1),
    data=st.data(),
)
def test_any_single_byte_change_fails_verification(
    tmp_path: Path, payloads: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Changing any one byte of a valid log makes verify raise AuditIntegrityError."""
    path = tmp_path / "prop.jsonl"
    content = bytearray()
    prev = GENESIS
    for seq, payload in enumerate(payloads[:4], start=1):
        record = AuditRecord.seal(
            seq=seq, timestamp="2024-01-01T00:00:00.000000+00:00", kind="recovery",
            data=payload, prev_hash=prev,
        )  # fmt: skip
        content += record.to_line()
        prev = record.hash
    index = data.draw(st.integers(0, len(content) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != content[index]), label="byte")
    content[index] = byte
    path.write_bytes(bytes(content))
    with pytest.raises(AuditIntegrityError):
        AuditLog.verify(path)
