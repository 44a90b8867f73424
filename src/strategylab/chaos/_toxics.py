"""Toxics: the faults a :class:`~strategylab.chaos.Proxy` applies to the bytes it forwards.

The model is Toxiproxy's. A toxic has a ``name``, a ``type``, a ``stream`` (``upstream`` is data
from the client to the server, ``downstream`` from the server to the client; the default is
downstream), a ``toxicity`` (the probability, 0..1, that the toxic applies to a given connection,
drawn once per connection and toxic from the proxy's seedable :class:`random.Random`) and typed
``attributes`` named as Toxiproxy names them:

- ``latency``: ``latency`` ms, ``jitter`` ms. Each chunk is held until ``latency ± jitter``
  after it reached the proxy (chunks keep flowing meanwhile: latency does not cut throughput).
- ``bandwidth``: ``rate`` KB/s (1 KB = 1000 bytes; 1..10⁹). Data leaves at most at ``rate``.
- ``timeout``: ``timeout`` ms. Data is dropped; the connection is closed ``timeout`` after the
  toxic applied to it (0: held open, silent, until the toxic is removed).
- ``reset_peer``: ``timeout`` ms. On the first data after the toxic applies, wait ``timeout``, then
  reset both sockets (a TCP RST, through ``SO_LINGER`` 0); the data is dropped.
- ``slicer``: ``average_size`` bytes, ``size_variation`` bytes, ``delay`` µs. Chunks are cut into
  slices of ``average_size ± size_variation`` bytes, written ``delay`` apart.
- ``limit_data``: ``bytes``. The connection is closed once ``bytes`` bytes passed in the stream.
- ``slow_close``: ``delay`` ms. The end of the stream (FIN) is passed on ``delay`` late.
- ``corrupt``: ``rate``, 0..1, per byte. Each byte has one random bit flipped with probability
  ``rate`` (so about ``rate × length`` flips, each changing exactly one bit); length is unchanged.
- ``blackhole``: no attributes. Data is read and discarded, nothing is forwarded, and the
  connection stays open: a partition that the peers cannot see.

Every attribute is an integer within a range (``corrupt``'s ``rate`` a number within 0..1): a
duration at most an hour (:data:`MAX_DURATION_MS`; ``slicer``'s ``delay`` in µs likewise), a size
at most 2⁵³ bytes; anything else is a :class:`~strategylab.errors.ConfigurationError` naming the
attribute. A toxic's ``name``, like a proxy's, is 1..128 characters of ``A-Z a-z 0-9 . _ -``, not
starting with ``.`` or ``-`` (:func:`check_name`): it is part of the API's URLs.

``corrupt`` and ``blackhole`` are not in Toxiproxy. As with Toxiproxy's ``timeout`` toxic, data a
``blackhole`` (or ``timeout``) toxic dropped is gone: removing the toxic lets *new* data through and
never replays what was discarded, which is what a real partition does to bytes in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Final, TypeVar

from strategylab import _validate
from strategylab.errors import ConfigurationError

__all__ = [
    "BandwidthAttributes",
    "BlackholeAttributes",
    "CorruptAttributes",
    "LatencyAttributes",
    "LimitDataAttributes",
    "ResetPeerAttributes",
    "SlicerAttributes",
    "SlowCloseAttributes",
    "Stream",
    "TimeoutAttributes",
    "Toxic",
    "ToxicAttributes",
    "ToxicType",
]


class ToxicType(enum.StrEnum):
    """The kinds of toxic, with Toxiproxy's type names."""

    LATENCY = "latency"
    BANDWIDTH = "bandwidth"
    TIMEOUT = "timeout"
    RESET_PEER = "reset_peer"
    SLICER = "slicer"
    LIMIT_DATA = "limit_data"
    SLOW_CLOSE = "slow_close"
    CORRUPT = "corrupt"
    BLACKHOLE = "blackhole"


class Stream(enum.StrEnum):
    """Which direction of a connection a toxic acts on."""

    UPSTREAM = "upstream"
    """Client to server."""
    DOWNSTREAM = "downstream"
    """Server to client."""


MAX_NAME: Final = 128
"""The longest proxy or toxic name."""
MAX_DURATION_MS: Final = 3_600_000
"""The longest duration a toxic takes (an hour), in milliseconds."""
MAX_RATE_KBPS: Final = 1_000_000_000
"""The highest ``bandwidth`` rate, KB/s (a terabyte per second: no limit in practice)."""
MAX_BYTES: Final = 1 << 53
"""The largest byte count a toxic takes (exact in every JSON client's numbers)."""

_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


shown = _validate.clipped
"""``value`` for an error message, a long string, container or integer cut short (one helper for
the whole package: :func:`strategylab._validate.clipped`)."""


def check_name(field: str, value: object) -> str:
    """``value`` if it is a valid proxy or toxic name, else :class:`ConfigurationError`.

    A name is a path segment of the API (``/proxies/{name}``) and appears in logs: 1..128
    characters of ``A-Z a-z 0-9 . _ -``, the first not ``.`` or ``-`` (so never ``..``, which a
    URL client resolves away, nor an option to a command line). No control character, no
    surrogate, nothing a URL must encode.
    """
    if not isinstance(value, str):
        raise ConfigurationError(field, shown(value), "must be a string")
    if not 1 <= len(value) <= MAX_NAME or not _NAME.fullmatch(value):
        raise ConfigurationError(
            field,
            shown(value),
            f"must be 1..{MAX_NAME} characters of A-Z a-z 0-9 . _ - "
            "(the first a letter, digit or _)",
        )
    return value


def _check_duration(field: str, value: object, *, micro: bool = False) -> None:
    if micro:
        _validate.integer(
            field, value, minimum=0, maximum=MAX_DURATION_MS * 1000, unit=" µs (an hour)"
        )
    else:
        _validate.integer(field, value, minimum=0, maximum=MAX_DURATION_MS, unit=" ms (an hour)")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LatencyAttributes:
    """``latency``: hold each chunk ``latency ± jitter`` milliseconds."""

    latency: int = 0
    jitter: int = 0

    def __post_init__(self) -> None:
        _check_duration("latency", self.latency)
        _check_duration("jitter", self.jitter)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthAttributes:
    """``bandwidth``: forward at most ``rate`` KB/s (1 KB = 1000 bytes)."""

    rate: int = 0

    def __post_init__(self) -> None:
        _validate.integer("rate", self.rate, minimum=1, maximum=MAX_RATE_KBPS, unit=" KB/s")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutAttributes:
    """``timeout``: drop all data; close after ``timeout`` ms (0: never)."""

    timeout: int = 0

    def __post_init__(self) -> None:
        _check_duration("timeout", self.timeout)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResetPeerAttributes:
    """``reset_peer``: on the first data, wait ``timeout`` ms and reset the connection."""

    timeout: int = 0

    def __post_init__(self) -> None:
        _check_duration("timeout", self.timeout)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlicerAttributes:
    """``slicer``: cut chunks into ``average_size ± size_variation`` bytes, ``delay`` µs apart."""

    average_size: int = 0
    size_variation: int = 0
    delay: int = 0

    def __post_init__(self) -> None:
        _validate.integer(
            "average_size", self.average_size, minimum=1, maximum=MAX_BYTES, unit=" bytes"
        )
        _validate.integer(
            "size_variation", self.size_variation, minimum=0, maximum=MAX_BYTES, unit=" bytes"
        )
        _check_duration("delay", self.delay, micro=True)
        if self.size_variation >= self.average_size:
            raise ConfigurationError(
                "size_variation", self.size_variation, "must be smaller than average_size"
            )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LimitDataAttributes:
    """``limit_data``: close the connection once ``bytes`` bytes have passed."""

    bytes: int = 0

    def __post_init__(self) -> None:
        _validate.integer("bytes", self.bytes, minimum=0, maximum=MAX_BYTES, unit=" bytes")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlowCloseAttributes:
    """``slow_close``: pass the end of the stream on ``delay`` ms late."""

    delay: int = 0

    def __post_init__(self) -> None:
        _check_duration("delay", self.delay)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CorruptAttributes:
    """``corrupt``: flip one random bit of each byte with probability ``rate``."""

    rate: float = 0.0

    def __post_init__(self) -> None:
        _validate.fraction("rate", self.rate)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlackholeAttributes:
    """``blackhole``: no attributes; read everything, forward nothing, never close."""


ToxicAttributes = (
    LatencyAttributes
    | BandwidthAttributes
    | TimeoutAttributes
    | ResetPeerAttributes
    | SlicerAttributes
    | LimitDataAttributes
    | SlowCloseAttributes
    | CorruptAttributes
    | BlackholeAttributes
)

_ATTRIBUTES: Final[Mapping[ToxicType, type[ToxicAttributes]]] = {
    ToxicType.LATENCY: LatencyAttributes,
    ToxicType.BANDWIDTH: BandwidthAttributes,
    ToxicType.TIMEOUT: TimeoutAttributes,
    ToxicType.RESET_PEER: ResetPeerAttributes,
    ToxicType.SLICER: SlicerAttributes,
    ToxicType.LIMIT_DATA: LimitDataAttributes,
    ToxicType.SLOW_CLOSE: SlowCloseAttributes,
    ToxicType.CORRUPT: CorruptAttributes,
    ToxicType.BLACKHOLE: BlackholeAttributes,
}


_E = TypeVar("_E", bound=enum.StrEnum)


def _parse_enum(kind: type[_E], field: str, value: object) -> _E:
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value)
    allowed = ", ".join(member.value for member in kind)
    raise ConfigurationError(field, shown(value), f"must be one of: {allowed}")


def build_attributes(
    toxic_type: ToxicType, values: Mapping[str, object], *, base: ToxicAttributes | None = None
) -> ToxicAttributes:
    """Validate ``values`` for ``toxic_type``, over the defaults or over ``base`` (an update)."""
    cls = _ATTRIBUTES[toxic_type]
    known = {field.name for field in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise ConfigurationError(
                f"attributes.{shown(key)}",
                shown(values[key]),
                f"unknown attribute for a {toxic_type.value} toxic (expected: {expected})",
            )
    merged: dict[str, object] = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        # JSON numbers like 100.0 are integers to a Toxiproxy client.
        if isinstance(value, float) and value.is_integer() and cls is not CorruptAttributes:
            merged[key] = int(value)
        else:
            merged[key] = value
    return cls(**merged)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Toxic:
    """One toxic as configured on a proxy: a frozen record; an update replaces it."""

    name: str
    type: ToxicType
    stream: Stream = Stream.DOWNSTREAM
    toxicity: float = 1.0
    attributes: ToxicAttributes

    def __post_init__(self) -> None:
        check_name("name", self.name)
        _validate.fraction("toxicity", self.toxicity)
        object.__setattr__(self, "toxicity", float(self.toxicity))  # 1 and 1.0 alike
        expected = _ATTRIBUTES[self.type]
        if not isinstance(self.attributes, expected):
            raise ConfigurationError(
                "attributes",
                self.attributes,
                f"a {self.type.value} toxic takes {expected.__name__}",
            )

    @classmethod
    def build(
        cls,
        toxic_type: str,
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, object] | None = None,
    ) -> Toxic:
        """A validated toxic from loose values (Python keywords or decoded JSON).

        ``name`` defaults to ``<type>_<stream>``, as in Toxiproxy. Bad input raises
        :class:`~strategylab.errors.ConfigurationError` naming the field.
        """
        kind = _parse_enum(ToxicType, "type", toxic_type)
        direction = _parse_enum(Stream, "stream", stream)
        return cls(
            name=f"{kind.value}_{direction.value}" if name is None else name,
            type=kind,
            stream=direction,
            toxicity=toxicity,
            attributes=build_attributes(kind, attributes or {}),
        )

    def updated(
        self, *, toxicity: float | None = None, attributes: Mapping[str, object] | None = None
    ) -> Toxic:
        """A copy with ``toxicity`` and some ``attributes`` changed (the others kept)."""
        return dataclasses.replace(
            self,
            toxicity=self.toxicity if toxicity is None else toxicity,
            attributes=build_attributes(self.type, attributes or {}, base=self.attributes),
        )

    def to_json(self) -> dict[str, object]:
        """Toxiproxy's JSON shape: ``{name, type, stream, toxicity, attributes}``."""
        return {
            "name": self.name,
            "type": self.type.value,
            "stream": self.stream.value,
            "toxicity": self.toxicity,
            "attributes": dataclasses.asdict(self.attributes),
        }
