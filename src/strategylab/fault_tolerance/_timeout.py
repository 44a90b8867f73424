"""Stub: being written."""
from __future__ import annotations
class Timeout:  # stub
    pass
