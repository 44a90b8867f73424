"""Resource scaling: integer knobs with bounds that the RESOURCE_SCALING strategy turns.

A component that has a real resource to resize (a connection pool, a batch size, a worker count,
a queue bound) describes each one as a :class:`ScalingKnob` (a getter, a setter that applies the
value to the running component, and inclusive bounds) and implements the
:class:`~strategylab.fault_tolerance.Scalable` protocol with :func:`scale_knobs`::

    async def scale(self, factor: float) -> bool:
        return scale_knobs(self.knobs(), factor)

The manager's RESOURCE_SCALING strategy calls ``scale(1.5)``, then ``scale(2.0)``, ... as the
escalation deepens (``1 + 0.5 * level``); whether that recovered the component is decided by
``health()`` afterwards. Semantics follow a Kubernetes
HorizontalPodAutoscaler's ``minReplicas``/``maxReplicas``: the desired value is
``ceil(current * factor)`` (``floor`` when shrinking) clamped to the bounds, and a knob already at
the bound in the asked direction does not move.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

from strategylab.errors import ConfigurationError

__all__ = ["KnobValue", "ScalingKnob", "scale_knobs"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KnobValue:
    """A frozen view of one knob, for statistics and the status service."""

    name: str
    value: int
    lower: int
    upper: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScalingKnob:
    """One integer resource of a running component, resizable within ``[lower, upper]``.

    ``getter`` returns the current value; ``setter`` applies a new one to the running component
    (it must take effect safely while the component runs). Raises
    :class:`~strategylab.errors.ConfigurationError` naming a bad bound.
    """

    name: str
    getter: Callable[[], int]
    setter: Callable[[int], None]
    lower: int
    upper: int

    def __post_init__(self) -> None:
        for key in ("lower", "upper"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{self.name}.{key}", value, "must be an integer >= 1")
        if self.upper < self.lower:
            raise ConfigurationError(f"{self.name}.upper", self.upper, f"must be >= {self.lower}")

    @property
    def value(self) -> int:
        """The current value."""
        return self.getter()

    def snapshot(self) -> KnobValue:
        """The current value and bounds, frozen."""
        return KnobValue(name=self.name, value=self.getter(), lower=self.lower, upper=self.upper)

    def scale(self, factor: float) -> bool:
        """Set ``ceil(value * factor)`` (``floor`` below 1) within the bounds; False when the
        value did not change (already at the bound, or ``factor`` is 1).

        Raises :class:`ValueError` for a ``factor`` that is not a finite number > 0.
        """
        if isinstance(factor, bool) or not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"factor={factor!r}: must be a finite number > 0")
        current = self.getter()
        wanted = current * factor
        target = math.ceil(wanted) if factor > 1 else math.floor(wanted)
        target = max(self.lower, min(self.upper, target))
        if target == current:
            return False
        self.setter(target)
        return True


def scale_knobs(knobs: Iterable[ScalingKnob], factor: float) -> bool:
    """Scale every knob by ``factor``; True when at least one of them moved."""
    moved = False
    for knob in knobs:
        moved = knob.scale(factor) or moved
    return moved
