"""The user's own data as the backtest's ticks: column mapping, timestamps, the bars->quotes rule,
and :func:`backtest_frame`, which backtests a pandas DataFrame or an Arrow table directly.

One converter serves both ``strategylab import`` (a file, batch by batch) and
:func:`backtest_frame` (a frame in memory), so a file imported into the store and the same data
backtested as a frame give equal results (``==``).

**What a row becomes** (one tick of :data:`~strategylab.research._data.ROW_DTYPE`):

* *quotes* (``bid``, ``ask``, optional ``bid_size``/``ask_size``, else 0): as they are;
* *trades* (``price``, optional ``size``): ``bid = price - half_spread``,
  ``ask = price + half_spread``, both sizes = ``size`` (0 without one);
* *bars* (``close``, optional ``open``/``high``/``low``/``volume``): **one quote per bar, at the
  bar's time + ``bar_offset_ns``, with mid = close**: ``bid = close - half_spread``,
  ``ask = close + half_spread`` (default 0: ``bid = ask = close`` exactly), both sizes = volume
  (0 without one). A strategy that trades on the mid then decides on the bar's close and its
  market order fills at that close (plus the half-spread): backtesting.py's
  ``trade_on_close=True``. Open, high and low are not traded on; when present they are checked
  (``low <= open, close <= high``) to catch a column mapped to the wrong field.

**Timestamps** become integer nanoseconds since the epoch, UTC: a timestamp column (Arrow, a
pandas ``DatetimeIndex``) as it is, converted to UTC if it has a zone; ISO-8601 text
(``2024-01-02``, ``2024-01-02 09:30:00.123``, ``2024-01-02T09:30:00Z``, ``...+02:00``); numbers
since the epoch in ``ts_unit`` (s, ms, us or ns; floats are rounded to the nanosecond). A time
without a zone is local time in ``tz`` (an IANA name, default UTC); a local time that does not
exist or is ambiguous there (a DST change) is refused, naming the row. Epoch numbers are UTC.

**Refused**, with a :class:`TickDataError` naming the source, the row (counted from 1, data rows
only) and the column: a missing or empty value, NaN or an infinity, text that is not a number or a
time, a price <= 0, a negative size, a crossed quote (bid > ask), a bar whose low/high do not
contain its open and close, and a timestamp earlier than the previous row's (for bars: not later,
two bars never share a time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt

from strategylab.errors import StrategyLabError
from strategylab.strategy import JSONValue

from ._data import ROW_DTYPE, ArraySource, Rows, TickArrays

if TYPE_CHECKING:
    from ._result import BacktestResult

__all__ = [
    "ColumnMap",
    "TickConverter",
    "TickDataError",
    "TickKind",
    "TsUnit",
    "as_arrow_table",
    "backtest_frame",
    "frame_ticks",
]

TsUnit = Literal["s", "ms", "us", "ns"]
"""The unit of epoch numbers in a timestamp column."""
TickKind = Literal["auto", "quotes", "trades", "bars"]
"""What the rows are; ``auto`` decides from the columns (see :meth:`ColumnMap.plan`)."""

UNIT_NS: Final[Mapping[str, int]] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_INT64_MAX: Final = (1 << 63) - 1

_TS_NAMES: Final = ("ts", "timestamp", "time", "datetime", "date")
_ROLE_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "bid": ("bid",),
    "ask": ("ask",),
    "bid_size": ("bid_size", "bidsize", "bid_qty", "bid_volume"),
    "ask_size": ("ask_size", "asksize", "ask_qty", "ask_volume"),
    "price": ("price", "last", "trade_price"),
    "size": ("size", "qty", "quantity", "volume"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume",),
}
_KIND_ROLES: Final[Mapping[str, tuple[str, ...]]] = {
    "quotes": ("bid", "ask", "bid_size", "ask_size"),
    "trades": ("price", "size"),
    "bars": ("open", "high", "low", "close", "volume"),
}
_REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "quotes": ("bid", "ask"),
    "trades": ("price",),
    "bars": ("close",),
}


class TickDataError(StrategyLabError, ValueError):
    """The data cannot become ticks: a column mapping that does not fit, or a bad value.

    ``source`` is the file (or ``"data"`` for a frame); ``row`` the data row, from 1 (None when
    the problem is not one row's); ``column`` the column's name in the data (None if none).
    """

    def __init__(
        self,
        source: str,
        reason: str,
        *,
        row: int | None = None,
        column: str | None = None,
        line_offset: int | None = None,
    ) -> None:
        where = [source]
        if row is not None:
            where.append(f"row {row}" + (f" (line {row + line_offset})" if line_offset else ""))
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(", ".join(where) + f": {reason}")
        self.source = source
        self.reason = reason
        self.row = row
        self.column = column


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnMap:
    """Which columns hold what, and how to read them (every name optional: see :meth:`plan`).

    Column names are matched exactly, else case-insensitively. ``half_spread`` (price units,
    >= 0) widens trades and bars into quotes; ``bar_offset_ns`` is added to a bar's time (e.g.
    a day for daily bars stamped at their open, to place the quote at the close).
    """

    kind: TickKind = "auto"
    ts: str | None = None
    bid: str | None = None
    ask: str | None = None
    bid_size: str | None = None
    ask_size: str | None = None
    price: str | None = None
    size: str | None = None
    open: str | None = None
    high: str | None = None
    low: str | None = None
    close: str | None = None
    volume: str | None = None
    ts_unit: TsUnit | None = None
    tz: str = "UTC"
    half_spread: float = 0.0
    bar_offset_ns: int = 0

    def __post_init__(self) -> None:
        if self.kind not in {"auto", "quotes", "trades", "bars"}:
            raise ValueError(f"kind={self.kind!r}: expected auto, quotes, trades or bars")
        if self.ts_unit is not None and self.ts_unit not in UNIT_NS:
            raise ValueError(f"ts_unit={self.ts_unit!r}: expected s, ms, us or ns")
        try:
            zoneinfo.ZoneInfo(self.tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"tz={self.tz!r}: not a known time zone (an IANA name such as UTC or "
                "America/New_York)"
            ) from None
        if not (isinstance(self.half_spread, (int, float)) and math.isfinite(self.half_spread)):
            raise ValueError(f"half_spread={self.half_spread!r}: must be a finite number >= 0")
        if self.half_spread < 0:
            raise ValueError(f"half_spread={self.half_spread!r}: must be >= 0")
        if not -_INT64_MAX <= self.bar_offset_ns <= _INT64_MAX:
            raise ValueError(f"bar_offset_ns={self.bar_offset_ns!r}: out of the int64 range")
        for role in ("ts", *_ROLE_NAMES):
            value = getattr(self, role)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{role}={value!r}: must be a column name (str) or None")

    def plan(
        self,
        names: Sequence[str],
        *,
        source: str,
        index_columns: Sequence[str] = (),
        line_offset: int | None = None,
    ) -> ColumnPlan:
        """Which of ``names`` are read, and as what; :class:`TickDataError` when it does not fit.

        ``kind="auto"``: a mapped option decides (bid/ask/sizes: quotes; price/size: trades;
        open/high/low/close/volume: bars); else the columns present (bid and ask: quotes; close:
        bars; price: trades). Unmapped roles take the usual names (``bid``, ``Close``,
        ``volume``, ...). The timestamp is ``ts``, else the pandas index (``index_columns``, from
        a Parquet file's or a frame's pandas metadata), else a column named ts, timestamp, time,
        datetime or date, else an unnamed first column (a pandas index written to CSV).
        """
        lookup = _Lookup(names, source)
        kind = self._kind(lookup, source)
        roles: dict[str, str] = {}
        for role in _KIND_ROLES[kind]:
            given = getattr(self, role)
            found = lookup.find(given, role) if given is not None else lookup.guess(role)
            if found is not None:
                roles[role] = found
        for role in _REQUIRED[kind]:
            if role not in roles:
                raise TickDataError(
                    source,
                    f"no {role} column for {kind} (looked for {', '.join(_ROLE_NAMES[role])}; "
                    f"columns: {lookup.shown()}); name it with columns.{role}",
                )
        other = [r for k, rs in _KIND_ROLES.items() if k != kind for r in rs if getattr(self, r)]
        if other:
            raise TickDataError(
                source, f"columns.{other[0]} is not used for {kind} (kind={kind!r})"
            )
        ts = self._ts(lookup, index_columns, names, source)
        if ts in roles.values():
            raise TickDataError(source, f"column {ts!r} is mapped twice (timestamp and price)")
        return ColumnPlan(
            kind=kind, ts=ts, roles=roles, columns=self, source=source, line_offset=line_offset
        )

    def _kind(self, lookup: _Lookup, source: str) -> str:
        if self.kind != "auto":
            return self.kind
        mapped = [k for k, rs in _KIND_ROLES.items() if any(getattr(self, r) for r in rs)]
        if len(mapped) > 1:
            raise TickDataError(
                source, f"columns for {' and '.join(mapped)} are both mapped: choose one kind"
            )
        if mapped:
            return mapped[0]
        if lookup.guess("bid") and lookup.guess("ask"):
            return "quotes"
        if lookup.guess("close"):
            return "bars"
        if lookup.guess("price"):
            return "trades"
        raise TickDataError(
            source,
            f"cannot tell quotes, trades or bars apart (columns: {lookup.shown()}): map the "
            "columns (columns.bid and columns.ask, columns.price or columns.close) or set "
            "columns.kind",
        )

    def _ts(
        self, lookup: _Lookup, index_columns: Sequence[str], names: Sequence[str], source: str
    ) -> str:
        if self.ts is not None:
            found = lookup.find(self.ts, "ts")
            assert found is not None  # noqa: S101 - find raises rather than return None
            return found
        for name in index_columns:
            if name in names:
                return name
        for candidate in _TS_NAMES:
            found = lookup.guess_name(candidate)
            if found is not None:
                return found
        if names and names[0] in {"", "Unnamed: 0"}:
            return names[0]
        raise TickDataError(
            source,
            f"no timestamp column (looked for {', '.join(_TS_NAMES)} and a pandas index; "
            f"columns: {lookup.shown()}); name it with columns.ts",
        )


class _Lookup:
    """Column names, found exactly or else case-insensitively."""

    def __init__(self, names: Sequence[str], source: str) -> None:
        self._names = list(names)
        self._source = source
        self._lower: dict[str, str] = {}
        for name in self._names:
            self._lower.setdefault(name.lower(), name)

    def shown(self) -> str:
        return ", ".join(repr(n) for n in self._names[:20]) + (
            ", ..." if len(self._names) > 20 else ""
        )

    def guess_name(self, candidate: str) -> str | None:
        if candidate in self._names:
            return candidate
        return self._lower.get(candidate.lower())

    def guess(self, role: str) -> str | None:
        for candidate in _ROLE_NAMES[role]:
            found = self.guess_name(candidate)
            if found is not None:
                return found
        return None

    def find(self, given: str, role: str) -> str | None:
        found = self.guess_name(given)
        if found is None:
            raise TickDataError(
                self._source, f"columns.{role}={given!r}: no such column (columns: {self.shown()})"
            )
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnPlan:
    """A :class:`ColumnMap` resolved against one source's columns (from :meth:`ColumnMap.plan`)."""

    kind: str
    """``quotes``, ``trades`` or ``bars``."""
    ts: str
    roles: Mapping[str, str]
    """Role (``bid``, ``close``, ...) -> column name."""
    columns: ColumnMap
    source: str
    line_offset: int | None = None
    """Added to a row number to give the file's line (1 for a CSV header), or None."""

    @property
    def used(self) -> list[str]:
        """The columns read, timestamp first, each once."""
        return list(dict.fromkeys([self.ts, *self.roles.values()]))


Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(slots=True)
class TickConverter:
    """Turns Arrow record batches (or tables) into rows of ``ROW_DTYPE``, in order, checking them.

    ``seq`` is left 0 (the caller numbers the rows); rows are counted across calls, so an error
    names the row of the whole source, and the timestamp order is checked across batches.
    """

    plan: ColumnPlan
    rows_seen: int = 0
    last_ts: int | None = None
    _fail: Callable[..., TickDataError] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        plan = self.plan

        def fail(
            reason: str, *, row: int | None = None, column: str | None = None
        ) -> TickDataError:
            return TickDataError(
                plan.source,
                reason,
                row=None if row is None else self.rows_seen + row + 1,
                column=column,
                line_offset=plan.line_offset,
            )

        self._fail = fail

    def convert(self, batch: Any) -> Rows:
        """The rows of ``batch`` (an Arrow ``RecordBatch`` or ``Table``); TickDataError."""
        plan = self.plan
        n = int(batch.num_rows)
        rows = np.zeros(n, dtype=ROW_DTYPE)
        if not n:
            return rows
        ts = self._timestamps(_column(batch, plan.ts), plan.ts)
        values = {
            role: self._floats(_column(batch, name), name) for role, name in plan.roles.items()
        }
        if plan.kind == "quotes":
            bid, ask, bid_size, ask_size = self._quotes(values)
        else:
            if plan.kind == "bars":
                self._check_bar(values)
                if plan.columns.bar_offset_ns:
                    ts = self._shift(ts, plan.columns.bar_offset_ns)
            bid, ask, bid_size, ask_size = self._widened(values)
        roles = plan.roles
        for size, role in ((bid_size, "bid_size"), (ask_size, "ask_size")):
            if size is not None:
                name = roles.get(role) or roles.get("size") or roles.get("volume") or role
                bad = np.flatnonzero(~(size >= 0))
                if bad.size:
                    i = int(bad[0])
                    raise self._fail(f"size {size[i].item()!r} must be >= 0", row=i, column=name)
        self._check_order(ts)
        rows["ts"] = ts
        rows["bid"] = bid
        rows["ask"] = ask
        rows["bid_size"] = 0.0 if bid_size is None else bid_size
        rows["ask_size"] = 0.0 if ask_size is None else ask_size
        self.rows_seen += n
        self.last_ts = int(ts[-1])
        return rows

    def _quotes(
        self, values: Mapping[str, Floats]
    ) -> tuple[Floats, Floats, Floats | None, Floats | None]:
        roles = self.plan.roles
        bid, ask = values["bid"], values["ask"]
        self._positive(bid, roles["bid"])
        self._positive(ask, roles["ask"])
        crossed = np.flatnonzero(bid > ask)
        if crossed.size:
            i = int(crossed[0])
            raise self._fail(
                f"bid {bid[i].item()!r} > ask {ask[i].item()!r} (a crossed quote; "
                f"column {roles['ask']!r} is the ask)",
                row=i,
                column=roles["bid"],
            )
        return bid, ask, values.get("bid_size"), values.get("ask_size")

    def _widened(
        self, values: Mapping[str, Floats]
    ) -> tuple[Floats, Floats, Floats | None, Floats | None]:
        """Trades or bars: the price +- half_spread, the size (or volume) on both sides."""
        plan = self.plan
        roles = plan.roles
        h = plan.columns.half_spread
        price_role = "price" if plan.kind == "trades" else "close"
        price = values[price_role]
        self._positive(price, roles[price_role])
        bid, ask = price - h, price + h
        if h:
            low = np.flatnonzero(~(bid > 0))
            if low.size:
                i = int(low[0])
                raise self._fail(
                    f"{price_role} {price[i].item()!r} - half_spread {h!r} <= 0",
                    row=i,
                    column=roles[price_role],
                )
        size = values.get("size" if plan.kind == "trades" else "volume")
        return bid, ask, size, size

    # ------------------------------------------------------------------ checks

    def _positive(self, values: Floats, column: str) -> None:
        bad = np.flatnonzero(~(values > 0))
        if bad.size:
            i = int(bad[0])
            raise self._fail(f"price {values[i].item()!r} must be > 0", row=i, column=column)

    def _check_bar(self, values: Mapping[str, Floats]) -> None:
        roles = self.plan.roles
        close = values["close"]
        for role in ("open", "high", "low"):
            if role in values:
                self._positive(values[role], roles[role])
        low, high, open_ = values.get("low"), values.get("high"), values.get("open")
        checks: list[tuple[Floats, Floats, str, str]] = []
        if low is not None:
            checks.append((low, close, "low", "close"))
            if open_ is not None:
                checks.append((low, open_, "low", "open"))
        if high is not None:
            checks.append((close, high, "close", "high"))
            if open_ is not None:
                checks.append((open_, high, "open", "high"))
        for below, above, lo_role, hi_role in checks:
            bad = np.flatnonzero(below > above)
            if bad.size:
                i = int(bad[0])
                raise self._fail(
                    f"{lo_role} {below[i].item()!r} > {hi_role} {above[i].item()!r}: not a bar "
                    f"(low <= open, close <= high; is a column mapped to the wrong field?)",
                    row=i,
                    column=roles[hi_role if lo_role == "close" else lo_role],
                )

    def _check_order(self, ts: Ints) -> None:
        bars = self.plan.kind == "bars"
        previous = self.last_ts
        if previous is not None and (ts[0] < previous or (bars and ts[0] == previous)):
            raise self._order_error(ts, 0, previous)
        steps = np.diff(ts)
        bad = np.flatnonzero(steps <= 0 if bars else steps < 0)
        if bad.size:
            i = int(bad[0]) + 1
            raise self._order_error(ts, i, int(ts[i - 1]))

    def _order_error(self, ts: Ints, i: int, previous: int) -> TickDataError:
        what = "not after" if self.plan.kind == "bars" else "before"
        return self._fail(
            f"time {_iso(int(ts[i]))} is {what} the previous row's {_iso(previous)} "
            "(rows must be in time order"
            + ("; two bars never share a time)" if self.plan.kind == "bars" else ")"),
            row=i,
            column=self.plan.ts,
        )

    def _shift(self, ts: Ints, offset: int) -> Ints:
        with np.errstate(over="ignore"):
            shifted = ts + np.int64(offset)
        wrapped = (shifted < ts) if offset > 0 else (shifted > ts)
        bad = np.flatnonzero(wrapped)
        if bad.size:
            raise self._fail(
                "bar time + bar_offset_ns overflows", row=int(bad[0]), column=self.plan.ts
            )
        return shifted

    # ------------------------------------------------------------------ columns

    def _nulls(self, arr: Any, column: str) -> None:
        if arr.null_count:
            import pyarrow.compute as pc  # type: ignore[import-untyped]  # noqa: PLC0415

            i = int(pc.index(pc.is_null(arr), True).as_py())
            raise self._fail("missing value (empty, NA or NaN)", row=i, column=column)

    def _floats(self, arr: Any, column: str) -> Floats:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.compute as pc  # noqa: PLC0415

        self._nulls(arr, column)
        kind = arr.type
        if _is_text(kind):
            try:
                arr = pc.cast(arr, pa.float64())
            except pa.ArrowInvalid:
                i = _first_failure(lambda part: pc.cast(part, pa.float64()), arr)
                raise self._fail(
                    f"{arr[i].as_py()!r} is not a number", row=i, column=column
                ) from None
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            arr = pc.cast(arr, pa.float64(), safe=False)
        else:
            raise self._fail(f"holds {kind}, not numbers", column=column)
        values: Floats = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise self._fail(f"{values[i].item()!r} is not a finite number", row=i, column=column)
        return values

    def _timestamps(self, arr: Any, column: str) -> Ints:
        import pyarrow as pa  # noqa: PLC0415

        self._nulls(arr, column)
        kind = arr.type
        unit = self.plan.columns.ts_unit
        if pa.types.is_timestamp(kind):
            return self._from_timestamps(arr, column)
        if pa.types.is_date(kind):
            return self._from_timestamps(arr.cast(pa.timestamp("s")), column)
        if _is_text(kind):
            if unit is not None:
                return self._epoch(self._epoch_text(arr, column), unit, column)
            return self._from_text(arr, column)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            if unit is None:
                raise self._fail(
                    "holds numbers, not times: give their unit with columns.ts_unit "
                    "(s, ms, us or ns since the epoch)",
                    column=column,
                )
            return self._epoch(arr, unit, column)
        raise self._fail(f"holds {kind}, not times", column=column)

    def _epoch_text(self, arr: Any, column: str) -> Any:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.compute as pc  # noqa: PLC0415

        for target in (pa.int64(), pa.float64()):
            try:
                return pc.cast(arr, target)
            except pa.ArrowInvalid:
                continue
        i = _first_failure(lambda part: pc.cast(part, pa.float64()), arr)
        raise self._fail(
            f"{arr[i].as_py()!r} is not a number (columns.ts_unit says epoch numbers)",
            row=i,
            column=column,
        )

    def _epoch(self, arr: Any, unit: str, column: str) -> Ints:
        import pyarrow as pa  # noqa: PLC0415

        factor = UNIT_NS[unit]
        if pa.types.is_integer(arr.type):
            raw = np.asarray(arr.to_numpy(zero_copy_only=False))
            limit = _INT64_MAX // factor
            bad = np.flatnonzero((raw > limit) | (raw < -limit))
            if bad.size:
                i = int(bad[0])
                raise self._fail(f"{raw[i]} {unit} is out of range", row=i, column=column)
            return raw.astype(np.int64) * np.int64(factor)
        values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64) * factor
        bad = np.flatnonzero(~(np.abs(values) < 2.0**63))
        if bad.size:
            i = int(bad[0])
            raise self._fail(
                f"{values[i].item() / factor!r} {unit} is not a time in range", row=i, column=column
            )
        return np.rint(values).astype(np.int64)

    def _from_text(self, arr: Any, column: str) -> Ints:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.compute as pc  # noqa: PLC0415

        naive, aware = pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")
        first_naive = True
        try:
            pc.cast(arr.slice(0, 1), naive)
        except pa.ArrowInvalid:
            first_naive = False
        target = naive if first_naive else aware
        try:
            parsed = pc.cast(arr, target)
        except pa.ArrowInvalid:
            i = _first_failure(lambda part: pc.cast(part, target), arr)
            text = arr[i].as_py()
            if i == 0 and _is_number(text):
                reason = (
                    f"{text!r} is a number, not a time: give its unit with columns.ts_unit "
                    "(s, ms, us or ns since the epoch)"
                )
            else:
                reason = f"{text!r} is not an ISO-8601 time" + (
                    " (or mixes times with and without a zone offset)" if i else ""
                )
            raise self._fail(reason, row=i, column=column) from None
        return self._from_timestamps(parsed, column)

    def _from_timestamps(self, arr: Any, column: str) -> Ints:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.compute as pc  # noqa: PLC0415

        tz = arr.type.tz
        target = pa.timestamp("ns", tz=tz)
        try:
            arr = pc.cast(arr, target)
        except pa.ArrowInvalid:
            i = _first_failure(lambda part: pc.cast(part, target), arr)
            raise self._fail(
                f"{arr[i]} is out of the range of ns times", row=i, column=column
            ) from None
        local = self.plan.columns.tz
        if tz is None and local != "UTC":
            try:
                arr = pc.assume_timezone(arr, timezone=local)
            except pa.ArrowInvalid:
                i = _first_failure(lambda part: pc.assume_timezone(part, timezone=local), arr)
                raise self._fail(
                    f"{arr[i]} does not exist or is ambiguous in {local} (a DST change)",
                    row=i,
                    column=column,
                ) from None
        return np.asarray(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _is_text(kind: Any) -> bool:
    import pyarrow as pa  # noqa: PLC0415

    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _first_failure(fn: Callable[[Any], object], arr: Any) -> int:
    """The first index of ``arr`` whose element makes ``fn`` raise (``fn(arr)`` raised).

    Bisection over slices: O(n) work in all, and no per-element Python loop.
    """
    import pyarrow as pa  # noqa: PLC0415

    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            fn(arr.slice(lo, mid - lo))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
        else:
            lo = mid
    return lo


def _column(batch: Any, name: str) -> Any:
    column = batch.column(name)
    if hasattr(column, "combine_chunks"):  # a Table's ChunkedArray
        column = column.combine_chunks()
    return column


def _iso(ts_ns: int) -> str:
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    try:
        import datetime as dt  # noqa: PLC0415

        stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ts_ns} ns"
    return f"{stamp}.{nanos:09d}Z" if nanos else f"{stamp}Z"


# ---------------------------------------------------------------------------------- frames


def as_arrow_table(data: object) -> Any:
    """``data`` as a ``pyarrow.Table``: a pandas DataFrame (its index kept as a column, unless it
    is a plain RangeIndex), a ``pyarrow.Table`` or ``RecordBatch``, or anything that speaks the
    Arrow C stream interface (``__arrow_c_stream__``: polars, DuckDB results). Duck-typed:
    pandas is never imported here. Raises ``TypeError`` naming the type otherwise."""
    import pyarrow as pa  # noqa: PLC0415

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    kind = type(data).__name__
    frame = all(hasattr(data, name) for name in ("columns", "index", "dtypes", "iloc"))
    if not frame and not hasattr(data, "__arrow_c_stream__"):
        raise TypeError(f"data: a {kind} is not a pandas DataFrame or a pyarrow Table")
    try:
        if frame:
            return pa.Table.from_pandas(data, preserve_index=None)
        table = pa.table(data)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        # A column pandas holds as objects (text among numbers), or a one-column stream (a
        # pandas Series) that is no table: named, not a bare pyarrow error.
        column = _failed_column(str(exc))
        if frame or column is not None:
            raise TickDataError(
                "data", f"cannot be read as a table: {exc}", column=column
            ) from None
        raise TypeError(f"data: a {kind} is not a table of columns ({exc})") from None
    return table


def _failed_column(message: str) -> str | None:
    """The column named in a pyarrow conversion error ("... for column bid with type ..")."""
    marker = "for column "
    if marker not in message:
        return None
    rest = message.split(marker, 1)[1]
    return rest.split(" with type", 1)[0].strip() or None


def frame_ticks(data: object, *, symbol: str, columns: ColumnMap | None = None) -> TickArrays:
    """``data`` (see :func:`as_arrow_table`) as the ticks of ``symbol``, numbered from seq 1.

    The rows become ticks as the module docstring says (the same rule as ``strategylab
    import``). Raises :class:`TickDataError` naming the row and column of a bad value, or a
    column mapping that does not fit; ``TypeError`` for data that is not a frame.
    """
    if not symbol:
        raise ValueError("symbol='': a backtest needs a symbol")
    table = as_arrow_table(data)
    index_columns = _pandas_index(table.schema)
    plan = (columns or ColumnMap()).plan(
        list(table.schema.names), source="data", index_columns=index_columns
    )
    rows = TickConverter(plan).convert(table.select(plan.used))
    rows["seq"] = np.arange(1, len(rows) + 1, dtype=np.int64)
    return TickArrays(symbol, rows)


def _pandas_index(schema: Any) -> list[str]:
    """The columns that hold a pandas index (by the pandas metadata), if any."""
    try:
        metadata = schema.pandas_metadata
    except (AttributeError, ValueError):
        return []
    if not metadata:
        return []
    return [name for name in metadata.get("index_columns", ()) if isinstance(name, str)]


def backtest_frame(
    data: object,
    strategy: str,
    parameters: Mapping[str, JSONValue] | None = None,
    *,
    symbol: str,
    columns: ColumnMap | None = None,
    fee_bps: float = 0.0,
    slippage_bps: float = 0.0,
    initial_cash: float = 0.0,
    sample_every: int = 1_000,
    vectorized: bool = False,
) -> BacktestResult:
    """Backtest ``strategy`` on ``data`` (a pandas DataFrame or an Arrow table) without a store.

    ``strategy`` is a built-in's name or ``module:Class`` (:func:`build_strategy`) with
    ``parameters``; ``data`` becomes ticks of ``symbol`` as :func:`frame_ticks` says (quotes,
    trades or bars, mapped by ``columns``). Costs and sampling as in :class:`BacktestSpec`;
    ``vectorized`` runs the numpy path (built-in strategies only). The result equals (``==``)
    that of ``run_backtest`` on the same data imported with ``strategylab import`` and the same
    mapping. Raises :class:`TickDataError`, ``ValueError`` (a strategy, its parameters, a cost),
    ``TypeError`` (data that is not a frame), :class:`BacktestError` (a run that failed).
    """
    from ._backtest import BacktestConfig, BacktestEngine  # noqa: PLC0415
    from ._spec import build_strategy  # noqa: PLC0415

    built = build_strategy(strategy, symbol, parameters or {})
    config = BacktestConfig(
        fee_bps=fee_bps,
        slippage_bps=slippage_bps,
        initial_cash=initial_cash,
        sample_every=sample_every,
    )
    ticks = frame_ticks(data, symbol=symbol, columns=columns)
    if vectorized:
        from ._vectorized import run_vectorized  # noqa: PLC0415

        return run_vectorized(built, ticks, config)
    engine = BacktestEngine(built, ArraySource(ticks), config)  # chunks: slices of the columns
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return engine.run_blocking()
    # Called from a running event loop (a notebook): run the engine's own loop on a thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(engine.run_blocking).result()
