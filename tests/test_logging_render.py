"""Structured logging: readable lines on a terminal, JSON lines elsewhere, escaped in both.

:func:`strategylab._logging.configure_logging` is exercised through the root logger, as every
process uses it: plain ``logging`` records and structlog events, a fake terminal (a ``StringIO``
whose ``isatty()`` is true) against a pipe-like stream, the 0600 log file, level filtering, and
hostile text in every field of a record (Hypothesis).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategylab._files import UnsafePathError
from strategylab._logging import CONTINUATION, configure_logging, get_logger

# The characters that must never reach a log stream raw (a newline only between records and
# before continuation lines, checked separately).
FORBIDDEN = frozenset(
    map(
        chr,
        [
            *range(0x20),
            *range(0x7F, 0xA0),
            0x061C,
            *range(0x200B, 0x2010),
            0x2028,
            0x2029,
            *range(0x202A, 0x202F),
            *range(0x2066, 0x206A),
            0xFEFF,
        ],
    )
)
HOSTILE_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(sorted(FORBIDDEN)))
READABLE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<level>[A-Z]+) +(?P<logger>\S+): "
    r"(?P<rest>.*)$"
)


RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (WARNING|ERROR) ")


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@contextmanager
def configured(
    level: int = logging.DEBUG, *, tty: bool, log_file: Path | None = None
) -> Iterator[io.StringIO]:
    """The root logger configured by ``configure_logging`` on a fresh stream; restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = FakeTerminal() if tty else io.StringIO()
    try:
        root.handlers = []
        assert configure_logging(level, stream, log_file=log_file)
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def emit(name: str, message: str, level: int = logging.WARNING, **extra: Any) -> None:
    """Hand one record to the root logger's handlers, whatever ``name`` is (no logger created)."""
    record = logging.LogRecord(name, level, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    logging.getLogger().handle(record)


def json_lines(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# --------------------------------------------------------------------------------- rendering


def test_a_terminal_gets_a_readable_line() -> None:
    """On a terminal: ISO-8601 UTC timestamp, level, logger, event and the extra key=value."""
    with configured(tty=True) as out:
        logging.getLogger("test.render").warning(
            "stored %d ticks", 3, extra={"symbol": "AAPL", "n": 2}
        )
    [line] = out.getvalue().splitlines()
    match = READABLE.match(line)
    assert match is not None, line
    assert (match["level"], match["logger"]) == ("WARNING", "test.render")
    assert match["rest"] == "stored 3 ticks symbol=AAPL n=2"
    stamp = datetime.fromisoformat(match["ts"])
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_a_pipe_gets_one_json_object_per_line() -> None:
    """Not a terminal: JSON with timestamp, level, logger, event, then the extra keys."""
    with configured(tty=False) as out:
        logging.getLogger("test.render").info("stored %d ticks", 3, extra={"symbol": "AAPL"})
        logging.getLogger("test.render.other").error("second")
    first, second = json_lines(out.getvalue())
    assert list(first) == ["timestamp", "level", "logger", "event", "symbol"]
    assert first["level"] == "info"
    assert first["logger"] == "test.render"
    assert first["event"] == "stored 3 ticks"
    assert first["symbol"] == "AAPL"
    assert first["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(first["timestamp"])
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert (second["level"], second["logger"], second["event"]) == (
        "error",
        "test.render.other",
        "second",
    )


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "json"])
def test_structlog_events_take_the_same_path(tty: bool) -> None:
    """A structlog logger's event and keys render like a plain record's."""
    with configured(tty=tty) as out:
        get_logger("test.render.structured").info("order sent", qty=5, side="buy")
    text = out.getvalue()
    if tty:
        match = READABLE.match(text.rstrip("\n"))
        assert match is not None, text
        assert match["logger"] == "test.render.structured"
        assert match["rest"] == "order sent qty=5 side=buy"
    else:
        [record] = json_lines(text)
        assert record["event"] == "order sent"
        assert (record["qty"], record["side"], record["level"]) == (5, "buy", "info")


def test_get_logger_names_the_calling_module() -> None:
    """Without a name, the structlog logger is the caller's module's."""
    with configured(tty=False) as out:
        get_logger().warning("here")
    [record] = json_lines(out.getvalue())
    assert record["logger"] == __name__


def test_a_traceback_is_continuation_lines_on_a_terminal() -> None:
    """The exception's text follows the record as escaped, prefixed lines."""
    with configured(tty=True) as out:
        try:
            raise ValueError("bad\nCRITICAL:forged\x1b[2J")
        except ValueError:
            logging.getLogger("test.render").exception("peer failed")
    first, *rest = out.getvalue().rstrip("\n").split("\n")
    assert first.endswith("test.render: peer failed")
    assert rest[0] == f"{CONTINUATION}Traceback (most recent call last):"
    assert all(line.startswith(CONTINUATION) for line in rest)
    assert f"{CONTINUATION}CRITICAL:forged\\x1b[2J" in rest


@pytest.mark.parametrize("structured", [False, True], ids=["logging", "structlog"])
def test_a_traceback_is_the_exception_field_in_json(structured: bool) -> None:
    """In JSON the traceback is one string field, ``exception``, on the record's one line."""
    with configured(tty=False) as out:
        try:
            raise ValueError("bad\nCRITICAL:forged")
        except ValueError:
            if structured:
                get_logger("test.render").exception("peer failed")
            else:
                logging.getLogger("test.render").exception("peer failed")
    [record] = json_lines(out.getvalue())
    assert record["event"] == "peer failed"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("ValueError: bad\nCRITICAL:forged")


def test_a_stack_is_the_stack_field_in_json() -> None:
    """``stack_info`` becomes the ``stack`` field."""
    with configured(tty=False) as out:
        logging.getLogger("test.render").warning("where", stack_info=True)
    [record] = json_lines(out.getvalue())
    assert record["stack"].startswith("Stack (most recent call last):")


# ------------------------------------------------------------------------------- level, file


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "json"])
def test_records_below_the_level_are_not_written(tty: bool) -> None:
    """At INFO, debug records (plain or structlog) are dropped; info and above are kept."""
    with configured(logging.INFO, tty=tty) as out:
        logging.getLogger("test.render").debug("hidden")
        get_logger("test.render").debug("hidden too")
        logging.getLogger("test.render").info("shown")
        get_logger("test.render").error("shown too")
    text = out.getvalue()
    assert "hidden" not in text
    assert text.count("\n") == 2
    assert "shown" in text
    assert "shown too" in text


def test_the_log_file_is_private_json_lines_even_beside_a_terminal(tmp_path: Path) -> None:
    """The log file is created 0600 (its directory 0700) and gets JSON lines whatever the
    stream is; a second configuration appends to it."""
    log_file = tmp_path / "logs" / "node.log"
    with configured(tty=True, log_file=log_file) as out:
        logging.getLogger("test.render").warning("first %s", "x\ny", extra={"peer": "p"})
    with configured(tty=True, log_file=log_file):
        logging.getLogger("test.render").warning("second")
    assert READABLE.match(out.getvalue().splitlines()[0])
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o700
    first, second = json_lines(log_file.read_text(encoding="utf-8"))
    assert (first["event"], first["peer"]) == ("first x\ny", "p")
    assert second["event"] == "second"


def test_a_log_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """A planted symlink at the log file is refused, and its target left alone."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "node.log").symlink_to(target)
    with pytest.raises(UnsafePathError), configured(tty=False, log_file=tmp_path / "logs/node.log"):
        pass  # pragma: no cover - configure_logging raises before
    assert target.read_text() == "precious\n"


def test_reconfiguring_closes_the_previous_log_file(tmp_path: Path) -> None:
    """A second call replaces the handlers and closes the file the first one opened."""
    root = logging.getLogger()
    with configured(tty=False, log_file=tmp_path / "a.log"):
        [file_handler] = [h for h in root.handlers if isinstance(h, logging.StreamHandler)][1:]
        assert configure_logging(logging.INFO, io.StringIO())
        assert file_handler.stream.closed
        assert len(root.handlers) == 1


def test_configuring_does_not_import_structlog() -> None:
    """structlog is imported by the first record, not by configure_logging (start-up cost)."""
    code = (
        "import sys, logging\n"
        "from strategylab._logging import configure_logging\n"
        "configure_logging()\n"
        "assert 'structlog' not in sys.modules\n"
        "logging.getLogger('x').warning('now')\n"
        "assert 'structlog' in sys.modules\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr)["event"] == "now"


# ------------------------------------------------------------------------------ hostile text


def assert_clean(text: str) -> None:
    raw = sorted({f"U+{ord(c):04X}" for c in text if c in FORBIDDEN and c != "\n"})
    assert raw == [], f"raw control characters reached the log: {raw}"


@given(message=HOSTILE_TEXT, name=HOSTILE_TEXT, value=HOSTILE_TEXT, reason=HOSTILE_TEXT)
def test_hostile_text_in_any_field_stays_one_readable_line(
    message: str, name: str, value: str, reason: str
) -> None:
    """Message, logger name, extra value, exception text: one record line, then only
    continuation lines, and no raw control character anywhere."""
    with configured(tty=True) as out:
        emit(name or "x", message, peer=value)
        try:
            raise RuntimeError(reason)
        except RuntimeError:
            record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", (message,), None)
            record.exc_info = sys.exc_info()
            logging.getLogger().handle(record)
    lines = out.getvalue().rstrip("\n").split("\n")
    assert_clean(out.getvalue())
    first, second, *traceback_lines = lines
    assert all(RECORD_START.match(line) for line in (first, second)), lines
    assert traceback_lines
    assert all(line.startswith(CONTINUATION) for line in traceback_lines), lines


@given(message=HOSTILE_TEXT, name=HOSTILE_TEXT, value=HOSTILE_TEXT, reason=HOSTILE_TEXT)
def test_hostile_text_in_any_field_is_valid_ascii_json(
    message: str, name: str, value: str, reason: str
) -> None:
    """One JSON line per record, ASCII only, and the exact text back when parsed."""
    with configured(tty=False) as out:
        emit(name or "x", message, peer=value)
        try:
            raise RuntimeError(reason)
        except RuntimeError:
            get_logger("x").exception(message, peer=value)
    text = out.getvalue()
    assert text.isascii()
    assert_clean(text)
    first, second = json_lines(text)
    assert (first["logger"], first["event"], first["peer"]) == (name or "x", message, value)
    assert (second["event"], second["peer"]) == (message, value)
    shown = "".join(traceback.format_exception_only(RuntimeError(reason))).rstrip("\n")
    assert second["exception"].endswith(shown)


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
def test_a_real_terminal_gets_readable_lines_and_a_pipe_json() -> None:
    """A process whose stderr is a real pseudo-terminal writes readable lines; piped, JSON."""
    import pty  # noqa: PLC0415 - POSIX only

    code = (
        "import logging\n"
        "from strategylab._logging import configure_logging\n"
        "configure_logging()\n"
        "logging.getLogger('test.tty').warning('hostile %s', 'a\\nCRITICAL:forged\\x1b[2J')\n"
    )
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", code], stderr=terminal, timeout=60, check=False
        )
        os.close(terminal)
        terminal = -1
        written = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other side is closed
            while chunk := os.read(controller, 4096):
                written += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 0
    [line] = written.decode().replace("\r\n", "\n").splitlines()
    assert READABLE.match(line), line
    assert line.endswith("test.tty: hostile a\\nCRITICAL:forged\\x1b[2J")
    piped = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert json.loads(piped.stderr)["event"] == "hostile a\nCRITICAL:forged\x1b[2J"
