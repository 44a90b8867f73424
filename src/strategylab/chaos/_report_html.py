"""``report.html``: the lab's report as one self-contained page, openable without a network.

One section per category: the verdicts against the seed's criterion and the project's own, the
figures, the faults, the checks, the integrity figures, and a **recovery timeline** drawn by
matplotlib as inline SVG: each fault's window shaded (inject to heal), its detection and recovery
marked, the probe results over time (one row per probe, a dot per result: passed or failed), and
the ingest rate (ticks/s) below.

**Nothing is loaded from anywhere.** CSS is inline, the SVG is inline (its DOCTYPE, namespace
declarations and RDF metadata, which hold URLs, are stripped: HTML's parser gives inline ``<svg>``
its namespace), there is no script, and a Content-Security-Policy meta (:data:`CSP`) forbids every
load, so a report opened from a CI artefact cannot call out.

Drawing uses :class:`matplotlib.figure.Figure` directly, never :mod:`matplotlib.pyplot`: no GUI
backend is selected and no global figure state is touched (the same effect as
``matplotlib.use("Agg")`` without changing the backend of a program that embeds the lab).
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ._run_model import LabReport
from ._scenario import CategoryResult, Criterion

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ._measure import FaultRun

__all__ = ["CSP", "rate_line", "render_html", "timeline_svg"]

CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'"
)
"""The page's Content-Security-Policy: inline styles only; no script, no fetch, no external
anything."""

_FAULT_COLOUR: Final = "#f4a259"
_DETECT_COLOUR: Final = "#c0392b"
_RECOVER_COLOUR: Final = "#1e8449"
_RATE_COLOUR: Final = "#2e6fba"
_STYLE: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:1.5rem}
h1{font-size:1.5rem;margin:.2rem 0}
h2{font-size:1.15rem;margin:0 0 .5rem}
section.category{background:#fff;border:1px solid #dde1e7;border-left:6px solid #8a94a6;
border-radius:6px;padding:1rem 1.2rem;margin:1.2rem 0}
section.pass{border-left-color:#1e8449}
section.fail{border-left-color:#c0392b}
section.skipped{border-left-color:#b7950b}
.verdict{display:inline-block;padding:.05rem .5rem;border-radius:4px;font-weight:600;
font-size:.85rem;color:#fff;background:#8a94a6}
.verdict.pass{background:#1e8449}.verdict.fail{background:#c0392b}
.verdict.skipped{background:#b7950b}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #dde1e7;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
ul.reasons{margin:.3rem 0;padding-left:1.2rem;color:#7b241c}
figure.timeline{margin:.8rem 0}
figure.timeline svg{width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#555}
.muted{color:#667}
header.run{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:1rem 1.2rem}
"""


def _e(value: object) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def _num(value: object, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _pct(value: object) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{float(value):.1%}"


# --- the timeline -------------------------------------------------------------------------------


def _fault_end(fault: FaultRun, last: float) -> float:
    """Where a fault's shaded window ends: its heal, else its recovery, else the last sample."""
    for t in (fault.t_heal, fault.t_recovered):
        if t is not None:
            return t
    return last


def _mark_faults(ax: Axes, faults: Sequence[FaultRun], origin: float, last: float) -> None:
    for fault in faults:
        if fault.t_inject is None:
            continue
        start = fault.t_inject - origin
        ax.axvspan(start, _fault_end(fault, last) - origin, color=_FAULT_COLOUR, alpha=0.25, lw=0)
        if fault.t_detect is not None:
            ax.axvline(fault.t_detect - origin, color=_DETECT_COLOUR, ls="--", lw=1)
        if fault.t_recovered is not None:
            ax.axvline(fault.t_recovered - origin, color=_RECOVER_COLOUR, ls="-", lw=1.2)


def _draw_probes(ax: Axes, faults: Sequence[FaultRun], origin: float) -> None:
    rows: dict[str, int] = {}
    for fault in faults:
        for sample in fault.samples:
            rows.setdefault(sample.probe, len(rows))
    for name, row in rows.items():
        for ok, colour, marker in ((True, _RECOVER_COLOUR, "o"), (False, _DETECT_COLOUR, "x")):
            ts = [s.t - origin for f in faults for s in f.samples if s.probe == name and s.ok is ok]
            if ts:
                ax.plot(ts, [row] * len(ts), ls="none", marker=marker, ms=3.5, color=colour)
    ax.set_yticks(range(len(rows)), list(rows) or [])
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.set_ylabel("probes")


_GAP_INTERVALS: Final = 2.0
"""A gap between rate samples longer than this many sampling intervals is missing data."""


def rate_line(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The ingest-rate line's ``(xs, ys)`` for ``points`` (``(seconds, ticks/s)``, any
    order), with a NaN ``y`` wherever samples are missing, so the line breaks there instead of
    drawing straight across: between two samples further apart than
    ``2 x`` the sampling interval (the median spacing of the samples), and at a sample whose
    rate is not finite (it is dropped)."""
    ordered = sorted(points)
    steps = sorted(b[0] - a[0] for a, b in itertools.pairwise(ordered) if b[0] > a[0])
    interval = steps[len(steps) // 2] if steps else math.inf
    xs: list[float] = []
    ys: list[float] = []
    previous: float | None = None
    for t, rate in ordered:
        if not math.isfinite(rate):
            if ys and not math.isnan(ys[-1]):
                xs.append(t)
                ys.append(math.nan)
            continue
        gap = previous is not None and t - previous > _GAP_INTERVALS * interval
        if gap and previous is not None and ys and not math.isnan(ys[-1]):
            xs.append((previous + t) / 2)
            ys.append(math.nan)
        xs.append(t)
        ys.append(rate)
        previous = t
    return xs, ys


def _draw_rates(ax: Axes, faults: Sequence[FaultRun], origin: float) -> None:
    xs, ys = rate_line([(t - origin, r) for f in faults for t, r in f.rates])
    if any(math.isfinite(y) for y in ys):
        ax.plot(xs, ys, color=_RATE_COLOUR, lw=1.2)
        ax.set_ylim(bottom=0)
    ax.set_ylabel("ticks/s")
    ax.set_xlabel("seconds since the run started")


def _label_faults(ax: Axes, faults: Sequence[FaultRun], origin: float) -> None:
    for fault in faults:
        if fault.t_inject is not None:
            ax.annotate(
                fault.name,
                (fault.t_inject - origin, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=7,
                rotation=20,
                va="bottom",
                color="#7a4a12",
            )


_SVG_START: Final = re.compile(r"<svg\b")
_NAMESPACES: Final = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_METADATA: Final = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_IDS: Final = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def _inline(svg: str, prefix: str) -> str:
    """Matplotlib's SVG document as an inline ``<svg>`` element: no prolog, no namespace
    declarations, no metadata (each holds URLs), and every id prefixed with ``prefix`` so that
    several timelines on one page never share one."""
    start = _SVG_START.search(svg)
    body = svg if start is None else svg[start.start() :]
    body = _METADATA.sub("", _NAMESPACES.sub("", body))
    return _IDS.sub(lambda m: f"{m[1]}{prefix}{m[2]}", body)


def timeline_svg(result: CategoryResult, origin: float) -> str:
    """``result``'s recovery timeline as an inline ``<svg>`` element (text; times in seconds
    since ``origin``, the run's monotonic start): fault windows shaded, detection (red dashed)
    and recovery (green) marked, probe results as dots, ingest rate as a line."""
    import matplotlib as mpl  # noqa: PLC0415 - heavy: only when a report is drawn
    from matplotlib.figure import Figure  # noqa: PLC0415

    faults = [f for f in result.faults if f.skipped is None]
    times = [s.t for f in faults for s in f.samples] + [t for f in faults for t, _ in f.rates]
    times += [
        t
        for f in faults
        for t in (f.t_inject, f.t_detect, f.t_heal, f.t_recovered)
        if t is not None
    ]
    last = max(times, default=result.ended or origin)
    with mpl.rc_context(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": f"strategylab-lab-{result.id}",
            "font.size": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        figure = Figure(figsize=(10, 3.2), layout="constrained")
        probes, rates = figure.subplots(2, 1, sharex=True, height_ratios=(1.3, 1))
        _draw_probes(probes, faults, origin)
        _draw_rates(rates, faults, origin)
        for ax in (probes, rates):
            _mark_faults(ax, faults, origin, last)
        _label_faults(probes, faults, origin)
        if not faults:
            reason = result.skipped or "no fault ran"
            probes.text(
                0.5, 0.5, reason, transform=probes.transAxes, ha="center", va="center", color="#777"
            )
        if times:
            first = min(times) - origin
            span = max(last - origin - first, 1.0)
            rates.set_xlim(first - 0.02 * span, last - origin + 0.02 * span)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return _inline(buffer.getvalue(), f"c{result.id}-")


# --- the page -----------------------------------------------------------------------------------


def _criterion_text(criterion: Criterion) -> str:
    if criterion.text:
        return criterion.text
    parts = [f"recovered ≥ {criterion.recovered:.0%}"]
    for label, value in (
        ("availability", criterion.availability),
        ("consistency", criterion.consistency),
        ("within SLA", criterion.within_sla),
        ("shutdown", criterion.shutdown),
    ):
        if value is not None:
            parts.append(f"{label} ≥ {value:.0%}")
    return ", ".join(parts)


def _verdict(verdict: str) -> str:
    return f'<span class="verdict {_e(verdict)}">{_e(verdict.upper())}</span>'


def _reasons(reasons: Sequence[str], verdict: str) -> str:
    if verdict == "pass" or not reasons:
        return ""
    items = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    return f'<ul class="reasons">{items}</ul>'


def _figures_table(fig: Mapping[str, Any]) -> str:
    rows = [
        ("faults injected / ran / skipped", f"{fig['faults']} / {fig['ran']} / {fig['skipped']}"),
        ("recovered", f"{fig['recovered']} ({_pct(fig['recovered_rate'])})"),
        (
            "recovery p50 / p95 / max",
            " / ".join(
                _num(fig[k], " s", 3)
                for k in ("recovery_p50_s", "recovery_p95_s", "recovery_max_s")
            ),
        ),
        ("SLA", _num(fig["sla_s"], " s", 1)),
        ("within SLA", _pct(fig["within_sla_rate"])),
        ("availability", _pct(fig["availability"])),
        ("consistency", _pct(fig["consistency"])),
        ("shutdown success", _pct(fig["shutdown_rate"])),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td class='num'>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="figures">{body}</table>'


def _faults_table(result: CategoryResult, origin: float) -> str:
    if not result.faults:
        return ""
    head = (
        "<tr><th>fault</th><th>kind</th><th>inject</th><th>detect</th><th>heal</th>"
        "<th>recovered</th><th>recovery</th><th>SLA</th><th>availability</th><th>note</th></tr>"
    )

    def at(t: float | None) -> str:
        return _num(None if t is None else t - origin, " s", 2)

    rows = []
    for f in result.faults:
        note = (
            (f.skipped and f"skipped: {f.skipped}") or (f.error and f"lab error: {f.error}") or ""
        )
        note = "; ".join(n for n in [note, *f.notes] if n)
        rows.append(
            "<tr>"
            f"<td>{_e(f.name)}</td><td>{_e(f.kind)}</td>"
            f"<td class='num'>{at(f.t_inject)}</td><td class='num'>{at(f.t_detect)}</td>"
            f"<td class='num'>{at(f.t_heal)}</td><td class='num'>{at(f.t_recovered)}</td>"
            f"<td class='num'>{_num(f.recovery_time, ' s', 3)}</td>"
            f"<td class='num'>{_num(f.sla, ' s', 1)}</td>"
            f"<td class='num'>{_pct(f.availability())}</td><td>{_e(note)}</td></tr>"
        )
    return f'<table class="faults">{head}{"".join(rows)}</table>'


def _checks(result: CategoryResult) -> str:
    if not result.checks:
        return ""
    rows = "".join(
        f"<tr><td>{'ok' if c.ok else 'FAILED'}</td><td>{_e(c.name)}</td>"
        f"<td>{'independent' if c.independent else 'the node'}</td><td>{_e(c.detail)}</td></tr>"
        for c in result.checks
    )
    return (
        "<table class='checks'><tr><th>check</th><th>name</th><th>source</th><th>detail</th>"
        f"</tr>{rows}</table>"
    )


def _integrity(result: CategoryResult) -> str:
    integ = result.integrity
    if integ is None:
        return "<p class='muted'>No integrity check.</p>"
    cells = [
        ("acknowledged", integ.acknowledged),
        ("stored", integ.stored),
        ("lost", integ.lost),
        ("duplicated", integ.duplicated),
        ("unexpected", integ.unexpected),
        ("corrupted", integ.corrupted),
    ]
    head = "".join(f"<th>{k}</th>" for k, _ in cells)
    body = "".join(f"<td class='num'>{v:,}</td>" for _, v in cells)
    return f"<table class='integrity'><tr>{head}</tr><tr>{body}</tr></table>"


def _category(result: CategoryResult, origin: float) -> str:
    verdict, reasons = result.judge(result.seed_criterion)
    own, own_reasons = result.judge(result.own_criterion)
    return f"""
<section class="category {_e(verdict)}" id="category-{result.id}" data-category="{result.id}">
<h2>{result.id}. {_e(result.name)} {_verdict(verdict)}
<span class="muted">ours:</span> {_verdict(own)}</h2>
<p><b>Seed's criterion:</b> {_e(_criterion_text(result.seed_criterion))}</p>
{_reasons(reasons, verdict)}
<p><b>Our criterion:</b> {_e(_criterion_text(result.own_criterion))}</p>
{_reasons(own_reasons, own)}
{_figures_table(result.figures())}
<figure class="timeline" data-category="{result.id}">
{timeline_svg(result, origin)}
<figcaption>Recovery timeline: fault windows shaded (inject to heal), detection red dashed,
recovery green; probe results (dots: passed, crosses: failed); ingest rate in ticks/s.
</figcaption></figure>
{_faults_table(result, origin)}
{_checks(result)}
{_integrity(result)}
</section>"""


def _summary(report: LabReport) -> str:
    rows = []
    for r in report.results:
        verdict = r.verdict
        own = r.judge(r.own_criterion)[0]
        fig = r.figures()
        rows.append(
            f"<tr><td><a href='#category-{r.id}'>{r.id}. {_e(r.name)}</a></td>"
            f"<td>{_verdict(verdict)}</td><td>{_verdict(own)}</td>"
            f"<td class='num'>{fig['recovered']}/{fig['ran']}</td>"
            f"<td class='num'>{_num(fig['recovery_max_s'], ' s', 2)}</td>"
            f"<td class='num'>{_pct(fig['availability'])}</td></tr>"
        )
    return (
        "<table class='summary'><tr><th>category</th><th>seed</th><th>ours</th>"
        "<th>recovered</th><th>max recovery</th><th>availability</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _machine(machine: Mapping[str, Any]) -> str:
    if not machine:
        return ""
    return "; ".join(f"{_e(k)}: {_e(v)}" for k, v in machine.items())


def _audit(audit: Mapping[str, Any] | None) -> str:
    if not audit:
        return ""
    verified = {True: "verified", False: "NOT verified", None: "not verified"}[
        audit.get("verified")
    ]
    return (
        f"<p><b>Recovery audit log</b> ({_e(audit.get('file') or 'none')}): {verified}. "
        f"{_e(audit.get('detail', ''))}</p>"
    )


def _missing(items: str) -> str:
    if not items:
        return ""
    return f"<p><b>Capabilities missing</b> (their faults are skipped):</p><ul>{items}</ul>"


def render_html(report: LabReport, *, audit: Mapping[str, Any] | None = None) -> str:
    """The whole ``report.html`` for ``report`` (text); ``audit`` is ``report.json``'s
    ``audit`` object, shown in the header when given."""
    options = report.options
    overall = "pass" if report.passed else "fail"
    skipped = "".join(
        f"<li>{_e(k)}: {_e(v)}</li>" for k, v in sorted(report.skipped_capabilities.items())
    )
    sections = "".join(_category(r, report.origin) for r in report.results)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Strategy Lab chaos lab report</title>
<style>{_STYLE}</style></head>
<body><main>
<header class="run"><h1>Strategy Lab chaos lab {_verdict(overall)}</h1>
<p>Started {_e(report.started_wall)}, {report.duration_s:.1f} s; severity {_e(options.severity)},
seed {options.seed}, store {"PostgreSQL" if options.postgres else "SQLite"}.</p>
<p class="muted">{_machine(report.machine)}</p>
{_audit(audit)}
{_missing(skipped)}
{_summary(report)}
</header>
{sections}
</main></body></html>
"""
