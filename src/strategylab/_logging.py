"""Log lines a peer cannot forge: every process's logging goes through :class:`SafeFormatter`.

Text that a peer supplies (an exchange's ``reason``, a WebSocket client's symbols, an HTTP path or
body, a proxy name, a database's error message) ends up in log messages, often inside exception
messages. Written raw, ``"x\\nCRITICAL:forged"`` becomes a second, forged record, and
``"\\x1b[2J"`` clears the operator's terminal. Escaping at every call site misses the next one,
so the escaping happens once, in the formatter:

* **The record's line** (level, logger name and message, whatever the format) is one physical
  line. Every C0 control character (``\\n``, ``\\r`` and ``\\t`` included), DEL, every C1 control
  (``\\x80``-``\\x9f``, so ``\\x85`` NEL and the 8-bit CSI ``\\x9b``), the Unicode line and
  paragraph separators (U+2028, U+2029), the bidirectional controls (U+061C, U+200E, U+200F,
  U+202A-U+202E, U+2066-U+2069) and the zero-width and BOM characters (U+200B-U+200D, U+FEFF) are
  written as backslash escapes (``\\n``, ``\\x1b``, ``\\u2028``).
* **A traceback or stack** (``exc_info``, ``stack_info``) stays multi-line, but every one of its
  lines is escaped the same way and starts with :data:`CONTINUATION` (``"  | "``): an exception
  message that carries ``"\\nCRITICAL:..."`` shows as a continuation line, never as a record.

A backslash is not escaped, so that text already escaped by ``repr`` stays readable; a log line's
``\\n`` may therefore be a peer's literal backslash and ``n``. The guarantee is about structure
(one record, one line; no terminal control), not a reversible encoding.

:func:`configure_logging` installs the formatter on the root logger; each process's ``main``
calls it instead of ``logging.basicConfig``. The cost is one ``str.isascii`` and one
``str.isprintable`` for a printable-ASCII line, and one ``str.translate`` otherwise.

Bottom layer: imports only the standard library.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Final, TextIO

from strategylab._files import make_private_dir, open_private

__all__ = ["CONTINUATION", "SafeFormatter", "configure_logging", "escape"]

CONTINUATION: Final = "  | "
"""The prefix of every line of a traceback or stack in a log record."""


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
    :func:`escape`; a traceback and a stack follow it as :data:`CONTINUATION` lines.
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


class _SafeHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (recognised when it is called again)."""


def configure_logging(
    level: int = logging.WARNING,
    stream: TextIO | None = None,
    *,
    log_file: Path | None = None,
    force: bool = False,
) -> bool:
    """Log records of ``level`` and above to ``stream`` (default ``sys.stderr``) through a
    :class:`SafeFormatter` in ``logging.BASIC_FORMAT`` (``LEVEL:logger:message``), and to
    ``log_file`` when given (appended; created 0600 with its directory 0700, never through a
    symlink; :class:`~strategylab._files.UnsafePathError` otherwise).

    Replaces the handler an earlier call installed. Like ``logging.basicConfig``, it leaves a
    root logger with handlers of someone else's (an embedding application, pytest) alone unless
    ``force``, which removes them. Returns whether the handler was installed.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if force or isinstance(handler, _SafeHandler):
            root.removeHandler(handler)
            if force and not isinstance(handler, _SafeHandler):
                handler.close()
    if root.handlers:
        return False
    handler = _SafeHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(SafeFormatter(logging.BASIC_FORMAT))
    root.addHandler(handler)
    if log_file is not None:
        make_private_dir(log_file.parent)
        fd = open_private(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        to_file = _SafeHandler(os.fdopen(fd, "a", encoding="utf-8", buffering=1))
        to_file.setFormatter(SafeFormatter("%(asctime)s " + logging.BASIC_FORMAT))
        root.addHandler(to_file)
    root.setLevel(level)
    return True
