"""``strategylab status`` and ``strategylab kill``: talk to a running node's status service.

Both take the service's base URL (``--url http://HOST:PORT``, the ``status_url`` of the node's
``{"event": "ready", ...}`` line) and a ``--timeout`` in seconds for the whole exchange.

- ``status`` asks ``GET URL/status`` and prints the JSON as tables (the node, components and
  health, breakers, recoveries, degradation, ingest, risk, kill switch, and whatever else the
  node reports), or the JSON as received with ``--json``.
- ``kill`` asks ``POST URL/admin/kill`` with ``{"reason": TEXT}`` and ``Authorization: Bearer
  TOKEN``; the token comes from ``--admin-token-file PATH`` or ``$STRATEGYLAB_ADMIN_TOKEN``
  (:mod:`strategylab._secrets`). There is no ``--admin-token VALUE``: a value on the command
  line is readable by every local user in ``ps``.

Exit status: 0 done; 1 the node cannot be reached or refused (one line naming the URL and why:
connection refused, timeout, unknown host, a failed TLS handshake (an ``https://`` URL at the
service, which serves plain HTTP), an HTTP error, a refused token, admin routes that are off, or
"did not answer as a Strategy Lab node": an answer that is not JSON or not of the service's
shape, :data:`STATUS_SHAPE` for ``status`` and HTTP 202 :data:`KILL_SHAPE` for ``kill``); 2 a
usage error (one line naming the flag). Redirects are never followed: the token must not travel
to another address.

The commands and their options are declared in :mod:`strategylab.cli`, which imports this
module only when one of them runs (``--help`` stays fast); ``aiohttp`` and ``rich`` likewise.
"""

from __future__ import annotations

import json
import math
import os
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

import typer

from strategylab._cli_options import check_url, usage_error
from strategylab._logging import escape
from strategylab._secrets import ADMIN_TOKEN, secret_from
from strategylab.errors import ConfigurationError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from strategylab.distributed import ClusterKillAck

__all__ = [
    "KILL_SHAPE",
    "MAX_REASON",
    "STATUS_SHAPE",
    "check_reason_option",
    "check_timeout_option",
    "check_url_option",
    "kill_shape_error",
    "render_status",
    "run_cluster_kill",
    "run_kill",
    "run_status",
    "status_shape_error",
]

_STATUS: Final = "strategylab status"
_KILL: Final = "strategylab kill"
MAX_REASON: Final = 500
"""The longest ``--reason`` accepted, characters."""
_MAX_BODY: Final = 16 * 1024 * 1024
"""The largest answer read, bytes: a status far larger than this is not one."""
_MAX_COLUMNS: Final = 8
_MAX_ROWS: Final = 20
_HTTP_SCHEMES: Final = ("http", "https")


class _UnreachableError(Exception):
    """The node could not be asked, or its answer could not be used; the message says why."""


class _Answer:
    """An HTTP answer: status, reason phrase, body, ``Location`` header."""

    __slots__ = ("body", "location", "reason", "status")

    def __init__(self, status: int, reason: str, body: bytes, location: str | None) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.location = location


def check_url_option(ctx: typer.Context, _param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        try:
            check_url("--url", value, _HTTP_SCHEMES)
        except ConfigurationError as exc:
            usage_error(ctx.command_path, exc)
    return value


def check_timeout_option(ctx: typer.Context, _param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, float) and not (math.isfinite(value) and value > 0):
        usage_error(
            ctx.command_path, f"--timeout {value!r}: must be a finite number of seconds > 0"
        )
    return value


def check_reason_option(ctx: typer.Context, _param: typer.CallbackParam, value: object) -> object:
    if isinstance(value, str):
        if not value.strip():
            usage_error(ctx.command_path, "--reason: must not be empty")
        if len(value) > MAX_REASON:
            usage_error(
                ctx.command_path,
                f"--reason: {len(value)} characters; at most {MAX_REASON} are accepted",
            )
        if not value.isprintable():
            usage_error(
                ctx.command_path,
                f"--reason {value!r}: must be one line of printable text (no control characters)",
            )
    return value


def _endpoint(base: str, path: str) -> str:
    return base.rstrip("/") + path


async def _request(
    method: str,
    url: str,
    *,
    seconds: float,
    headers: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
) -> _Answer:
    """One HTTP exchange; every way it can fail is raised as :class:`_UnreachableError`."""
    import aiohttp  # noqa: PLC0415 - keep `--help` fast

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session,
            session.request(
                method, url, headers=headers, json=body, allow_redirects=False
            ) as response,
        ):
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > _MAX_BODY:
                    raise _UnreachableError(f"the answer is larger than {_MAX_BODY} bytes")
            return _Answer(
                response.status,
                response.reason or "",
                bytes(data),
                response.headers.get("Location"),
            )
    except TimeoutError:
        raise _UnreachableError(f"no answer within {seconds:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _UnreachableError(_why_unreachable(exc)) from None


def _why_unreachable(exc: Exception) -> str:  # noqa: PLR0911 - one return per kind of failure
    """One line for a failed exchange (an aiohttp client error, or a socket or TLS error
    outside aiohttp's own wrapping)."""
    import aiohttp  # noqa: PLC0415 - keep `--help` fast

    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host!r}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not accepted: {_tls_reason(exc.certificate_error)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return _tls_failed(exc.os_error)
    if isinstance(exc, ssl.SSLError):
        return _tls_failed(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        why = os.strerror(errno) if errno else str(exc.os_error) or type(exc.os_error).__name__
        return f"cannot connect: {why}"
    if isinstance(exc, aiohttp.ClientError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's short reason (``WRONG_VERSION_NUMBER``, ``CERTIFICATE_VERIFY_FAILED``), else
    the error's text."""
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    return str(reason) if reason else str(exc) or type(exc).__name__


def _tls_failed(exc: BaseException) -> str:
    """The line for a failed TLS handshake. Its errno is OpenSSL's error class (1), which
    ``os.strerror`` would render as "Operation not permitted"; the usual cause is an
    ``https://`` URL at a node serving plain HTTP (the status service has no TLS)."""
    return f"TLS handshake failed: is the node serving plain http? ({_tls_reason(exc)})"


def _exchange(
    prog: str, url: str, method: str, path: str, *, timeout: float, **kwargs: Any
) -> _Answer:
    """:func:`_request` run to completion; an unreachable node exits 1 with one line."""
    import asyncio  # noqa: PLC0415

    try:
        return asyncio.run(_request(method, _endpoint(url, path), seconds=timeout, **kwargs))
    except _UnreachableError as exc:
        _fail(prog, url, str(exc))


def _fail(prog: str, url: str, why: str) -> NoReturn:
    """Write ``PROG: URL: WHY`` (escaped, one line) to stderr and exit 1."""
    typer.echo(f"{prog}: {escape(url)}: {escape(why)}", err=True)
    raise typer.Exit(1)


def _json(prog: str, url: str, answer: _Answer) -> Any:
    """The answer's JSON document; exit 1 naming the URL when it is not JSON."""
    try:
        return json.loads(answer.body)
    except ValueError as exc:
        _not_a_node(prog, url, f"HTTP {answer.status}: the answer is not JSON ({exc})")


def _not_a_node(prog: str, url: str, why: str) -> NoReturn:
    """Exit 1 with one line: whatever answers at ``url`` is not a node's status service."""
    _fail(prog, url, f"did not answer as a Strategy Lab node: {why}")


_NUMBER: Final = (int, float)
_NULL: Final = type(None)
STATUS_SHAPE: Final[Mapping[str, tuple[type, ...]]] = {
    "node": (str,),
    "uptime": (*_NUMBER, _NULL),
    "time": _NUMBER,
    "components": (list,),
    "health": (dict, _NULL),
    "breakers": (dict,),
    "active_recoveries": (list,),
    "statistics": (dict,),
    "degradation": (dict, _NULL),
    "supervisor": (dict, _NULL),
    "risk_state": (str, _NULL),
    "store": (dict,),
    "ingest": (dict, _NULL),
    "ticks_per_s": (*_NUMBER, _NULL),
    "feed": (dict, _NULL),
    "last_price": (dict,),
    "kill_switch": (dict, _NULL),
    "audit": (list,),
    "chart": (dict,),
    "events": (dict,),
    "extra": (dict,),
}
"""The keys a node's ``GET /status`` body always has and the JSON types each may take
(:func:`strategylab.service` ``status_body``); a body without them is not a node's status.
Keys beyond these are allowed (a newer node's figures)."""
KILL_SHAPE: Final = '{"ok": true, "action": "kill", "target": null, "result": {...}}'
"""The body a node's ``POST /admin/kill`` answers with HTTP 202 (:mod:`strategylab.service`)."""


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type."""
    if isinstance(value, bool):
        return "boolean"
    return next((name for t, name in _TYPE_NAMES.items() if isinstance(value, t)), "value")


_TYPE_NAMES: Final[Mapping[type, str]] = {
    _NULL: "null",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def status_shape_error(document: object) -> str | None:
    """Why ``document`` (a decoded ``GET /status`` body) is not a node's status, or None when
    it has every key of :data:`STATUS_SHAPE` with one of its types."""
    if not isinstance(document, dict):
        return f"the /status answer is a JSON {_json_type(document)}, not an object"
    missing = [key for key in STATUS_SHAPE if key not in document]
    if missing:
        shown = ", ".join(repr(key) for key in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return f"the /status answer lacks the keys {shown}{more}"
    for key, types in STATUS_SHAPE.items():
        value = document[key]
        # JSON true/false decode to bool, a subclass of int: never a number here.
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in types))
            return f"/status {key!r} is a JSON {_json_type(value)}, not {wanted}"
    return None


def kill_shape_error(answer_status: int, document: object) -> str | None:
    """Why a ``POST /admin/kill`` answer (its HTTP status and decoded body) is not a node's
    kill answer (HTTP 202 and :data:`KILL_SHAPE`), or None when it is."""
    if answer_status != 202:
        return f"HTTP {answer_status}, not the kill answer (HTTP 202 {KILL_SHAPE})"
    if not isinstance(document, dict):
        return f"HTTP 202 with a JSON {_json_type(document)}, not the kill answer {KILL_SHAPE}"
    if (
        document.get("ok") is not True
        or document.get("action") != "kill"
        or "target" not in document
        or document["target"] is not None
        or not isinstance(document.get("result"), dict)
    ):
        keys = ", ".join(repr(key[:40]) for key in list(document)[:5]) or "no keys"
        return f"HTTP 202 with an object ({keys}), not the kill answer {KILL_SHAPE}"
    return None


def _http_error(answer: _Answer) -> str:
    """One line for an unexpected HTTP status: the status, and the node's message when it gave
    one (``{"error": ...}``), else the start of the body."""
    text = f"HTTP {answer.status} {answer.reason}".rstrip()
    if 300 <= answer.status < 400:
        return f"{text} (a redirect to {answer.location!r}; not followed)"
    try:
        document = json.loads(answer.body)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for key in ("error", "message", "reason"):
            if isinstance(document.get(key), str):
                return f"{text}: {document[key][:200]}"
    snippet = answer.body[:200].decode("utf-8", "replace").strip()
    return f"{text}: {snippet}" if snippet else text


def run_status(*, url: str, as_json: bool, timeout: float) -> None:
    """``strategylab status``: GET ``URL/status`` and print it (tables, or the JSON as received
    with ``as_json``); raises :class:`typer.Exit` with the exit status (0, or 1 with one line
    naming the URL when the node cannot be reached or answers anything but a JSON object with
    the keys and types of :data:`STATUS_SHAPE`)."""
    answer = _exchange(_STATUS, url, "GET", "/status", timeout=timeout)
    if answer.status != 200:
        _fail(_STATUS, url, _http_error(answer))
    document = _json(_STATUS, url, answer)
    why = status_shape_error(document)
    if why is not None:
        _not_a_node(_STATUS, url, why)
    if as_json:
        typer.echo(answer.body.decode("utf-8", "replace").rstrip("\n"))
        raise typer.Exit(0)
    from rich.console import Console  # noqa: PLC0415 - keep `--help` fast

    render_status(document, Console(highlight=False))
    raise typer.Exit(0)


def run_kill(*, url: str, reason: str, admin_token_file: Path | None, timeout: float) -> None:
    """``strategylab kill``: POST ``{"reason": reason}`` to ``URL/admin/kill`` with the admin
    token as a bearer token and print the node's JSON answer; raises :class:`typer.Exit` with
    the exit status (0 accepted: HTTP 202 with :data:`KILL_SHAPE`; 1 unreachable, token
    refused, admin routes off, an HTTP error, any other answer; 2 no token or an unreadable
    token file)."""
    try:
        token = secret_from(admin_token_file, ADMIN_TOKEN)
    except ConfigurationError as exc:
        usage_error(_KILL, exc.as_option())
    if token is None:
        usage_error(
            _KILL,
            f"no admin token: set ${ADMIN_TOKEN.env} or give {ADMIN_TOKEN.file_flag} PATH",
        )
    answer = _exchange(
        _KILL,
        url,
        "POST",
        "/admin/kill",
        timeout=timeout,
        headers={"Authorization": f"Bearer {token}"},
        body={"reason": reason},
    )
    if answer.status == 401:
        _fail(_KILL, url, "token refused (HTTP 401)")
    if answer.status == 403:
        _fail(_KILL, url, "admin routes are off on this node (no admin token configured)")
    if not 200 <= answer.status < 300:
        _fail(_KILL, url, _http_error(answer))
    document = _json(_KILL, url, answer)
    why = kill_shape_error(answer.status, document)
    if why is not None:
        _not_a_node(_KILL, url, why)
    typer.echo(json.dumps(document, separators=(",", ":"), sort_keys=True))
    raise typer.Exit(0)


# --- rendering -------------------------------------------------------------------------------

_ORDER: Final = (
    "components",
    "breakers",
    "active_recoveries",
    "statistics",
    "degradation",
    "store",
    "ingest",
    "feed",
    "kill_switch",
    "health",
    "supervisor",
    "last_price",
    "audit",
)
"""The sections shown first, in this order (``GET /status``'s body,
:mod:`strategylab.service`); any other section follows, so a newer node's figures still show."""
_TITLES: Final = {
    "components": "components (health)",
    "health": "health checks",
    "active_recoveries": "active recoveries",
    "statistics": "recovery statistics",
    "store": "tick store",
    "kill_switch": "kill switch",
    "last_price": "last price",
    "audit": "recent audit records",
}
_COLUMNS: Final = {
    "checks": ("name", "component", "kind", "state", "failures", "last_reason"),
    "components": ("name", "state", "checks"),
    "breakers": (
        "name",
        "state",
        "failure_rate",
        "slow_call_rate",
        "consecutive_failures",
        "failed_calls",
        "rejected_calls",
    ),
    "active_recoveries": ("component", "error_type", "strategy", "attempt", "elapsed"),
    "audit": ("seq", "timestamp", "kind", "component", "data"),
    "features": ("name", "priority", "essential", "active", "pinned"),
    "triggers": ("name", "reading", "shed_above", "restore_below", "over", "error"),
    "history": ("kind", "feature", "trigger", "reading", "level", "time"),
}
"""Preferred columns of the tables of records (those present are shown, in this order)."""
_EMPTY: Final = {"kill_switch": "not pulled"}


def _cell(value: object) -> str:
    """One table cell: a scalar as text, anything nested as compact JSON (cut at 120)."""
    if value is None or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(_cell(v) for v in value) or "-"
    text = json.dumps(value, separators=(",", ":"), default=str)
    return escape(text if len(text) <= 120 else text[:119] + "…")


def _is_record(value: object) -> bool:
    return isinstance(value, dict)


def _records_table(title: str, key: str, records: Sequence[Mapping[str, Any]]) -> Table:
    """A table with one row per record, its columns the preferred ones for ``key`` that the
    records have, else the first keys (at most :data:`_MAX_COLUMNS`)."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415 - node text is never rich markup

    keys: list[str] = []
    for record in records:
        keys.extend(k for k in record if k not in keys)
    preferred = [k for k in _COLUMNS.get(key, ()) if k in keys]
    columns = preferred or keys[:_MAX_COLUMNS]
    table = Table(title=Text(escape(title)), title_justify="left")
    for column in columns:
        table.add_column(Text(escape(column)), overflow="fold")
    shown = records[-_MAX_ROWS:]  # the newest, for histories and audit records
    for record in shown:
        table.add_row(*(Text(_cell(record.get(column))) for column in columns))
    if len(records) > len(shown):
        table.caption = Text(f"the last {len(shown)} of {len(records)}")
    return table


def _mapping_table(title: str, items: Mapping[str, Any]) -> Table:
    """A two-column table: key and value."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415 - node text is never rich markup

    table = Table(title=Text(escape(title)), title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in items.items():
        table.add_row(Text(escape(str(key))), Text(_cell(value)))
    return table


def _section(key: str, value: object) -> list[Table]:
    """The tables of one top-level section of the status."""
    title = _title(key)
    if isinstance(value, list):
        if value and all(_is_record(v) for v in value):
            return [_records_table(title, key, value)]
        return [_mapping_table(title, {"": value or "none"})]
    if not isinstance(value, dict):
        return [_mapping_table(title, {"": value})]
    if value and all(_is_record(v) for v in value.values()):
        # {name: record}: breakers, components
        rows = [{"name": name, **record} for name, record in value.items()]
        return [_records_table(title, key, rows)]
    scalars = {k: v for k, v in value.items() if not isinstance(v, (dict, list)) or _flat(v)}
    tables = [_mapping_table(title, scalars)] if scalars else []
    for sub, nested in value.items():
        if sub in scalars:
            continue
        if isinstance(nested, list) and all(_is_record(v) for v in nested):
            tables.append(_records_table(f"{title}: {sub.replace('_', ' ')}", sub, nested))
        elif isinstance(nested, dict) and nested and all(_is_record(v) for v in nested.values()):
            rows = [{"name": name, **record} for name, record in nested.items()]
            tables.append(_records_table(f"{title}: {sub.replace('_', ' ')}", sub, rows))
        else:
            tables.append(_mapping_table(f"{title}: {sub.replace('_', ' ')}", nested))
    return tables


def _flat(value: object) -> bool:
    """A list of scalars, or an empty container: shown in one cell."""
    if isinstance(value, list):
        return all(not isinstance(v, (dict, list)) for v in value)
    return isinstance(value, dict) and not value


def _title(key: str) -> str:
    return _TITLES.get(key, key.replace("_", " "))


def render_status(status: Mapping[str, Any], console: Console) -> None:
    """Print a node's ``/status`` document on ``console`` as tables: the node's scalar figures
    (and the parts it does not run, as ``-``) first, then the sections of :data:`_ORDER`, then
    any other section. Every text from the node is escaped: control characters and rich markup
    can neither style nor split the screen."""
    from datetime import UTC, datetime  # noqa: PLC0415

    inline = [k for k, v in status.items() if not isinstance(v, (dict, list)) or _flat(v)]
    overview: dict[str, Any] = {}
    for key in inline:
        value = status[key]
        if value is None and key in _EMPTY:
            value = _EMPTY[key]
        elif key == "time" and isinstance(value, (int, float)) and math.isfinite(value):
            value = datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
        overview[_title(key)] = value
    console.print(_mapping_table("node", overview))
    keys = [k for k in _ORDER if k in status] + [k for k in status if k not in _ORDER]
    for key in keys:
        if key in inline:
            continue
        for table in _section(key, status[key]):
            console.print(table)


# --- the cluster kill switch (issue 14, H2) --------------------------------------------------


def _check_cluster_flags(
    url: str | None,
    cluster: str | None,
    redis_url: str | None,
    reason: str | None,
    *,
    clear: bool,
    kill_id: str | None,
) -> None:
    """Exit 2 naming the flag for a missing or contradictory one."""
    if cluster is None or redis_url is None:
        usage_error(_KILL, "--cluster NAME and --redis URL go together")
    if url is not None:
        usage_error(_KILL, "--url contradicts --cluster (one node, or the whole cluster)")
    if clear and reason is not None:
        usage_error(_KILL, "--reason contradicts --clear")
    if not clear and reason is None:
        usage_error(_KILL, "--reason is required (or --clear)")
    if kill_id is not None and not clear:
        usage_error(_KILL, "--kill-id needs --clear")


def _cluster_token(admin_token_file: Path | None) -> str:
    """The admin token, or exit 2 saying where to put it."""
    try:
        token = secret_from(admin_token_file, ADMIN_TOKEN)
    except ConfigurationError as exc:
        usage_error(_KILL, exc.as_option({ADMIN_TOKEN.env: f"${ADMIN_TOKEN.env}"}))
    if token is None:
        usage_error(
            _KILL,
            f"no admin token: set ${ADMIN_TOKEN.env} or give {ADMIN_TOKEN.file_flag} PATH",
        )
    return token


def run_cluster_kill(
    *,
    url: str | None,
    cluster: str | None,
    redis_url: str | None,
    reason: str | None,
    clear: bool,
    kill_id: str | None,
    admin_token_file: Path | None,
    timeout: float,
) -> NoReturn:
    """``strategylab kill --cluster NAME --redis URL (--reason TEXT | --clear [--kill-id ID])``:
    pull or clear the cluster's kill switch (:class:`strategylab.distributed.ClusterKillSwitch`)
    wait up to :data:`ACK_WAIT` s for the running nodes' acknowledgements
    (:meth:`~strategylab.distributed.ClusterKillSwitch.acknowledgements`) and print one JSON
    line (``ok``, ``nodes``: per member ``{ok, outcome, why, verified}``); raises
    :class:`typer.Exit`: 0 done; 1 Redis unreachable, a token that is not the one that pulled
    the kill, nothing to clear, a running node that did not halt / resume, a kill no running
    node acknowledged (misspelt --cluster?); 2 a usage error (a missing or contradictory flag,
    a bad --redis URL, no admin token)."""
    _check_cluster_flags(url, cluster, redis_url, reason, clear=clear, kill_id=kill_id)
    assert cluster is not None  # noqa: S101 - checked
    assert redis_url is not None  # noqa: S101 - checked
    token = _cluster_token(admin_token_file)
    from strategylab.distributed import ClusterKillError, ClusterKillSwitch  # noqa: PLC0415

    try:
        switch = ClusterKillSwitch(cluster, redis_url, admin_token=token, timeout=timeout)
    except ConfigurationError as exc:
        usage_error(_KILL, exc)
    except ValueError as exc:  # redis-py's verdict on the URL
        usage_error(_KILL, f"--redis: {exc}")
    try:
        with switch:
            if clear:
                cleared, receivers = switch.clear(kill_id)
                acks = switch.acknowledgements(cleared, halted=False, wait=ACK_WAIT)
                document: dict[str, object] = {
                    "action": "cluster_clear",
                    "cluster": cluster,
                    "kill_id": cleared,
                    "receivers": receivers,
                }
                live: list[str] = []
            else:
                assert reason is not None  # noqa: S101 - checked above
                record, created, receivers = switch.kill(reason)
                acks = switch.acknowledgements(record.id, halted=True, wait=ACK_WAIT)
                live = [] if acks else switch.live_clusters()
                document = {
                    "action": "cluster_kill",
                    "cluster": cluster,
                    "created": created,
                    "kill": {k: v for k, v in record.to_dict().items() if k != "mac"},
                    "receivers": receivers,
                }
    except ClusterKillError as exc:
        typer.echo(f"{_KILL}: {escape(str(exc))}", err=True)
        raise typer.Exit(2 if exc.usage else 1) from None
    except ConfigurationError as exc:
        usage_error(_KILL, exc)
    ok = _report_acks(cluster, acks, live, clear=clear)
    document["ok"] = ok
    document["nodes"] = {ack.member: ack.to_dict() for ack in acks}
    typer.echo(json.dumps(document, separators=(",", ":"), sort_keys=True))
    raise typer.Exit(0 if ok else 1)


ACK_WAIT: Final = 1.0
"""Seconds ``kill --cluster`` waits for the running nodes' acknowledgements."""


def _report_acks(cluster: str, acks: list[ClusterKillAck], live: list[str], *, clear: bool) -> bool:
    """One stderr line per node that did not halt / resume (or halted with a warning), and
    one when no node is running; True when every running node did what was asked (and, for
    a kill, at least one node is running)."""
    what = "resume" if clear else "halt"
    for ack in acks:
        if not ack.ok:
            typer.echo(
                f"{_KILL}: node {ack.member} did not {what}: {escape(str(ack.why))}", err=True
            )
        elif ack.why:
            typer.echo(f"{_KILL}: node {ack.member}: {escape(ack.why)}", err=True)
    if acks:
        return all(ack.ok for ack in acks)
    if clear:
        typer.echo(f"{_KILL}: cluster {cluster}: no running node (the clear is recorded)", err=True)
        return True
    others = f"; clusters with running nodes: {', '.join(live)}" if live else ""
    typer.echo(
        f"{_KILL}: cluster {cluster}: no running node acknowledged the kill (a misspelt "
        f"--cluster? nodes cut off from Redis?); the kill is recorded and halts nodes that "
        f"start later{others}",
        err=True,
    )
    return False
