"""The integrity checker's verdict: :class:`IntegrityReport` and the records it is made of, with
its JSON form and its plain-text summary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ._checker_ranges import Range

__all__ = ["Corruption", "Gap", "IntegrityReport", "SymbolIntegrity", "TickSet"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TickSet:
    """A set of (symbol, seq): the exact ``count`` and the first ``items`` in sorted order."""

    count: int
    items: tuple[tuple[str, int], ...] = ()

    @property
    def truncated(self) -> bool:
        """True when ``items`` holds fewer than ``count`` entries (capped for printing)."""
        return self.count > len(self.items)

    def __bool__(self) -> bool:
        return self.count > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "count": self.count,
            "items": [[s, n] for s, n in self.items],
            "truncated": self.truncated,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Sequences ``first``..``last`` of ``symbol`` are neither stored nor quarantined."""

    symbol: str
    first: int
    last: int

    @property
    def size(self) -> int:
        """How many sequence numbers the gap spans."""
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Corruption:
    """A stored tick whose payload differs from the emitted one, and which fields differ."""

    symbol: str
    seq: int
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SymbolIntegrity:
    """The counts for one symbol."""

    symbol: str
    emitted: int
    stored: int
    """Distinct sequences in the store."""
    rows: int
    """Rows read from the store (``stored`` plus duplicates)."""
    acknowledged: int
    """The ack watermark (0 when nothing was acknowledged or no ack log was given)."""
    last_emitted: int
    last_stored: int
    lost: int
    missing: int
    duplicated: int
    unexpected: int
    corrupted: int
    quarantined: int
    invalid_stored: int
    gaps: tuple[Range, ...]
    gap_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrityReport:
    """The checker's verdict: exact counts, capped samples, per-symbol detail."""

    emitted: int
    stored: int
    rows: int
    acknowledged: int
    """Ticks covered by ack watermarks (sum of the watermarks)."""
    lost: TickSet
    missing: TickSet
    duplicated: TickSet
    """``count`` is the larger of the store's ``duplicates()`` and the repeats seen while reading;
    ``items`` are the repeats seen."""
    unexpected: TickSet
    corrupted: TickSet
    quarantined: TickSet
    invalid_stored: TickSet
    gaps: tuple[Gap, ...]
    gap_count: int
    corruptions: tuple[Corruption, ...]
    symbols: tuple[SymbolIntegrity, ...]
    require_complete: bool
    acks_checked: bool
    emitted_repeats: int = 0
    """Ticks the emitted log holds more than once (the first copy is the reference)."""
    quarantine_unmatched: int = 0
    """Quarantine entries that account for no emitted invalid tick (no seq, no reason, or valid)."""
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        """Every emitted tick is stored or, when invalid, quarantined."""
        return not self.missing

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, unexpected, corrupted or invalid in the store, and nothing
        missing when the run claims to have caught up."""
        return not (
            self.lost
            or self.duplicated
            or self.unexpected
            or self.corrupted
            or self.invalid_stored
            or (self.require_complete and self.missing)
        )

    @property
    def rate(self) -> float:
        """Ticks checked per second: the larger of emitted ticks and stored rows, per second."""
        return max(self.emitted, self.rows) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``json.dumps(report.to_dict())``)."""
        sets = ("lost", "missing", "duplicated", "unexpected", "corrupted", "quarantined")
        return {
            "ok": self.ok,
            "complete": self.complete,
            "require_complete": self.require_complete,
            "acks_checked": self.acks_checked,
            "emitted": self.emitted,
            "stored": self.stored,
            "rows": self.rows,
            "acknowledged": self.acknowledged,
            **{name: getattr(self, name).to_dict() for name in sets},
            "invalid_stored": self.invalid_stored.to_dict(),
            "gaps": [[g.symbol, g.first, g.last] for g in self.gaps],
            "gap_count": self.gap_count,
            "corruptions": [
                {"symbol": c.symbol, "seq": c.seq, "fields": list(c.fields)}
                for c in self.corruptions
            ],
            "symbols": [dataclasses.asdict(s) for s in self.symbols],
            "emitted_repeats": self.emitted_repeats,
            "quarantine_unmatched": self.quarantine_unmatched,
            "elapsed_s": self.elapsed_s,
        }

    def summary(self, limit: int = 5, width: int = 80) -> str:
        """A readable plain-text report: verdict, a table (a row per measure, a column per
        symbol, split into as many blocks as it takes to keep lines within ``width``), and the
        first ``limit`` findings of each kind."""
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"integrity {verdict}: {self.emitted} emitted, {self.stored} stored "
            f"({self.rows} rows), "
            f"{self.acknowledged if self.acks_checked else 'n/a'} acknowledged; "
            f"checked in {self.elapsed_s:.2f} s ({self.rate:,.0f} ticks/s)"
            + (" [completeness required]" if self.require_complete else ""),
        ]
        measures: tuple[str, ...] = (
            "emitted", "stored", "acknowledged", "lost", "missing", "duplicated",
            "unexpected", "corrupted", "quarantined", "invalid_stored", "gap_count",
        )  # fmt: skip
        columns = [(s.symbol, [f"{getattr(s, m):,}" for m in measures]) for s in self.symbols]
        totals: tuple[int, ...] = (self.emitted, self.stored, self.acknowledged, self.lost.count)
        totals += (self.missing.count, self.duplicated.count, self.unexpected.count)
        totals += (self.corrupted.count, self.quarantined.count, self.invalid_stored.count)
        columns.append(("TOTAL", [f"{v:,}" for v in (*totals, self.gap_count)]))
        lines.extend(_blocks(measures, columns, width))
        for name in ("lost", "duplicated", "unexpected", "corrupted", "invalid_stored", "missing"):
            found: TickSet = getattr(self, name)
            if found:
                shown = ", ".join(f"{s}#{n}" for s, n in found.items[:limit])
                more = found.count - min(limit, len(found.items))
                lines.append(f"  {name}: {shown}" + (f" … and {more} more" if more else ""))
        lines.extend(
            f"  corrupted {c.symbol}#{c.seq}: {', '.join(c.fields)} differ"
            for c in self.corruptions[:limit]
        )
        if self.gaps:
            shown = ", ".join(f"{g.symbol}#{g.first}..{g.last}" for g in self.gaps[:limit])
            more = self.gap_count - min(limit, len(self.gaps))
            lines.append(f"  gaps: {shown}" + (f" … and {more} more" if more else ""))
        return "\n".join(lines)


def _blocks(labels: tuple[str, ...], columns: list[tuple[str, list[str]]], width: int) -> list[str]:
    """``labels`` down the side, ``columns`` across, in blocks of columns that fit ``width``
    (a column wider than ``width`` on its own still gets a block: numbers are never cut)."""
    side = max(len(label) for label in labels)
    blocks: list[list[tuple[str, list[str], int]]] = [[]]
    used = 2 + side
    for heading, cells in columns:
        w = max(len(heading), *(len(c) for c in cells))
        if blocks[-1] and used + 2 + w > width:
            blocks.append([])
            used = 2 + side
        blocks[-1].append((heading, cells, w))
        used += 2 + w
    out: list[str] = []
    for block in blocks:
        out.append("  " + " " * side + "".join(f"  {h.rjust(w)}" for h, _c, w in block))
        out.extend(
            "  " + label.ljust(side) + "".join(f"  {c[i].rjust(w)}" for _h, c, w in block)
            for i, label in enumerate(labels)
        )
    return out
