"""Stub: being written."""
from __future__ import annotations
class RetryDetails:  # stub
    pass
class RetryPolicy:  # stub
    pass
def set_testing(enabled: bool, *, attempts: int | None = None) -> None:
    pass
