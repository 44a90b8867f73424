"""The lab's verdicts as JUnit XML, for CI systems: one ``<testcase>`` per category.

Shape (the de-facto schema Jenkins, GitLab and GitHub's test reporters read)::

    <testsuites>
      <testsuite name="strategylab.lab" tests="N" failures="F" errors="0" skipped="S"
                 time="SECONDS" timestamp="YYYY-MM-DDTHH:MM:SS" hostname="HOST" id="0"
                 package="strategylab.lab">
        <properties><property name="seed" value="42"/> ...</properties>
        <testcase classname="strategylab.lab" name="03 network partition" time="SECONDS">
          <failure message="FIRST REASON" type="criterion">EVERY REASON, ONE A LINE</failure>
        </testcase>
        <testcase ...><skipped message="WHY"/></testcase>
      </testsuite>
    </testsuites>

``timestamp`` is the run's start in UTC without a fraction or an offset, as the Ant/Jenkins
JUnit schema has it. A category fails on the seed's criterion (the exit code's rule); the verdict
against the project's own criterion is in the test case's ``<system-out>``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final

from strategylab.errors import StrategyLabError

from ._run_model import LabReport

__all__ = [
    "SUITE_NAME",
    "JunitPathError",
    "check_junit_file",
    "junit_timestamp",
    "junit_xml",
    "unwritable_reason",
    "write_junit",
    "write_junit_case",
]

SUITE_NAME: Final = "strategylab.lab"


_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class JunitPathError(StrategyLabError, ValueError):
    """The JUnit file cannot be written; the message names the path and says why (not the
    flag: the command line adds ``--junit``)."""


def unwritable_reason(path: Path) -> str | None:
    """Why ``path`` (missing) could not be created, or ``None`` when it could: its nearest
    existing ancestor must be a directory this process may write into and enter."""
    ancestor = path.absolute().parent
    while not os.path.lexists(ancestor):
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{str(ancestor)!r} is not writable"
    return None


def check_junit_file(path: Path) -> None:
    """Refuse ``path`` as the JUnit file before anything runs: :class:`JunitPathError` naming it
    when it is a directory, an existing file this process may not write, or cannot be created
    (a parent is not a directory, or is not writable). Nothing is created."""
    target = path.absolute()
    if os.path.lexists(target):
        if target.is_dir():
            raise JunitPathError(f"{str(path)!r} is a directory, not a file")
        if not os.access(target, os.W_OK):
            raise JunitPathError(f"{str(path)!r} exists and is not writable")
        return
    reason = unwritable_reason(target)
    if reason is not None:
        raise JunitPathError(f"{str(path)!r} cannot be created: {reason}")


def junit_timestamp(started_wall: str) -> str:
    """The Ant/Jenkins schema's ``timestamp``: ``YYYY-MM-DDTHH:MM:SS`` in UTC, no fraction and
    no offset. ``started_wall`` is ISO-8601 (a naive time is taken as UTC); raises
    :class:`ValueError` naming it when it is not."""
    try:
        when = dt.datetime.fromisoformat(started_wall)
    except ValueError:
        raise ValueError(f"started_wall={started_wall!r}: not an ISO-8601 time") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when.replace(microsecond=0).isoformat(timespec="seconds")


def _now_timestamp() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0).isoformat()


def _hostname() -> str:
    return socket.gethostname() or "localhost"


def _text(value: str) -> str:
    """``value`` with the characters XML 1.0 cannot hold replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def junit_xml(report: LabReport) -> str:
    """``report`` as JUnit XML text (UTF-8 declared), one ``<testcase>`` per category:
    ``<failure>`` with the reasons when it failed, ``<skipped>`` with the reason when skipped."""
    results = report.results
    verdicts = [r.judge(r.seed_criterion) for r in results]
    root = ET.Element("testsuites", name="strategylab lab")
    suite = ET.SubElement(
        root,
        "testsuite",
        name=SUITE_NAME,
        tests=str(len(results)),
        failures=str(sum(v == "fail" for v, _ in verdicts)),
        errors="0",
        skipped=str(sum(v == "skipped" for v, _ in verdicts)),
        time=_seconds(report.duration_s),
        timestamp=junit_timestamp(report.started_wall),
        hostname=_text(_hostname()),
        id="0",
        package=SUITE_NAME,
    )
    properties = ET.SubElement(suite, "properties")
    options = report.options
    for name, value in (
        ("seed", str(options.seed)),
        ("severity", str(options.severity)),
        ("store", "postgresql" if options.postgres else "sqlite"),
    ):
        ET.SubElement(properties, "property", name=name, value=value)
    for result, (verdict, reasons) in zip(results, verdicts, strict=True):
        case = ET.SubElement(
            suite,
            "testcase",
            classname=SUITE_NAME,
            name=_text(f"{result.id:02d} {result.name}"),
            time=_seconds(result.ended - result.started),
        )
        if verdict == "fail":
            failure = ET.SubElement(
                case,
                "failure",
                message=_text(reasons[0]) if reasons else "failed",
                type="criterion",
            )
            failure.text = _text("\n".join(reasons))
        elif verdict == "skipped":
            ET.SubElement(case, "skipped", message=_text(reasons[0]) if reasons else "skipped")
        own, own_reasons = result.judge(result.own_criterion)
        out = ET.SubElement(case, "system-out")
        out.text = _text(
            "\n".join([f"seed criterion: {verdict}", f"own criterion: {own}", *own_reasons])
        )
    ET.indent(root)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{ET.tostring(root, encoding="unicode")}\n'


def write_junit(report: LabReport, path: Path) -> Path:
    """Write :func:`junit_xml` to ``path`` (its directory created when missing); returns it.

    Raises :class:`OSError` when it cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(report), encoding="utf-8")
    return path


def write_junit_case(
    path: Path,
    *,
    name: str,
    failure: str | None,
    seconds: float,
    suite: str = SUITE_NAME,
    started_wall: str | None = None,
) -> Path:
    """Write a one-test-case JUnit file to ``path`` (a ``strategylab lab run`` experiment):
    ``<failure>`` with ``failure`` when it is not ``None``; ``timestamp`` from
    ``started_wall`` (ISO-8601; now when ``None``). Returns ``path``; raises :class:`OSError`
    when it cannot be written."""
    root = ET.Element("testsuites", name="strategylab lab run")
    suite_element = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests="1",
        failures=str(int(failure is not None)),
        errors="0",
        skipped="0",
        time=_seconds(seconds),
        timestamp=_now_timestamp() if started_wall is None else junit_timestamp(started_wall),
        hostname=_text(_hostname()),
        id="0",
        package=suite,
    )
    case = ET.SubElement(
        suite_element, "testcase", classname=suite, name=_text(name), time=_seconds(seconds)
    )
    if failure is not None:
        element = ET.SubElement(case, "failure", message=_text(failure), type="experiment")
        element.text = _text(failure)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ET.tostring(root, encoding="unicode")
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n', encoding="utf-8")
    return path
