"""Log records a peer cannot forge, readable on a terminal and JSON lines everywhere else.

Every process's ``main`` calls :func:`configure_logging` instead of ``logging.basicConfig``. It
installs one handler on the root logger that renders through structlog's standard-library
integration (:class:`structlog.stdlib.ProcessorFormatter`), so records from plain
``logging.getLogger(...)`` calls, aiohttp, asyncio and structlog loggers look alike:

* **On a terminal** (``stream.isatty()``), one readable line per record::

      2026-12-01T09:30:00.125Z WARNING  strategylab.market.feed: lost: exchange: gap seq=41

  an ISO-8601 UTC timestamp, the level, the logger, the event (the message) and the record's
  extra fields as ``key=value``; a traceback or stack follows as :data:`CONTINUATION` lines.
* **Anywhere else** (a pipe, a file, CI) and always in the log file, one JSON object per line:
  ``{"timestamp": "2026-12-01T09:30:00.125Z", "level": "warning", "logger": "...",
  "event": "...", ...extra keys, "exception": "Traceback ..."}``.

Text that a peer supplies (an exchange's ``reason``, a WebSocket client's symbols, an HTTP path
or body, a proxy name, a database's error message) ends up in log messages, often inside
exception messages. Written raw, ``"x\\nCRITICAL:forged"`` becomes a second, forged record, and
``"\\x1b[2J"`` clears the operator's terminal. Escaping at every call site misses the next one,
so the escaping happens once, here, in both renderings:

* **Readable.** The record's line (timestamp, level, logger, event and every ``key=value``) is
  one physical line. Every C0 control character (``\\n``, ``\\r`` and ``\\t`` included), DEL,
  every C1 control (``\\x80``-``\\x9f``, so ``\\x85`` NEL and the 8-bit CSI ``\\x9b``), the
  Unicode line and paragraph separators (U+2028, U+2029), the bidirectional controls (U+061C,
  U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and the zero-width and BOM characters
  (U+200B-U+200D, U+FEFF) are written as backslash escapes (``\\n``, ``\\x1b``, ``\\u2028``). A
  traceback or stack stays multi-line, but every one of its lines is escaped the same way and
  starts with :data:`CONTINUATION` (``"  | "``): an exception message that carries
  ``"\\nCRITICAL:..."`` shows as a continuation line, never as a record.
* **JSON.** Valid JSON, one object per line, written by the standard encoder with
  ``ensure_ascii``: every control character, DEL and every non-ASCII character (so U+2028 and
  the bidi controls) is a ``\\uXXXX`` escape, and a traceback is the ``"exception"`` string.

A backslash is not escaped in the readable form, so that text already escaped by ``repr`` stays
readable; a log line's ``\\n`` may therefore be a peer's literal backslash and ``n``. The
guarantee is about structure (one record, one line; no terminal control), not a reversible
encoding. :class:`SafeFormatter` is the same guarantee for a plain ``logging.Formatter`` format.

structlog is imported when the first record is rendered (or by :func:`get_logger`), not by
:func:`configure_logging`: a command that logs nothing (``strategylab --help``) does not pay for
it. A module that wants structured events calls :func:`get_logger` (structlog configured once,
to hand its events to the standard library, so they go through the same handler and filters).

Bottom layer: the standard library and structlog.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from strategylab._files import make_private_dir, open_private

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

    import structlog.stdlib

__all__ = ["CONTINUATION", "SafeFormatter", "configure_logging", "escape", "get_logger"]

CONTINUATION: Final = "  | "
"""The prefix of every line of a traceback or stack in a readable log record."""


def _escapes() -> dict[int, str]:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    codes = [
        *range(0x20),
        *range(0x7F, 0xA0),
        0x061C,
        *range(0x200B, 0x2010),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        0xFEFF,
    ]
    return {
        code: named.get(chr(code)) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        for code in codes
    }


_TABLE: Final = _escapes()


def escape(text: str) -> str:
    """``text`` with every control, line-separating and bidi character backslash-escaped."""
    if text.isascii() and text.isprintable():
        return text
    return text.translate(_TABLE)


def _block(text: str) -> str:
    """A multi-line block (traceback, stack) as continuation lines, each one escaped."""
    return "\n".join(CONTINUATION + escape(line) for line in text.rstrip("\n").split("\n"))


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose records a peer's text cannot split or style.

    The formatted line (level, name, message, any other field of the format) is passed through
    :func:`escape`; a traceback and a stack follow it as :data:`CONTINUATION` lines. For a
    handler of one's own with a ``%``-format; :func:`configure_logging` renders with structlog.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one escaped line, then its traceback and stack, prefixed."""
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = escape(self.formatMessage(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + _block(record.exc_text)
        if record.stack_info:
            text += "\n" + _block(self.formatStack(record.stack_info))
        return text


# ------------------------------------------------------------------------------- processors
# Each takes (logger, method name, event dict), as structlog's processors do.

_FIRST: Final = ("timestamp", "level", "logger", "event")
"""The keys every rendered record starts with, in this order."""
_TRAILING: Final = ("exception", "stack")
# Attributes every LogRecord has (and those a Formatter adds): not "extra" fields.
_RECORD_KEYS: Final = frozenset(
    logging.LogRecord("name", 0, "pathname", 0, "msg", (), None).__dict__
) | {"message", "asctime", "taskName"}


def _add_extras(_logger: object, _method: str, event: MutableMapping[str, Any]) -> Any:
    """A plain ``logging`` record's ``extra=`` fields become the event's keys."""
    record = event.get("_record")
    if record is not None:
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS and not key.startswith("_") and key not in event:
                event[key] = value
    return event


def _add_meta(_logger: object, _method: str, event: MutableMapping[str, Any]) -> Any:
    """``timestamp`` (the record's creation, ISO-8601 UTC), ``level`` and ``logger``."""
    record: logging.LogRecord | None = event.get("_record")
    created = record.created if record is not None else datetime.now(UTC).timestamp()
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    event["timestamp"] = stamp.replace("+00:00", "Z")
    if record is not None:
        event["level"] = record.levelname.lower()
        event["logger"] = record.name
    return event


def _fold_exception(_logger: object, _method: str, event: MutableMapping[str, Any]) -> Any:
    """``exc_info`` becomes an ``exception`` string, a stdlib ``stack_info`` a ``stack`` one."""
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[0] is not None:
        event["exception"] = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    stack = event.pop("stack_info", None)
    if isinstance(stack, str):
        event["stack"] = stack.rstrip("\n")
    return event


def _shown_value(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def _render_readable(_logger: object, _method: str, event: MutableMapping[str, Any]) -> str:
    """One escaped line, then the traceback and stack as continuation lines."""
    level = str(event.pop("level", "")).upper()
    head = [str(event.pop("timestamp", "")), f"{level:<8}", f"{event.pop('logger', '')}:"]
    text = _shown_value(event.pop("event", ""))
    blocks = [str(block) for key in _TRAILING if (block := event.pop(key, None))]
    pairs = [f"{key}={_shown_value(value)}" for key, value in event.items()]
    line = escape(" ".join([*head, text, *pairs]))
    return "\n".join([line, *(_block(block) for block in blocks)])


def _render_json(_logger: object, _method: str, event: MutableMapping[str, Any]) -> str:
    """One JSON object on one line, ASCII only (every control and non-ASCII character escaped)."""
    ordered = {key: event.pop(key) for key in _FIRST if key in event}
    ordered.update((str(key), value) for key, value in event.items() if key not in _TRAILING)
    ordered.update((key, event[key]) for key in _TRAILING if key in event)
    try:
        return json.dumps(ordered, ensure_ascii=True, default=repr)
    except (TypeError, ValueError):  # a circular value, say: its repr, then
        return json.dumps({k: _shown_value(v) for k, v in ordered.items()}, ensure_ascii=True)


def _configure_structlog() -> None:
    """Hand structlog's events to the standard library (once; never over someone else's setup)."""
    import structlog  # noqa: PLC0415 - deferred: see the module docstring

    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger for structured events (``log.info("stored", ticks=n)``), rendered by
    :func:`configure_logging`'s handler like every other record; ``name`` defaults to the
    caller's module, as structlog's own ``get_logger`` would not."""
    import structlog  # noqa: PLC0415 - deferred: see the module docstring

    _configure_structlog()
    if name is None:
        name = sys._getframe(1).f_globals.get("__name__", "root")  # noqa: SLF001
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def _processor_formatter(json_lines: bool) -> logging.Formatter:
    import structlog  # noqa: PLC0415 - deferred: see the module docstring

    _configure_structlog()
    renderer: Callable[..., str] = _render_json if json_lines else _render_readable
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_add_extras],
        processors=[_add_meta, _fold_exception, renderer],
    )


class _StructFormatter(logging.Formatter):
    """Readable or JSON rendering through structlog, whose import waits for the first record."""

    def __init__(self, *, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines
        self._inner: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        """``record`` as one readable line (and continuation lines) or one JSON line."""
        inner = self._inner
        if inner is None:
            inner = self._inner = _processor_formatter(self.json_lines)
        return inner.format(record)


class _SafeHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (recognised when it is called again)."""


class _SafeFileHandler(_SafeHandler):
    """The log file's handler: owns its stream, so closing it closes the file."""

    def close(self) -> None:
        """Flush and close the file."""
        self.acquire()
        try:
            try:
                self.flush()
            finally:
                self.stream.close()
        finally:
            self.release()
            super().close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def configure_logging(
    level: int = logging.WARNING,
    stream: TextIO | None = None,
    *,
    log_file: Path | None = None,
    force: bool = False,
) -> bool:
    """Log records of ``level`` and above to ``stream`` (default ``sys.stderr``) and, when given,
    to ``log_file``; see the module docstring for the renderings.

    ``stream`` gets readable lines when it is a terminal and JSON lines otherwise; ``log_file``
    always gets JSON lines (appended; created 0600 with its directory 0700, never through a
    symlink: :class:`~strategylab._files.UnsafePathError` otherwise, ``OSError`` when it cannot
    be opened). Replaces the handlers an earlier call installed (closing its log file). Like
    ``logging.basicConfig``, it leaves a root logger with handlers of someone else's (an
    embedding application, pytest) alone unless ``force``, which removes them. Returns whether
    the handlers were installed.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if force or isinstance(handler, _SafeHandler):
            root.removeHandler(handler)
            handler.close()
    if root.handlers:
        return False
    out = sys.stderr if stream is None else stream
    handlers: list[logging.Handler] = [_SafeHandler(out)]
    handlers[0].setFormatter(_StructFormatter(json_lines=not _is_terminal(out)))
    if log_file is not None:
        make_private_dir(log_file.parent)
        fd = open_private(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        to_file = _SafeFileHandler(os.fdopen(fd, "a", encoding="utf-8", buffering=1))
        to_file.setFormatter(_StructFormatter(json_lines=True))
        handlers.append(to_file)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    if "structlog" in sys.modules:  # already paid for: structlog loggers work from now on
        _configure_structlog()
    return True
