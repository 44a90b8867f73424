"""The integrity checker's inputs: the exchange's emitted log, kept per symbol as concatenated
msgpack encodings (no Python object per tick), the node's ack watermarks, and the store's
quarantine. An input that cannot be used raises :class:`CheckInputError` naming it.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from strategylab.errors import StrategyLabError
from strategylab.market import (
    QuarantinedTick,
    Tick,
    read_acks,
    read_emitted_payloads,
    validate_tick,
)

from ._checker_ranges import Range, _from_points

__all__ = ["AckSource", "CheckInputError", "EmittedLogError"]

_encoder = msgspec.msgpack.Encoder()
_ticks_decoder = msgspec.msgpack.Decoder(list[Tick])
_raw_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_INF = math.inf


class CheckInputError(StrategyLabError):
    """An input of the check cannot be used: a missing, empty or foreign file (an emitted log
    without one complete, decodable record is not an emitted log), or an ack log that is not
    JSON lines. The message names the file and what is wrong, in one line."""


class EmittedLogError(CheckInputError):
    """The emitted log has a record that is not a torn tail and does not decode."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: undecodable record at byte {offset}: {reason}")
        self.path = path
        self.offset = offset


class _Emitted:
    """One symbol's emitted ticks: a contiguous run ``first``..``next - 1`` kept as concatenated
    encodings, plus a dict for anything out of that run (which the exchange never produces)."""

    __slots__ = ("buf", "first", "invalid", "max_ts", "next", "offs", "repeats", "sparse", "symbol")

    def __init__(self, symbol: str, first: int) -> None:
        self.symbol = symbol
        self.first = first
        self.next = first
        self.buf = bytearray()
        self.offs = array("Q", [0])
        self.sparse: dict[int, bytes] = {}
        self.invalid: dict[int, str] = {}
        self.max_ts: float = -_INF
        self.repeats = 0

    def add_other(self, seq: int, raw: bytes) -> bool:
        """Keep a tick outside the contiguous run; False (and counted) when it is a repeat."""
        if self.first <= seq < self.next or seq in self.sparse:
            self.repeats += 1
            return False
        self.sparse[seq] = raw
        return True

    def raw(self, seq: int) -> bytes | None:
        if self.first <= seq < self.next:
            i = seq - self.first
            return bytes(self.buf[self.offs[i] : self.offs[i + 1]])
        return self.sparse.get(seq)

    def count(self) -> int:
        return self.next - self.first + len(self.sparse)

    def ranges(self) -> list[Range]:
        run = [(self.first, self.next - 1)] if self.next > self.first else []
        if not self.sparse:
            return run
        merged: list[Range] = []
        for a, b in sorted(run + _from_points(self.sparse)):
            if merged and merged[-1][1] + 1 >= a:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def last(self) -> int:
        return max(self.next - 1, max(self.sparse, default=0)) if self.count() else 0


def _not_a_log(path: Path, why: str) -> CheckInputError:
    return CheckInputError(f"{path}: not an emitted log ({why})")


def _no_record(path: Path) -> CheckInputError:
    """Why a file with no complete record is not an emitted log (an empty one is not either)."""
    try:
        with path.open("rb") as file:
            head = file.read(4)
            size = os.fstat(file.fileno()).st_size
    except OSError as exc:
        return CheckInputError(f"{path}: cannot read the emitted log: {exc.strerror or exc}")
    if size == 0:
        return _not_a_log(path, "empty: 0 bytes")
    if len(head) < 4:
        return _not_a_log(path, f"{size} bytes, less than one record's 4-byte length")
    claimed = int.from_bytes(head, "big")
    return _not_a_log(
        path, f"no complete record: the first claims {claimed:,} bytes, the file has {size:,}"
    )


def _file_batches(path: Path) -> Iterator[tuple[list[Tick], list[Any]]]:
    records = read_emitted_payloads(path)
    first = True
    while True:
        try:
            offset, payload = next(records)
        except StopIteration:
            if first:  # nothing in it: whatever this file is, it is not a log of ticks
                raise _no_record(path) from None
            return
        except IsADirectoryError:
            raise _not_a_log(path, "a directory") from None
        except OSError as exc:
            raise CheckInputError(
                f"{path}: cannot read the emitted log: {exc.strerror or exc}"
            ) from None
        try:
            decoded = _ticks_decoder.decode(payload), _raw_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            if first:  # a foreign file whose first 4 bytes happen to fit in it
                raise _not_a_log(path, f"its first record does not decode: {exc}") from None
            raise EmittedLogError(path, offset, str(exc)) from exc
        first = False
        yield decoded


def _batches(
    source: str | os.PathLike[str] | Iterable[Tick],
) -> Iterator[tuple[list[Tick], list[Any]]]:
    if isinstance(source, (str, os.PathLike)):
        yield from _file_batches(Path(source))
        return
    batch: list[Tick] = []
    for tick in source:
        batch.append(tick)
        if len(batch) >= 4096:
            yield batch, [_encoder.encode(t) for t in batch]
            batch = []
    if batch:
        yield batch, [_encoder.encode(t) for t in batch]


def _load_emitted(source: str | os.PathLike[str] | Iterable[Tick]) -> dict[str, _Emitted]:
    table: dict[str, _Emitted] = {}
    inf = _INF
    for ticks, raws in _batches(source):
        for tick, raw in zip(ticks, raws, strict=True):
            e = table.get(tick.symbol)
            if e is None:
                e = table[tick.symbol] = _Emitted(tick.symbol, tick.seq)
            seq = tick.seq
            if seq == e.next:
                e.buf += raw
                e.offs.append(len(e.buf))
                e.next = seq + 1
            elif not e.add_other(seq, bytes(raw)):
                continue  # a repeat: the first copy is the reference, already validated
            # validate_tick's rules inline (the common, valid case costs a few comparisons);
            # previous_ts is the newest accepted ts, i.e. the running max of well-formed ticks.
            if (
                0.0 < tick.bid <= tick.ask < inf
                and 0.0 <= tick.bid_size < inf
                and 0.0 <= tick.ask_size < inf
                and seq >= 1
                and tick.symbol
            ):
                if tick.ts >= e.max_ts:
                    e.max_ts = tick.ts
                    continue
                previous: int | None = int(e.max_ts)
            else:
                previous = None if e.max_ts == -inf else int(e.max_ts)
            reason = validate_tick(tick, previous)
            if reason is not None:
                e.invalid.setdefault(seq, reason)
    return table


AckSource = (
    str | os.PathLike[str] | Mapping[str, int] | list[str | os.PathLike[str]]
    | tuple[str | os.PathLike[str], ...] | None
)  # fmt: skip
"""What a check takes as the acknowledged watermarks: an ack log's path, several (the nodes of a
cluster sharing one store: the highest acknowledged seq per symbol over all of them), or the
watermarks themselves."""


def _acks(acks: AckSource) -> dict[str, int] | None:
    if acks is None:
        return None
    if isinstance(acks, Mapping):
        return {str(s): int(n) for s, n in acks.items()}
    if isinstance(acks, list | tuple):
        merged: dict[str, int] = {}
        for path in acks:
            for symbol, seq in (_acks(path) or {}).items():
                merged[symbol] = max(seq, merged.get(symbol, 0))
        return merged
    try:
        return read_acks(acks)
    except FileNotFoundError:
        raise CheckInputError(f"{os.fspath(acks)}: the ack log does not exist") from None
    except OSError as exc:
        raise CheckInputError(
            f"{os.fspath(acks)}: cannot read the ack log: {exc.strerror or exc}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        # json's own message, a missing key, or a line that is not an object.
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckInputError(
            f'{os.fspath(acks)}: not an ack log (JSON lines {{"symbol": ..., "seq": ...}}): {what}'
        ) from None


def _quarantine(entries: list[QuarantinedTick]) -> tuple[dict[str, set[int]], int]:
    by_symbol: dict[str, set[int]] = {}
    unusable = 0
    for q in entries:
        if q.symbol is None or q.seq is None or not q.reason.strip():
            unusable += 1
            continue
        by_symbol.setdefault(q.symbol, set()).add(q.seq)
    return by_symbol, unusable
