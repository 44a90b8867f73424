"""The chaos agent's memory ballast: real, touched memory held in the node's own process.

The node's degradation trigger reads its own RSS against ``--memory-budget``, so memory pressure
from another process would not count. :class:`Ballast` holds anonymous ``mmap`` chunks (each at
most :data:`CHUNK` bytes) and writes one byte in every page, so the kernel really backs them and
the RSS rises by the ballast's size; shrinking closes whole chunks (``munmap``), so the memory
goes back to the kernel at once (memory from ``malloc`` may stay in the allocator's heap).
"""

from __future__ import annotations

import mmap
from typing import Final

__all__ = ["CHUNK", "Ballast"]

CHUNK: Final = 16 * 1024 * 1024
"""Bytes of one ballast chunk (the last one may be smaller)."""
_PAGE: Final = mmap.PAGESIZE


class Ballast:
    """Touched anonymous memory of a chosen size; :meth:`resize` grows or shrinks it."""

    def __init__(self) -> None:
        self._chunks: list[mmap.mmap] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._size

    def resize(self, nbytes: int) -> int:
        """Hold ``nbytes`` (0 releases everything); returns the size now. Raises
        :class:`ValueError` for a negative or non-integer size and :class:`MemoryError` (the
        ballast then keeps what it had) when the kernel refuses the mapping."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes={nbytes!r}: must be an integer >= 0")
        while self._size > nbytes:
            last = self._chunks.pop()
            self._size -= len(last)
            last.close()
        while self._size < nbytes:
            size = min(CHUNK, nbytes - self._size)
            try:
                chunk = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            except OSError as exc:
                raise MemoryError(f"ballast: cannot map {size} more bytes: {exc}") from exc
            # One write per page: the kernel backs each page only when it is touched.
            chunk[::_PAGE] = b"\x5a" * len(range(0, size, _PAGE))
            self._chunks.append(chunk)
            self._size += size
        return self._size

    def release(self) -> None:
        """Give every byte back (same as ``resize(0)``)."""
        self.resize(0)
