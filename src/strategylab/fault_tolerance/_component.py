"""Stub: being written."""
from __future__ import annotations
class Component:  # stub
    pass
