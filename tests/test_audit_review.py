"""The audit trail against an insider and a hostile file: saved stdout anchors, the audit key
read as a secret, and a log verified whole (streamed, each line bounded) before it is appended to.

Process level: real ``strategylab node``, ``strategylab trade`` and ``strategylab audit verify``
processes on real files; library level: :class:`AuditLog` on real files.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from strategylab.errors import AuditIntegrityError, ConfigurationError
from strategylab.fault_tolerance import AuditLog
from strategylab.fault_tolerance._audit import load_audit_key, read_anchors
from strategylab.market import Exchange, ExchangeConfig
from strategylab.testing import FakeClock

KEY = "review-audit-key-0123456789"
KEY_BYTES = KEY.encode()
UNREACHABLE = "ws://127.0.0.1:9/ws"
Proc = asyncio.subprocess.Process


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGYLAB_")}
    return env | extra


def _key_file(path: Path, mode: int = 0o600) -> Path:
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


def _keyed_log(
    path: Path, count: int, *, anchor: Path | None = None, kind: str = "recovery"
) -> None:
    with AuditLog(path, clock=FakeClock(), fsync=False, key=KEY_BYTES, anchor=anchor) as log:
        for n in range(count):
            log.append(kind, {"n": n})


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "strategylab", *args],
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


async def _node(data: Path, *extra: str, **env: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "node",
        *("--exchange-url", UNREACHABLE, "--data-dir", str(data), "--symbols", "A"),
        *("--status-interval", "0.2", *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(**env),
    )


async def _until(proc: Proc, event: str) -> list[bytes]:
    """Stdout lines up to and including the first ``event`` line."""
    assert proc.stdout is not None
    seen: list[bytes] = []
    async with asyncio.timeout(30):
        while True:
            line = await proc.stdout.readline()
            if not line:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode(errors="replace")[-2000:]
                raise AssertionError(f"exited before {event!r}: {err}")
            seen.append(line)
            if json.loads(line).get("event") == event:
                return seen


async def _stop(proc: Proc, seen: list[bytes]) -> tuple[int, bytes, bytes]:
    """SIGTERM, then everything it printed (``seen`` first) and its exit code."""
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, b"".join(seen) + out, err


async def _fails_at_start(proc: Proc) -> tuple[int, str]:
    async with asyncio.timeout(50):
        _out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


# ------------------------------------------------------------- 1. anchors kept on stdout


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_saved_node_stdout_catches_a_cut_log_whose_anchor_file_was_emptied(
    tmp_path: Path,
) -> None:
    """A node's saved stdout is an anchor source: the log cut to 12 records, its anchor file
    emptied, still fails naming the removed records; the intact log passes against it."""
    data, saved = tmp_path / "data", tmp_path / "node.stdout"
    log, anchor = data / "audit.jsonl", data / "audit.anchor.jsonl"
    _keyed_log(log, 15)
    key = _key_file(tmp_path / "audit.key")
    proc = await _node(data, "--audit-key-file", str(key))
    code, out, err = await _stop(proc, await _until(proc, "started"))
    assert code == 0, err
    saved.write_bytes(out)
    printed = [json.loads(line) for line in out.splitlines()]
    anchors = [line for line in printed if line["event"] == "audit_anchor"]
    assert len(anchors) == 1, printed
    head = anchors[0]["seq"]
    assert head >= 15
    assert read_anchors(anchor, key=KEY_BYTES) == {head: anchors[0]["hash"]}
    ok = _one_line(
        _cli("audit", "verify", str(log), "--key-file", str(key), "--anchor", str(saved)), 0
    )
    assert f"ok: {head} records" in ok

    log.write_bytes(b"".join(_lines(log)[:12]))
    anchor.write_bytes(b"")
    # The emptied anchor file alone vouches for the cut log: only the copy on stdout catches it.
    _one_line(_cli("audit", "verify", str(log), "--key-file", str(key), "--anchor", str(anchor)), 0)
    out_line = _one_line(
        _cli(
            "audit", "verify", str(log), "--key-file", str(key),
            "--anchor", str(anchor), "--anchor", str(saved),
        ),
        1,
    )  # fmt: skip
    assert "audit.jsonl:13:" in out_line
    assert f"records 13..{head} were removed" in out_line


def test_saved_stdout_skips_other_lines_but_names_a_damaged_anchor_event(tmp_path: Path) -> None:
    """Status lines, long lines and stray text in a saved stdout are skipped; a malformed
    audit_anchor event is an error naming its line."""
    log = tmp_path / "audit.jsonl"
    _keyed_log(log, 4)
    head = json.loads(_lines(log)[-1])
    saved = tmp_path / "stdout"
    status = json.dumps({"event": "status", "pad": "x" * 5000})
    anchor = json.dumps({"event": "audit_anchor", "seq": 4, "hash": head["hash"]})
    saved.write_text(f'{{"event":"started"}}\nWARNING: a stray log line\n{status}\n{anchor}\n')
    assert read_anchors(saved, key=KEY_BYTES) == {4: head["hash"]}
    assert AuditLog.verify(log, key=KEY_BYTES, anchor=saved).anchors == 1
    bad = json.dumps({"event": "audit_anchor", "seq": "4", "hash": head["hash"]})
    saved.write_text(f'{{"event":"started"}}\n{bad}\n')
    with pytest.raises(AuditIntegrityError, match="malformed") as info:
        read_anchors(saved)
    assert (info.value.path, info.value.line) == (os.fspath(saved), 2)


def test_anchor_sources_that_disagree_are_named(tmp_path: Path) -> None:
    """Two sources anchoring different hashes for one record fail, naming both places."""
    first, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _keyed_log(first, 3, anchor=tmp_path / "a.anchor")
    _keyed_log(other, 4, kind="other")  # the same seqs, other records: other hashes
    saved = tmp_path / "stdout"
    digest = json.loads(_lines(other)[2])["hash"]
    saved.write_text(json.dumps({"event": "audit_anchor", "seq": 3, "hash": digest}) + "\n")
    with pytest.raises(AuditIntegrityError, match=r"disagrees with the one at .*a\.anchor:1"):
        AuditLog.verify(first, key=KEY_BYTES, anchor=[tmp_path / "a.anchor", saved])


def test_head_option_catches_a_cut_log(tmp_path: Path) -> None:
    """``--head SEQ:HASH`` (a head noted elsewhere) fails a shorter log; a bad one is usage."""
    log = tmp_path / "audit.jsonl"
    _keyed_log(log, 6)
    head = json.loads(_lines(log)[-1])["hash"]
    key = _key_file(tmp_path / "key")
    _one_line(_cli("audit", "verify", str(log), "--key-file", str(key), "--head", f"6:{head}"), 0)
    log.write_bytes(b"".join(_lines(log)[:4]))
    out = _one_line(
        _cli("audit", "verify", str(log), "--key-file", str(key), "--head", f"6:{head}"), 1
    )
    assert "records 5..6 were removed" in out
    assert "--head" in _one_line(
        _cli("audit", "verify", str(log), "--key-file", str(key), "--head", "6"), 2
    )


def test_reopening_without_appends_does_not_anchor_the_head_twice(tmp_path: Path) -> None:
    """A log reopened and closed with nothing appended leaves one anchor, and still verifies."""
    log, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    _keyed_log(log, 3, anchor=anchor)
    for _ in range(2):
        AuditLog(log, fsync=False, key=KEY_BYTES, anchor=anchor).close()
    assert len(_lines(anchor)) == 1
    assert AuditLog.verify(log, key=KEY_BYTES, anchor=anchor).anchors == 1


def test_open_refuses_a_log_shorter_than_its_anchor_file(tmp_path: Path) -> None:
    """Reopening a log cut below its last anchor raises instead of appending after the cut."""
    log, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    _keyed_log(log, 5, anchor=anchor)
    log.write_bytes(b"".join(_lines(log)[:3]))
    with pytest.raises(AuditIntegrityError, match=r"records 4\.\.5 were removed"):
        AuditLog(log, fsync=False, key=KEY_BYTES, anchor=anchor)
    assert len(_lines(log)) == 3


# ------------------------------------------------------------- 2. the key is a secret


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640])
def test_verify_refuses_a_key_file_others_can_read(tmp_path: Path, mode: int) -> None:
    """A key file readable by group or others is a usage error naming it, never its content."""
    log = tmp_path / "audit.jsonl"
    _keyed_log(log, 2)
    key = _key_file(tmp_path / "key", mode)
    out = _one_line(_cli("audit", "verify", str(log), "--key-file", str(key)), 2)
    assert "--key-file" in out
    assert "chmod 600" in out
    assert KEY not in out


def test_load_audit_key_reads_as_every_secret(tmp_path: Path) -> None:
    """Whitespace is stripped; non-UTF-8, blank, open-mode and short keys are refused by name."""
    assert load_audit_key(_key_file(tmp_path / "ok")) == KEY_BYTES
    assert load_audit_key(environ={"STRATEGYLAB_AUDIT_KEY": f" {KEY}\n"}) == KEY_BYTES
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(200, 232)))
    binary.chmod(0o600)
    for path, reason in ((binary, "UTF-8"), (_key_file(tmp_path / "open", 0o604), "chmod")):
        with pytest.raises(ConfigurationError, match=reason):
            load_audit_key(path)
    with pytest.raises(ConfigurationError, match="STRATEGYLAB_AUDIT_KEY"):
        load_audit_key(environ={"STRATEGYLAB_AUDIT_KEY": " "})
    with pytest.raises(ConfigurationError, match="at least 16 bytes") as info:
        load_audit_key(environ={"STRATEGYLAB_AUDIT_KEY": "short-key"})
    assert "short-key" not in str(info.value)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_node_refuses_an_audit_key_file_others_can_read(tmp_path: Path) -> None:
    """``node --audit-key-file`` with a 0644 key: one line naming the option, exit 2."""
    key = _key_file(tmp_path / "key", 0o644)
    code, err = await _fails_at_start(await _node(tmp_path / "data", "--audit-key-file", str(key)))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "--audit-key-file" in err
    assert "chmod 600" in err


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=50, data_dir=tmp_path / "ex"))
    await ex.start()
    yield ex
    await ex.stop()


@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.parametrize("source", ["file", "env"])
async def test_trader_audit_log_is_keyed_and_anchored(
    exchange: Exchange, tmp_path: Path, source: str
) -> None:
    """``trade`` with the audit key (file or environment) keeps its keyed log keyed and anchors
    its head in ``book.audit.anchor.jsonl`` and on stdout, both checked by verify."""
    db = tmp_path / "book.db"
    log, anchor = tmp_path / "book.audit.jsonl", tmp_path / "book.audit.anchor.jsonl"
    _keyed_log(log, 3)
    key = _key_file(tmp_path / "audit.key")
    extra: list[str] = ["--audit-key-file", str(key)] if source == "file" else []
    env = {} if source == "file" else {"STRATEGYLAB_AUDIT_KEY": KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "trade",
        *("--exchange-url", exchange.url, "--book", str(db), "--symbols", "A"),
        *("--strategy", "bids=strategylab.strategy._examples:RestingBids"),
        *("--status-interval", "0.1", *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(**env),
    )
    try:
        code, out, err = await _stop(proc, await _until(proc, "status"))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    printed: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    anchors = [line for line in printed if line["event"] == "audit_anchor"]
    assert anchors, printed
    saved = tmp_path / "trade.stdout"
    saved.write_bytes(out)
    assert all("mac" in json.loads(line) for line in _lines(anchor))
    result = AuditLog.verify(log, key=KEY_BYTES, anchor=[anchor, saved])
    assert result.keyed
    assert result.head_seq == anchors[-1]["seq"] >= 3
    assert all("mac" in json.loads(line) for line in _lines(log))


# ------------------------------------------------------------- 3. the whole log, bounded


def _damaged(path: Path, how: str) -> bytes:
    """A 250-record keyed log whose line 6 is replaced by a hostile one; returns its bytes."""
    _keyed_log(path, 250)
    lines = _lines(path)
    lines[5] = {
        "deep": b"[" * 1_000_000 + b"]" * 1_000_000 + b"\n",
        "bad-utf8": lines[5].replace(b'"n":5', b'"n":"\xff\xfe"'),
        "altered": lines[5].replace(b'"n":5', b'"n":6'),
        "overlong": b'{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}\n',
    }[how]
    path.write_bytes(b"".join(lines))
    return path.read_bytes()


@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["deep", "bad-utf8", "altered", "overlong"])
async def test_node_refuses_a_log_damaged_in_the_middle(tmp_path: Path, how: str) -> None:
    """Damage at line 6 of 250 (the tail intact): one line naming audit.jsonl:6, exit 1, and
    nothing appended."""
    log = tmp_path / "data" / "audit.jsonl"
    before = _damaged(log, how)
    key = _key_file(tmp_path / "key")
    code, err = await _fails_at_start(await _node(tmp_path / "data", "--audit-key-file", str(key)))
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert "audit.jsonl:6:" in err
    assert "Traceback" not in err
    assert log.read_bytes() == before


def _vm_hwm_kib(pid: int) -> int:
    """The peak resident set of ``pid``'s current program (KiB), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_verify_streams_past_an_overlong_line(tmp_path: Path) -> None:
    """A 256 MiB line is named without being read into memory: verify stays far below it."""
    log = tmp_path / "audit.jsonl"
    _keyed_log(log, 8)
    lines = _lines(log)
    with log.open("wb") as file:
        file.writelines(lines[:5])
        file.write(b'{"pad":"')
        chunk = b"x" * (1024 * 1024)
        for _ in range(256):
            file.write(chunk)
        file.write(b'"}\n')
        file.writelines(lines[6:])
    key = _key_file(tmp_path / "key")
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        verify = ["audit", "verify", str(log), "--key-file", str(key)]
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "strategylab", *verify],
            stdout=stdout,
            stderr=stderr,
            env=_env(),
        )
        # The peak of the child's own address space (VmHWM of its mm, which starts afresh at
        # exec): wait4's ru_maxrss would also count the pytest image the child was forked from.
        peak = 0
        try:
            deadline = 60.0
            waited = 0.0
            while proc.poll() is None and waited < deadline:
                peak = max(peak, _vm_hwm_kib(proc.pid))
                time.sleep(0.005)  # sampling the child's memory, not waiting for a state
                waited += 0.005
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    text = (out.read_text() + err.read_text()).strip()
    assert proc.returncode == 1, text
    assert "audit.jsonl:6: line 6 is longer than 1048576 bytes" in text
    assert 0 < peak < 192 * 1024, peak  # KiB; the line alone is 256 MiB


def test_max_line_is_configurable_and_append_refuses_a_longer_record(tmp_path: Path) -> None:
    """A record that would exceed ``max_line`` is refused (nothing written); a log holding a
    line over the limit it is opened with is refused naming the line."""
    log = tmp_path / "audit.jsonl"
    with AuditLog(log, fsync=False, max_line=4096) as audit:
        audit.append("recovery", {"pad": "x" * 3000})
        with pytest.raises(ValueError, match="longer than max_line=4096"):
            audit.append("recovery", {"pad": "x" * 5000})
        assert audit.head[0] == 1
    with pytest.raises(AuditIntegrityError, match="line 1 is longer than 2048 bytes") as info:
        AuditLog(log, fsync=False, max_line=2048)
    assert info.value.line == 1
    with pytest.raises(ValueError, match="max_line"):
        AuditLog(log, fsync=False, max_line=10)
    assert AuditLog.verify(log).records == 1
