"""Stub: being written."""
from __future__ import annotations
class Fallback:  # stub
    pass
