"""Strategy Lab's reference market pipeline: exchange simulator, feed, ingestion, tick stores."""

from __future__ import annotations

__all__: list[str] = []
