"""``strategylab node`` and ``strategylab trade``: their options, turned into a config.

The processes themselves live in :mod:`strategylab.node`
(:func:`~strategylab.node.run_node_process`, :func:`~strategylab.node.run_trader_process`); this
module only reads the command line, with the shared options of :mod:`strategylab._cli_options`,
and reports a bad value as one line naming the flag (exit 2). ``strategylab.node`` is imported
only when a command runs: ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final
from urllib.parse import urlsplit

import typer

from strategylab._cli_options import (
    EXCHANGE_SCHEMES,
    FEED_SCHEMES,
    AdminTokenFileOption,
    AuditKeyFileOption,
    BookOption,
    ExchangeUrlOption,
    FeedUrlOption,
    LogLevel,
    LogLevelOption,
    ParamOption,
    SigningKeyFileOption,
    SigningKeyOption,
    StoreOption,
    SymbolsOption,
    check_url,
    is_postgres_url,
    nonempty_path,
    split_symbols,
    url_callback,
    usage_error,
)
from strategylab._secrets import ADMIN_TOKEN, AUDIT_KEY, SIGNING_KEY, resolve_secret, secret_from
from strategylab.errors import ConfigurationError

if TYPE_CHECKING:
    from strategylab.node import NodeConfig, TraderConfig

__all__ = [
    "explicit_fields",
    "node_command",
    "node_trader_config",
    "parse_memory_size",
    "trade_command",
]

_NODE: Final = "strategylab node"
_TRADE: Final = "strategylab trade"

_ENV_NAMES: Final = {s.env: f"${s.env}" for s in (SIGNING_KEY, ADMIN_TOKEN, AUDIT_KEY)}
"""A secret's environment variable is named as such in errors, not as a ``--flag``."""
_NODE_FLAGS: Final = {
    **_ENV_NAMES,
    "node_name": "--name",
    "config_file": "--config",
    "redis_url": "--redis",
    "admin_token": "--admin-token-file",
    "backup_urls": "--backup-url",
}
"""NodeConfig fields spelled otherwise on the command line (the rest: ``--field-name``)."""

_PARAM_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "data_dir": ("data_dir",),
    "symbols": ("symbols",),
    "exchange_url": ("exchange_url",),
    "feed": ("exchange_url",),
    "backup_url": ("backup_urls",),
    # --db and --postgres both choose the tick store: either one settles both fields.
    "db": ("db", "postgres"),
    "postgres": ("db", "postgres"),
    "signing_key": ("signing_key",),
    "signing_key_file": ("signing_key",),
    "audit_key_file": ("audit_key",),
    "status_interval": ("status_interval",),
    "stale_after": ("stale_after",),
    "connect_timeout": ("connect_timeout",),
    "batch_size": ("batch_size",),
    "max_queue": ("max_queue",),
    "no_spool": ("spool",),
    "drain_timeout": ("drain_timeout",),
    "shutdown_deadline": ("shutdown_deadline",),
    "disk_full_grace": ("disk_full_grace",),
    "status_port": ("status_port",),
    "status_host": ("status_host",),
    "admin_token_file": ("admin_token",),
    "config": ("config_file",),
    "memory_budget": ("memory_budget",),
    "name": ("node_name",),
    "chaos_agent": ("chaos_agent",),
    "degradation_hold": ("degradation_hold",),
    "cluster": ("cluster",),
    "redis": ("redis_url",),
    # The trader child: not a config-file key (never overridden from there).
    "strategy": ("trader",),
    "book": ("trader",),
    "param": ("trader",),
}
"""``strategylab node``'s parameters and the :class:`~strategylab.node.NodeConfig` fields each
one sets."""


# A pattern as text: re compiles (and caches) it on first use, not at `--help`.
def parse_memory_size(text: str, *, flag: str = "--memory-budget") -> int:
    """Bytes in ``text`` (:func:`strategylab._validate.byte_size`: ``512M`` or ``512MiB`` is
    536,870,912, ``512MB`` is 512,000,000), at most
    :attr:`NodeConfig.MAX_MEMORY_BUDGET <strategylab.node.NodeConfig.MAX_MEMORY_BUDGET>` (1 PiB,
    the bound the configuration file's ``degradation.memory_budget`` has too).

    Raises :class:`ConfigurationError` naming ``flag`` for anything else.
    """
    from strategylab import _validate  # noqa: PLC0415
    from strategylab.node import NodeConfig  # noqa: PLC0415 - not imported at `--help`

    return _validate.byte_size(flag, text, maximum=NodeConfig.MAX_MEMORY_BUDGET)


def _memory_budget(value: object) -> int:
    """``--memory-budget``'s parser: one line naming the flag, exit 2, on a bad size."""
    if isinstance(value, int):
        return value
    try:
        return parse_memory_size(str(value))
    except ConfigurationError as exc:
        usage_error(_NODE, exc)


def _config_file(value: object) -> Path:
    """``--config``'s parser: an existing regular file (a symlink to one is followed), else
    exit 2 naming the flag."""
    path = nonempty_path("--config")(value)
    if not path.exists():
        usage_error(_NODE, ConfigurationError("--config", str(path), "no such file"))
    if not path.is_file():
        usage_error(_NODE, ConfigurationError("--config", str(path), "is not a regular file"))
    return path.absolute()


def explicit_fields(ctx: typer.Context, *, secrets: Mapping[str, object]) -> frozenset[str]:
    """The :class:`~strategylab.node.NodeConfig` fields the command line set: those of every
    parameter given on it (click's parameter source), plus each secret in ``secrets``
    (``{field: value}``) that was found, from its file flag or its environment variable: a
    secret is the operator's, never the config file's to replace."""
    fields: set[str] = set()
    for param, names in _PARAM_FIELDS.items():
        source = ctx.get_parameter_source(param)
        # By name: typer 0.29 carries its own copy of click's ParameterSource.
        if source is not None and source.name == "COMMANDLINE":
            fields.update(names)
    fields.update(name for name, value in secrets.items() if value is not None)
    return frozenset(fields)


def _with_config_file(config: NodeConfig, explicit: frozenset[str]) -> NodeConfig:
    """``config`` with ``--config``'s file applied (the command line wins on ``explicit``), by
    :func:`strategylab.node.load_node_config`; exit 2 with its one line on a bad file."""
    from strategylab.node import load_node_config  # noqa: PLC0415

    try:
        return load_node_config(config, explicit=explicit)
    except ConfigurationError as exc:
        usage_error(_NODE, exc)


BackupUrlOption = Annotated[
    list[str] | None,
    typer.Option(
        "--backup-url",
        metavar="URL",
        callback=url_callback(EXCHANGE_SCHEMES),
        help="A failover exchange or feed, in --exchange-url's forms; repeatable.",
        show_default=False,
    ),
]


def exchange_endpoints(flag: str, url: str) -> tuple[str, str]:
    """``(orders, feed)`` of an ``--exchange-url`` (or ``--backup-url``) value, the one meaning
    both ``node`` and ``trade`` give it: an exchange's ``http(s)://HOST:PORT`` has its orders there
    and its feed at ``ws(s)://HOST:PORT/ws``; a feed's ``ws(s)://HOST:PORT/PATH`` is the feed
    itself, and its orders are at ``http(s)://HOST:PORT``. Raises :class:`ConfigurationError`
    naming ``flag`` for anything else (:func:`check_url`)."""
    check_url(flag, url, EXCHANGE_SCHEMES)
    parts = urlsplit(url)
    secure = parts.scheme in {"https", "wss"}
    http, ws = ("https", "wss") if secure else ("http", "ws")
    if parts.scheme in {"http", "https"}:
        base = url.rstrip("/")
        return base, ws + base.removeprefix(parts.scheme) + "/ws"
    return f"{http}://{parts.netloc}", url


def feed_url(flag: str, url: str) -> str:
    """The market-data WebSocket of ``url`` (:func:`exchange_endpoints`)."""
    return exchange_endpoints(flag, url)[1]


def _secrets(
    prog: str, signing_key: str | None, signing_key_file: Path | None, audit_key_file: Path | None
) -> tuple[bytes | None, bytes | None]:
    """The signing key and the audit key (exit 2 naming the flag when one is refused)."""
    from strategylab.fault_tolerance import load_audit_key  # noqa: PLC0415
    from strategylab.market import parse_signing_key  # noqa: PLC0415

    try:
        key = parse_signing_key(
            resolve_secret(signing_key, signing_key_file, SIGNING_KEY, prog=prog)
        )
        return key, load_audit_key(audit_key_file)
    except ConfigurationError as exc:
        usage_error(prog, exc.as_option(_ENV_NAMES))


def _admin_token(admin_token_file: Path | None) -> str | None:
    """The node's admin token from ``--admin-token-file`` or ``$STRATEGYLAB_ADMIN_TOKEN`` (there
    is no ``--admin-token VALUE``: the token would be visible in ``ps``); at least
    ``MIN_ADMIN_TOKEN`` (16) characters, else a usage error naming where it came from."""
    from strategylab.service import MIN_ADMIN_TOKEN  # noqa: PLC0415 - cheap, keeps --help light

    try:
        token = secret_from(admin_token_file, ADMIN_TOKEN)
    except ConfigurationError as exc:
        usage_error(_NODE, exc.as_option(_ENV_NAMES))
    if token is not None and len(token) < MIN_ADMIN_TOKEN:
        where = "--admin-token-file" if admin_token_file is not None else "$STRATEGYLAB_ADMIN_TOKEN"
        usage_error(
            _NODE,
            f"{where}: the admin token has {len(token)} characters; "
            f"at least {MIN_ADMIN_TOKEN} are required",
        )
    return token


def node_config(
    *,
    data_dir: Path,
    symbols: str,
    exchange_url: str | None,
    feed: str | None,
    backup_urls: list[str],
    db: str | None,
    postgres: str | None,
    signing_key: bytes | None,
    audit_key: bytes | None,
    trader: TraderConfig | None = None,
    **tuning: float | bool | str | Path | None,
) -> NodeConfig:
    """The node's config from its options; :class:`ConfigurationError` names the flag."""
    from strategylab.node import NodeConfig  # noqa: PLC0415

    names = split_symbols(symbols)
    if not names:
        raise ConfigurationError("--symbols", symbols, "must name at least one symbol")
    if feed is not None:
        primary = check_url("--feed-url", feed, FEED_SCHEMES)
    elif exchange_url is not None:
        primary = feed_url("--exchange-url", exchange_url)
    else:
        raise ConfigurationError("--exchange-url", None, "is required (or --feed-url)")
    if db is not None and postgres is not None:
        raise ConfigurationError(
            "--db", db, "contradicts --postgres (both name the tick store); give only one of them"
        )
    if db is not None and is_postgres_url(db):
        db, postgres = None, db
    elif db is not None and "://" in db:
        raise ConfigurationError(
            "--db", db, "unsupported URL scheme (a SQLite file, or postgresql:// or postgres://)"
        )
    return NodeConfig(
        exchange_url=primary,
        backup_urls=tuple(feed_url("--backup-url", url) for url in backup_urls),
        symbols=names,
        data_dir=data_dir,
        db=None if db is None else Path(db),
        postgres=postgres,
        signing_key=signing_key,
        audit_key=audit_key,
        trader=trader,
        **tuning,  # type: ignore[arg-type]
    )


def node_trader_config(
    *,
    strategies: list[str],
    book: Path | None,
    params: list[str],
    exchange_url: str | None,
    feed: str | None,
    symbols: str,
    **options: object,
) -> TraderConfig | None:
    """The node's trader (``--strategy``, ``--book``, ``--param``), built as ``strategylab
    trade`` builds its own (:func:`trader_config`) on the node's exchange and symbols; None
    without ``--strategy``. :class:`ConfigurationError` names the flag (``--book`` without
    ``--strategy`` and the reverse included)."""
    if not strategies:
        if book is not None:
            raise ConfigurationError("--book", str(book), "needs --strategy (the node trades)")
        if params:
            raise ConfigurationError("--param", " ".join(params), "needs --strategy")
        return None
    if book is None:
        raise ConfigurationError("--book", None, "is required with --strategy")
    url = exchange_url if exchange_url is not None else feed
    if url is None:
        raise ConfigurationError("--exchange-url", None, "is required (or --feed-url)")
    return trader_config(
        exchange_url=url,
        feed=feed,
        book=book,
        strategies=strategies,
        symbols=symbols,
        params=params,
        **options,
    )


def node_command(  # noqa: PLR0917 - typer passes options positionally
    ctx: typer.Context,
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            metavar="DIR",
            parser=nonempty_path("--data-dir"),
            help="The node's data directory (created 0700): ticks.db, acks.jsonl, audit.jsonl, "
            "spool/, logs/node.log.",
        ),
    ],
    symbols: SymbolsOption,
    exchange_url: Annotated[
        str | None,
        typer.Option(
            "--exchange-url",
            metavar="URL",
            callback=url_callback(EXCHANGE_SCHEMES),
            help="The exchange, http://HOST:PORT (its feed: URL/ws); or its feed, "
            "ws://HOST:PORT/ws. Required unless --feed-url is given.",
            show_default=False,
        ),
    ] = None,
    feed: FeedUrlOption = None,
    backup_url: BackupUrlOption = None,
    db: StoreOption = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            metavar="DSN",
            help="A PostgreSQL tick store instead of SQLite (as --db postgresql://...).",
            show_default=False,
        ),
    ] = None,
    signing_key: SigningKeyOption = None,
    signing_key_file: SigningKeyFileOption = None,
    audit_key_file: AuditKeyFileOption = None,
    status_interval: Annotated[float, typer.Option(help="Seconds between two status lines.")] = 1.0,
    stale_after: Annotated[
        float, typer.Option(help="Seconds without a frame before the feed reconnects.")
    ] = 0.8,
    connect_timeout: Annotated[
        float, typer.Option(help="Seconds each connection attempt may take.")
    ] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Ticks per store write, at most.")] = 20_000,
    max_queue: Annotated[
        int, typer.Option(help="Ticks queued between the feed and the store, at most.")
    ] = 200_000,
    no_spool: Annotated[
        bool, typer.Option("--no-spool", help="No failover spool: a store outage stops intake.")
    ] = False,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds a SIGTERM stop may spend flushing and closing.")
    ] = 1.0,
    shutdown_deadline: Annotated[
        float, typer.Option(help="Seconds an emergency shutdown may spend flushing and closing.")
    ] = 5.0,
    disk_full_grace: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for space on a full disk before the emergency shutdown."
        ),
    ] = 60.0,
    status_port: Annotated[
        int | None,
        typer.Option(
            "--status-port",
            metavar="PORT",
            min=0,
            max=65535,
            help="Serve the status service and dashboard on PORT (0 picks a free one; the "
            "ready line gives the URL) [default: no status service].",
            show_default=False,
        ),
    ] = None,
    status_host: Annotated[
        str,
        typer.Option(
            "--status-host",
            metavar="HOST",
            # Checked by NodeConfig, the one place the file and the environment go through too.
            help="The address the status service listens on (an IP address or host name).",
        ),
    ] = "127.0.0.1",
    admin_token_file: AdminTokenFileOption = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            parser=_config_file,
            help="The node's TOML settings file, reloaded on change and on SIGHUP; options "
            "given on the command line win over it.",
            show_default=False,
        ),
    ] = None,
    memory_budget: Annotated[
        int | None,
        typer.Option(
            "--memory-budget",
            metavar="SIZE",
            parser=_memory_budget,
            help="Resident memory the node may use before it sheds features: bytes, or with a "
            "K, M, G or T suffix (x 1024), e.g. 512M; at most 1024T (1 PiB) "
            "[default: no memory trigger].",
            show_default=False,
        ),
    ] = None,
    degradation_hold: Annotated[
        float,
        typer.Option(
            "--degradation-hold",
            metavar="SECONDS",
            min=0.0,
            help="How long a pressure (or calm) reading must last before the node sheds "
            "(or restores) each feature.",
        ),
    ] = 5.0,
    name: Annotated[
        str,
        typer.Option(
            "--name",
            metavar="NAME",
            # Checked by NodeConfig, the one place the file and the environment go through too.
            help="The node's name on the dashboard and in metric labels (A-Z a-z 0-9 . _ -).",
        ),
    ] = "node",
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            metavar="[NAME=]STRATEGY",
            help="Trade too: run `strategylab trade` with this strategy (as trade's --strategy; "
            "repeatable) as a supervised child process, restarted when it dies. Needs --book.",
            show_default=False,
        ),
    ] = None,
    book: Annotated[
        Path | None,
        typer.Option(
            "--book",
            metavar="PATH",
            parser=nonempty_path("--book"),
            help="The trader's SQLite order book (with --strategy; not inside --data-dir: "
            "its snapshot.json, UNCLEAN_SHUTDOWN and logs/ go beside it).",
            show_default=False,
        ),
    ] = None,
    param: ParamOption = None,
    chaos_agent: Annotated[
        bool,
        typer.Option(
            "--chaos-agent",
            help="For the chaos lab: serve POST /admin/chaos/ballast (memory held in this "
            "process, behind the admin token). Needs --status-port and an admin token.",
        ),
    ] = False,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="NAME",
            help="The cluster this node belongs to (A-Z a-z 0-9 . _ -). With --postgres the "
            "cluster's nodes share --symbols through leases (each symbol ingested by one node at "
            "a time; a dead node's symbols taken over); with --redis it obeys the cluster kill "
            "switch (`strategylab kill --cluster NAME`) and its trader shares its order-API "
            "circuit breaker with the cluster's.",
            show_default=False,
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            metavar="URL",
            help="The cluster's Redis, redis://HOST:PORT[/DB] (needs --cluster).",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Run an ingesting node: feed → ingestor → store, under the error recovery manager.

    With --strategy and --book it trades too: `strategylab trade` (same exchange, symbols,
    signing and audit keys, passed in its environment) runs as a child process of the node's
    supervisor; the kill switch halts it and cancels its orders at the exchange first.

    Prints JSON lines (resumed after an unclean shutdown, started, ready with the status URL when
    --status-port is given, status, stopped or emergency_shutdown). The admin routes of the
    status service need a token: --admin-token-file PATH or $STRATEGYLAB_ADMIN_TOKEN (there is
    no --admin-token VALUE); without one they answer 403.
    Exit status: 0 stopped by SIGTERM or SIGINT; 1 an operational failure at start (a damaged
    audit log included); 2 a usage error (a store that can never work, a file planted in the
    data directory, a bad --config file); 3 an emergency shutdown.
    """
    keys = _secrets(_NODE, signing_key, signing_key_file, audit_key_file)
    token = _admin_token(admin_token_file)
    try:
        trader = node_trader_config(
            strategies=strategy or [],
            book=book,
            params=param or [],
            exchange_url=exchange_url,
            feed=feed,
            symbols=symbols,
            status_interval=status_interval,
            signing_key=keys[0],
            audit_key=keys[1],
        )
        settings = node_config(
            data_dir=data_dir,
            symbols=symbols,
            exchange_url=exchange_url,
            feed=feed,
            backup_urls=backup_url or [],
            db=db,
            postgres=postgres,
            signing_key=keys[0],
            audit_key=keys[1],
            status_interval=status_interval,
            stale_after=stale_after,
            connect_timeout=connect_timeout,
            batch_size=batch_size,
            max_queue=max_queue,
            spool=not no_spool,
            drain_timeout=drain_timeout,
            shutdown_deadline=shutdown_deadline,
            disk_full_grace=disk_full_grace,
            status_port=status_port,
            status_host=status_host,
            admin_token=token,
            config_file=config,
            memory_budget=memory_budget,
            degradation_hold=degradation_hold,
            node_name=name,
            trader=trader,
            chaos_agent=chaos_agent,
            cluster=cluster,
            redis_url=redis,
        )
    except ConfigurationError as exc:
        usage_error(_NODE, exc.as_option(_NODE_FLAGS))
    if config is not None:
        secrets = {"signing_key": keys[0], "audit_key": keys[1], "admin_token": token}
        settings = _with_config_file(settings, explicit_fields(ctx, secrets=secrets))
    settings = _trader_in_cluster(settings)  # shared breakers (issue 14, H6)
    from strategylab.node import run_node_process  # noqa: PLC0415

    raise typer.Exit(run_node_process(settings, log_level=log_level.level))


# --- shared breakers (issue 14, H6) ----------------------------------------------------------


def _trader_in_cluster(settings: NodeConfig) -> NodeConfig:
    """The node's trader in the node's cluster: its ``--cluster`` and ``--redis`` are the node's
    (after ``--config``), so that it shares its order-API breaker with the cluster's traders."""
    trader = settings.trader
    if trader is None or settings.cluster is None or settings.redis_url is None:
        return settings
    shared = dataclasses.replace(trader, cluster=settings.cluster, redis_url=settings.redis_url)
    return dataclasses.replace(settings, trader=shared)


ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        metavar="NAME",
        help="The cluster this trader belongs to (A-Z a-z 0-9 . _ -); with --redis its order-API "
        "circuit breaker is shared with every trader of the cluster.",
        show_default=False,
    ),
]
RedisOption = Annotated[
    str | None,
    typer.Option(
        "--redis",
        metavar="URL",
        help="The cluster's Redis, redis://HOST:PORT[/DB] (with --cluster).",
        show_default=False,
    ),
]

# --- end shared breakers -----------------------------------------------------------------------


def trader_config(
    *,
    exchange_url: str,
    feed: str | None,
    book: Path,
    strategies: list[str],
    symbols: str,
    params: list[str],
    **options: object,
) -> TraderConfig:
    """The trader's config from its options; :class:`ConfigurationError` names the flag."""
    from strategylab._research_cli import UsageError, parse_params  # noqa: PLC0415
    from strategylab.node import TraderConfig  # noqa: PLC0415

    names = split_symbols(symbols)
    if not names:
        raise ConfigurationError("--symbols", symbols, "must name at least one symbol")
    orders, exchange_feed = exchange_endpoints("--exchange-url", exchange_url)
    if feed is not None:
        check_url("--feed-url", feed, FEED_SCHEMES)
    elif not exchange_url.startswith(("http://", "https://")):
        feed = exchange_feed  # the feed was given itself, ws(s)://HOST:PORT/ws
    try:
        parsed = parse_params(params)
    except UsageError as exc:
        raise ConfigurationError("--param", " ".join(params), str(exc)) from None
    return TraderConfig(
        exchange_url=orders,
        feed_url=feed,
        book=book,
        strategies=tuple(strategies),
        symbols=names,
        params=parsed,
        **options,  # type: ignore[arg-type]
    )


def trade_command(  # noqa: PLR0917 - typer passes options positionally
    exchange_url: ExchangeUrlOption,
    book: BookOption,
    strategy: Annotated[
        list[str],
        typer.Option(
            "--strategy",
            metavar="[NAME=]STRATEGY",
            help="A built-in strategy (ma_crossover, mean_reversion) or module:Class, optionally "
            "named in the book by NAME= (default: the built-in or class name); repeatable.",
        ),
    ],
    symbols: SymbolsOption,
    param: ParamOption = None,
    feed: FeedUrlOption = None,
    status_interval: Annotated[float, typer.Option(help="Seconds between two status lines.")] = 1.0,
    state_interval: Annotated[
        float,
        typer.Option(help="Seconds between saves of strategy state changed without an order."),
    ] = 1.0,
    max_retry_after: Annotated[
        float, typer.Option(help="The longest 429 Retry-After wait honoured, seconds.")
    ] = 30.0,
    max_order_notional: Annotated[
        float, typer.Option(help="Risk limit: the largest order, price × quantity.")
    ] = 1_000_000.0,
    max_position: Annotated[
        float, typer.Option(help="Risk limit: the largest position per symbol, in units.")
    ] = 1_000.0,
    signing_key: SigningKeyOption = None,
    signing_key_file: SigningKeyFileOption = None,
    audit_key_file: AuditKeyFileOption = None,
    max_violations: Annotated[
        int,
        typer.Option(help="Forged frames within --violation-window that pull the kill switch."),
    ] = 5,
    violation_window: Annotated[
        float, typer.Option(help="Seconds over which forged frames are counted.")
    ] = 60.0,
    security_hold: Annotated[
        float | None,
        typer.Option(
            help="Seconds without a forged frame before trading may resume "
            "[default: --violation-window].",
            show_default=False,
        ),
    ] = None,
    cluster: ClusterOption = None,  # shared breakers (issue 14, H6)
    redis: RedisOption = None,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Trade strategies live against the exchange, reconciling with it first.

    Prints JSON lines (reconciled, resumed after an unclean shutdown, trading, status, stopped or
    kill_switch). With --cluster NAME --redis URL the order API's circuit breaker is shared with
    the cluster's traders on Redis: status lines show breaker.shared, and a breaker_shared line
    says when Redis is lost (local breaker) or back (shared again).
    Exit status: 0 stopped by SIGTERM or SIGINT; 1 the exchange cannot be reached to reconcile,
    the book is damaged, or the kill switch's snapshot.json is damaged after an unclean
    shutdown; 2 a usage error (a strategy or parameter that does not build, a book that refuses
    them); 3 the kill switch was pulled (snapshot.json and UNCLEAN_SHUTDOWN beside the book).
    """
    keys = _secrets(_TRADE, signing_key, signing_key_file, audit_key_file)
    try:
        config = trader_config(
            exchange_url=exchange_url,
            feed=feed,
            book=book,
            strategies=strategy,
            symbols=symbols,
            params=param or [],
            status_interval=status_interval,
            state_interval=state_interval,
            max_retry_after=max_retry_after,
            max_order_notional=max_order_notional,
            max_position=max_position,
            max_violations=max_violations,
            violation_window=violation_window,
            security_hold=security_hold,
            signing_key=keys[0],
            audit_key=keys[1],
            cluster=cluster,
            redis_url=redis,
        )
    except ConfigurationError as exc:
        usage_error(_TRADE, exc.as_option())
    from strategylab.node import run_trader_process  # noqa: PLC0415

    raise typer.Exit(run_trader_process(config, log_level=log_level.level))
