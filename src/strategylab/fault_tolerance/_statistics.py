"""Stub: being written."""
from __future__ import annotations
class RecoveryStatistics:  # stub
    pass
