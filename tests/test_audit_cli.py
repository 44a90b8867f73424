"""`strategylab audit verify`: one line, exit 0 / 1 / 2, against logs written by a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KEY = "cli-test-key-0123456789"

WRITER = """
import sys
from pathlib import Path
from strategylab.fault_tolerance._audit import AuditLog, load_audit_key
path, anchor, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with AuditLog(path, key=load_audit_key(), anchor=anchor, anchor_every=4,
              on_anchor=lambda s, h: print(f"anchor {s} {h}", flush=True)) as log:
    for n in range(count):
        log.append("recovery", {"n": n})
"""


FORGER = """
import sys
from strategylab.fault_tolerance import AuditRecord
r = AuditRecord.seal(seq=4, timestamp=sys.argv[1], kind="recovery", data={"forged": True},
                     prev_hash=sys.argv[2])
sys.stdout.buffer.write(r.to_line())
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STRATEGYLAB_AUDIT_KEY"}
    env.update(extra)
    return env


def _write(tmp_path: Path, count: int = 10) -> tuple[Path, Path, Path, list[str]]:
    """A keyed log and its anchors written by a child process; returns its anchor stdout lines."""
    path, anchor, key_file = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl", tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)  # a key file others can read is refused
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-c", WRITER, str(path), str(anchor), str(count)],
        env=_env(STRATEGYLAB_AUDIT_KEY=KEY),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return path, anchor, key_file, proc.stdout.splitlines()


def _verify(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "strategylab", "audit", "verify", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    out = (proc.stdout + proc.stderr).strip()
    assert "\n" not in out, out
    assert "Traceback" not in out
    return out


pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_ok_prints_count_and_head_and_matches_the_printed_anchor(tmp_path: Path) -> None:
    """A good keyed log with its anchors: exit 0, one line with the record count and head."""
    path, anchor, key_file, printed = _write(tmp_path, 10)
    assert [line.split()[1] for line in printed] == ["4", "8", "10"]
    head_hash = json.loads(path.read_bytes().splitlines()[-1])["hash"]
    assert printed[-1] == f"anchor 10 {head_hash}"
    out = _one_line(_verify(str(path), "--key-file", str(key_file), "--anchor", str(anchor)), 0)
    assert f"ok: 10 records, head 10 {head_hash}" in out
    assert "keyed" in out
    assert "3 anchors" in out


def test_key_from_the_environment(tmp_path: Path) -> None:
    """Without --key-file the key comes from STRATEGYLAB_AUDIT_KEY."""
    path, anchor, _, _ = _write(tmp_path, 5)
    out = _one_line(_verify(str(path), "--anchor", str(anchor), STRATEGYLAB_AUDIT_KEY=KEY), 0)
    assert "ok: 5 records" in out


def test_truncated_tail_fails(tmp_path: Path) -> None:
    """A log cut to a valid prefix fails against the anchor, naming the line."""
    path, anchor, key_file, _ = _write(tmp_path, 10)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:9]))
    out = _one_line(_verify(str(path), "--key-file", str(key_file), "--anchor", str(anchor)), 1)
    assert "audit.jsonl:10:" in out
    assert "truncated" in out


def test_forged_append_fails(tmp_path: Path) -> None:
    """An appended record with a recomputed plain SHA-256 hash fails: no HMAC, at its line."""
    path, _, key_file, _ = _write(tmp_path, 3)
    last = json.loads(path.read_bytes().splitlines()[-1])
    proc = subprocess.run(  # noqa: S603 - forge with the unkeyed library, as an insider would
        [
            sys.executable,
            "-c",
            FORGER,
            last["timestamp"],
            last["hash"],
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with path.open("ab") as file:
        file.write(proc.stdout)
    out = _one_line(_verify(str(path), "--key-file", str(key_file)), 1)
    assert "audit.jsonl:4:" in out
    assert "no HMAC" in out


def test_edited_record_fails(tmp_path: Path) -> None:
    """An edited record fails at its line."""
    path, _, key_file, _ = _write(tmp_path, 5)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"n":1', b'"n":7')
    path.write_bytes(b"".join(lines))
    out = _one_line(_verify(str(path), "--key-file", str(key_file)), 1)
    assert "audit.jsonl:2:" in out


def test_wrong_key_and_missing_key_fail(tmp_path: Path) -> None:
    """The wrong key, or none, fails at line 1 instead of passing as an unkeyed chain."""
    path, _, _, _ = _write(tmp_path, 3)
    wrong = tmp_path / "wrong"
    wrong.write_text("another-key-of-enough-length")
    wrong.chmod(0o600)
    assert "HMAC does not match" in _one_line(_verify(str(path), "--key-file", str(wrong)), 1)
    assert "keyed" in _one_line(_verify(str(path)), 1)


def test_deleted_last_anchor_with_a_deeper_cut_fails(tmp_path: Path) -> None:
    """The anchor's last entry deleted and the log cut below an earlier anchor: still caught."""
    path, anchor, key_file, _ = _write(tmp_path, 10)
    anchor.write_bytes(b"".join(anchor.read_bytes().splitlines(keepends=True)[:-1]))
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:6]))
    out = _one_line(_verify(str(path), "--key-file", str(key_file), "--anchor", str(anchor)), 1)
    assert "record 8 was anchored" in out


@pytest.mark.parametrize("what", ["log", "anchor", "key", "short-key"])
def test_usage_errors_exit_2(tmp_path: Path, what: str) -> None:
    """A missing file or a too-short key is a usage error naming it: exit 2, one line."""
    path, _, key_file, _ = _write(tmp_path, 2)
    args = {
        "log": [str(tmp_path / "nope.jsonl")],
        "anchor": [str(path), "--anchor", str(tmp_path / "nope")],
        "key": [str(path), "--key-file", str(tmp_path / "nope")],
        "short-key": [str(path), "--key-file", str(key_file)],
    }[what]
    if what == "short-key":
        key_file.write_text("short")
    out = _one_line(_verify(*args), 2)
    assert ("nope" in out) or ("at least 16 bytes" in out)
