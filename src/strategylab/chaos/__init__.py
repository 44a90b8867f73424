"""Strategy Lab's chaos lab: real faults, measured recovery, checked data integrity."""

from __future__ import annotations

__all__: list[str] = []
