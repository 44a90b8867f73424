"""Stub: being written."""
from __future__ import annotations
class Bulkhead:  # stub
    pass
