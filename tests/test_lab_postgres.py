"""The lab's --postgres runs keep to a schema of their own on the server given (real server)."""

from __future__ import annotations

import psycopg
import pytest

from strategylab.chaos._lab import _drop_schema, _own_schema

URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNINFO = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def _schemas(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace").fetchall()
    return {row[0] for row in rows}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dsn", [URL, CONNINFO], ids=["url", "conninfo"])
def test_a_run_gets_its_own_schema_as_search_path_and_drops_it(dsn: str) -> None:
    """Two runs on one database never share a table: each gets a fresh schema (its DSN's
    search_path, in the DSN's own form), dropped at the end with what the node made in it."""
    schema, own = _own_schema(dsn)
    other, _ = _own_schema(dsn)
    try:
        assert schema != other
        assert own.startswith("postgresql://") == dsn.startswith("postgresql://")
        with psycopg.connect(own, autocommit=True) as conn:
            assert conn.execute("SHOW search_path").fetchone() == (schema,)
            conn.execute("CREATE TABLE ticks (seq bigint)")  # unqualified: lands in the schema
        assert {schema, other} <= _schemas(dsn)
    finally:
        _drop_schema(dsn, schema)
        _drop_schema(dsn, other)
    assert not {schema, other} & _schemas(dsn)
