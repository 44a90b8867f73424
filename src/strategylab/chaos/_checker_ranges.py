"""Range arithmetic for the integrity checker: sets of sequence numbers kept as sorted lists of
inclusive ``(first, last)`` ranges, so that lost, missing and gaps are computed without a set of
every tick.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["Range"]

Range = tuple[int, int]
"""An inclusive range of sequence numbers."""


def _count(ranges: Iterable[Range]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def _subtract(ranges: list[Range], minus: list[Range]) -> list[Range]:
    """``ranges`` − ``minus``; both sorted, disjoint, inclusive."""
    out: list[Range] = []
    j = 0
    for a, b in ranges:
        lo = a
        while j < len(minus) and minus[j][1] < lo:
            j += 1
        k = j
        while k < len(minus) and minus[k][0] <= b:
            ma, mb = minus[k]
            if ma > lo:
                out.append((lo, ma - 1))
            lo = max(lo, mb + 1)
            if mb > b:
                break
            k += 1
        if lo <= b:
            out.append((lo, b))
    return out


def _from_points(points: Iterable[int]) -> list[Range]:
    out: list[Range] = []
    for p in sorted(set(points)):
        if out and out[-1][1] + 1 == p:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def _contains(ranges: list[Range], starts: list[int], seq: int) -> bool:
    i = bisect_right(starts, seq) - 1
    return i >= 0 and ranges[i][1] >= seq


def _points(ranges: Iterable[Range], limit: int) -> Iterator[int]:
    for a, b in ranges:
        for p in range(a, b + 1):
            if limit <= 0:
                return
            limit -= 1
            yield p


class _RangeBuilder:
    """Sorted inclusive ranges built from sequences arriving (mostly) in order; repeats counted."""

    __slots__ = ("ranges", "repeated", "strays")

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.strays: list[int] = []
        self.repeated: list[int] = []

    def add(self, seq: int) -> None:
        ranges = self.ranges
        if ranges:
            last = ranges[-1]
            if seq == last[1] + 1:
                last[1] = seq
                return
            if seq > last[1]:
                ranges.append([seq, seq])
                return
            if seq == last[1] or last[0] <= seq:
                self.repeated.append(seq)
                return
            self.strays.append(seq)
            return
        ranges.append([seq, seq])

    def add_range(self, a: int, b: int) -> None:
        ranges = self.ranges
        if not ranges or a > ranges[-1][1] + 1:
            ranges.append([a, b])
        elif a == ranges[-1][1] + 1:
            ranges[-1][1] = b
        else:
            for seq in range(a, b + 1):
                self.add(seq)

    def finish(self) -> list[Range]:
        out = [(a, b) for a, b in self.ranges]
        if self.strays:
            starts = [a for a, _ in out]
            extra: set[int] = set()
            for seq in self.strays:
                if seq in extra or _contains(out, starts, seq):
                    self.repeated.append(seq)
                else:
                    extra.add(seq)
            merged: list[Range] = []
            for a, b in sorted(out + _from_points(extra)):
                if merged and merged[-1][1] + 1 >= a:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], b))
                else:
                    merged.append((a, b))
            out = merged
        return out
