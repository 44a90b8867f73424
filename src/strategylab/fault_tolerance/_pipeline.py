"""Stub: being written."""
from __future__ import annotations
class Pipeline:  # stub
    pass
