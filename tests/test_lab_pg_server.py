"""Category 4's server faults (SIGSTOP and SIGKILL of PostgreSQL) run for real on a throwaway
server the lab starts itself, under a second node whose store it is, also with --postgres; the
second node and the server leave nothing behind."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from lab_support import stray_children
from strategylab.chaos._harness import Pipeline, PipelineConfig
from strategylab.chaos._lab import run_lab
from strategylab.chaos._run_model import LabOptions
from strategylab.chaos._throwaway_pg import ThrowawayPostgres
from strategylab.chaos.scenarios import scenarios_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals")

SHARED = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_dirs() -> set[Path]:
    """The throwaway servers' directories in the temporary directory now."""
    return set(Path(tempfile.gettempdir()).glob("strategylab-pg-*"))


def _shared_reachable() -> bool:
    try:
        with psycopg.connect(SHARED, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.mark.parametrize("name", ["node", "exchange", "Bad", "", "a/b", "x" * 41])
async def test_start_extra_node_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    """A name that is not a plain directory name, or is one of the pipeline's own, is refused
    before anything starts."""
    pipeline = Pipeline(PipelineConfig(work_dir=tmp_path))
    with pytest.raises(ValueError, match="name="):
        await pipeline.start_extra_node(name)


async def test_start_extra_node_refuses_a_store_that_is_not_a_url(tmp_path: Path) -> None:
    pipeline = Pipeline(PipelineConfig(work_dir=tmp_path))
    with pytest.raises(ValueError, match="postgresql://"):
        await pipeline.start_extra_node("pgnode", postgres="host=127.0.0.1 dbname=x")


@pytest.mark.integration
@pytest.mark.timeout(150)
async def test_server_faults_run_with_postgres_on_a_throwaway_server(tmp_path: Path) -> None:
    """With --postgres on a shared server, pg_pause and pg_kill still run — on a throwaway
    server under the second node, never the shared one: both recover, the second node fails
    over to its spool and drains back, nothing is lost in either store, and neither the server
    nor the node is left running, nor the server's directory."""
    reason = ThrowawayPostgres().capability()
    if reason is not None:
        pytest.skip(reason)
    if not _shared_reachable():
        pytest.skip(f"no PostgreSQL server at {SHARED}")
    before = _pg_dirs()
    options = LabOptions(categories=(4,), work_dir=tmp_path / "lab", postgres=SHARED)
    report = await run_lab(options, scenarios_for((4,)))
    result = report.results[0]
    assert result.error is None, result.error
    assert result.judge(result.seed_criterion) == ("pass", [])
    runs = {f.name: f for f in result.faults}
    for name in ("database.pg_pause", "database.pg_kill"):
        run = runs[name]
        assert run.skipped is None, (name, run.skipped)
        assert run.error is None, (name, run.error)
        assert run.recovered, (name, run.notes)
        assert run.within_sla, (name, run.recovery_time)
        assert run.extra["node"] == "pgnode"
        assert (run.extra["node_errors"] or 0) > 0  # the second node's manager saw it
    checks = {c.name: c.ok for c in result.checks}
    assert checks["database.pg_pause: failed over to the spool (segments seen on disk)"]
    assert checks["database.pg_kill: a new postmaster runs after the kill (process table)"]
    assert runs["database.pg_storage_full"].skipped is not None
    integrity = result.integrity
    assert integrity is not None
    stores = integrity.report["stores"]
    assert set(stores) == {"main", "pgnode"}
    assert all(s["lost"] == s["duplicated"] == s["corrupted"] == 0 for s in stores.values())
    assert stores["pgnode"]["acknowledged"] > 0
    assert integrity.acknowledged == sum(s["acknowledged"] for s in stores.values())
    assert not stray_children()
    assert _pg_dirs() == before
