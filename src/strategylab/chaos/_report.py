"""The lab's report directory: ``report.json``, ``report.html``, the audit log, integrity reports.

``report.json``'s schema (:data:`REPORT_SCHEMA`, every field documented in ``docs/lab.md``)::

    {"schema": "strategylab.lab/1", "started", "duration_s", "seed", "severity", "machine",
     "passed", "categories": [{"id", "name", "verdict", "verdict_own", "reasons",
     "reasons_own", "criterion", "criterion_own", "figures", "integrity", "checks",
     "faults"}], "audit": {...}, "skipped_capabilities", "files"}

Times inside ``faults`` are seconds since the run started (:attr:`LabReport.origin`).

**The report directory is the user's** (:func:`prepare_report_dir`): the lab writes into a new
directory, an empty one, or one an earlier lab run created (it holds :data:`REPORT_MARKER`); a
non-empty directory without the marker is refused with :class:`ReportDirError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from strategylab._files import make_private_dir
from strategylab.errors import AuditIntegrityError, StrategyLabError
from strategylab.fault_tolerance import AuditLog

from ._junit import JunitPathError, unwritable_reason, write_junit
from ._report_html import render_html
from ._run_model import LabReport
from ._scenario import CategoryResult, Criterion

__all__ = [
    "REPORT_MARKER",
    "REPORT_SCHEMA",
    "ReportDirError",
    "ReportFiles",
    "category_json",
    "check_report_dir",
    "criterion_json",
    "default_report_dir",
    "prepare_report_dir",
    "report_json",
    "write_report",
]

REPORT_SCHEMA: Final = "strategylab.lab/1"
"""``report.json``'s ``schema`` value; bumped on any incompatible change."""
REPORT_MARKER: Final = ".strategylab-lab-report"
"""The file that says a directory was created by the lab (and may be written again)."""
_AUDIT_NAME: Final = "audit.jsonl"
_INTEGRITY_DIR: Final = "integrity"


class ReportDirError(StrategyLabError, ValueError):
    """The report directory cannot be used; the message names it and says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportFiles:
    """What :func:`write_report` wrote (absolute paths; ``None`` for what was not written)."""

    directory: Path
    json: Path
    html: Path
    junit: Path | None = None
    audit_log: Path | None = None
    integrity: tuple[Path, ...] = field(default_factory=tuple)


def default_report_dir(now: dt.datetime, base: Path | None = None) -> Path:
    """``BASE/lab-report-YYYYmmdd-HHMMSS`` for the local time ``now`` (``BASE``: the current
    directory)."""
    return (base if base is not None else Path()) / now.strftime("lab-report-%Y%m%d-%H%M%S")


def check_report_dir(path: Path) -> None:
    """Refuse ``path`` as a report directory, before anything runs: :class:`ReportDirError`
    naming it when it exists and is not a directory, is a non-empty directory without
    :data:`REPORT_MARKER` (the lab did not create it and will not write into it), is a
    directory this process may not write into, or is missing and cannot be created (its nearest
    existing ancestor is not a directory, or not writable: ``/dev/null/x``). Nothing is
    created."""
    target = path.absolute()
    if not os.path.lexists(target):
        reason = unwritable_reason(target)
        if reason is not None:
            raise ReportDirError(f"{str(path)!r} cannot be created: {reason}")
        return
    if target.is_symlink() or not target.is_dir():
        raise ReportDirError(f"{str(path)!r} exists and is not a directory")
    entries = {entry.name for entry in target.iterdir()}
    if entries and REPORT_MARKER not in entries:
        raise ReportDirError(
            f"{str(path)!r} is not empty and was not created by `strategylab lab` "
            "(it would not overwrite it): name a new or empty directory"
        )
    if not os.access(target, os.W_OK | os.X_OK):
        raise ReportDirError(f"{str(path)!r} is not writable")


def prepare_report_dir(path: Path) -> Path:
    """Make ``path`` ready for a report: created (mode 0700, with its parents) when missing,
    taken when empty or holding :data:`REPORT_MARKER`; the marker is written. Returns the
    absolute path.

    Raises :class:`ReportDirError` as :func:`check_report_dir` does (nothing in the directory is
    touched then); :class:`OSError` when it cannot be created.
    """
    check_report_dir(path)
    target = path.absolute()
    try:
        make_private_dir(target)
    except OSError as exc:
        if isinstance(exc, FileExistsError | NotADirectoryError):
            raise ReportDirError(f"{str(path)!r}: {exc.strerror or exc}") from None
        raise
    (target / REPORT_MARKER).write_text(
        json.dumps({"created_by": "strategylab lab", "schema": REPORT_SCHEMA}) + "\n",
        encoding="utf-8",
    )
    return target


def criterion_json(criterion: Criterion) -> dict[str, Any]:
    """A :class:`Criterion` as report JSON (its fields; ``None`` = not judged)."""
    return dataclasses.asdict(criterion)


def category_json(result: CategoryResult, origin: float) -> dict[str, Any]:
    """One category's object in ``report.json``'s ``categories`` (times relative to
    ``origin``, monotonic seconds)."""
    verdict, reasons = result.judge(result.seed_criterion)
    verdict_own, reasons_own = result.judge(result.own_criterion)
    integ = result.integrity
    return {
        "id": result.id,
        "name": result.name,
        "verdict": verdict,
        "verdict_own": verdict_own,
        "reasons": reasons,
        "reasons_own": reasons_own,
        "criterion": criterion_json(result.seed_criterion),
        "criterion_own": criterion_json(result.own_criterion),
        "figures": result.figures(),
        "integrity": None
        if integ is None
        else {
            "acknowledged": integ.acknowledged,
            "stored": integ.stored,
            "lost": integ.lost,
            "duplicated": integ.duplicated,
            "unexpected": integ.unexpected,
            "corrupted": integ.corrupted,
            "consistency": integ.consistency,
            "report": integ.report,
        },
        "checks": [
            {"name": c.name, "ok": c.ok, "detail": c.detail, "independent": c.independent}
            for c in result.checks
        ],
        "shutdowns_asked": result.shutdowns_asked,
        "shutdowns_done": result.shutdowns_done,
        "skipped": result.skipped,
        "error": result.error,
        "started": round(result.started - origin, 6) if result.started else None,
        "ended": round(result.ended - origin, 6) if result.ended else None,
        "faults": [f.to_json(origin) for f in result.faults],
    }


def _audit_json(report: LabReport, copied: Path | None) -> dict[str, Any]:
    """``report.json``'s ``audit``: the lab's verdict on the log, and this module's own check of
    the copy (an unkeyed verification: a keyed log says it needs its key)."""
    out: dict[str, Any] = {
        "source": None if report.audit_log is None else str(report.audit_log),
        "file": None if copied is None else copied.name,
        "verified": report.audit_verified,
        "records": None,
        "head_seq": None,
        "head_hash": None,
        "detail": "",
    }
    if copied is None:
        out["detail"] = "no audit log" if report.audit_log is None else "audit log not found"
        return out
    try:
        result = AuditLog.verify(copied)
    except AuditIntegrityError as exc:
        out["detail"] = str(exc)
        if "keyed" in str(exc) and "its key" in str(exc):
            return out  # keyed: the lab verified it with the key; the copy cannot say more
        out["verified"] = False
        return out
    except OSError as exc:
        out["detail"] = f"cannot read the copy: {exc}"
        out["verified"] = False
        return out
    out.update(records=result.records, head_seq=result.head_seq, head_hash=result.head_hash)
    if out["verified"] is None:
        out["verified"] = True
    out["detail"] = f"hash chain intact: {result.records} records"
    return out


def report_json(
    report: LabReport, *, audit_file: Path | None = None, files: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole of ``report.json`` (schema :data:`REPORT_SCHEMA`) for ``report``;
    ``audit_file`` is the audit log's copy to verify, ``files`` the report's file names."""
    options = report.options
    return {
        "schema": REPORT_SCHEMA,
        "started": report.started_wall,
        "duration_s": round(report.duration_s, 6),
        "seed": options.seed,
        "severity": str(options.severity),
        "categories_asked": list(options.categories),
        "store": "postgresql" if options.postgres else "sqlite",
        "machine": dict(report.machine),
        "passed": report.passed,
        "passed_own": bool(report.results)
        and all(r.judge(r.own_criterion)[0] == "pass" for r in report.results),
        "categories": [category_json(r, report.origin) for r in report.results],
        "audit": _audit_json(report, audit_file),
        "skipped_capabilities": dict(report.skipped_capabilities),
        "files": dict(files or {}),
    }


def _copy_integrity(sources: list[Path], directory: Path) -> tuple[Path, ...]:
    """Copy each integrity report into ``directory/integrity/`` (a missing one is skipped; a
    repeated name gets its index as a prefix)."""
    present = [p for p in sources if p.is_file()]
    if not present:
        return ()
    target = directory / _INTEGRITY_DIR
    target.mkdir(exist_ok=True)
    copied: list[Path] = []
    names: set[str] = set()
    for index, source in enumerate(present, 1):
        name = source.name if source.name not in names else f"{index:02d}-{source.name}"
        names.add(name)
        copied.append(Path(shutil.copyfile(source, target / name)))
    return tuple(copied)


def write_report(report: LabReport, directory: Path, *, junit: Path | None = None) -> ReportFiles:
    """Write ``report.json``, ``report.html``, the audit log's copy (``audit.jsonl``) and the
    integrity reports (``integrity/``) into ``directory`` (prepared with
    :func:`prepare_report_dir`), and the JUnit XML to ``junit`` (default:
    ``report.options.junit``; none when both are ``None``).

    Raises :class:`OSError` when a file of the report directory cannot be written, and
    :class:`~strategylab.chaos.JunitPathError` (naming the JUnit path) when the JUnit file
    cannot (the report directory is written by then).
    """
    directory = directory.absolute()
    audit_copy: Path | None = None
    if report.audit_log is not None and report.audit_log.is_file():
        audit_copy = Path(shutil.copyfile(report.audit_log, directory / _AUDIT_NAME))
    integrity = _copy_integrity(list(report.integrity_reports), directory)
    junit_path = junit if junit is not None else report.options.junit
    files = ReportFiles(
        directory=directory,
        json=directory / "report.json",
        html=directory / "report.html",
        junit=None if junit_path is None else junit_path.absolute(),
        audit_log=audit_copy,
        integrity=integrity,
    )
    names = {
        "html": files.html.name,
        "audit_log": None if audit_copy is None else audit_copy.name,
        "integrity": [str(p.relative_to(directory)) for p in integrity],
        "junit": None if files.junit is None else str(files.junit),
    }
    document = report_json(report, audit_file=audit_copy, files=names)
    text = json.dumps(_finite(document), indent=2, allow_nan=False, default=str)
    _write_text(files.json, text + "\n")
    _write_text(files.html, render_html(report, audit=document["audit"]))
    if files.junit is not None:
        try:
            write_junit(report, files.junit)
        except OSError as exc:
            raise JunitPathError(f"{str(files.junit)!r}: {exc.strerror or exc}") from exc
    return files


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: a temporary file renamed over it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
