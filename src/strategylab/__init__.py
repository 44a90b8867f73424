"""Strategy Lab: fault tolerance for trading systems, proved with real faults."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
