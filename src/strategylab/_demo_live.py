"""The demo's live screen: what the exchange emitted, what the node stored, and the link.

**Its numbers say what they are.** Rates are over the last :data:`RATE_WINDOW` seconds, not
lifetime averages. "Stored" is the node's count as of just before the exchange reported "emitted",
so it can never show above it. The link's state comes from the node's status lines *and* from
whether ticks are arriving, since during a partition the node still counts itself connected until
it declares the feed stale. :class:`Progress` is fed with explicit times, so a test can replay any
sequence of status lines and polls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from rich.console import Group
from rich.table import Table

__all__ = ["RATE_WINDOW", "STALL_AFTER", "STATUS_STALE_AFTER", "Progress"]

RATE_WINDOW: Final = 2.0
"""Seconds over which the live rates are measured."""
STALL_AFTER: Final = 1.0
"""Seconds without a stored tick, while ticks are due, after which the link is shown as silent."""
STATUS_STALE_AFTER: Final = 2.0
"""Seconds without a status line from the node after which its state is shown as unknown."""


def _rate(samples: Sequence[tuple[float, int]], now: float, window: float) -> float | None:
    """Count per second over the samples of the last ``window`` seconds; None until there are
    two samples at least half a window apart."""
    recent = [(t, n) for t, n in samples if now - t <= window]
    if len(recent) < 2 or recent[-1][0] - recent[0][0] < window / 2:
        return None
    (t0, n0), (t1, n1) = recent[0], recent[-1]
    return max(n1 - n0, 0) / (t1 - t0)


@dataclass
class Progress:
    """What the live screen shows, fed with explicit times (so a test can replay any sequence)."""

    total: int
    window: float = RATE_WINDOW
    status: dict[str, Any] = field(default_factory=dict)
    """The node's latest status line."""
    status_at: float | None = None
    trading: dict[str, Any] = field(default_factory=dict)
    fault: str = "warming up"
    faults_done: list[str] = field(default_factory=list)
    emitted: int = 0
    emitted_at: float | None = None
    generating: bool = True
    exchange_last_seq: dict[str, int] = field(default_factory=dict)
    shown_stored: int = 0
    """The node's stored count as of just before the exchange reported :attr:`emitted`."""
    grew_at: float | None = None
    """When the node's stored count last grew."""
    stored_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    emitted_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def stored(self) -> int:
        """The node's stored count in its latest status line."""
        return int(self.status.get("ticks_stored", 0))

    def on_node_status(self, line: dict[str, Any], now: float) -> None:
        """A status line from the node."""
        if self.status_at is None or int(line.get("ticks_stored", 0)) > self.stored:
            self.grew_at = now
        self.status, self.status_at = line, now
        self.stored_samples.append((now, self.stored))

    def on_exchange_status(self, status: dict[str, Any], now: float, stored_before: int) -> None:
        """The exchange's ``/api/status``, asked after the node had stored ``stored_before``."""
        self.emitted = int(status.get("ticks_emitted", self.emitted))
        self.generating = bool(status.get("generating", self.generating))
        self.exchange_last_seq = {k: int(v) for k, v in status.get("last_seq", {}).items()}
        self.emitted_at = now
        self.emitted_samples.append((now, self.emitted))
        # Counts only grow and the node stores only what was emitted, so a count read before the
        # exchange was asked is <= what the exchange answers: the pair is consistent.
        self.shown_stored = stored_before

    def link(self, now: float) -> str:
        """The link to the exchange as the node's status lines and its progress show it."""
        if self.status_at is None:
            return "unknown (no status from the node yet)"
        age = now - self.status_at
        if age > STATUS_STALE_AFTER:
            return f"unknown (no status from the node for {age:.1f} s)"
        if not self.status.get("connected", False):
            return f"down, reconnecting ({self.status.get('reconnects', 0)} reconnects so far)"
        if not self.generating and self.shown_stored >= self.emitted:
            return "up, idle (every emitted tick is stored)"
        silent = now - (self.grew_at if self.grew_at is not None else self.status_at)
        if silent > STALL_AFTER:
            return f"silent for {silent:.1f} s (the node has not declared it stale yet)"
        return "up, ticks arriving"

    def render(self, now: float) -> Group:
        """The live screen."""
        s = self.status
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        emitted = f"{self.emitted:,} / {self.total:,}"
        if self.emitted_at is not None and now - self.emitted_at > STATUS_STALE_AFTER:
            emitted += f" (as of {now - self.emitted_at:.0f} s ago)"
        table.add_row("emitted by the exchange", emitted)
        table.add_row("stored by the node", f"{self.shown_stored:,}")
        window = f"{self.window:g} s"
        for label, samples in (
            (f"emitted/s, last {window}", self.emitted_samples),
            (f"stored/s, last {window}", self.stored_samples),
        ):
            rate = _rate(samples, now, self.window)
            table.add_row(label, "measuring" if rate is None else f"{rate:,.0f}")
        table.add_row("link to the exchange", self.link(now))
        table.add_row("reconnects", str(s.get("reconnects", 0)))
        table.add_row("CRC errors / gaps", f"{s.get('crc_errors', 0)} / {s.get('gaps', 0)}")
        table.add_row("errors / recoveries", f"{s.get('errors', 0)} / {s.get('recoveries', 0)}")
        t = self.trading
        table.add_row(
            "orders sent / filled",
            f"{t.get('orders_sent', 0)} / {t.get('orders_filled', 0)} "
            f"(risk {t.get('risk_state', '?')})",
        )
        table.add_row("fault now", self.fault)
        table.add_row("faults done", ", ".join(self.faults_done) or "none yet")
        return Group(table)
