"""What is recorded about one error: the :class:`ErrorContext` and its :class:`SystemState`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import traceback
import types
import uuid
from typing import TYPE_CHECKING, Any, Self

import psutil

from strategylab.clock import SYSTEM_CLOCK, Clock

from ._classify import classify
from ._taxonomy import DEFAULT_SEVERITY, ErrorSeverity, ErrorType, UserImpact

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ErrorContext", "SystemState"]

_PROCESS = psutil.Process()


@functools.cache
def _total_memory() -> int:
    # Read once: it does not change, and reading it was a third of the cost of a capture.
    return int(psutil.virtual_memory().total)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SystemState:
    """A cheap snapshot of the process and its surroundings at the moment of an error.

    Capturing one costs tens of microseconds: no subprocesses, no blocking CPU sampling (the CPU
    figure is the process's usage since the previous capture).
    """

    memory_rss_bytes: int
    memory_percent: float
    """The process's resident memory as a percentage of the machine's."""
    cpu_percent: float
    disk_free_bytes: int
    """Free space on the volume holding the data directory."""
    open_breakers: tuple[str, ...] = ()
    active_recoveries: int = 0

    @classmethod
    def capture(
        cls,
        *,
        data_dir: str | os.PathLike[str] = ".",
        open_breakers: tuple[str, ...] | None = None,
        active_recoveries: int = 0,
    ) -> Self:
        """Read the current state; ``open_breakers`` defaults to this process's open breakers."""
        if open_breakers is None:
            from ._breaker import open_breaker_names  # noqa: PLC0415 - the breaker imports us

            open_breakers = open_breaker_names()
        with _PROCESS.oneshot():
            rss = _PROCESS.memory_info().rss
            cpu = _PROCESS.cpu_percent(interval=None)
        total = _total_memory()
        try:
            free = psutil.disk_usage(os.fspath(data_dir)).free
        except OSError:
            free = -1
        return cls(
            memory_rss_bytes=rss,
            memory_percent=100.0 * rss / total if total else 0.0,
            cpu_percent=cpu,
            disk_free_bytes=free,
            open_breakers=tuple(open_breakers),
            active_recoveries=active_recoveries,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = dataclasses.asdict(self)
        data["open_breakers"] = list(self.open_breakers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The inverse of :meth:`to_dict`."""
        return cls(
            memory_rss_bytes=int(data["memory_rss_bytes"]),
            memory_percent=float(data["memory_percent"]),
            cpu_percent=float(data["cpu_percent"]),
            disk_free_bytes=int(data["disk_free_bytes"]),
            open_breakers=tuple(data.get("open_breakers", ())),
            active_recoveries=int(data.get("active_recoveries", 0)),
        )


_REQUIRED: Any = object()


def _require_str(raw: object) -> str:
    if not isinstance(raw, str):
        raise TypeError("must be a string")
    return raw


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ErrorContext:
    """Everything known about one error, immutable, and serialisable to JSON and back."""

    error_id: uuid.UUID
    error_type: ErrorType
    timestamp: dt.datetime
    """When the error was recorded; always timezone-aware UTC."""
    severity: ErrorSeverity
    component: str
    message: str
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    stack_trace: str | None = None
    user_impact: UserImpact = UserImpact.NONE
    system_state: SystemState | None = None

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None or self.timestamp.utcoffset() != dt.timedelta(0):
            raise ValueError(f"timestamp={self.timestamp!r}: must be timezone-aware UTC")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata[{key!r}]={value!r}: keys and values must be str")
        if not isinstance(self.component, str) or not self.component:
            raise ValueError(f"component={self.component!r}: name the component that failed")
        if not isinstance(self.message, str):
            raise TypeError(f"message={self.message!r}: must be str")
        # Neither the caller's dict nor a reader may change a frozen record behind its back.
        object.__setattr__(self, "metadata", types.MappingProxyType(dict(self.metadata)))

    def __hash__(self) -> int:
        return hash(self.error_id)

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        component: str,
        error_type: ErrorType | None = None,
        severity: ErrorSeverity | None = None,
        user_impact: UserImpact | None = None,
        metadata: Mapping[str, str] | None = None,
        system_state: SystemState | None = None,
        capture_state: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Self:
        """Describe ``exc``; its type comes from :func:`classify` unless ``error_type`` is given."""
        kind = error_type if error_type is not None else classify(exc, component=component)
        level = severity if severity is not None else DEFAULT_SEVERITY[kind]
        if system_state is None and capture_state:
            system_state = SystemState.capture()
        trace = "".join(traceback.format_exception(exc)) if exc.__traceback__ is not None else None
        meta = {"exception": f"{type(exc).__module__}.{type(exc).__qualname__}"}
        if metadata:
            meta.update(metadata)
        return cls(
            error_id=uuid.uuid4(),
            error_type=kind,
            timestamp=dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC),
            severity=level,
            component=component,
            message=str(exc) or type(exc).__name__,
            metadata=meta,
            stack_trace=trace,
            user_impact=user_impact if user_impact is not None else UserImpact.for_severity(level),
            system_state=system_state,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary; :meth:`from_dict` restores an equal context."""
        return {
            "error_id": str(self.error_id),
            "error_type": self.error_type.value,
            "timestamp": self.timestamp.isoformat(),
            "severity": self.severity.value,
            "component": self.component,
            "message": self.message,
            "metadata": dict(self.metadata),
            "stack_trace": self.stack_trace,
            "user_impact": self.user_impact.value,
            "system_state": None if self.system_state is None else self.system_state.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The inverse of :meth:`to_dict`; a missing or bad field raises an error naming it."""

        def field(name: str, parse: Any, default: Any = _REQUIRED) -> Any:
            raw = data.get(name, default)
            if raw is _REQUIRED:
                raise ValueError(f"error context is missing field {name!r}")
            try:
                return parse(raw)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{name}={raw!r}: {exc}") from exc

        def optional_str(raw: object) -> str | None:
            if raw is not None and not isinstance(raw, str):
                raise TypeError("must be a string or null")
            return raw

        def state(raw: Mapping[str, Any] | None) -> SystemState | None:
            return None if raw is None else SystemState.from_dict(raw)

        return cls(
            error_id=field("error_id", uuid.UUID),
            error_type=field("error_type", ErrorType),
            timestamp=field("timestamp", dt.datetime.fromisoformat),
            severity=field("severity", ErrorSeverity),
            component=field("component", _require_str),
            message=field("message", _require_str),
            metadata=field("metadata", dict, {}),
            stack_trace=field("stack_trace", optional_str, None),
            user_impact=field("user_impact", UserImpact, UserImpact.NONE.value),
            system_state=field("system_state", state, None),
        )

    def to_json(self) -> str:
        """Serialise to a compact JSON string."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Parse what :meth:`to_json` wrote."""
        return cls.from_dict(json.loads(text))
