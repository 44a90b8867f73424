"""Experiments in TOML files, after Chaos Toolkit's model: a hypothesis, a method, rollbacks.

An experiment file declares fault proxies in front of the services it tests (``[[proxies]]``:
``name``, ``listen``, ``upstream``), a *steady-state hypothesis* (``[steady_state_hypothesis]``
with ``[[steady_state_hypothesis.probes]]``: a TCP connect or exchange, an HTTP GET expecting a
status, a command's exit code), a *method* (``[[method]]``: a toxic in a proxy for ``duration``
seconds or until the rollbacks, a proxy disabled, a command, a pause) and *rollbacks*
(``[[rollbacks]]``: reset a proxy, run a command, pause) that always run: after the method, after
an error, and on cancellation or Ctrl-C. docs/experiments.md is the reference for the format.

A run (:func:`run_experiment`) starts the proxies, checks the hypothesis (``aborted`` when it does
not hold: "deviated before", and nothing is injected), runs the method (probing the hypothesis
while a timed fault is in force, when asked), checks the hypothesis again (``deviated`` when it
does not hold within ``recover_within`` seconds), and runs the rollbacks and heals whatever the
method left in force. The :class:`ExperimentResult` is ``completed``, ``deviated``, ``aborted`` or
``failed`` (an action or a rollback failed), with every probe's result and timings.

A file that is not a valid experiment raises :class:`ExperimentFileError` naming the key path
and the value (``method[1].toxic: 'lag' is not one of latency, ...``); nothing runs. Indices in
key paths count from 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shlex
import signal
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, NoReturn
from urllib.parse import urlsplit

import aiohttp

from strategylab._clock_wait import wait_within
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, StrategyLabError

from ._injector import HealGuard, Injector, InjectorError, injected
from ._proxy import Proxy, ToxicNotFoundError, parse_address
from ._severity import Severity
from ._toxics import Toxic, ToxicType

__all__ = [
    "ActionResult",
    "Experiment",
    "ExperimentAction",
    "ExperimentEvent",
    "ExperimentFileError",
    "ExperimentProbe",
    "ExperimentProxy",
    "ExperimentResult",
    "Hypothesis",
    "HypothesisResult",
    "ProbeResult",
    "ProxyDisabled",
    "ProxyToxic",
    "load_experiment",
    "parse_experiment",
    "run_experiment",
    "run_experiment_file",
]

Status = Literal["completed", "deviated", "aborted", "failed"]

TOXICS: Final[Mapping[str, ToxicType]] = {
    "latency": ToxicType.LATENCY,
    "bandwidth": ToxicType.BANDWIDTH,
    "partition": ToxicType.BLACKHOLE,
    "blackhole": ToxicType.BLACKHOLE,
    "reset": ToxicType.RESET_PEER,
    "reset_peer": ToxicType.RESET_PEER,
    "slicer": ToxicType.SLICER,
    "timeout": ToxicType.TIMEOUT,
    "limit_data": ToxicType.LIMIT_DATA,
    "slow_close": ToxicType.SLOW_CLOSE,
    "corrupt": ToxicType.CORRUPT,
}
"""The toxic names an action may use, and the proxy toxic each one is (``partition`` is
``blackhole``: bytes vanish, connections stay open; ``reset`` is ``reset_peer``)."""

PROBE_TYPES: Final = ("tcp", "http", "command")
METHOD_TYPES: Final = ("toxic", "disable", "command", "pause")
ROLLBACK_TYPES: Final = ("reset", "command", "pause")
DURING_MODES: Final = ("off", "observe", "hold")
STREAMS: Final = ("downstream", "upstream", "both")
_MAX_SECONDS: Final = 86_400.0
_REF: Final = re.compile(r"\$\{proxy\.([^}.]+)(?:\.(host|port))?\}")


class ExperimentFileError(StrategyLabError, ValueError):
    """An experiment file cannot be used: ``key`` is the key path (``method[1].toxic``, indices
    from 0; empty for the file as a whole), ``value`` what it held, ``reason`` what is wrong."""

    def __init__(self, key: str, value: object, reason: str, *, file: str | None = None) -> None:
        where = f"{file}: " if file else ""
        shown = "" if value is _NOTHING else f"{_shown(value)} "
        super().__init__(f"{where}{key}: {shown}{reason}" if key else f"{where}{reason}")
        self.key = key
        self.value = None if value is _NOTHING else value
        self.reason = reason
        self.file = file


_NOTHING: Final = object()


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentProxy:
    """A fault proxy the experiment starts: ``listen`` (``host:port``, port 0 for any) forwards
    to ``upstream``. Probes and commands name its bound address as ``${proxy.NAME}``."""

    name: str
    listen: str
    upstream: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentProbe:
    """One check of the system. ``type`` is ``tcp`` (``target`` is ``host:port``; with ``send``,
    the reply must start with ``expect``), ``http`` (``target`` is a URL, fetched with GET) or
    ``command`` (``command`` is the argv). ``tolerance`` is what passes: a TCP probe's expected
    outcome (``True``: it connects), the HTTP statuses or the exit codes. ``timeout`` seconds."""

    name: str
    type: Literal["tcp", "http", "command"]
    target: str = ""
    command: tuple[str, ...] = ()
    tolerance: bool | tuple[int, ...] = True
    timeout: float = 2.0
    send: bytes | None = None
    expect: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hypothesis:
    """The steady state: every probe passes. ``during`` probes it while a timed fault is in
    force (``off``; ``observe``: recorded only; ``hold``: a failure deviates), every
    ``interval`` seconds; after the method it must hold within ``recover_within`` seconds."""

    title: str = ""
    probes: tuple[ExperimentProbe, ...] = ()
    during: Literal["off", "observe", "hold"] = "off"
    interval: float = 0.2
    recover_within: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentAction:
    """One step of the method or of the rollbacks (``type`` says which fields count).

    ``toxic``: ``toxic`` (a key of :data:`TOXICS`) with ``attributes`` on ``proxy``'s ``stream``
    (``downstream``, ``upstream`` or ``both``), at ``toxicity``; for ``duration`` seconds, or
    until the rollbacks when ``duration`` is ``None``. ``disable``: ``proxy`` refuses connections
    (likewise for ``duration``). ``command``: run ``command``; its exit code must be one of
    ``exit_codes`` within ``timeout`` s. ``pause``: wait ``duration`` s. ``reset`` (rollbacks):
    remove every toxic of ``proxy`` (every proxy when ``None``) and enable it.
    """

    name: str
    type: Literal["toxic", "disable", "command", "pause", "reset"]
    proxy: str | None = None
    toxic: str | None = None
    stream: Literal["downstream", "upstream", "both"] = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, float] = dataclasses.field(default_factory=dict)
    duration: float | None = None
    command: tuple[str, ...] = ()
    exit_codes: tuple[int, ...] = (0,)
    timeout: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    """A parsed, validated experiment (see :func:`load_experiment`)."""

    title: str
    description: str = ""
    proxies: tuple[ExperimentProxy, ...] = ()
    hypothesis: Hypothesis = dataclasses.field(default_factory=Hypothesis)
    method: tuple[ExperimentAction, ...] = ()
    rollbacks: tuple[ExperimentAction, ...] = ()
    source: str | None = None
    """The file it was read from, if any."""


# --------------------------------------------------------------------------- parsing


class _Table:
    """A TOML table read with its key path, so every error names where it is."""

    def __init__(self, path: str, data: object, file: str | None) -> None:
        self.path = path
        self.file = file
        if not isinstance(data, dict):
            self.fail("", data, "must be a table")
        self.data: dict[str, object] = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, value: object, reason: str) -> NoReturn:
        key = self.key(name) if name else self.path
        raise ExperimentFileError(key, value, reason, file=self.file)

    def only(self, allowed: Sequence[str]) -> None:
        for name in self.data:
            if name not in allowed:
                self.fail(name, _NOTHING, f"is not a known key (expected: {', '.join(allowed)})")

    def has(self, name: str) -> bool:
        return name in self.data

    def text(self, name: str, default: str | None = None) -> str:
        value = self.data.get(name, default)
        if value is None:
            self.fail(name, _NOTHING, "is required")
        if not isinstance(value, str):
            self.fail(name, value, "must be a string")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | None = None) -> str:
        value = self.text(name, default)
        if value not in choices:
            self.fail(name, value, f"is not one of {', '.join(choices)}")
        return value

    def seconds(self, name: str, default: float | None, *, positive: bool = False) -> float | None:
        value = self.data.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(name, value, "must be a number of seconds")
        if not 0 <= value <= _MAX_SECONDS or (positive and value == 0):
            low = "> 0" if positive else ">= 0"
            self.fail(name, value, f"must be {low} and at most {_MAX_SECONDS:g} seconds")
        return float(value)

    def argv(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name)
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                self.fail(name, value, f"cannot be split into words: {exc}")
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            self.fail(name, value, "must be a command: a non-empty list of strings")
        return tuple(value)

    def codes(self, name: str, default: tuple[int, ...], top: int) -> tuple[int, ...]:
        value = self.data.get(name, list(default))
        items = value if isinstance(value, list) else [value]
        if not items or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top for v in items
        ):
            self.fail(name, value, f"must be an integer 0..{top} or a list of them")
        return tuple(int(v) for v in items)  # type: ignore[arg-type]

    def tables(self, name: str) -> list[_Table]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            self.fail(name, value, "must be an array of tables ([[...]])")
        return [_Table(f"{self.key(name)}[{i}]", item, self.file) for i, item in enumerate(value)]


def _refs(table: _Table, name: str, text: str, proxies: Mapping[str, ExperimentProxy]) -> None:
    for match in _REF.finditer(text):
        if match.group(1) not in proxies:
            declared = ", ".join(proxies) or "none"
            table.fail(
                name,
                text,
                f"names proxy {match.group(1)!r}, not one of the declared proxies ({declared})",
            )


def _parse_proxy(t: _Table, seen: set[str]) -> ExperimentProxy:
    t.only(("name", "listen", "upstream"))
    name = t.text("name")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", name):
        t.fail("name", name, "must be 1..128 characters of A-Z a-z 0-9 . _ - (not first . or -)")
    if name in seen:
        t.fail("name", name, "is declared twice")
    seen.add(name)
    listen, upstream = t.text("listen", "127.0.0.1:0"), t.text("upstream")
    for key, value, zero in (("listen", listen, True), ("upstream", upstream, False)):
        try:
            parse_address(key, value, allow_port_zero=zero)
        except ConfigurationError as exc:
            t.fail(key, value, exc.reason)
    return ExperimentProxy(name=name, listen=listen, upstream=upstream)


def _parse_probe(t: _Table, index: int, proxies: Mapping[str, ExperimentProxy]) -> ExperimentProbe:
    kind = t.choice("type", PROBE_TYPES)
    common = ("type", "name", "tolerance", "timeout")
    extra = {"tcp": ("address", "send", "expect"), "http": ("url",), "command": ("command",)}
    t.only(common + extra[kind])
    name = t.text("name", f"{kind}-{index}")
    timeout = t.seconds("timeout", 2.0, positive=True)
    assert timeout is not None  # noqa: S101 - has a default
    target, argv = "", tuple[str, ...]()
    tolerance: bool | tuple[int, ...]
    send = expect = None
    if kind == "tcp":
        target = t.text("address")
        _refs(t, "address", target, proxies)
        tol = t.data.get("tolerance", True)
        if not isinstance(tol, bool):
            t.fail("tolerance", tol, "must be true (it connects) or false (it is refused)")
        tolerance = bool(tol)
        if t.has("send"):
            send = t.text("send").encode()
        if t.has("expect"):
            expect = t.text("expect").encode()
    elif kind == "http":
        target = t.text("url")
        _refs(t, "url", target, proxies)
        # ${proxy.NAME...} expands to a host, a port or host:port, never to a scheme: the
        # scheme is checked on the text as written, the host with each reference as a name.
        parts = urlsplit(_REF.sub("proxy", target))
        if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
            t.fail("url", target, "must be an http:// or https:// URL with a host")
        tolerance = t.codes("tolerance", (200,), 599)
    else:
        argv = t.argv("command")
        for word in argv:
            _refs(t, "command", word, proxies)
        tolerance = t.codes("tolerance", (0,), 255)
    return ExperimentProbe(
        name=name,
        type=kind,  # type: ignore[arg-type]
        target=target,
        command=argv,
        tolerance=tolerance,
        timeout=timeout,
        send=send,
        expect=expect,
    )


def _parse_attributes(t: _Table, toxic: str, stream: str, toxicity: float) -> dict[str, float]:
    raw = t.data.get("attributes", {})
    if not isinstance(raw, dict):
        t.fail("attributes", raw, "must be a table of numbers")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            t.fail(f"attributes.{key}", value, "must be a number")
    try:
        Toxic.build(
            TOXICS[toxic].value,
            stream="downstream" if stream == "both" else stream,
            toxicity=toxicity,
            attributes=raw,
        )
    except ConfigurationError as exc:
        key = exc.key if exc.key.startswith("attributes.") else f"attributes.{exc.key}"
        if exc.key == "toxicity":
            key = "toxicity"
        t.fail(key, exc.value, exc.reason)
    return dict(raw)


def _parse_action(
    t: _Table, index: int, types: Sequence[str], proxies: Mapping[str, ExperimentProxy]
) -> ExperimentAction:
    kind = t.choice("type", types)
    fields = {
        "toxic": ("proxy", "toxic", "stream", "toxicity", "attributes", "duration"),
        "disable": ("proxy", "duration"),
        "command": ("command", "exit_code", "timeout"),
        "pause": ("duration",),
        "reset": ("proxy",),
    }[kind]
    t.only(("type", "name", *fields))
    name = t.text("name", f"{kind}-{index}")
    proxy = None
    if "proxy" in fields and (kind != "reset" or t.has("proxy")):
        proxy = t.text("proxy")
        if proxy not in proxies:
            declared = ", ".join(proxies) or "none"
            t.fail("proxy", proxy, f"is not one of the declared proxies ({declared})")
    duration = t.seconds("duration", None)
    if kind == "pause" and duration is None:
        t.fail("duration", _NOTHING, "is required for a pause")
    toxic, stream, toxicity, attributes = None, "downstream", 1.0, {}
    if kind == "toxic":
        toxic = t.choice("toxic", tuple(TOXICS))
        stream = t.choice("stream", STREAMS, "downstream")
        raw_toxicity = t.data.get("toxicity", 1.0)
        if (
            isinstance(raw_toxicity, bool)
            or not isinstance(raw_toxicity, int | float)
            or not 0 <= raw_toxicity <= 1
        ):
            t.fail("toxicity", raw_toxicity, "must be a number 0..1")
        toxicity = float(raw_toxicity)
        attributes = _parse_attributes(t, toxic, stream, toxicity)
    argv: tuple[str, ...] = ()
    codes: tuple[int, ...] = (0,)
    timeout = 30.0
    if kind == "command":
        argv = t.argv("command")
        for word in argv:
            _refs(t, "command", word, proxies)
        codes = t.codes("exit_code", (0,), 255)
        timeout = t.seconds("timeout", 30.0, positive=True) or 30.0
    return ExperimentAction(
        name=name,
        type=kind,  # type: ignore[arg-type]
        proxy=proxy,
        toxic=toxic,
        stream=stream,  # type: ignore[arg-type]
        toxicity=toxicity,
        attributes=attributes,
        duration=duration,
        command=argv,
        exit_codes=codes,
        timeout=timeout,
    )


def parse_experiment(data: Mapping[str, object], *, source: str | None = None) -> Experiment:
    """An :class:`Experiment` from decoded TOML (or an equal dict); ``source`` names the file in
    errors. Raises :class:`ExperimentFileError` naming the key path and the value."""
    top = _Table("", dict(data), source)
    top.only(("title", "description", "proxies", "steady_state_hypothesis", "method", "rollbacks"))
    title = top.text("title")
    description = top.text("description", "")
    seen: set[str] = set()
    proxies = {p.name: p for p in (_parse_proxy(t, seen) for t in top.tables("proxies"))}
    hyp = _Table("steady_state_hypothesis", top.data.get("steady_state_hypothesis", {}), source)
    hyp.only(("title", "probes", "during", "interval", "recover_within"))
    probes = tuple(_parse_probe(t, i, proxies) for i, t in enumerate(hyp.tables("probes")))
    if not probes:
        hyp.fail("probes", _NOTHING, "must hold at least one probe ([[...probes]])")
    names = [p.name for p in probes]
    for i, name in enumerate(names):
        if name in names[:i]:
            hyp.fail(f"probes[{i}].name", name, "is used by another probe")
    interval = hyp.seconds("interval", 0.2, positive=True)
    recover = hyp.seconds("recover_within", 0.0)
    hypothesis = Hypothesis(
        title=hyp.text("title", ""),
        probes=probes,
        during=hyp.choice("during", DURING_MODES, "off"),  # type: ignore[arg-type]
        interval=interval or 0.2,
        recover_within=recover or 0.0,
    )
    method = tuple(
        _parse_action(t, i, METHOD_TYPES, proxies) for i, t in enumerate(top.tables("method"))
    )
    if not method:
        top.fail("method", _NOTHING, "must hold at least one action ([[method]])")
    rollbacks = tuple(
        _parse_action(t, i, ROLLBACK_TYPES, proxies) for i, t in enumerate(top.tables("rollbacks"))
    )
    return Experiment(
        title=title,
        description=description,
        proxies=tuple(proxies.values()),
        hypothesis=hypothesis,
        method=method,
        rollbacks=rollbacks,
        source=source,
    )


def load_experiment(path: str | os.PathLike[str]) -> Experiment:
    """Read and validate the experiment in the TOML file ``path``.

    Raises :class:`ExperimentFileError` (naming the file, the key path and the value) when the
    file cannot be read, is not TOML, or is not a valid experiment. Nothing is started.
    """
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ExperimentFileError("", _NOTHING, f"cannot read: {reason}", file=name) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentFileError("", _NOTHING, f"not valid TOML: {exc}", file=name) from None
    return parse_experiment(data, source=name)


# --------------------------------------------------------------------------- injectors


class ProxyToxic(Injector):
    """A toxic (or one per stream) in a :class:`~strategylab.chaos.Proxy`: on while injected,
    removed by the heal. ``toxics`` need distinct names not already on the proxy."""

    kind = "network"

    def __init__(
        self,
        proxy: Proxy,
        toxics: Sequence[Toxic],
        *,
        name: str | None = None,
        severity: Severity = Severity.MEDIUM,
    ) -> None:
        if not toxics:
            raise ValueError("toxics=(): a ProxyToxic needs at least one toxic")
        super().__init__(name or f"network.{toxics[0].type.value}", severity)
        self.proxy = proxy
        self.toxics = tuple(toxics)

    async def _inject(self) -> None:
        added: list[Toxic] = []
        try:
            for toxic in self.toxics:
                self.proxy.put_toxic(toxic)
                added.append(toxic)
        except Exception as exc:
            for toxic in added:
                self.proxy.remove_toxic(toxic.name)
            raise InjectorError(f"{self.name}: cannot add toxic: {exc}") from exc

    async def _heal(self) -> None:
        for toxic in self.toxics:
            with contextlib.suppress(ToxicNotFoundError):  # a reset removed it already
                self.proxy.remove_toxic(toxic.name)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "proxy": self.proxy.name,
            "toxics": [t.to_json() for t in self.toxics],
        }


class ProxyDisabled(Injector):
    """A proxy disabled: open connections closed, new ones refused (the service looks down)."""

    kind = "network"

    def __init__(
        self, proxy: Proxy, *, name: str | None = None, severity: Severity = Severity.MEDIUM
    ) -> None:
        super().__init__(name or "network.down", severity)
        self.proxy = proxy

    async def _inject(self) -> None:
        await self.proxy.disable()

    async def _heal(self) -> None:
        await self.proxy.enable()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "proxy": self.proxy.name}


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """One probe taken: ``t`` seconds since the run started, how long it took, what it saw."""

    name: str
    type: str
    phase: str
    ok: bool
    detail: str
    t: float
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "phase": self.phase,
            "ok": self.ok,
            "detail": self.detail,
            "t": round(self.t, 6),
            "duration_s": round(self.duration_s, 6),
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HypothesisResult:
    """The hypothesis checked in one phase (``before`` or ``after``): the last attempt's probes,
    how many attempts it took, and (after) the seconds from the method's end until it held."""

    phase: str
    ok: bool
    probes: tuple[ProbeResult, ...]
    attempts: int
    held_after_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "ok": self.ok,
            "attempts": self.attempts,
            "held_after_s": None if self.held_after_s is None else round(self.held_after_s, 6),
            "probes": [p.to_json() for p in self.probes],
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ActionResult:
    """One method or rollback step: when it started and ended (seconds since the run started),
    whether it did what it should, what it was (``fault``: the injector's description)."""

    name: str
    type: str
    ok: bool
    detail: str
    t_start: float
    t_end: float
    fault: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "ok": self.ok,
            "detail": self.detail,
            "t_start": round(self.t_start, 6),
            "t_end": round(self.t_end, 6),
            "fault": None if self.fault is None else dict(self.fault),
        }


@dataclasses.dataclass(slots=True, kw_only=True)
class ExperimentResult:
    """What a run found. ``status``: ``completed`` (the hypothesis held before and after),
    ``deviated`` (it held before, not after, or not during with ``during = "hold"``),
    ``aborted`` (it did not hold before, or the run was interrupted) or ``failed`` (an action or
    a rollback failed, or a proxy could not start). ``reason`` says why when not completed."""

    title: str
    status: Status = "completed"
    reason: str | None = None
    started_at: float = 0.0
    """Wall-clock start, seconds since the epoch."""
    duration_s: float = 0.0
    before: HypothesisResult | None = None
    during: list[ProbeResult] = dataclasses.field(default_factory=list)
    after: HypothesisResult | None = None
    method: list[ActionResult] = dataclasses.field(default_factory=list)
    rollbacks: list[ActionResult] = dataclasses.field(default_factory=list)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 0 when completed, 1 otherwise (a bad file is 2, raised before)."""
        return 0 if self.status == "completed" else 1

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (times in seconds since the run started)."""
        return {
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "interrupted": self.interrupted,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 6),
            "steady_state_before": None if self.before is None else self.before.to_json(),
            "during": [p.to_json() for p in self.during],
            "steady_state_after": None if self.after is None else self.after.to_json(),
            "method": [a.to_json() for a in self.method],
            "rollbacks": [a.to_json() for a in self.rollbacks],
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentEvent:
    """A step of a run as it happens: ``kind`` is ``start``, ``probe``, ``hypothesis``,
    ``action``, ``rollback`` or ``end`` (which carries the ``result``); ``t`` seconds since the
    run started."""

    kind: str
    message: str
    t: float
    result: ExperimentResult | None = None


EventHook = Callable[[ExperimentEvent], None]


# --------------------------------------------------------------------------- probes


async def _probe_tcp(probe: ExperimentProbe, target: str) -> tuple[bool, str]:
    host, port = parse_address("address", target, allow_port_zero=False)
    writer = None
    try:
        async with asyncio.timeout(probe.timeout):
            reader, writer = await asyncio.open_connection(host, port)
            if probe.send is not None:
                writer.write(probe.send)
                await writer.drain()
                want = probe.expect if probe.expect is not None else b""
                got = b""
                while len(got) < max(len(want), 1):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    got += chunk
                if not got.startswith(want) or (not want and not got):
                    return False, f"{target}: unexpected reply {got[:60]!r}"
                return True, f"{target}: replied {got[:60]!r}"
            return True, f"{target}: connected"
    except TimeoutError:
        return False, f"{target}: no answer within {probe.timeout:g} s"
    except OSError as exc:
        return False, f"{target}: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _probe_http(probe: ExperimentProbe, url: str) -> tuple[bool, str]:
    try:
        timeout = aiohttp.ClientTimeout(total=probe.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            await response.read()
            return response.status in probe.tolerance, f"{url}: HTTP {response.status}"  # type: ignore[operator]
    except TimeoutError:
        return False, f"{url}: no answer within {probe.timeout:g} s"
    except aiohttp.ClientError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"


async def _run_command(argv: Sequence[str], limit: float) -> tuple[int | None, str]:
    """``(exit code, last output)``; ``None`` as the code when it ran out of time or could not
    start. The process never outlives the call (killed on timeout and on cancellation)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return None, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(limit):
            out, _ = await proc.communicate()
    except TimeoutError:
        return None, f"{argv[0]}: still running after {limit:g} s (killed)"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    tail = out.decode(errors="replace").strip().splitlines()[-1:] if out else []
    return proc.returncode, f"exit {proc.returncode}" + (f": {tail[0][:200]}" if tail else "")


# --------------------------------------------------------------------------- the runner


class _ActionError(Exception):
    """An action did not do what it should (the experiment fails)."""


class _Run:
    """One run of an experiment: the proxies, the guard, the clock, the result."""

    def __init__(self, exp: Experiment, on_event: EventHook | None, clock: Clock) -> None:
        self.exp = exp
        self.on_event = on_event
        self.clock = clock
        self.origin = clock.monotonic()
        self.proxies: dict[str, Proxy] = {}
        self.guard = HealGuard()
        self.result = ExperimentResult(title=exp.title, started_at=time.time())
        self.deviated_during: str | None = None

    def now(self) -> float:
        return self.clock.monotonic() - self.origin

    def emit(self, kind: str, message: str) -> None:
        if self.on_event is not None:
            result = self.result if kind == "end" else None
            self.on_event(ExperimentEvent(kind=kind, message=message, t=self.now(), result=result))

    def expand(self, text: str) -> str:
        def one(match: re.Match[str]) -> str:
            proxy = self.proxies[match.group(1)]
            host, port = parse_address("listen", proxy.listen, allow_port_zero=True)
            part = match.group(2)
            return host if part == "host" else str(port) if part == "port" else proxy.listen

        return _REF.sub(one, text)

    async def probe(self, probe: ExperimentProbe, phase: str) -> ProbeResult:
        t0 = self.now()
        try:
            if probe.type == "tcp":
                connected, detail = await _probe_tcp(probe, self.expand(probe.target))
                ok = connected is probe.tolerance
            elif probe.type == "http":
                ok, detail = await _probe_http(probe, self.expand(probe.target))
            else:
                argv = [self.expand(word) for word in probe.command]
                code, detail = await _run_command(argv, probe.timeout)
                ok = code is not None and code in probe.tolerance  # type: ignore[operator]
        except Exception as exc:  # a probe never raises: an error is a failed probe
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        result = ProbeResult(
            name=probe.name,
            type=probe.type,
            phase=phase,
            ok=ok,
            detail=detail,
            t=t0,
            duration_s=self.now() - t0,
        )
        self.emit("probe", f"{phase}: {probe.name}: {'ok' if ok else 'FAILED'}: {detail}")
        return result

    async def hypothesis(self, phase: str, within: float) -> HypothesisResult:
        hyp = self.exp.hypothesis
        start = self.clock.monotonic()
        attempts = 0
        while True:
            attempts += 1
            probes = tuple([await self.probe(p, phase) for p in hyp.probes])
            ok = all(p.ok for p in probes)
            waited = self.clock.monotonic() - start
            if ok or waited + hyp.interval > within:
                break
            await self.clock.asleep(hyp.interval)
        held = waited if ok else None
        self.emit("hypothesis", f"{phase}: {'holds' if ok else 'does not hold'}")
        return HypothesisResult(
            phase=phase, ok=ok, probes=probes, attempts=attempts, held_after_s=held
        )

    async def hold(self, seconds: float) -> None:
        """Wait ``seconds`` with the fault in force, probing the hypothesis when asked."""
        hyp = self.exp.hypothesis
        if hyp.during == "off":
            await self.clock.asleep(seconds)
            return
        deadline = self.clock.monotonic() + seconds
        while True:
            for probe in hyp.probes:
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    return
                # The fault is healed at its deadline: a probe still waiting then is cut short,
                # and a probe cut short is not a result (it is not recorded).
                try:
                    sample = await wait_within(self.clock, self.probe(probe, "during"), left)
                except TimeoutError:
                    return
                self.result.during.append(sample)
                if not sample.ok and hyp.during == "hold" and self.deviated_during is None:
                    self.deviated_during = f"probe {probe.name!r} failed during the method: " + (
                        sample.detail
                    )
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return
            await self.clock.asleep(min(hyp.interval, left))

    def injector(self, action: ExperimentAction, index: int) -> Injector:
        assert action.proxy is not None  # noqa: S101 - checked at load
        proxy = self.proxies[action.proxy]
        if action.type == "disable":
            return ProxyDisabled(proxy, name=f"network.down.{action.proxy}")
        assert action.toxic is not None  # noqa: S101 - checked at load
        kind = TOXICS[action.toxic]
        streams = ("downstream", "upstream") if action.stream == "both" else (action.stream,)
        toxics = [
            Toxic.build(
                kind.value,
                name=f"experiment{index}_{kind.value}_{stream}",
                stream=stream,
                toxicity=action.toxicity,
                attributes=action.attributes,
            )
            for stream in streams
        ]
        return ProxyToxic(proxy, toxics, name=f"network.{action.toxic}.{action.proxy}")

    async def act(self, action: ExperimentAction, index: int, phase: str) -> ActionResult:
        """Run one step; returns its result (``ok`` false when it failed) and never raises
        except for cancellation."""
        t0 = self.now()
        fault: dict[str, Any] | None = None
        try:
            if action.type == "pause":
                await self.clock.asleep(action.duration or 0.0)
                detail = f"paused {action.duration:g} s"
            elif action.type == "command":
                argv = [self.expand(word) for word in action.command]
                code, detail = await _run_command(argv, action.timeout)
                if code is None or code not in action.exit_codes:
                    raise _ActionError(f"{shlex.join(argv)}: {detail}")  # noqa: TRY301
            elif action.type == "reset":
                names = [action.proxy] if action.proxy else list(self.proxies)
                for name in names:
                    await self.proxies[name].reset()
                detail = "reset " + ", ".join(names)
            else:
                inj = self.injector(action, index)
                fault = inj.describe()
                if action.duration is None:
                    self.guard.add(inj)
                    await inj.inject()
                    detail = f"{inj.name} in force until the rollbacks"
                else:
                    async with injected(inj, self.guard):
                        self.emit(phase, f"{action.name}: {inj.name} in force")
                        await self.hold(action.duration)
                    detail = f"{inj.name} for {action.duration:g} s, healed"
        except Exception as exc:  # a step that breaks fails the run; the rollbacks still run
            self.emit(phase, f"{action.name}: FAILED: {exc}")
            return ActionResult(
                name=action.name,
                type=action.type,
                ok=False,
                detail=str(exc),
                t_start=t0,
                t_end=self.now(),
                fault=fault,
            )
        self.emit(phase, f"{action.name}: {detail}")
        return ActionResult(
            name=action.name,
            type=action.type,
            ok=True,
            detail=detail,
            t_start=t0,
            t_end=self.now(),
            fault=fault,
        )

    async def method(self) -> None:
        res = self.result
        for i, action in enumerate(self.exp.method):
            step = await self.act(action, i, "action")
            res.method.append(step)
            if not step.ok:
                res.status, res.reason = "failed", f"action {action.name!r} failed: {step.detail}"
                return
        after = await self.hypothesis("after", self.exp.hypothesis.recover_within)
        res.after = after
        if self.deviated_during is not None:
            res.status, res.reason = "deviated", self.deviated_during
        elif not after.ok:
            bad = next(p for p in after.probes if not p.ok)
            within = self.exp.hypothesis.recover_within
            res.status = "deviated"
            res.reason = (
                f"the hypothesis did not hold after the method (within {within:g} s): "
                f"probe {bad.name!r}: {bad.detail}"
            )

    async def rollbacks(self) -> None:
        """The declared rollbacks, then a heal of whatever the method left in force."""
        res = self.result
        for i, action in enumerate(self.exp.rollbacks):
            res.rollbacks.append(await self.act(action, i, "rollback"))
        t0 = self.now()
        failures = await self.guard.heal_all()
        if failures:
            res.rollbacks.append(
                ActionResult(
                    name="heal",
                    type="heal",
                    ok=False,
                    detail="; ".join(f"{name}: {exc}" for name, exc in failures),
                    t_start=t0,
                    t_end=self.now(),
                )
            )
        failed = [a for a in res.rollbacks if not a.ok]
        if failed and res.status in ("completed", "deviated"):
            res.status = "failed"
            res.reason = f"rollback {failed[0].name!r} failed: {failed[0].detail}"

    async def start_proxies(self) -> bool:
        for spec in self.exp.proxies:
            proxy = Proxy(spec.name, listen=spec.listen, upstream=spec.upstream)
            try:
                await proxy.start()
            except (OSError, ConfigurationError) as exc:
                self.result.status, self.result.reason = "failed", str(exc)
                return False
            self.proxies[spec.name] = proxy
            self.emit("start", f"proxy {spec.name}: {proxy.listen} -> {proxy.upstream}")
        return True

    async def stop_proxies(self) -> None:
        for proxy in reversed(self.proxies.values()):
            await proxy.stop()

    async def run(self) -> ExperimentResult:
        res = self.result
        self.emit("start", f"experiment {self.exp.title!r}")
        try:
            if await self.start_proxies():
                res.before = await self.hypothesis("before", 0.0)
                if not res.before.ok:
                    bad = next(p for p in res.before.probes if not p.ok)
                    res.status = "aborted"
                    res.reason = f"deviated before: probe {bad.name!r}: {bad.detail}"
                else:
                    await self.method()
        except asyncio.CancelledError:
            res.status, res.reason, res.interrupted = "aborted", "interrupted", True
            raise
        finally:
            # The rollbacks run to their end even when the run is cancelled (Ctrl-C).
            cleanup = asyncio.ensure_future(self._cleanup())
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                await cleanup
                raise
        return res

    async def _cleanup(self) -> None:
        try:
            await self.rollbacks()
        finally:
            await self.stop_proxies()
            self.result.duration_s = self.now()
            reason = self.result.reason
            self.emit("end", self.result.status + (f": {reason}" if reason else ""))


async def run_experiment(
    exp: Experiment, on_event: EventHook | None = None, *, clock: Clock = SYSTEM_CLOCK
) -> ExperimentResult:
    """Run ``exp``: start its proxies, check the hypothesis, run the method, check the hypothesis
    again, run the rollbacks (always: on an error and on cancellation too) and stop the proxies.

    ``on_event`` is called with each :class:`ExperimentEvent` as the run goes (the last one,
    ``end``, carries the result, even when the run is cancelled). ``clock`` times the run and
    its pauses. Returns the :class:`ExperimentResult`; a cancellation (Ctrl-C) is re-raised after
    the rollbacks ran. A failing probe or action is a result, never an exception.
    """
    return await _Run(exp, on_event, clock).run()


def run_experiment_file(
    path: str | os.PathLike[str], on_event: EventHook | None = None
) -> ExperimentResult:
    """Load and run the experiment in ``path`` in a new event loop (for the CLI).

    Raises :class:`ExperimentFileError` for a bad file (exit code 2: nothing ran). The result's
    :attr:`ExperimentResult.exit_code` is 0 when ``completed``, 1 otherwise. Ctrl-C raises
    :class:`KeyboardInterrupt` after the rollbacks ran (the ``end`` event holds the result).
    """
    exp = load_experiment(path)
    interrupted = False

    async def main() -> ExperimentResult:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - inside asyncio.run

        def on_sigint() -> None:
            nonlocal interrupted
            if not interrupted:  # the first Ctrl-C cancels; later ones do not skip rollbacks
                interrupted = True
                task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            return await run_experiment(exp, on_event)
        try:
            return await run_experiment(exp, on_event)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
