"""Network and timeout faults: toxics on a :class:`~strategylab.chaos.Proxy`, both directions.

Each injector takes the proxy in front of the service it hurts (the lab's proxy between the node
and the exchange, or a user's own), adds its toxics on :meth:`~Injector.inject` and removes them
on :meth:`~Injector.heal`. Toxics apply to connections already open as well as to new ones, so
the fault is felt at once. Unless told otherwise a toxic is added on both streams (``upstream``,
client to server, and ``downstream``): a partition cuts requests as well as answers.

Severity sizes the magnitude linearly from the medium figure each class documents
(:attr:`Severity.scale`: low 0.5, medium 1.0, high 1.5, critical 2.0); the fault's duration is
the scenario's ``hold`` (:meth:`strategylab.chaos.Lab.fault`). An explicit magnitude argument
overrides the severity's figure.

Errors: a bad argument raises :class:`~strategylab.errors.ConfigurationError` naming it; a proxy
that already holds a toxic of the injector's name raises :class:`InjectorError` at inject.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Final

from strategylab import _validate
from strategylab.errors import ConfigurationError

from ._injector import Injector, InjectorError
from ._proxy import Proxy, ProxyError
from ._severity import Severity
from ._toxics import Stream, Toxic, check_name

__all__ = [
    "Bandwidth",
    "ConnectionReset",
    "DeadlineTimeout",
    "Latency",
    "Partition",
    "ProxyBitFlip",
    "ProxyToxicInjector",
    "Slicer",
]

BOTH: Final = (Stream.UPSTREAM, Stream.DOWNSTREAM)
"""Both directions of a connection (the default of every network fault)."""


def _streams(value: Sequence[str]) -> tuple[Stream, ...]:
    if isinstance(value, str) or not value:
        raise ConfigurationError("streams", value, "must be a non-empty list of stream names")
    out: list[Stream] = []
    for item in value:
        try:
            stream = Stream(item)
        except ValueError:
            raise ConfigurationError(
                "streams", item, "must be 'upstream' or 'downstream'"
            ) from None
        if stream not in out:
            out.append(stream)
    return tuple(out)


def _millis(key: str, value: float | None, default: float) -> int:
    """``value`` (ms, >= 0) or ``default`` as an integer number of milliseconds."""
    if value is None:
        return max(0, round(default))
    return round(_validate.number(key, value, minimum=0, maximum=3_600_000))


class ProxyToxicInjector(Injector):
    """A fault made of one toxic type on ``proxy``, on each of ``streams``.

    Subclasses give :attr:`toxic_type` and :meth:`attributes`. The toxics are named
    ``<name>-<stream>`` (so several injectors can share a proxy); :attr:`toxics` holds those
    added by the last inject. Heal removes exactly them (one already removed by someone else is
    not an error).
    """

    kind: ClassVar[str] = "network"
    toxic_type: ClassVar[str] = ""

    def __init__(
        self,
        proxy: Proxy,
        *,
        name: str,
        severity: Severity = Severity.MEDIUM,
        streams: Sequence[str] = BOTH,
        toxicity: float = 1.0,
    ) -> None:
        if not isinstance(proxy, Proxy):
            raise ConfigurationError("proxy", _validate.shown(proxy), "must be a chaos.Proxy")
        if not isinstance(severity, Severity):
            raise ConfigurationError("severity", severity, "must be a chaos.Severity")
        check_name("name", name)
        super().__init__(name, severity)
        self.proxy = proxy
        self.streams = _streams(streams)
        self.toxicity = _validate.fraction("toxicity", toxicity)
        self.toxics: tuple[Toxic, ...] = ()

    def attributes(self) -> dict[str, float]:
        """The toxic's attributes as Toxiproxy names them (subclass hook)."""
        return {}

    async def _inject(self) -> None:
        added: list[Toxic] = []
        try:
            for stream in self.streams:
                added.append(  # noqa: PERF401 - each add may fail; keep what was added
                    self.proxy.add_toxic(
                        self.toxic_type,
                        name=f"{self.name}-{stream.value}",
                        stream=stream.value,
                        toxicity=self.toxicity,
                        **self.attributes(),
                    )
                )
        except ProxyError as exc:
            for toxic in added:
                self.proxy.remove_toxic(toxic.name)
            raise InjectorError(f"{self.name}: cannot add toxic: {exc}") from exc
        self.toxics = tuple(added)

    async def _heal(self) -> None:
        for toxic in self.toxics:
            try:
                current = self.proxy.get_toxic(toxic.name)
            except ProxyError:
                continue  # already gone (a Proxy.reset, say): nothing left to undo
            if current.type is toxic.type:
                self.proxy.remove_toxic(toxic.name)
        self.toxics = ()

    def describe(self) -> dict[str, Any]:
        """Name, kind, severity, the proxy, the toxic type, streams and attributes."""
        return {
            **super().describe(),
            "proxy": self.proxy.name,
            "toxic": self.toxic_type,
            "streams": [s.value for s in self.streams],
            "toxicity": self.toxicity,
            "attributes": self.attributes(),
        }


class Latency(ProxyToxicInjector):
    """Every chunk held ``latency ± jitter`` ms in each direction.

    Medium: 250 ms latency, 25 ms jitter, both scaled by the severity (low 125/12, critical
    500/50). ``latency``/``jitter`` (ms, >= 0) override the severity's figures.
    """

    toxic_type = "latency"

    def __init__(
        self,
        proxy: Proxy,
        *,
        latency: float | None = None,
        jitter: float | None = None,
        severity: Severity = Severity.MEDIUM,
        name: str = "network.latency",
        streams: Sequence[str] = BOTH,
    ) -> None:
        super().__init__(proxy, name=name, severity=severity, streams=streams)
        self.latency = _millis("latency", latency, 250 * severity.scale)
        self.jitter = _millis("jitter", jitter, 25 * severity.scale)

    def attributes(self) -> dict[str, float]:
        return {"latency": self.latency, "jitter": self.jitter}


class Bandwidth(ProxyToxicInjector):
    """Data forwarded at most at ``rate`` KB/s (1 KB = 1000 bytes) in each direction.

    Medium: 64 KB/s; the rate is divided by the severity's scale (low 128, high 42, critical
    32 KB/s). ``rate`` (KB/s, 1..10⁹) overrides it.
    """

    toxic_type = "bandwidth"

    def __init__(
        self,
        proxy: Proxy,
        *,
        rate: int | None = None,
        severity: Severity = Severity.MEDIUM,
        name: str = "network.bandwidth",
        streams: Sequence[str] = BOTH,
    ) -> None:
        super().__init__(proxy, name=name, severity=severity, streams=streams)
        self.rate = (
            max(1, round(64 / severity.scale))
            if rate is None
            else _validate.integer("rate", rate, minimum=1, maximum=1_000_000_000, unit=" KB/s")
        )

    def attributes(self) -> dict[str, float]:
        return {"rate": self.rate}


class Partition(ProxyToxicInjector):
    """A blackhole partition: data is read and discarded, nothing forwarded, connections stay
    open (the peers cannot see it; only their timeouts and heartbeats can). Data in flight
    when it starts is lost, as in a real partition.

    No magnitude: the severity sizes only the scenario's hold (the DESIGN's 2-5 s).
    """

    toxic_type = "blackhole"

    def __init__(
        self,
        proxy: Proxy,
        *,
        severity: Severity = Severity.MEDIUM,
        name: str = "network.partition",
        streams: Sequence[str] = BOTH,
    ) -> None:
        super().__init__(proxy, name=name, severity=severity, streams=streams)


class ConnectionReset(ProxyToxicInjector):
    """Connections reset (TCP RST on both sockets) ``timeout`` ms after the first data that
    crosses the proxy while the fault is on; new connections meet the same fate until heal.

    Medium: 100 ms, scaled by the severity (low 50, critical 200 ms); ``timeout`` (ms) overrides.
    """

    toxic_type = "reset_peer"

    def __init__(
        self,
        proxy: Proxy,
        *,
        timeout: float | None = None,
        severity: Severity = Severity.MEDIUM,
        name: str = "network.reset",
        streams: Sequence[str] = BOTH,
    ) -> None:
        super().__init__(proxy, name=name, severity=severity, streams=streams)
        self.timeout = _millis("timeout", timeout, 100 * severity.scale)

    def attributes(self) -> dict[str, float]:
        return {"timeout": self.timeout}


class Slicer(ProxyToxicInjector):
    """Chunks cut into slices of ``average_size ± size_variation`` bytes, ``delay`` µs apart
    (frames arrive in pieces: tests a reader's reassembly).

    Medium: 64-byte slices ± 32, 1000 µs apart; the sizes are divided by the severity's scale
    and the delay multiplied (critical: 32 ± 16 bytes, 2000 µs). Explicit values override.
    """

    toxic_type = "slicer"

    def __init__(
        self,
        proxy: Proxy,
        *,
        average_size: int | None = None,
        size_variation: int | None = None,
        delay: int | None = None,
        severity: Severity = Severity.MEDIUM,
        name: str = "network.slicer",
        streams: Sequence[str] = BOTH,
    ) -> None:
        super().__init__(proxy, name=name, severity=severity, streams=streams)
        scale = severity.scale
        self.average_size = (
            max(1, round(64 / scale))
            if average_size is None
            else _validate.integer("average_size", average_size, minimum=1, maximum=1 << 30)
        )
        self.size_variation = (
            self.average_size // 2
            if size_variation is None
            else _validate.integer(
                "size_variation", size_variation, minimum=0, maximum=self.average_size - 1
            )
        )
        self.delay = (
            round(1000 * scale)
            if delay is None
            else _validate.integer("delay", delay, minimum=0, maximum=3_600_000_000, unit=" µs")
        )

    def attributes(self) -> dict[str, float]:
        return {
            "average_size": self.average_size,
            "size_variation": self.size_variation,
            "delay": self.delay,
        }


class DeadlineTimeout(ProxyToxicInjector):
    """Latency beyond a client's deadline: every answer arrives after ``deadline`` seconds.

    ``deadline`` (seconds > 0) is the client's own timeout (the node's connect or request
    timeout, say). The latency is ``deadline × (1 + scale / 2)``: medium 1.5 × the deadline (low
    1.25 ×, critical 2 ×). By default it is added on the downstream only, so that the figure is
    exactly how late an answer is; with ``streams=BOTH`` the round trip is twice as late.
    """

    kind: ClassVar[str] = "timeout"
    toxic_type = "latency"

    def __init__(
        self,
        proxy: Proxy,
        *,
        deadline: float,
        severity: Severity = Severity.MEDIUM,
        name: str = "timeout.deadline",
        streams: Sequence[str] = (Stream.DOWNSTREAM,),
    ) -> None:
        super().__init__(proxy, name=name, severity=severity, streams=streams)
        self.deadline = _validate.seconds("deadline", deadline)
        self.latency = round(1000 * self.deadline * (1 + severity.scale / 2))
        if self.latency > 3_600_000:
            raise ConfigurationError("deadline", deadline, "makes a latency over an hour")

    def attributes(self) -> dict[str, float]:
        return {"latency": self.latency, "jitter": 0}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "deadline_s": self.deadline}


class ProxyBitFlip(ProxyToxicInjector):
    """Bit flips on the wire: each byte has one random bit flipped with probability ``rate``
    (the proxy's seeded ``rng`` picks which; the length is unchanged). A reader's CRC or
    signature must catch every one.

    Medium: 1e-5 per byte (one flip in ~100 KB), scaled by the severity; ``rate`` (0..1)
    overrides. Downstream only by default (server to client: the feed's frames).
    """

    kind: ClassVar[str] = "corruption"
    toxic_type = "corrupt"

    def __init__(
        self,
        proxy: Proxy,
        *,
        rate: float | None = None,
        severity: Severity = Severity.MEDIUM,
        name: str = "corruption.bit_flip",
        streams: Sequence[str] = (Stream.DOWNSTREAM,),
    ) -> None:
        super().__init__(proxy, name=name, severity=severity, streams=streams)
        self.rate = 1e-5 * severity.scale if rate is None else _validate.fraction("rate", rate)

    def attributes(self) -> dict[str, float]:
        return {"rate": self.rate}
