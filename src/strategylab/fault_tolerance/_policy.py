"""Stub: being written."""
from __future__ import annotations
class RecoveryPolicy:  # stub
    pass
class SlaClass:  # stub
    pass
DEFAULT_POLICIES: dict[object, object] = {}
