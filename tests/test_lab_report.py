"""The lab's report files from a hand-made run: report.json, report.html, JUnit XML, the live
view and the final table."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from strategylab.chaos import (
    REPORT_SCHEMA,
    LabEvent,
    LabOptions,
    LabProgress,
    LabReport,
    ReportDirError,
    Severity,
    junit_xml,
    prepare_report_dir,
    print_summary,
    render_html,
    write_report,
)
from strategylab.chaos._live import plain_line
from strategylab.chaos._measure import FaultRun, ProbeSample
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
    ET.fromstring(junit_xml(report))  # noqa: S314 - our own text; raises on invalid XML


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
