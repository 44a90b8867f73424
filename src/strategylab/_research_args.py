"""The research commands' input: ``--param``/``--grid``/``--range`` values, ``--symbols``,
``--from``/``--to``, the costs, the timeout, the strategy and its parameters.

Every check raises :class:`UsageError` (exit status 2) with a message naming the flag and the
value the user typed.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from strategylab._cli_options import split_symbols
from strategylab._validate import shown
from strategylab.errors import StrategyLabError

# Only for annotations: research pulls in numpy (see _research_cli).
if TYPE_CHECKING:
    from strategylab.research import ParamValue

__all__ = ["UsageError", "parse_grid", "parse_params", "parse_ranges", "parse_value"]


_RANKABLE: Final = ("pnl", "sharpe", "max_drawdown")


_DIGITS: Final = re.compile(r"[0-9]+")


_MAX_INT: Final = (1 << 63) - 1
"""Sequence numbers, times (ns) and integer parameters are 64-bit signed integers."""


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


_MAX_BPS: Final = 10_000


_MAX_TIMEOUT: Final = 7 * 86_400.0


class UsageError(StrategyLabError):
    """Bad command-line input; the message names the offending value."""


# -------------------------------------------------------------------------------------- parsing


def parse_value(text: str) -> ParamValue:
    """``"20"`` → 20, ``"0.5"`` → 0.5, ``"true"`` → True, anything else stays a string.

    Raises :class:`UsageError` for a number that is not finite (``nan``, ``inf``) or an integer
    beyond 64 bits; the message quotes ``text`` (the callers put the flag in front).
    """
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        whole = int(text)
    except ValueError:
        pass
    else:
        if not -_MAX_INT - 1 <= whole <= _MAX_INT:
            raise UsageError(f"value {shown(text)}: must be a 64-bit integer (|value| < 2**63)")
        return whole
    try:
        value = float(text)
    except ValueError:
        return text.strip()
    if not math.isfinite(value):
        raise UsageError(f"value {shown(text)}: must be finite")
    return value


def _value(option: str, item: str, text: str) -> ParamValue:
    """:func:`parse_value`, its error naming the flag and the item the user typed."""
    try:
        return parse_value(text)
    except UsageError as exc:
        raise UsageError(f"{option} {shown(item)}: {exc}") from None


def _split(item: str, option: str, example: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UsageError(f"{option} {item!r}: expected NAME=VALUE, e.g. {option} {example}")
    return name.strip(), value.strip()


def parse_params(items: Sequence[str]) -> dict[str, ParamValue]:
    """``["fast=20", "slow=100"]`` → ``{"fast": 20, "slow": 100}``; :class:`UsageError` naming
    ``--param``."""
    out: dict[str, ParamValue] = {}
    for item in items:
        name, value = _split(item, "--param", "fast=20")
        if name in out:
            raise UsageError(f"--param {item!r}: {name!r} is given twice")
        out[name] = _value("--param", item, value)
    return out


def parse_grid(items: Sequence[str]) -> dict[str, list[ParamValue]]:
    """``["fast=5,10", "slow=50"]`` → ``{"fast": [5, 10], "slow": [50]}``; :class:`UsageError`
    naming ``--grid``."""
    out: dict[str, list[ParamValue]] = {}
    for item in items:
        name, values = _split(item, "--grid", "fast=5,10,20")
        parts = [v.strip() for v in values.split(",")]
        if any(not p for p in parts):
            raise UsageError(f"--grid {item!r}: empty value in the list")
        if name in out:
            raise UsageError(f"--grid {item!r}: {name!r} is given twice")
        out[name] = [_value("--grid", item, p) for p in parts]
    return out


def parse_ranges(items: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``["fast=5:50", "entry_z=1.0:3.0"]`` → ``{"fast": (5, 50), "entry_z": (1.0, 3.0)}``;
    :class:`UsageError` naming ``--range``."""
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, span = _split(item, "--range", "fast=5:50")
        low_text, sep, high_text = span.partition(":")
        low, high = _value("--range", item, low_text), _value("--range", item, high_text)
        if (
            not sep
            or isinstance(low, bool | str)
            or isinstance(high, bool | str)
            or not low <= high
        ):
            raise UsageError(f"--range {item!r}: expected NAME=LOW:HIGH with numbers, LOW <= HIGH")
        out[name] = (low, high)
    return out


def _parse_bound(text: str, option: str) -> tuple[str, int]:
    """``--from``/``--to``: a sequence number (1..2**63-1), or an ISO-8601 time (UTC unless it
    says) between 1970 and 2262 (what a 64-bit count of ns since the epoch holds)."""
    stripped = text.strip()
    if _DIGITS.fullmatch(stripped):
        seq = int(stripped)
        if not 1 <= seq <= _MAX_INT:
            raise UsageError(
                f"{option} {shown(text)}: a sequence number must be within 1..{_MAX_INT}"
            )
        return "seq", seq
    try:
        moment = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise UsageError(
            f"{option} {shown(text)}: expected a sequence number or an ISO-8601 time "
            "(e.g. 2025-01-31T12:00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    # Exact integer arithmetic: a float timestamp would round away the microseconds.
    ns = (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1_000
    if not 0 <= ns <= _MAX_INT:
        raise UsageError(
            f"{option} {shown(text)}: a time must be between 1970-01-01 and "
            "2262-04-11T23:47:16Z (UTC; nanoseconds since the epoch in 64 bits)"
        )
    return "ts", ns


def _symbols(text: str) -> tuple[str, ...]:
    names = split_symbols(text)
    if not names:
        raise UsageError(
            f"--symbols {text!r}: expected one or more symbols, e.g. --symbols BTC-USD"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--symbols {text!r}: {twice[0]!r} is given twice")
    return names


def _one_symbol(text: str) -> str:
    names = _symbols(text)
    if len(names) != 1:
        raise UsageError(
            f"--symbols {text!r}: optimize searches one symbol at a time "
            f"(got {len(names)}); run it once per symbol"
        )
    return names[0]


# --------------------------------------------------------------------------------------- checks


def _check_strategy(name: str, *, vectorised: bool) -> None:
    from strategylab.strategy import BUILTIN_STRATEGIES  # noqa: PLC0415

    if name not in BUILTIN_STRATEGIES and ":" not in name:
        raise UsageError(
            f"--strategy {name!r}: expected one of {', '.join(sorted(BUILTIN_STRATEGIES))} "
            "or module:Class"
        )
    if vectorised and name not in BUILTIN_STRATEGIES:
        raise UsageError(
            f"--strategy {name!r}: the vectorised path knows only the built-in strategies; "
            "use the event-driven one (backtest: drop --vectorised; optimize: --event-driven)"
        )


def _check_parameters(strategy: str, symbol: str, parameters: Mapping[str, ParamValue]) -> None:
    from strategylab.research import build_strategy  # noqa: PLC0415

    try:
        build_strategy(strategy, symbol, dict(parameters))
    except ValueError as exc:
        if ":" in strategy and str(exc).startswith(f"strategy={strategy!r}"):
            raise UsageError(f"--strategy {strategy!r}: {exc.args[0].partition(': ')[2]}") from None
        raise UsageError(f"parameters {_fmt_params(parameters)}: {exc}") from None


def _fmt_params(parameters: Mapping[str, ParamValue]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in parameters.items())


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _check_costs(fee_bps: float, slippage_bps: float) -> None:
    """``--fee-bps``/``--slippage-bps``: finite, 0 <= x < 10000; :class:`UsageError` naming it."""
    for flag, value in (("--fee-bps", fee_bps), ("--slippage-bps", slippage_bps)):
        if not (math.isfinite(value) and 0 <= value < _MAX_BPS):
            raise UsageError(
                f"{flag} {shown(value)}: must be a finite number >= 0 and < {_MAX_BPS} "
                "(basis points)"
            )


def _check_timeout(timeout: float) -> None:
    if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT):
        raise UsageError(
            f"--timeout {shown(timeout)}: must be a finite number of seconds > 0 and "
            f"<= {_MAX_TIMEOUT:g} (a week)"
        )


def _check_metric(metric: str) -> None:
    if metric not in _RANKABLE:
        raise UsageError(f"--metric {metric!r}: expected one of {', '.join(_RANKABLE)}")


def _parameter_sets(
    grid_items: Sequence[str],
    random_n: int | None,
    range_items: Sequence[str],
    seed: int,
    param_items: Sequence[str],
) -> list[dict[str, ParamValue]]:
    from strategylab.research import grid, random_search  # noqa: PLC0415

    fixed = parse_params(param_items)
    space = parse_grid(grid_items)
    ranges = parse_ranges(range_items)
    if ranges and random_n is None:
        raise UsageError("--range needs --random N (how many samples to draw)")
    if random_n is not None:
        if not ranges:
            raise UsageError("--random needs at least one --range NAME=LOW:HIGH")
        if space:
            raise UsageError("--grid and --random are alternatives: give one of them")
        return random_search(ranges, random_n, rng=seed, fixed=fixed)
    if not space:
        raise UsageError("nothing to search: give --grid NAME=V1,V2 (or --random N --range ...)")
    overlap = sorted(set(space) & set(fixed))
    if overlap:
        raise UsageError(f"--param {overlap[0]!r} is also in --grid")
    return [{**fixed, **combo} for combo in grid(space)]


def _validate_sets(
    strategy: str, symbol: str, sets: list[dict[str, ParamValue]]
) -> tuple[list[dict[str, ParamValue]], list[tuple[dict[str, ParamValue], str]]]:
    """Split off the sets the strategy refuses (e.g. fast >= slow), so no worker runs them."""
    valid: list[dict[str, ParamValue]] = []
    invalid: list[tuple[dict[str, ParamValue], str]] = []
    for parameters in sets:
        try:
            _check_parameters(strategy, symbol, parameters)
        except UsageError as exc:
            invalid.append((parameters, str(exc).partition(": ")[2]))
        else:
            valid.append(parameters)
    if not valid:
        raise UsageError(f"no valid parameter set; e.g. {invalid[0][1]}")
    return valid, invalid
