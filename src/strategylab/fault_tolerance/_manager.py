"""Stub: being written."""
from __future__ import annotations
class ActiveRecovery:  # stub
    pass
class ErrorRecoveryManager:  # stub
    pass
class RecoveryOutcome:  # stub
    pass
