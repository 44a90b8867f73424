"""The exchange simulator's options: :class:`ExchangeConfig`, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from strategylab._http_guard import HttpLimits
from strategylab._layout import DataLayout
from strategylab.errors import ConfigurationError

__all__ = ["DEFAULT_SYMBOLS", "ExchangeConfig"]

DEFAULT_SYMBOLS: Final = ("AAPL", "MSFT", "GOOG", "AMZN", "TSLA")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeConfig:
    """Options of the exchange simulator; validated on construction (errors name the option).

    ``tick_rate`` is ticks per second over all symbols; 0 means as fast as the slowest subscriber
    takes them. ``max_ticks`` stops generation after that many ticks (replays and heartbeats go
    on). ``retention`` ticks per symbol are kept for replay. ``send_queue`` bounds each
    subscriber's outbox in frames. ``/admin/*`` needs ``admin_token`` as a bearer token; with no
    token it is closed (403) unless ``admin_open``. ``http_limits`` bound every HTTP request
    (413 body, 400 JSON depth and number digits) and name the browser origins allowed (none by
    default: a browser ``Origin`` or ``User-Agent`` is a 403 and a body not declared JSON a 415
    on every route, the order API and the market-data WebSocket included).
    """

    host: str = "127.0.0.1"
    port: int = 0
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    tick_rate: float = 1000.0
    ticks_per_frame: int = 100
    heartbeat_interval: float = 0.25
    retention: int = 100_000
    signing_key: bytes | None = field(default=None, repr=False)  # a secret: never in a repr
    seed: int = 0
    data_dir: Path = field(default_factory=lambda: Path("exchange-data"))
    max_ticks: int | None = None
    admin_token: str | None = field(default=None, repr=False)  # a secret: never in a repr
    send_queue: int = 1024
    admin_open: bool = False
    http_limits: HttpLimits = field(default_factory=HttpLimits)

    def __post_init__(self) -> None:  # noqa: C901, PLR0912
        def bad(key: str, reason: str) -> ConfigurationError:
            return ConfigurationError(key, getattr(self, key), reason)

        # Accept a str path too (callers pass ``tmp_path / "x"`` or a CLI string).
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if not self.host:
            raise bad("host", "must not be empty")
        if not 0 <= self.port <= 65535:
            raise bad("port", "must be within 0..65535 (0 = ephemeral)")
        if not self.symbols or any(not isinstance(s, str) or not s for s in self.symbols):
            raise bad("symbols", "must be one or more non-empty names")
        if len(set(self.symbols)) != len(self.symbols):
            raise bad("symbols", "must not repeat a symbol")
        if not math.isfinite(self.tick_rate) or self.tick_rate < 0:
            raise bad("tick_rate", "must be a finite number >= 0 (0 = as fast as possible)")
        if not 1 <= self.ticks_per_frame <= 100_000:
            raise bad("ticks_per_frame", "must be within 1..100000")
        if not math.isfinite(self.heartbeat_interval) or self.heartbeat_interval <= 0:
            raise bad("heartbeat_interval", "must be a finite number of seconds > 0")
        if self.retention < 1:
            raise bad("retention", "must be >= 1")
        if self.signing_key is not None and not self.signing_key:
            raise bad("signing_key", "must not be empty (None = unsigned)")
        if self.max_ticks is not None and self.max_ticks < 0:
            raise bad("max_ticks", "must be >= 0 (None = unlimited)")
        if self.admin_token is not None and not self.admin_token:
            raise bad("admin_token", "must not be empty (None = no admin auth)")
        if self.admin_open and self.admin_token is not None:
            raise bad("admin_open", "contradicts admin_token (open means no token)")
        if self.send_queue < 2:
            raise bad("send_queue", "must be >= 2 frames")

    @property
    def log_path(self) -> Path:
        """Where the emitted log is written."""
        return DataLayout(self.data_dir).emitted_log
