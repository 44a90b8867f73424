"""The node's options: :class:`NodeConfig`, checked on construction.

Every value reaches the node through :class:`NodeConfig`, whether it came from the command line,
the configuration file or the environment, so its checks are made here once: ``node_name`` is
1..64 of ``A-Z a-z 0-9 . _ -`` (it is shown on the dashboard and is a metric label),
``status_host`` an IP address or an RFC 1123 host name, ``memory_budget`` at most
:attr:`NodeConfig.MAX_MEMORY_BUDGET`. An error names the field; the command line renames it to
its flag (``--name``), the file loader to its key (``node.node_name``) and its variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from strategylab import _validate
from strategylab._layout import DataLayout
from strategylab.errors import ConfigurationError

if TYPE_CHECKING:
    from ._trader import TraderConfig

__all__ = ["NodeConfig"]

_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)
_NODE_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _check_status_host(value: object) -> None:
    """An IP address (``ipaddress.ip_address``) or an RFC 1123 host name that is not all digits
    and dots (``999.1.1.1`` is a bad address, not a name)."""
    if not isinstance(value, str):
        raise ConfigurationError(
            "status_host", _validate.clipped(value), "must be an IP address or a host name"
        )
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value) or value.replace(".", "").isdigit():
            raise ConfigurationError(
                "status_host", _validate.clipped(value), "must be an IP address or a host name"
            ) from None


def _check_node_name(value: object) -> None:
    if not isinstance(value, str) or not _NODE_NAME.fullmatch(value):
        raise ConfigurationError(
            "node_name", _validate.clipped(value), "must be 1..64 of A-Z a-z 0-9 . _ -"
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node needs; ``db`` defaults to ``data_dir/ticks.db``.

    Raises :class:`~strategylab.errors.ConfigurationError` naming the field and the value for a
    bad one (see the module's docstring for ``node_name``, ``status_host``, ``memory_budget``).
    """

    MAX_MEMORY_BUDGET: ClassVar[int] = 1 << 50
    """The largest ``memory_budget``, in bytes: 1 PiB. A fixed bound rather than this machine's
    memory, so that a configuration file means the same on every host (a budget above the RAM
    of the machine is harmless: it never triggers); it only refuses absurd values, typos of a
    unit such as ``99999999999999999999999G``."""

    exchange_url: str
    symbols: tuple[str, ...]
    data_dir: Path
    db: Path | None = None
    postgres: str | None = None
    signing_key: bytes | None = dataclasses.field(default=None, repr=False)  # a secret
    audit_key: bytes | None = dataclasses.field(default=None, repr=False)  # a secret
    """HMAC key of the audit chain; ``None``: ``$STRATEGYLAB_AUDIT_KEY`` when set, else unkeyed."""
    backup_urls: tuple[str, ...] = ()
    status_interval: float = 1.0
    stale_after: float = 0.8
    """Seconds without a frame (heartbeats included) before the feed reconnects: a little over
    three of the exchange's heartbeat intervals (0.25 s by default; an exchange that beats
    less often needs a longer one). It was 3.0 before issue 13."""
    connect_timeout: float = 1.0
    """Seconds one connection attempt (TCP and WebSocket handshake) may take (was 5.0)."""
    backoff_floor: float = 0.05
    backoff_cap: float = 2.0
    hedge_after: float | None = 0.05
    """Fast reconnects (see :class:`~strategylab.market.FeedConfig`): in the first 30 s of a
    silent outage, another connection attempt every this many seconds while earlier ones hang
    in their handshake (at most 8 in flight, so each has 0.4 s); None: one at a time."""
    outage_backoff_cap: float | None = 0.1
    """Fast reconnects: the reconnect backoff's cap in the first 30 s of a silent outage
    (seconds, ``backoff_floor..backoff_cap``); None: ``backoff_cap`` throughout."""
    batch_size: int = 20_000
    max_queue: int = 200_000
    linger: float = 0.02
    spool: bool = True
    drain_timeout: float = 1.0
    """Seconds :meth:`Node.aclose` may take in all (stop the feed, flush, close the store)."""
    shutdown_deadline: float = 5.0
    """Seconds an emergency shutdown may take to stop intake, flush and close."""
    disk_full_grace: float = 60.0
    """Seconds a DISK_SPACE_EXHAUSTED recovery waits for the component to be healthy again."""
    status_port: int | None = None
    """TCP port of the status service (``0`` picks a free one); None: no status service."""
    status_host: str = "127.0.0.1"
    """Address the status service binds to: an IP address or an RFC 1123 host name."""
    admin_token: str | None = dataclasses.field(default=None, repr=False)  # a secret
    """Bearer token of the admin routes; None: the admin routes answer 403."""
    config_file: Path | None = None
    """A TOML file of node settings, reloaded on change and on SIGHUP (``--config``)."""
    memory_budget: int | None = None
    """Bytes of RSS the node may use before degradation sheds features, 1 to
    :attr:`MAX_MEMORY_BUDGET`; None: no RSS trigger."""
    node_name: str = "node"
    """The node's name on the dashboard and in metric labels: 1..64 of A-Z a-z 0-9 . _ -."""
    trader: TraderConfig | None = None
    """The optional strategy engine: ``strategylab trade`` with this configuration, run as a
    supervised child process of the node (``--strategy``, ``--book``, ``--param``); its book must
    not be inside ``data_dir``, at any depth (its ``snapshot.json``, ``UNCLEAN_SHUTDOWN`` and
    ``logs/`` go beside it, where they would mix with the node's). None: the node only
    ingests."""
    degradation_hold: float = 5.0
    """Seconds a degradation trigger's condition must last before each level is shed or
    restored (``--degradation-hold``; 0 acts at the next evaluation, once a second)."""
    chaos_agent: bool = False
    """The opt-in chaos agent (``--chaos-agent``): ``POST /admin/chaos/ballast`` holds real
    memory in this process for the chaos lab. Needs ``admin_token`` and ``status_port``; never
    read from the configuration file."""
    cluster: str | None = None
    """The cluster this node belongs to (``--cluster NAME``): 1..64 of A-Z a-z 0-9 . _ -; with
    ``redis_url`` the node obeys the cluster kill switch (:class:`strategylab.distributed.
    ClusterKillSwitch`). None: a standalone node."""
    redis_url: str | None = None
    """The cluster's Redis (``--redis URL``, ``redis://`` or ``rediss://``); needs ``cluster``."""
    explicit: frozenset[str] = frozenset()
    """The fields set on the command line: the config file and the environment never override
    them, at start or on reload (``load_node_config(..., explicit=...)``)."""

    def __post_init__(self) -> None:
        for key in ("status_interval", "drain_timeout", "shutdown_deadline", "disk_full_grace"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(key, value, "must be a finite number > 0")
        hold = self.degradation_hold
        if not (isinstance(hold, int | float) and math.isfinite(hold) and hold >= 0):
            raise ConfigurationError("degradation_hold", hold, "must be a finite number >= 0")
        port = self.status_port
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
        ):
            raise ConfigurationError("status_port", port, "must be an integer from 0 to 65535")
        budget = self.memory_budget
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0
        ):
            raise ConfigurationError("memory_budget", budget, "must be a number of bytes > 0")
        if budget is not None and budget > self.MAX_MEMORY_BUDGET:
            raise ConfigurationError(
                "memory_budget",
                _validate.clipped(budget),
                f"must be at most 1 PiB ({self.MAX_MEMORY_BUDGET} bytes)",
            )
        _check_status_host(self.status_host)
        _check_node_name(self.node_name)
        if self.admin_token is not None and not self.admin_token.strip():
            raise ConfigurationError("admin_token", "(blank)", "must not be empty")
        if self.chaos_agent and (self.admin_token is None or self.status_port is None):
            raise ConfigurationError(
                "chaos_agent",
                self.chaos_agent,
                "needs an admin token (--admin-token-file or $STRATEGYLAB_ADMIN_TOKEN) and "
                "--status-port: its route is an admin route of the status service",
            )
        if self.trader is not None:
            self._check_trader()
        self._check_cluster()

    def _check_cluster(self) -> None:
        # Cluster kill switch (issue 14, H2): --cluster NAME and --redis URL, plain values.
        if self.cluster is not None and not (
            isinstance(self.cluster, str) and _NODE_NAME.fullmatch(self.cluster)
        ):
            raise ConfigurationError(
                "cluster", _validate.clipped(self.cluster), "must be 1..64 of A-Z a-z 0-9 . _ -"
            )
        if self.redis_url is not None:
            # scheme, host, port 1..65535, a numeric DB (issue 14, F3): a bad URL is a usage
            # error naming --redis, not a traceback at start.
            from strategylab.distributed import check_redis_url  # noqa: PLC0415 - loads redis

            check_redis_url(self.redis_url, "redis_url")
            if self.cluster is None:
                raise ConfigurationError(
                    "redis_url", self.redis_url, "needs cluster (the cluster's name)"
                )

    def _check_trader(self) -> None:
        from ._trader import TraderConfig  # noqa: PLC0415 - only a node that trades needs it

        trader = self.trader
        if not isinstance(trader, TraderConfig):
            raise ConfigurationError("trader", trader, "must be a TraderConfig or None")
        # Resolved (symlinks followed as far as they exist): an alias must not get in either.
        book = Path(trader.book).absolute().resolve()
        data_dir = Path(self.data_dir).absolute().resolve()
        if book.is_relative_to(data_dir):
            raise ConfigurationError(
                "--book",
                str(trader.book),
                "must not be inside --data-dir (the node owns every file there: its "
                "snapshot.json and UNCLEAN_SHUTDOWN, spool/, logs/; the trader writes its own "
                "beside its book); put it outside, e.g. beside --data-dir in trader/book.db",
            )

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return self.db if self.db is not None else self.layout.ticks_db

    @property
    def layout(self) -> DataLayout:
        """The data directory's file names."""
        return DataLayout(self.data_dir)
