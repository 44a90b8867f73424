"""The demo's data directory: what it owns there, and clearing only that.

**The data directory is the user's.** ``strategylab demo`` writes a marker
(:data:`~strategylab._layout.DEMO_MARKER`, a JSON object listing the names it owns) into a
directory it creates or finds empty, and on a later run it clears only the entries that the
marker lists, without following a symlink. A non-empty directory without the marker is refused
(:class:`DataDirError`, exit 2, one line naming it).

What the demo keeps there (:data:`OWNED`)::

    D/.strategylab-demo     the marker
    D/exchange/             the exchange's data directory (emitted.log, logs/)
    D/node/                 the node's data directory (ticks.db, acks.jsonl, audit, logs/, ...)
    D/trading/              the trader's order book
    D/exchange.log, D/node.log, D/trading.log     each child's stderr
    D/faults.json                                 the run's fault schedule and what it did
    D/signing.key, D/admin.token                  the run's secrets, removed when it ends

``node/`` and ``exchange/`` are removed whole, whatever the processes put inside them (their
``logs/`` included); nothing outside the listed names is ever touched.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Final

from strategylab._files import DIR_MODE, create_private_file
from strategylab._layout import DEMO_MARKER, DataLayout
from strategylab.errors import StrategyLabError

__all__ = [
    "MARKER",
    "OWNED",
    "DataDirError",
    "faults_file",
    "prepare_data_dir",
    "secret_files",
    "stderr_log",
    "trading_dir",
]

MARKER: Final = DEMO_MARKER
"""The file that says a data directory is the demo's, and which of its entries the demo owns."""

_TOOL: Final = "strategylab demo"
_SHAPE: Final = DataLayout(Path())  # only for the names: D/node, D/exchange
_TRADING: Final = "trading"
_SECRETS: Final = ("signing.key", "admin.token")
_CHILDREN: Final = ("exchange", "node", "trading")
_FAULTS: Final = "faults.json"

OWNED: Final = (
    _SHAPE.exchange_dir.root.name,
    _SHAPE.node_dir.root.name,
    _TRADING,
    *(f"{child}.log" for child in _CHILDREN),
    *_SECRETS,
    _FAULTS,
)
"""Every name the demo creates in its data directory; nothing else there is ever removed."""


class DataDirError(StrategyLabError):
    """``--data-dir`` names a directory the demo must not clear (a usage error: exit 2)."""


def trading_dir(data_dir: Path) -> Path:
    """Where the demo's trader keeps its order book."""
    return data_dir / _TRADING


def stderr_log(data_dir: Path, child: str) -> Path:
    """Where the stderr of the demo's child ``child`` (``exchange``, ``node``, ``trading``) goes."""
    if child not in _CHILDREN:
        raise ValueError(f"child={child!r}: expected one of {', '.join(_CHILDREN)}")
    return data_dir / f"{child}.log"


def faults_file(data_dir: Path) -> Path:
    """Where the demo writes its fault schedule and what each fault did (JSON)."""
    return data_dir / _FAULTS


def secret_files(data_dir: Path) -> tuple[Path, Path]:
    """The run's signing-key file and admin-token file (0600, removed when the run ends)."""
    key, token = _SECRETS
    return data_dir / key, data_dir / token


def _marker_names(marker: Path) -> list[str]:
    """The owned names a marker lists; :class:`DataDirError` if it is not the demo's marker."""
    refused = DataDirError(
        f"{marker}: not a marker written by `strategylab demo`; refusing to clear {marker.parent}"
    )
    try:
        regular = stat.S_ISREG(marker.lstat().st_mode)  # a symlinked marker is not trusted
        data = json.loads(marker.read_text(encoding="utf-8")) if regular else None
    except (OSError, ValueError):
        raise refused from None
    names = data.get("owned") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("tool") != _TOOL:
        raise refused
    if not isinstance(names, list):
        raise refused
    # Only names the demo itself uses: a marker cannot make it delete "../x" or "/".
    return [name for name in names if name in OWNED]


def _remove(path: Path) -> None:
    """Remove ``path`` without following a symlink: a link is unlinked, never its target."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        # rmtree never follows a symlink inside the tree (and refuses one at the top).
        shutil.rmtree(path)
    else:
        path.unlink()


def _write_marker(layout: DataLayout) -> None:
    create_private_file(layout.demo_marker)  # refuses a planted symlink
    body = {"tool": _TOOL, "owned": list(OWNED)}
    layout.demo_marker.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def prepare_data_dir(data_dir: Path) -> None:
    """Make ``data_dir`` ready for a fresh run without touching anything the demo did not create.

    A missing directory is created (0700) and an empty one adopted, each with the marker; in a
    directory carrying the marker, the entries it lists are removed (a symlink itself, never its
    target). Raises :class:`DataDirError`, naming the path, for a symlink, a non-directory, a
    non-empty directory without the marker, or a name the demo needs that it does not own;
    ``OSError`` when the directory cannot be created, read or cleared.
    """
    layout = DataLayout(data_dir)
    try:
        info = data_dir.lstat()
    except FileNotFoundError:
        data_dir.mkdir(mode=DIR_MODE, parents=True)
        _write_marker(layout)
        return
    if stat.S_ISLNK(info.st_mode):
        raise DataDirError(f"{data_dir}: a symlink; give the directory it points to")
    if not stat.S_ISDIR(info.st_mode):
        raise DataDirError(f"{data_dir}: exists and is not a directory")
    entries = {entry.name for entry in os.scandir(data_dir)}
    if not entries:
        _write_marker(layout)
        return
    if MARKER not in entries:
        raise DataDirError(
            f"{data_dir}: not empty and not created by `strategylab demo` (no {MARKER}); "
            "refusing to clear it: give a new or empty directory"
        )
    for name in _marker_names(layout.demo_marker):
        _remove(data_dir / name)
    foreign = sorted(name for name in OWNED if os.path.lexists(data_dir / name))
    if foreign:
        raise DataDirError(
            f"{data_dir / foreign[0]}: in the way and not created by `strategylab demo`; "
            "refusing to remove it"
        )
    _write_marker(layout)
