"""Stub: being written."""
from __future__ import annotations
class BreakerMetrics:  # stub
    pass
class BreakerState:  # stub
    pass
class CircuitBreaker:  # stub
    pass
class SlidingWindowType:  # stub
    pass
def open_breaker_names() -> tuple[str, ...]:
    return ()
