"""The lab's report files from a hand-made run: report.json, report.html, JUnit XML, the live
view and the final table."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import ClassVar

import pytest
from rich.console import Console

from strategylab.chaos import (
    REPORT_SCHEMA,
    JunitPathError,
    Lab,
    LabEvent,
    LabOptions,
    LabProgress,
    LabReport,
    LabRun,
    ReportDirError,
    Scenario,
    Severity,
    check_junit_file,
    check_report_dir,
    junit_xml,
    prepare_report_dir,
    print_summary,
    render_html,
    write_junit_case,
    write_report,
)
from strategylab.chaos._lab import _run_category
from strategylab.chaos._live import plain_line
from strategylab.chaos._measure import FaultRun, ProbeSample
from strategylab.chaos._report_html import rate_line, timeline_svg
from strategylab.chaos._scenario import CategoryResult, Check, Criterion, Integrity
from strategylab.fault_tolerance import AuditLog

ORIGIN = 1000.0
SEED = Criterion(recovered=0.8, availability=0.95, text="≥ 80 % recovered, ≥ 95 % availability")
OWN = Criterion(recovered=1.0, consistency=1.0, zero_duplicated=True, zero_corrupted=True)


def _fault(name: str, start: float, *, recovered: bool = True, down: int = 0) -> FaultRun:
    """A fault injected at ``ORIGIN + start``, healed 2 s later, recovered 0.5 s after that;
    ``down`` of its 12 availability probes fail."""
    t0 = ORIGIN + start
    samples = [
        ProbeSample(t=t0 + 0.25 * i, ok=not (1 <= i <= down), probe="availability")
        for i in range(12)
    ]
    samples += [ProbeSample(t=t0 + 2.1 + 0.1 * i, ok=recovered, probe="recovery") for i in range(3)]
    return FaultRun(
        name=name,
        kind="network",
        severity="medium",
        sla=10.0,
        t_inject=t0,
        t_detect=t0 + 0.3,
        t_heal=t0 + 2.0,
        t_recovered=t0 + 2.5 if recovered else None,
        samples=samples,
        rates=[(t0 + 0.5 * i, 5000.0 if i < 1 or i > 5 else 0.0) for i in range(8)],
    )


def _integrity(lost: int = 0, duplicated: int = 0) -> Integrity:
    return Integrity(
        acknowledged=1000,
        stored=1000 - lost + duplicated,
        lost=lost,
        duplicated=duplicated,
        unexpected=0,
        corrupted=0,
        report={"symbols": {"A": {"lost": lost}}},
    )


def _report(tmp_path: Path) -> LabReport:
    passing = CategoryResult(
        id=3,
        name="network partition",
        seed_criterion=SEED,
        own_criterion=OWN,
        faults=[_fault("partition ws", 1.0), _fault("partition db", 5.0)],
        checks=[Check(name="exchange order book", ok=True, detail="0 orphans")],
        integrity=_integrity(),
        started=ORIGIN + 0.5,
        ended=ORIGIN + 9.0,
    )
    failing = CategoryResult(
        id=4,
        name="database failover",
        seed_criterion=SEED,
        own_criterion=OWN,
        faults=[_fault("kill primary", 10.0, recovered=False, down=7)],
        integrity=_integrity(lost=3),
        started=ORIGIN + 9.5,
        ended=ORIGIN + 20.0,
    )
    skipped = CategoryResult(
        id=5,
        name="memory pressure",
        seed_criterion=SEED,
        own_criterion=OWN,
        skipped="cgroup memory controller not available",
        started=ORIGIN + 20.0,
        ended=ORIGIN + 20.1,
    )
    audit = tmp_path / "node-audit.jsonl"
    with AuditLog(audit, fsync=False) as log:
        log.append("recovery", {"component": "feed", "outcome": "recovered"})
        log.append("recovery", {"component": "store", "outcome": "recovered"})
    integrity_file = tmp_path / "integrity-3.json"
    integrity_file.write_text('{"ok": true}\n')
    return LabReport(
        options=LabOptions(categories=(3, 4, 5), severity=Severity.HIGH, seed=7),
        results=[passing, failing, skipped],
        started_wall="2024-05-01T12:00:00+00:00",
        origin=ORIGIN,
        duration_s=20.1,
        machine={"cpus": 2, "python": "3.11"},
        audit_log=audit,
        audit_verified=True,
        integrity_reports=[integrity_file],
    )


@pytest.fixture
def report(tmp_path: Path) -> LabReport:
    return _report(tmp_path)


@pytest.fixture
def written(tmp_path: Path, report: LabReport) -> Path:
    directory = prepare_report_dir(tmp_path / "out")
    write_report(report, directory, junit=tmp_path / "junit.xml")
    return directory


def test_report_json_has_the_documented_top_level_fields(written: Path) -> None:
    """report.json carries the schema id and every documented top-level field."""
    doc = json.loads((written / "report.json").read_text())
    assert doc["schema"] == REPORT_SCHEMA == "strategylab.lab/1"
    for key in ("started", "duration_s", "seed", "severity", "machine", "passed", "categories"):
        assert key in doc
    assert doc["seed"] == 7
    assert doc["severity"] == "high"
    assert doc["passed"] is False
    assert doc["machine"] == {"cpus": 2, "python": "3.11"}


def test_report_json_has_one_object_per_category_with_its_verdicts(written: Path) -> None:
    """Each category: id, name, both verdicts with reasons, criteria, figures, faults."""
    cats = json.loads((written / "report.json").read_text())["categories"]
    assert [(c["id"], c["name"], c["verdict"]) for c in cats] == [
        (3, "network partition", "pass"),
        (4, "database failover", "fail"),
        (5, "memory pressure", "skipped"),
    ]
    keys = {"verdict_own", "reasons", "reasons_own", "criterion", "criterion_own", "figures"}
    assert all(keys | {"integrity", "checks", "faults"} <= c.keys() for c in cats)
    assert "3 acknowledged ticks lost" in cats[1]["reasons"]
    assert cats[2]["reasons"] == ["cgroup memory controller not available"]
    assert cats[0]["criterion"]["availability"] == 0.95
    assert cats[0]["figures"]["recovered"] == 2
    assert cats[0]["figures"]["recovery_p50_s"] == pytest.approx(0.5)


def test_report_json_fault_times_are_relative_to_the_run_start(written: Path) -> None:
    """A fault's times in report.json are seconds since the run started."""
    fault = json.loads((written / "report.json").read_text())["categories"][0]["faults"][0]
    assert fault["t_inject"] == pytest.approx(1.0)
    assert fault["t_recovered"] == pytest.approx(3.5)
    assert fault["samples"][0]["t"] == pytest.approx(1.0)


def test_the_audit_log_is_copied_with_its_verification(written: Path) -> None:
    """The node's audit log is copied and its hash chain verified."""
    audit = json.loads((written / "report.json").read_text())["audit"]
    assert (written / "audit.jsonl").is_file()
    assert audit["file"] == "audit.jsonl"
    assert audit["verified"] is True
    assert audit["records"] == 2


def test_a_tampered_audit_log_is_reported_unverified(tmp_path: Path, report: LabReport) -> None:
    """An audit log whose chain is broken is reported as not verified, with the reason."""
    assert report.audit_log is not None
    lines = report.audit_log.read_text().splitlines()
    lines[0] = lines[0].replace("feed", "fxxd")
    report.audit_log.write_text("\n".join(lines) + "\n")
    report.audit_verified = None
    directory = prepare_report_dir(tmp_path / "tampered")
    write_report(report, directory)
    audit = json.loads((directory / "report.json").read_text())["audit"]
    assert audit["verified"] is False
    assert audit["detail"]


def test_integrity_reports_are_copied(written: Path) -> None:
    """The integrity reports land under integrity/."""
    assert (written / "integrity" / "integrity-3.json").read_text() == '{"ok": true}\n'


def test_html_loads_nothing_from_a_network(written: Path) -> None:
    """report.html holds no URL, no script and no external resource; a CSP forbids loads."""
    page = (written / "report.html").read_text()
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page.lower()
    assert not re.search(r"""\s(src|srcset)\s*=""", page, re.IGNORECASE)
    assert not re.search(r"""<link\b""", page, re.IGNORECASE)
    hrefs = re.findall(r"""href="([^"]*)""", page) + re.findall(r"""href='([^']*)""", page)
    assert hrefs
    assert all(h.startswith("#") for h in hrefs)
    assert "Content-Security-Policy" in page
    assert "default-src 'none'" in page


def test_html_has_a_timeline_svg_per_category(report: LabReport) -> None:
    """One inline <svg> timeline per category, ids unique across the page."""
    page = render_html(report)
    figures = re.findall(r'<figure class="timeline" data-category="(\d+)">\s*<svg', page)
    assert figures == ["3", "4", "5"]
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_html_shows_verdicts_and_reasons(report: LabReport) -> None:
    """Each category's section shows its verdict class and its failure reasons."""
    page = render_html(report)
    assert 'class="category pass" id="category-3"' in page
    assert 'class="category fail" id="category-4"' in page
    assert 'class="category skipped" id="category-5"' in page
    assert "3 acknowledged ticks lost" in page


def test_html_escapes_text_from_the_run(report: LabReport) -> None:
    """A fault name with markup is shown as text, never as markup."""
    report.results[0].faults[0].name = "<img src=x onerror=alert(1)>"
    page = render_html(report)
    assert "<img" not in page
    assert "&lt;img src=x" in page


def test_junit_has_one_testcase_per_category(written: Path, tmp_path: Path) -> None:
    """JUnit: one suite, one case per category, failure with reasons, skipped with its reason."""
    root = ET.parse(tmp_path / "junit.xml").getroot()  # noqa: S314 - our own file
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["strategylab.lab"]
    suite = suites[0]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "03 network partition",
        "04 database failover",
        "05 memory pressure",
    ]
    assert cases[0].find("failure") is None
    assert cases[0].find("skipped") is None
    failure = cases[1].find("failure")
    assert failure is not None
    assert "3 acknowledged ticks lost" in (failure.text or "")
    skipped = cases[2].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "cgroup memory controller not available"


def test_junit_replaces_characters_xml_cannot_hold(report: LabReport) -> None:
    """A control character in a reason does not make the XML unparsable."""
    report.results[1].error = "bad\x00byte"
    suite = ET.fromstring(junit_xml(report))  # noqa: S314 - our own text; raises on invalid XML
    text = "".join(suite.itertext())
    assert "\x00" not in text
    assert "bad" in text  # the reason is kept, only the character XML cannot hold is replaced


def test_a_foreign_non_empty_report_dir_is_refused(tmp_path: Path) -> None:
    """A non-empty directory the lab did not create is refused, naming it; nothing is touched."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ReportDirError, match="mine"):
        prepare_report_dir(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_the_lab_reuses_a_report_dir_it_created(written: Path, report: LabReport) -> None:
    """A directory an earlier lab run wrote may be written again."""
    assert prepare_report_dir(written) == written
    write_report(report, written)
    assert (written / "report.json").is_file()


def test_live_progress_follows_the_events() -> None:
    """The live view's state: the category, the fault in force, probes, rate, done."""
    progress = LabProgress(categories=(3, 4))
    events = [
        LabEvent(kind="category", t=1.0, category=3, category_name="network partition"),
        LabEvent(kind="fault", t=1.1, category=3, fault="partition ws"),
        LabEvent(kind="probe", t=1.2, category=3, ok=False),
        LabEvent(kind="probe", t=1.3, category=3, ok=True),
        LabEvent(kind="rate", t=1.4, category=3, ticks_per_s=4200.0),
    ]
    for event in events:
        progress.on_event(event)
    assert (progress.current, progress.fault) == (3, "partition ws")
    assert (progress.probes_ok, progress.probes_total, progress.ticks_per_s) == (1, 2, 4200.0)
    progress.on_event(LabEvent(kind="done", t=2.0, category=3, text="pass"))
    assert progress.done == [(3, "network partition", "pass")]
    assert progress.current is None
    console = Console(record=True, width=100)
    console.print(progress.render())
    assert "1/2 categories" in console.export_text()


def test_plain_lines_skip_probes_and_rates() -> None:
    """Plain output (not a terminal): one line per fault event, none per probe."""
    fault = LabEvent(kind="fault", t=ORIGIN + 2.5, category=3, fault="partition ws")
    assert plain_line(fault, ORIGIN) == "[   2.50 s] category 3 fault injected: partition ws"
    assert plain_line(LabEvent(kind="probe", t=ORIGIN, ok=True), ORIGIN) is None


def test_the_final_table_has_a_row_per_category(report: LabReport) -> None:
    """The final table names every category with both verdicts, and the run's verdict."""
    console = Console(record=True, width=160)
    print_summary(console, report, None)
    text = console.export_text()
    for name in ("3. network partition", "4. database failover", "5. memory pressure"):
        assert name in text
    assert "PASS" in text
    assert "SKIPPED" in text
    assert "FAILED in 20.1 s" in text


# --- review defects: the events the lab really emits, the log lines, JUnit, the rate line -------


class _Stub:
    """The part of a Pipeline ``_run_category`` touches when the scenario decides alone."""

    node_running = True


def _scenario(ident: int, outcome: str) -> Scenario:
    class _Decides(Scenario):
        id: ClassVar[int] = ident
        name: ClassVar[str] = f"decides {outcome}"
        seed_criterion: ClassVar[Criterion] = Criterion(recovered=1.0)

        async def run(self, lab: Lab) -> None:
            if outcome == "skipped":
                lab.result.skipped = "not on this machine"
            else:
                lab.result.integrity = Integrity(
                    acknowledged=1, stored=1, lost=0, duplicated=0, unexpected=0, corrupted=0
                )
                lab.check("decided", outcome == "pass")

    return _Decides()


async def test_the_lab_ends_each_category_with_a_done_event_the_view_counts() -> None:
    """Each category's end is a ``done`` event with its id, ``ok`` and verdict: the live view's
    progress bar and the interrupted summary count it (it was a ``note``, counted as nothing)."""
    events: list[LabEvent] = []
    for ident, outcome in ((3, "pass"), (4, "fail"), (5, "skipped")):
        scenario = _scenario(ident, outcome)
        lab = LabRun(_Stub(), scenario, on_event=events.append)  # type: ignore[arg-type]
        await _run_category(lab, scenario, _Stub())  # type: ignore[arg-type]
    done = [e for e in events if e.kind == "done"]
    assert [(e.category, e.ok, e.text) for e in done] == [
        (3, True, "pass"),
        (4, False, "fail"),
        (5, False, "skipped"),
    ]
    progress = LabProgress(categories=(3, 4, 5))
    for event in events:
        progress.on_event(event)
    assert [(i, text) for i, _, text in progress.done] == [(3, "pass"), (4, "fail"), (5, "skipped")]
    console = Console(record=True, width=100)
    console.print(progress.render())
    assert "3/3 categories" in console.export_text()


def test_the_run_end_is_not_counted_as_a_category() -> None:
    """The run's end (a ``note``, or a ``done`` without a category from an older lab) is not
    pinned on the last category, and a category is never counted twice."""
    progress = LabProgress(categories=(3, 4))
    progress.on_event(LabEvent(kind="category", t=1.0, category=3, category_name="a"))
    progress.on_event(LabEvent(kind="done", t=2.0, category=3, ok=True, text="pass"))
    progress.on_event(LabEvent(kind="done", t=2.1, category=3, ok=True, text="pass"))
    progress.on_event(LabEvent(kind="note", t=3.0, text="lab run finished"))
    progress.on_event(LabEvent(kind="done", t=3.1, text="lab run finished"))
    assert progress.done == [(3, "a", "pass")]


def test_a_fault_that_did_not_recover_is_logged_as_not_recovered() -> None:
    """``recovered`` with ``ok=False`` says "did NOT recover" and why, never "recovered"."""
    event = LabEvent(
        kind="recovered", t=ORIGIN + 5, category=7, fault="overload.cpu_throttled", ok=False
    )
    line = plain_line(event, ORIGIN)
    assert line is not None
    assert "category 7 did NOT recover from overload.cpu_throttled (" in line
    assert " recovered from" not in line
    why = LabEvent(kind="recovered", t=ORIGIN, category=7, fault="f", ok=False, text="node down")
    assert plain_line(why, ORIGIN) == "[   0.00 s] category 7 did NOT recover from f (node down)"
    good = LabEvent(kind="recovered", t=ORIGIN, category=7, fault="f", ok=True)
    assert plain_line(good, ORIGIN) == "[   0.00 s] category 7 recovered from f"
    progress = LabProgress(categories=(7,))
    progress.on_event(event)
    assert "did NOT recover" in progress.fault


def test_a_fault_line_names_the_fault_once() -> None:
    """The lab's fault text starts with the fault's name: the line says it once."""
    event = LabEvent(
        kind="fault",
        t=ORIGIN + 1,
        category=1,
        fault="network.reset",
        text="network.reset on for 0.1 s",
    )
    assert plain_line(event, ORIGIN) == (
        "[   1.00 s] category 1 fault injected: network.reset on for 0.1 s"
    )


def test_junit_suite_has_the_ant_schema_timestamp_and_attributes(report: LabReport) -> None:
    """``timestamp`` is ``YYYY-MM-DDTHH:MM:SS`` in UTC (no fraction, no offset); the suite has
    ``hostname``, ``id`` and ``package``."""
    report.started_wall = "2024-05-06T09:08:07.654321+02:00"
    suite = ET.fromstring(junit_xml(report)).find("testsuite")  # noqa: S314 - our own text
    assert suite is not None
    assert suite.get("timestamp") == "2024-05-06T07:08:07"
    assert suite.get("hostname")
    assert suite.get("id") == "0"
    assert suite.get("package") == "strategylab.lab"


def test_a_one_case_junit_file_has_the_ant_schema_timestamp(tmp_path: Path) -> None:
    """``lab run``'s one-case file carries the same attributes."""
    path = write_junit_case(
        tmp_path / "j.xml", name="x", failure=None, seconds=1.0, started_wall="2024-05-06T07:08:07Z"
    )
    suite = ET.parse(path).getroot().find("testsuite")  # noqa: S314 - our own file
    assert suite is not None
    assert suite.get("timestamp") == "2024-05-06T07:08:07"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.get("timestamp") or "")
    assert suite.get("hostname")


@pytest.mark.parametrize(
    ("path", "bad"), [("/dev/null/x", "is not a directory"), ("{tmp}/file/x", "is not a directory")]
)
def test_a_report_dir_that_cannot_be_created_is_refused_before_the_run(
    tmp_path: Path, path: str, bad: str
) -> None:
    """A report directory under a file cannot be created: refused up front, naming it."""
    (tmp_path / "file").write_text("")
    with pytest.raises(ReportDirError, match=bad):
        check_report_dir(Path(path.format(tmp=tmp_path)))


def test_a_junit_path_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    """A directory, a path under /dev/null: refused; a new file in a directory is fine."""
    with pytest.raises(JunitPathError, match="is a directory"):
        check_junit_file(tmp_path)
    with pytest.raises(JunitPathError, match="cannot be created"):
        check_junit_file(Path("/dev/null/j.xml"))
    check_junit_file(tmp_path / "new" / "j.xml")
    assert not (tmp_path / "new").exists()


def test_the_rate_line_breaks_where_samples_are_missing() -> None:
    """A gap longer than two sampling intervals (the node was down) is a NaN: no line across."""
    points = [(float(t), 100.0) for t in range(5)] + [(float(t), 90.0) for t in range(12, 15)]
    xs, ys = rate_line(points)
    gaps = [x for x, y in zip(xs, ys, strict=True) if math.isnan(y)]
    assert gaps == [8.0]
    assert [y for y in ys if not math.isnan(y)] == [100.0] * 5 + [90.0] * 3
    even = [(0.5 * i, 1.0) for i in range(10)]
    assert not any(math.isnan(y) for y in rate_line(even)[1])
    _, with_nan = rate_line([(0.0, 1.0), (1.0, math.inf), (2.0, 1.0)])
    assert math.isnan(with_nan[1])


def test_the_timeline_svg_draws_the_rate_in_two_pieces_across_a_gap(report: LabReport) -> None:
    """The drawn line has a break: the SVG path of the rate line has two move-tos."""
    fault = report.results[0].faults[0]
    fault.rates = [(ORIGIN + t, 100.0) for t in (0, 1, 2, 3)] + [
        (ORIGIN + t, 100.0) for t in (9, 10, 11)
    ]
    svg = timeline_svg(report.results[0], ORIGIN)
    rate_paths = [
        d
        for d, style in re.findall(r'<path d="([^"]*)"[^>]*style="([^"]*)"', svg)
        if "#2e6fba" in style
    ]
    assert rate_paths, "no rate line drawn"
    assert sum(d.count("M") for d in rate_paths) == 2
