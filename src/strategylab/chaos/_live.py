"""The lab on the console: the live view while it runs, and the final table.

:class:`LabProgress` is the live view's state, fed with :class:`~strategylab.chaos.LabEvent`
callbacks only (so a test replays any sequence of events); :class:`LiveView` drives it: a
``rich.live`` screen on a terminal, one plain line per event when stdout is not one (CI logs).
:func:`summary_table` is the final table: one row per category.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._run_model import LabEvent, LabReport
from ._scenario import CategoryResult

if TYPE_CHECKING:
    from rich.live import Live

    from ._report import ReportFiles

__all__ = ["LabProgress", "LiveView", "plain_line", "print_summary", "summary_table"]

_REFRESH_PER_S: Final = 4
_STYLE: Final = {"pass": "green", "fail": "red", "skipped": "yellow"}


@dataclass
class LabProgress:
    """What the live view shows, from the events so far."""

    categories: tuple[int, ...]
    current: int | None = None
    current_name: str = ""
    fault: str = "none"
    probes_ok: int = 0
    probes_total: int = 0
    last_probe_ok: bool | None = None
    ticks_per_s: float | None = None
    done: list[tuple[int, str, str]] = field(default_factory=list)
    """``(id, name, text of its done event)`` of each finished category, in order."""
    note: str = ""
    names: dict[int, str] = field(default_factory=dict)

    def on_event(self, event: LabEvent) -> None:
        """Take one event into the state."""
        getattr(self, f"_on_{event.kind}", self._on_other)(event)

    def _on_category(self, event: LabEvent) -> None:
        self.current, self.current_name = event.category, event.category_name
        if event.category is not None:
            self.names[event.category] = event.category_name
        self.fault, self.probes_ok, self.probes_total = "none", 0, 0
        self.last_probe_ok = None

    def _on_fault(self, event: LabEvent) -> None:
        self.fault = event.fault or event.text or "?"

    def _on_healed(self, event: LabEvent) -> None:
        self.fault = f"{event.fault or self.fault} healed, waiting for recovery"

    def _on_recovered(self, event: LabEvent) -> None:
        if event.ok is False:
            self.fault = f"{event.fault or self.fault}: did NOT recover"
        else:
            self.fault = "none"

    def _on_probe(self, event: LabEvent) -> None:
        if event.ok is not None:
            self.probes_total += 1
            self.probes_ok += int(event.ok)
            self.last_probe_ok = event.ok

    def _on_rate(self, event: LabEvent) -> None:
        if event.ticks_per_s is not None:
            self.ticks_per_s = event.ticks_per_s

    def _on_done(self, event: LabEvent) -> None:
        """A category's end: ``category`` its id, ``ok`` whether it passed, ``text`` its
        verdict. A ``done`` without a category id (an older lab's end of the run) is not a
        category and counts nothing; a category already finished is not counted twice."""
        ident = event.category
        if ident is None:
            return
        if all(done_id != ident for done_id, _, _ in self.done):
            name = event.category_name or self.names.get(ident, "")
            self.done.append((ident, name, event.text or _ok_word(event.ok)))
        if self.current == ident:
            self.current, self.fault = None, "none"

    def _on_note(self, event: LabEvent) -> None:
        self.note = event.text

    def _on_other(self, event: LabEvent) -> None:
        """An event kind this view does not know (a newer lab): ignored."""

    def render(self) -> RenderableType:
        """The live screen: current category, fault in force, probes, ticks/s, progress."""
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        total = len(self.categories)
        if self.current is None:
            current = "between categories" if self.done else "starting the pipeline"
        else:
            current = f"{self.current}. {self.current_name}"
        table.add_row("category", current)
        table.add_row("fault in force", self.fault)
        probes = Text(f"{self.probes_ok} / {self.probes_total} passing")
        if self.last_probe_ok is not None:
            probes.append(
                "  (last passed)" if self.last_probe_ok else "  (last FAILED)",
                style="green" if self.last_probe_ok else "red",
            )
        table.add_row("probes", probes)
        rate = "measuring" if self.ticks_per_s is None else f"{self.ticks_per_s:,.0f}"
        table.add_row("ticks/s", rate)
        table.add_row("done", ", ".join(f"{i}: {text}" for i, _, text in self.done) or "none yet")
        if self.note:
            table.add_row("note", self.note)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(total, 1), completed=len(self.done), width=40),
            f"{len(self.done)}/{total} categories",
        )
        return Group(table, bar)


def _ok_word(ok: bool | None) -> str:
    return "finished" if ok is None else ("pass" if ok else "fail")


_NO_RECOVERY: Final = "no recovery seen before the deadline after the heal"

_LINES: Final = {
    "category": "{t} {cat}: {name} started",
    "fault": "{t} {cat} fault injected: {fault}{rest}",
    "healed": "{t} {cat} fault healed: {fault}",
    "recovered": "{t} {cat} recovered from {fault}{rest}",
    "not_recovered": "{t} {cat} did NOT recover from {fault} ({why})",
    "done": "{t} {cat} done: {text}",
    "note": "{t} {text}",
}


def _rest(fault: str, text: str) -> str:
    """``text`` after the fault's name, once: the lab's fault events say ``"NAME on for 2 s"``
    and the line already names the fault (``""`` when nothing is left)."""
    rest = text.strip()
    if fault and rest.startswith(fault):
        rest = rest[len(fault) :].strip()
    return f" {rest}" if rest else ""


def plain_line(event: LabEvent, origin: float) -> str | None:
    """One log line for ``event`` (times relative to ``origin``), or ``None`` for events too
    frequent for a log (probes and rates).

    A ``recovered`` event with ``ok=False`` (the fault did not recover) says so:
    ``did NOT recover from FAULT (WHY)``, ``WHY`` its text or, without one, that no recovery was
    seen before the deadline."""
    kind: str = event.kind
    if kind == "recovered" and event.ok is False:
        kind = "not_recovered"
    template = _LINES.get(kind)
    if template is None:
        return None
    return template.format(
        t=f"[{event.t - origin:7.2f} s]",
        cat="" if event.category is None else f"category {event.category}",
        name=event.category_name,
        fault=event.fault,
        rest=_rest(event.fault, event.text),
        why=_rest(event.fault, event.text).strip() or _NO_RECOVERY,
        text=event.text or (_ok_word(event.ok) if kind == "done" else ""),
    ).rstrip()


class LiveView:
    """The live view: call it with each :class:`LabEvent` (it is the lab's ``on_event``).

    On a terminal (``console.is_terminal``) a ``rich.live`` screen, refreshed 4 times a second,
    shows :class:`LabProgress`; otherwise each event worth a line is printed with
    :func:`plain_line`. Use it as a context manager around the run.
    """

    def __init__(self, console: Console, categories: Sequence[int], *, origin: float) -> None:
        self.console = console
        self.progress = LabProgress(categories=tuple(categories))
        self.origin = origin
        self._live: Live | None = None

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            from rich.live import Live  # noqa: PLC0415

            self._live = Live(
                self.progress.render(),
                console=self.console,
                refresh_per_second=_REFRESH_PER_S,
                transient=False,
            )
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self.progress.render(), refresh=True)
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def __call__(self, event: LabEvent) -> None:
        self.progress.on_event(event)
        if self._live is not None:
            self._live.update(self.progress.render())
            return
        line = plain_line(event, self.origin)
        if line is not None:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _s(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.1%}"


def _verdict(verdict: str) -> Text:
    return Text(verdict.upper(), style=_STYLE.get(verdict, ""))


def _row(result: CategoryResult) -> list[RenderableType]:
    fig = result.figures()
    integ = result.integrity
    recovery = " / ".join(
        _s(fig[k]) for k in ("recovery_p50_s", "recovery_p95_s", "recovery_max_s")
    )
    return [
        f"{result.id}. {result.name}",
        str(fig["ran"]) + (f" (+{fig['skipped']} skipped)" if fig["skipped"] else ""),
        f"{fig['recovered']} ({_pct(fig['recovered_rate'])})",
        f"{recovery} / {_s(fig['sla_s'], 0)}",
        _pct(fig["availability"]),
        "–" if integ is None else f"{integ.lost} / {integ.duplicated} / {integ.corrupted}",
        _verdict(result.verdict),
        _verdict(result.judge(result.own_criterion)[0]),
    ]


def summary_table(report: LabReport) -> Table:
    """The final table: one row per category (faults injected, recovered, p50/p95/max recovery
    against the SLA in seconds, availability, lost/duplicated/corrupted, both verdicts)."""
    table = Table(title="strategylab lab", title_justify="left")
    for name, justify in (
        ("category", "left"),
        ("faults", "right"),
        ("recovered", "right"),
        ("p50/p95/max / SLA s", "right"),
        ("avail.", "right"),
        ("lost/dup/corr", "right"),
        ("seed", "center"),
        ("ours", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for result in report.results:
        table.add_row(*_row(result))
    return table


def print_summary(
    console: Console, report: LabReport, files: ReportFiles | None, *, interrupted: bool = False
) -> None:
    """Print :func:`summary_table`, each failed category's reasons, the run's time, the verdict
    and the report's paths."""
    console.print(summary_table(report))
    for result in report.results:
        verdict, reasons = result.judge(result.seed_criterion)
        if verdict != "pass":
            for reason in reasons:
                console.print(
                    f"  {result.id}. {result.name}: {verdict}: {reason}",
                    markup=False,
                    highlight=False,
                )
    passed = report.passed and not interrupted
    word = "INTERRUPTED" if interrupted else ("PASSED" if passed else "FAILED")
    console.print(
        Text(f"{word} in {report.duration_s:.1f} s", style="green" if passed else "red bold")
    )
    if files is not None:
        console.print(f"report: {files.html}", markup=False, highlight=False)
        console.print(f"        {files.json}", markup=False, highlight=False)
        if files.junit is not None:
            console.print(f"junit:  {files.junit}", markup=False, highlight=False)
