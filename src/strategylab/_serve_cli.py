"""``strategylab exchange`` and ``strategylab proxy``: their options, turned into a config.

The servers themselves live in :mod:`strategylab.exchange`
(:func:`~strategylab.exchange.run_exchange_process`) and :mod:`strategylab.chaos`
(:func:`~strategylab.chaos.run_proxy_process`); this module only reads the command line, with the
shared options of :mod:`strategylab._cli_options`, and reports a bad value as one line naming the
flag (exit 2). Those packages are imported only when a command runs: ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer

from strategylab._cli_options import (
    AdminTokenFileOption,
    AdminTokenOption,
    LogLevel,
    LogLevelOption,
    SigningKeyFileOption,
    SigningKeyOption,
    nonempty_path,
    symbols_callback,
    usage_error,
)
from strategylab._secrets import ADMIN_TOKEN, SIGNING_KEY, resolve_secret
from strategylab.errors import ConfigurationError

__all__ = ["DEFAULT_EXCHANGE_SYMBOLS", "exchange_command", "proxy_command"]

_EXCHANGE: Final = "strategylab exchange"
_PROXY: Final = "strategylab proxy"

DEFAULT_EXCHANGE_SYMBOLS: Final = "AAPL,MSFT,GOOG,AMZN,TSLA"
"""The exchange's default ``--symbols`` (its :class:`~strategylab.exchange.ExchangeConfig`'s)."""

_Port = Annotated[int, typer.Option(min=0, max=65535, help="The port; 0 picks a free one.")]
_AdminOpen = Annotated[
    bool,
    typer.Option(
        "--admin-open",
        help="Allow changes without a token (loopback addresses only; default: closed unless "
        "an admin token is given).",
    ),
]
_MaxBody = Annotated[int, typer.Option(help="The largest HTTP request body, bytes.")]
_MaxJsonDepth = Annotated[int, typer.Option(help="The deepest JSON nesting accepted, levels.")]
_MaxNumberDigits = Annotated[int, typer.Option(help="The longest JSON number accepted, digits.")]
_AllowOrigin = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-origin",
        metavar="ORIGIN",
        help="A browser origin allowed to call it; repeatable [default: none].",
        show_default=False,
    ),
]


def _admin_token(
    prog: str, admin_token: str | None, admin_token_file: Path | None, *, admin_open: bool
) -> str | None:
    """The admin token from its three sources; ``--admin-open`` with one of them is refused
    naming the source given (``--admin-token``, ``--admin-token-file`` or the variable)."""
    token = resolve_secret(admin_token, admin_token_file, ADMIN_TOKEN, prog=prog)
    if admin_open and token is not None:
        source = (
            ADMIN_TOKEN.flag
            if admin_token is not None
            else ADMIN_TOKEN.file_flag
            if admin_token_file is not None
            else f"${ADMIN_TOKEN.env}"
        )
        raise ConfigurationError(
            "--admin-open",
            value=True,
            reason=f"contradicts {source} (open means no token); give one of them",
        )
    return token


def exchange_command(  # noqa: PLR0917 - typer passes options positionally
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: _Port = 0,
    symbols: Annotated[
        str,
        typer.Option(
            "--symbols",
            metavar="A,B",
            callback=symbols_callback,
            help="Symbols, comma-separated.",
        ),
    ] = DEFAULT_EXCHANGE_SYMBOLS,
    tick_rate: Annotated[
        float, typer.Option(help="Ticks per second over all symbols; 0 = as fast as taken.")
    ] = 1000.0,
    ticks_per_frame: Annotated[int, typer.Option(help="Ticks in one market-data frame.")] = 100,
    heartbeat_interval: Annotated[
        float, typer.Option(help="Seconds between two heartbeats.")
    ] = 0.25,
    retention: Annotated[int, typer.Option(help="Ticks kept per symbol for replay.")] = 100_000,
    signing_key: SigningKeyOption = None,
    signing_key_file: SigningKeyFileOption = None,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of this command's pseudo-random choices: the generated ticks' prices "
            "and sizes."
        ),
    ] = 0,
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            metavar="DIR",
            parser=nonempty_path("--data-dir"),
            help="The exchange's data directory (created 0700): emitted.log, logs/exchange.log.",
        ),
    ] = Path("exchange-data"),
    max_ticks: Annotated[
        int | None,
        typer.Option(
            help="Stop generating after this many ticks [default: never].", show_default=False
        ),
    ] = None,
    admin_token: AdminTokenOption = None,
    admin_token_file: AdminTokenFileOption = None,
    admin_open: _AdminOpen = False,
    max_body: _MaxBody = 1 << 20,
    max_json_depth: _MaxJsonDepth = 32,
    max_number_digits: _MaxNumberDigits = 64,
    allow_origin: _AllowOrigin = None,
    send_queue: Annotated[
        int, typer.Option(help="Frames queued per subscriber before it is disconnected.")
    ] = 1024,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Run the exchange simulator: market data over WebSocket, an order API over HTTP.

    Prints one JSON line, {"event": "listening", "port": N, "pid": P}, then serves until SIGTERM
    or SIGINT. Exit status: 0 after a signal; 1 an operational failure (the port taken); 2 a
    usage error (a file planted in the data directory included).
    """
    from strategylab._http_guard import LIMIT_FLAGS, HttpLimits  # noqa: PLC0415 - aiohttp
    from strategylab.exchange import ExchangeConfig  # noqa: PLC0415
    from strategylab.market import parse_signing_key  # noqa: PLC0415

    try:
        config = ExchangeConfig(
            host=host,
            port=port,
            # Not split_symbols: an empty item ("A,,B") is refused here, not dropped.
            symbols=tuple(part.strip() for part in symbols.split(",")),
            tick_rate=tick_rate,
            ticks_per_frame=ticks_per_frame,
            heartbeat_interval=heartbeat_interval,
            retention=retention,
            signing_key=parse_signing_key(
                resolve_secret(signing_key, signing_key_file, SIGNING_KEY, prog=_EXCHANGE)
            ),
            seed=seed,
            data_dir=data_dir,
            max_ticks=max_ticks,
            admin_token=_admin_token(
                _EXCHANGE, admin_token, admin_token_file, admin_open=admin_open
            ),
            send_queue=send_queue,
            admin_open=admin_open,
            http_limits=HttpLimits(
                max_body=max_body,
                max_depth=max_json_depth,
                max_digits=max_number_digits,
                allowed_origins=frozenset(allow_origin or ()),
            ),
        )
    except ConfigurationError as exc:
        usage_error(_EXCHANGE, exc.as_option(LIMIT_FLAGS))  # the flag typed, not the config field
    from strategylab.exchange import run_exchange_process  # noqa: PLC0415

    raise typer.Exit(run_exchange_process(config, log_level=log_level.level))


def proxy_command(  # noqa: PLR0917 - typer passes options positionally
    host: Annotated[str, typer.Option(help="The API's address.")] = "127.0.0.1",
    port: _Port = 8474,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of this command's pseudo-random choices: which connections a toxic's "
            "toxicity picks, and the toxics' random amounts [default: unseeded].",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            parser=nonempty_path("--config"),
            help="A JSON list of proxies to create at start, as POST /populate takes it.",
            show_default=False,
        ),
    ] = None,
    admin_token: AdminTokenOption = None,
    admin_token_file: AdminTokenFileOption = None,
    admin_open: _AdminOpen = False,
    max_body: _MaxBody = 1 << 20,
    max_json_depth: _MaxJsonDepth = 32,
    max_number_digits: _MaxNumberDigits = 64,
    allow_origin: _AllowOrigin = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            metavar="DIR",
            parser=nonempty_path("--data-dir"),
            help="Also write the log to DATA_DIR/logs/proxy.log [default: stderr only].",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Run the fault proxy with its Toxiproxy-compatible HTTP API.

    Prints one JSON line, {"event": "listening", "port": N}, then serves until SIGTERM or SIGINT.
    Exit status: 0 after a signal; 1 an address that cannot be bound; 2 a usage error (a bad
    --config file included).
    """
    from strategylab._http_guard import LIMIT_FLAGS, HttpLimits  # noqa: PLC0415 - aiohttp
    from strategylab.chaos import (  # noqa: PLC0415
        ProxyApiAccess,
        ProxyApiConfig,
        run_proxy_process,
    )

    try:
        api = ProxyApiConfig(
            host=host,
            port=port,
            seed=seed,
            config=None if config is None else str(config),
            access=ProxyApiAccess(
                admin_token=_admin_token(
                    _PROXY, admin_token, admin_token_file, admin_open=admin_open
                ),
                admin_open=admin_open,
            ),
            limits=HttpLimits(
                max_body=max_body,
                max_depth=max_json_depth,
                max_digits=max_number_digits,
                allowed_origins=frozenset(allow_origin or ()),
            ),
            data_dir=data_dir,
        )
    except ConfigurationError as exc:
        usage_error(_PROXY, exc.as_option(LIMIT_FLAGS))  # the flag typed, not the HttpLimits field
    raise typer.Exit(run_proxy_process(api, log_level=log_level.level))
