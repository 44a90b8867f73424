"""The files the integrity checker reads: what the exchange emitted, what a node acknowledged.

*Emitted log* (written by the exchange): a sequence of records, each a 4-byte big-endian length
followed by a ticks payload (:func:`strategylab.market._protocol.encode_ticks`). Every tick the
exchange generates is logged once, when generated, and handed to the OS (one unbuffered ``write``
per batch) before it is sent to anyone, so a SIGKILLed exchange has logged everything it sent;
replays are not logged again. A torn last record (the exchange killed mid-write) is ignored by the
reader.

*Ack log* (written by a node's ingestor): JSON lines ``{"symbol": s, "seq": n}``, each meaning that
every tick of ``s`` with sequence ≤ ``n`` is durably stored (committed to the store, or fsynced to
the failover spool). Written after the commit returned; a crash between commit and ack only makes
the ack log claim less than is stored, never more.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from strategylab._files import make_private_dir, open_private

from ._protocol import decode_ticks, encode_ticks
from ._tick import Tick

__all__ = ["AckLog", "EmittedLog", "read_acks", "read_emitted", "read_emitted_payloads"]

_LEN = struct.Struct(">I")


class EmittedLog:
    """Append-only log of every tick the exchange emitted (one record per generated batch)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        make_private_dir(self.path.parent)
        # Unbuffered: each record reaches the OS before the batch is sent to any subscriber.
        fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._file: BinaryIO = os.fdopen(fd, "ab", buffering=0)

    def append(self, ticks: list[Tick]) -> None:
        """Log ``ticks`` as one record."""
        self.append_payload(encode_ticks(ticks))

    def append_payload(self, payload: bytes) -> None:
        """Log an already encoded ticks payload (the bytes that go on the wire) as one record."""
        self._file.write(_LEN.pack(len(payload)) + payload)

    def flush(self) -> None:
        """Records are unbuffered; kept so callers can flush without knowing that."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def read_emitted_payloads(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """``(offset, payload)`` of every complete record; a torn last record is skipped."""
    with Path(path).open("rb") as file:
        offset = 0
        while True:
            head = file.read(_LEN.size)
            if len(head) < _LEN.size:
                return
            (size,) = _LEN.unpack(head)
            payload = file.read(size)
            if len(payload) < size:
                return
            yield offset, payload
            offset += _LEN.size + size


def read_emitted(path: str | os.PathLike[str]) -> Iterator[Tick]:
    """Every tick in an emitted log, in the order logged; a torn last record is skipped."""
    for _, payload in read_emitted_payloads(path):
        yield from decode_ticks(payload)


class AckLog:
    """Append-only JSONL of acknowledgement watermarks, written after each commit.

    Each :meth:`append` is one ``write`` of whole lines on an unbuffered descriptor. When it fails
    (``OSError``, e.g. ``ENOSPC`` on a full disk) the file is cut back to where the append started,
    so a failed append leaves no partial line and can simply be retried; nothing is kept in a
    buffer to be flushed (twice, or half) later.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        make_private_dir(self.path.parent)
        # Never through a planted symlink; created 0600 (UnsafePathError names a symlink).
        self._fd: int | None = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._fd is None

    def append(self, watermarks: Mapping[str, int]) -> None:
        """Record that every tick up to ``watermarks[symbol]`` is durably stored.

        Raises ``OSError`` when the write fails (nothing of it stays in the file) and
        ``ValueError`` when the log is closed.
        """
        if self._fd is None:
            raise ValueError(f"{self.path}: the ack log is closed")
        data = "".join(
            json.dumps({"symbol": s, "seq": n}, separators=(",", ":")) + "\n"
            for s, n in watermarks.items()
        ).encode("utf-8")
        start = self._size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # A short write on a full disk leaves part of a line: cut it off (truncating needs
            # no space) so the next append starts on a line boundary.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        self._size = start + len(data)

    def close(self) -> None:
        """Close the file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_acks(path: str | os.PathLike[str]) -> dict[str, int]:
    """The highest acknowledged sequence per symbol; a torn last line is skipped."""
    acked: dict[str, int] = {}
    with Path(path).open(encoding="utf-8") as file:
        for line in file:
            if not line.endswith("\n"):
                break
            record = json.loads(line)
            symbol, seq = record["symbol"], int(record["seq"])
            acked[symbol] = max(acked.get(symbol, 0), seq)
    return acked
