"""What every tick store offers: the contract the ingestor, the checker and backtests rely on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import ErrorType

from ._tick import Tick

__all__ = ["QuarantinedTick", "StoreCorruptedError", "TickStore"]


class StoreCorruptedError(StrategyLabError):
    """A store's file failed its integrity check: corruption, not a transient error.

    Retrying cannot help (the damaged bytes stay damaged), so ``retryable`` is False and
    :func:`~strategylab.fault_tolerance.classify` reads ``error_type``: DATA_INGESTION_FAILURE,
    the type SQLite's own ``SQLITE_CORRUPT`` and ``SQLITE_NOTADB`` map to. ``path`` is the damaged
    file, ``reason`` what the check found, ``moved_to`` where the damaged file was moved (``None``
    while it is still in place).
    """

    error_type: ClassVar[ErrorType] = ErrorType.DATA_INGESTION_FAILURE
    retryable: ClassVar[bool] = False
    corruption: ClassVar[bool] = True

    def __init__(
        self, path: str | os.PathLike[str], reason: str, moved_to: Path | None = None
    ) -> None:
        where = f"; moved to {moved_to}" if moved_to is not None else ""
        super().__init__(f"{path}: corrupted: {reason}{where}")
        self.path = Path(path)
        self.reason = reason
        self.moved_to = moved_to


class QuarantinedTick(msgspec.Struct, frozen=True):
    """Input the feed refused, kept with the reason so that nothing is silently lost."""

    received_ns: int
    reason: str
    raw: str
    """The tick as received (its repr or the offending bytes, hex), for a human to inspect."""
    symbol: str | None = None
    seq: int | None = None


@runtime_checkable
class TickStore(Protocol):
    """A durable home for ticks, idempotent on (symbol, seq).

    ``write`` returns only after the batch is durably committed; only then are its ticks
    acknowledged. Writing a tick that is already stored is a no-op, so a batch can be retried, or
    drained from a spool, without creating duplicates.
    """

    @property
    def name(self) -> str:
        """A short name for logs and statistics, e.g. ``"sqlite"``."""
        ...

    async def open(self) -> None:
        """Connect, create the schema if needed."""
        ...

    async def aclose(self) -> None:
        """Release connections; safe to call twice."""
        ...

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Store a batch in one transaction; returns how many ticks were new."""
        ...

    async def last_seqs(self) -> dict[str, int]:
        """The highest stored sequence per symbol: where a feed resumes."""
        ...

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` in sequence order, ``from_seq``..``to_seq`` inclusive."""
        ...

    async def symbols(self) -> list[str]:
        """Every symbol with at least one stored tick."""
        ...

    async def duplicates(self) -> int:
        """Rows beyond the first per (symbol, seq); 0 unless the schema's uniqueness failed."""
        ...

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        """Keep refused input with its reason."""
        ...

    async def quarantined(self) -> list[QuarantinedTick]:
        """Everything quarantined so far."""
        ...

    async def health(self) -> bool:
        """True when a real round trip to the store just succeeded."""
        ...
