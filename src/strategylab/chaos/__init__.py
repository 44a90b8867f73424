"""Strategy Lab's chaos lab: real faults, measured recovery, checked data integrity.

A Toxiproxy-style TCP fault proxy (with a subset of Toxiproxy's HTTP API) and a Jepsen-style
integrity checker that compares what the exchange emitted with what the store holds.
"""

from __future__ import annotations

from ._checker import (
    CheckInputError,
    Corruption,
    EmittedLogError,
    Gap,
    IntegrityReport,
    SymbolIntegrity,
    TickSet,
    check,
    check_sqlite,
)
from ._proxy import (
    Proxy,
    ProxyError,
    ProxyExistsError,
    ProxyNotFoundError,
    ProxyServer,
    ProxyStatistics,
    ToxicExistsError,
    ToxicNotFoundError,
)
from ._proxy_api import ProxyApiAccess, ProxyApiConfig, run_proxy_process
from ._proxy_api import create_app as create_proxy_api
from ._toxics import Stream, Toxic, ToxicType

__all__ = [
    "CheckInputError",
    "Corruption",
    "EmittedLogError",
    "Gap",
    "IntegrityReport",
    "Proxy",
    "ProxyApiAccess",
    "ProxyApiConfig",
    "ProxyError",
    "ProxyExistsError",
    "ProxyNotFoundError",
    "ProxyServer",
    "ProxyStatistics",
    "Stream",
    "SymbolIntegrity",
    "TickSet",
    "Toxic",
    "ToxicExistsError",
    "ToxicNotFoundError",
    "ToxicType",
    "check",
    "check_sqlite",
    "create_proxy_api",
    "run_proxy_process",
]
