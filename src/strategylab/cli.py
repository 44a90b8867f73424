"""The ``strategylab`` command."""

from __future__ import annotations

from typing import Annotated

import typer

from strategylab import __version__

app = typer.Typer(
    name="strategylab",
    help="Strategy Lab: fault tolerance for trading systems, proved with real faults.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"strategylab {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Strategy Lab: fault tolerance for trading systems, proved with real faults."""


@app.command("demo-core")
def demo_core(
    calls: Annotated[int, typer.Option(min=50, help="Calls to make in each phase.")] = 300,
    faults: Annotated[int, typer.Option(min=1, max=20, help="Times the service is killed.")] = 3,
) -> None:
    """Protect a real flaky TCP service with retry + circuit breaker and show the recovery."""
    from strategylab._demo_core import run_demo  # noqa: PLC0415 - keep `--help` fast

    code = run_demo(calls=calls, faults=faults)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()
