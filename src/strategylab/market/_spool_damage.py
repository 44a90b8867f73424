"""Damage found in the spool: what is reported (:class:`SpoolCorruption`,
:class:`SpoolCorruptionError`), each damaged span with the sequences its intact neighbours
bound, and the resume limits (*holes*) that make a feed fetch those sequences again."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import ErrorType

from ._spool_format import _HOLES, Span, _Survey

__all__ = ["SpoolCorruption", "SpoolCorruptionError"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SpoolCorruption:
    """One damaged range of a spool file: acknowledged batches that could not be read back."""

    path: Path
    """The damaged file (a segment, or ``quarantine.log``)."""
    offset: int
    """Byte offset of the damage in the file as it was found."""
    length: int
    """Length of the unreadable range, bytes."""
    moved_to: Path
    """Where the unreadable bytes were moved (kept, never deleted)."""
    ranges: Mapping[str, tuple[int, int | None]]
    """Per symbol, the first and last sequence the damage may have held, as bounded by the intact
    records around it (``None``: no later intact record of that symbol). Empty for the quarantine
    log."""

    def describe(self) -> str:
        """One line for logs: file, offset, length and the sequence ranges."""
        ranges = ", ".join(
            f"{symbol} {first}..{'?' if last is None else last}"
            for symbol, (first, last) in sorted(self.ranges.items())
        )
        return (
            f"{self.path.name} bytes {self.offset}..{self.offset + self.length} "
            f"({self.length} bytes, moved to {self.moved_to.name}); "
            f"sequences {ranges or 'unknown'}"
        )


class SpoolCorruptionError(StrategyLabError):
    """Acknowledged batches in the spool could not be read back (reported, not raised).

    ``corruptions`` (one or more, found in one pass) say where and which sequences; the ranges
    are fetched again from the source through the resume limits.
    """

    error_type = ErrorType.DATA_INGESTION_FAILURE

    def __init__(self, corruptions: Sequence[SpoolCorruption]) -> None:
        shown = "; ".join(c.describe() for c in corruptions[:3])
        more = f"; and {len(corruptions) - 3} more" if len(corruptions) > 3 else ""
        super().__init__(f"spool corruption: {shown}{more}")
        self.corruptions = tuple(corruptions)


def _sequence_ranges(
    before: Mapping[str, int], after: Mapping[str, int]
) -> dict[str, tuple[int, int | None]]:
    """Per symbol, the sequences between the last intact one before and the first one after."""
    out: dict[str, tuple[int, int | None]] = {}
    for symbol in sorted({*before, *after}):
        first = before.get(symbol, 0) + 1
        following = after.get(symbol)
        if following is None:
            out[symbol] = (first, None)
        elif following - 1 >= first:
            out[symbol] = (first, following - 1)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class _Found:
    """A damaged span of a file and the sequence ranges its intact neighbours bound."""

    path: Path
    span: Span
    ranges: dict[str, tuple[int, int | None]]


@dataclasses.dataclass(slots=True, kw_only=True)
class _Hole:
    """A resume limit left by one corruption (see the module docstring)."""

    found: str
    limits: dict[str, int]
    """Per symbol, the highest sequence that may be reported as stored."""
    high: dict[str, int]
    """Per symbol, the highest sequence stored when the damage was found: the limit is lifted once
    the symbol is contiguous up to here."""
    settled: bool
    """True once the primary store's own positions were merged into ``limits``."""

    def to_json(self) -> dict[str, object]:
        return {
            "found": self.found,
            "limits": self.limits,
            "high": self.high,
            "settled": self.settled,
        }

    @classmethod
    def from_json(cls, raw: object) -> _Hole:
        if not isinstance(raw, dict):
            raise TypeError(f"expected an object, got {type(raw).__name__}")
        return cls(
            found=str(raw["found"]),
            limits={str(k): int(v) for k, v in dict(raw["limits"]).items()},
            high={str(k): int(v) for k, v in dict(raw["high"]).items()},
            settled=bool(raw["settled"]),
        )

    def prune(self) -> None:
        for symbol in [s for s, limit in self.limits.items() if limit >= self.high.get(s, 0)]:
            del self.limits[symbol]


# Module functions, moved from SpoolStore's static methods.


def _corruptions_of(surveys: list[_Survey]) -> list[_Found]:
    """Every damaged span, in spool order, with the sequences its intact neighbours bound."""
    items: list[tuple[Path, int, Span | dict[str, tuple[int, int]]]] = []
    for survey in surveys:
        items.extend((survey.path, offset, bounds) for offset, bounds in survey.records)
        items.extend((survey.path, span[0], span) for span in survey.damaged)
    items.sort(key=lambda item: (item[0], item[1]))
    before: list[dict[str, int]] = []
    seen: dict[str, int] = {}
    for _, _, what in items:
        if isinstance(what, tuple):
            before.append(dict(seen))
        else:
            for symbol, (_low, high) in what.items():
                seen[symbol] = max(high, seen.get(symbol, 0))
    after: list[dict[str, int]] = []
    following: dict[str, int] = {}
    for _, _, what in reversed(items):
        if isinstance(what, tuple):
            after.append(dict(following))
        else:
            for symbol, (low, _high) in what.items():
                following[symbol] = min(low, following.get(symbol, low))
    after.reverse()
    spans = [(path, what) for path, _, what in items if isinstance(what, tuple)]
    return [
        _Found(path, span, _sequence_ranges(b, a))
        for (path, span), b, a in zip(spans, before, after, strict=True)
    ]


def _hole_of(surveys: list[_Survey], found: list[_Found]) -> _Hole:
    """The resume limit for damage found at open: what the spool holds before the first."""
    first = (found[0].path, found[0].span[0]) if found else None
    limits: dict[str, int] = {}
    high: dict[str, int] = {}
    for survey in surveys:
        for offset, bounds in survey.records:
            ahead = first is not None and (survey.path, offset) < first
            for symbol, (_low, top) in bounds.items():
                high[symbol] = max(top, high.get(symbol, 0))
                if ahead:
                    limits[symbol] = max(top, limits.get(symbol, 0))
    hole = _Hole(
        found=f"{first[0].name}@{first[1]}" if first is not None else f"{_HOLES} unreadable",
        limits={symbol: limits.get(symbol, 0) for symbol in high},
        high=high,
        settled=False,
    )
    hole.prune()
    return hole
