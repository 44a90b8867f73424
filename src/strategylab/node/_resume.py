"""Resume after an emergency shutdown: the unclean-shutdown marker and the state snapshot.

At start (:func:`prepare_resume`, before the store is opened), a node whose data directory holds
``UNCLEAN_SHUTDOWN`` reads and verifies ``snapshot.json``
(:func:`~strategylab.fault_tolerance.read_snapshot`): a damaged snapshot refuses the start
(:class:`~strategylab.fault_tolerance.SnapshotError`, naming the file and how to recover: inspect
it, and to resume from the store alone move it aside; the process exits 1); a marker without a
snapshot resumes with a warning. Once the store is open,
:meth:`Resume.compare` checks that the store holds at least the snapshot's last durable sequence
per symbol (a store behind it lost acknowledged ticks: reported, not hidden). The feed resumes
from the store's watermarks (``Feed`` asks the ingestor's ``last_seqs``, i.e. the store), so
nothing acknowledged is fetched twice or skipped. :meth:`Resume.line` is the ``resumed`` stdout
line; :meth:`Resume.clear` removes the marker, only after the node has started.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from strategylab._layout import DataLayout
from strategylab.fault_tolerance import (
    SnapshotError,
    StateSnapshot,
    UncleanMarker,
    clear_unclean,
    read_snapshot,
    unclean_marker,
)

__all__ = ["Resume", "prepare_resume", "recovery_hint"]

_log = logging.getLogger("strategylab.node._node")


@dataclasses.dataclass(slots=True, kw_only=True)
class Resume:
    """What a start after an unclean shutdown found: the ``marker``, the verified ``snapshot``
    (None when there was none), the store's last sequences once compared, and ``warnings``."""

    layout: DataLayout
    marker: UncleanMarker
    snapshot: StateSnapshot | None
    warnings: list[str] = dataclasses.field(default_factory=list)
    store_last_seq: dict[str, int] = dataclasses.field(default_factory=dict)
    behind: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    cleared: bool = False

    def compare(self, store_last_seq: Mapping[str, int]) -> None:
        """Record the store's last sequences; a symbol the store holds less of than the snapshot
        says was durable goes into :attr:`behind` (``{"snapshot": n, "store": m}``), warned."""
        self.store_last_seq = dict(store_last_seq)
        if self.snapshot is None:
            return
        for symbol, seq in self.snapshot.last_sequence.items():
            have = self.store_last_seq.get(symbol, 0)
            if have < seq:
                self.behind[symbol] = {"snapshot": seq, "store": have}
        if self.behind:
            message = f"the store is behind the snapshot: {self.behind}"
            _log.error("resume: %s", message)
            self.warnings.append(message)

    def line(self) -> dict[str, Any]:
        """The ``resumed`` line's fields (``event`` is added by the caller)."""
        snapshot = self.snapshot
        return {
            "reason": snapshot.reason if snapshot is not None else self.marker.reason,
            "snapshot_time": None if snapshot is None else snapshot.time,
            "last_seq": {} if snapshot is None else dict(snapshot.last_sequence),
            "store_last_seq": dict(self.store_last_seq),
            "resume_from": {s: n + 1 for s, n in self.store_last_seq.items()},
            "behind": dict(self.behind),
            "marker": str(self.marker.path),
            "marker_time": self.marker.time or None,
            "snapshot_sha256": None if snapshot is None else snapshot.digest,
            "warnings": list(self.warnings),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``/status`` (:attr:`line` plus ``cleared``)."""
        return {**self.line(), "cleared": self.cleared}

    def clear(self) -> bool:
        """Remove the marker that was read (not a newer one); True when removed."""
        self.cleared = clear_unclean(self.layout, self.marker)
        return self.cleared


def recovery_hint(layout: DataLayout) -> str:
    """What to do about a damaged ``snapshot.json`` (one line, for the refusal).

    Moving the snapshot aside rather than the marker: the next start still knows that the
    last shutdown was unclean (its ``resumed`` line, the store compared, the marker's reason),
    and resumes from the store alone, with a warning that there was no snapshot."""
    path = layout.snapshot
    return (
        f"inspect it; to resume from the store alone, move it aside "
        f"(mv {path} {path}.damaged) and start again"
    )


def prepare_resume(layout: DataLayout) -> Resume | None:
    """The resume plan when ``layout`` holds an unclean-shutdown marker, else None.

    Raises :class:`~strategylab.fault_tolerance.SnapshotError` naming ``snapshot.json`` when the
    snapshot is damaged (the node must not start on it), its reason ending with
    :func:`recovery_hint`; :class:`~strategylab._files.UnsafePathError` for a symlink or special
    file at either path.
    """
    marker = unclean_marker(layout)
    if marker is None:
        return None
    warnings: list[str] = []
    if marker.problem is not None:
        warnings.append(f"the marker {marker.path} is unreadable: {marker.problem}")
    snapshot: StateSnapshot | None
    try:
        snapshot = read_snapshot(layout)
    except SnapshotError as exc:
        raise SnapshotError(exc.path, f"{exc.reason}; {recovery_hint(layout)}") from exc
    except FileNotFoundError:
        snapshot = None
        warnings.append(f"no snapshot at {layout.snapshot}: resuming from the store alone")
    if (
        snapshot is not None
        and marker.problem is None
        and marker.snapshot_sha256 is not None
        and marker.snapshot_sha256 != snapshot.digest
    ):
        warnings.append(
            f"{layout.snapshot} is not the snapshot the marker names "
            f"({snapshot.digest[:12]} != {marker.snapshot_sha256[:12]})"
        )
    for warning in warnings:
        _log.warning("resume: %s", warning)
    return Resume(layout=layout, marker=marker, snapshot=snapshot, warnings=warnings)
