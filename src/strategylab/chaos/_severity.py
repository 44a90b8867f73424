"""Fault severities: one scale for every injector's magnitude and duration."""

from __future__ import annotations

import enum
from typing import Final, TypeVar

__all__ = ["Severity"]

_T = TypeVar("_T")

_SCALE: Final = {"low": 0.5, "medium": 1.0, "high": 1.5, "critical": 2.0}


class Severity(enum.StrEnum):
    """How hard a fault hits: ``low``, ``medium``, ``high``, ``critical``.

    Each injector reads :attr:`scale` (0.5, 1.0, 1.5, 2.0) to size its magnitude (latency in
    seconds, bytes of ballast, burner processes) and its duration; ``medium`` is the reference
    figure each injector documents.
    """

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def scale(self) -> float:
        """The factor applied to an injector's medium magnitude and duration."""
        return _SCALE[self.value]

    def pick(self, low: _T, medium: _T, high: _T, critical: _T) -> _T:
        """The one of four values for this severity (for magnitudes that do not scale linearly,
        such as the 80/95/98 % memory marks)."""
        return {"low": low, "medium": medium, "high": high, "critical": critical}[self.value]

    @classmethod
    def parse(cls, text: str) -> Severity:
        """``text`` as a severity; :class:`ValueError` naming the value and the choices."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise ValueError(f"severity {text!r} is not one of {choices}") from None
