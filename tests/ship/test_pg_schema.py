"""The team database's schema on a real PostgreSQL: created once, a no-op after, migrated by
appending, refused when newer, and safe when two machines start at the same moment."""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import psycopg
import pytest
from pg_server import PASSWORD
from structlog.testing import capture_logs

from indexer_service.errors import ShipError
from indexer_service.ship import pg_schema
from indexer_service.ship.pg_schema import PG_SCHEMA_VERSION, PG_TABLES, PgTable, ensure_schema
from indexer_service.ship.pg_views import PG_VIEWS, PG_VIEWS_DIGEST
from indexer_service.ship.tables import SHIPPED_TABLES

SCHEMA_DIGESTS = {1: "b1eff4e470b7d1db"}
"""What each version's tables and views are (a digest): a change to either needs a new
version, so that an older indexer-service refuses a server it can no longer fill."""


def _schema_digest() -> str:
    return hashlib.sha256(repr((PG_TABLES, PG_VIEWS_DIGEST)).encode()).hexdigest()[:16]


def _versions(con: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in con.execute("SELECT version FROM indexer_schema ORDER BY version")]


def _relations(con: psycopg.Connection[Any]) -> dict[str, str]:
    rows = con.execute(
        "SELECT relname, relkind::text FROM pg_class "
        "WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'v')"
    )
    return dict(rows.fetchall())


def test_the_version_changes_with_the_schema() -> None:
    """The tables and views this code creates are the ones pinned for PG_SCHEMA_VERSION (if
    this fails after a change to the shipped columns or the views: bump PG_SCHEMA_VERSION and
    add the new digest here)."""
    assert SCHEMA_DIGESTS.get(PG_SCHEMA_VERSION) == _schema_digest()


def test_a_new_server_gets_every_table_and_view(pg_url: str) -> None:
    """Each shipped table keyed by machine_id and its local key, the machines table, the
    version table and every view; the version is recorded once."""
    with psycopg.connect(pg_url) as con:
        assert ensure_schema(con) == PG_SCHEMA_VERSION
        relations = _relations(con)
        assert _versions(con) == [PG_SCHEMA_VERSION]
        keys: dict[str, list[str]] = dict(
            con.execute(
                "SELECT c.relname, array_agg(a.attname ORDER BY k.n) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indrelid "
                "CROSS JOIN unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
                "WHERE i.indisprimary GROUP BY c.relname"
            ).fetchall()
        )
        machine_cols = con.execute(
            "SELECT table_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE column_name = 'machine_id' AND table_schema = current_schema()"
        ).fetchall()
    assert {n: k for n, k in relations.items() if k == "v"} == {n: "v" for n, _ in PG_VIEWS}
    for t in SHIPPED_TABLES:
        assert keys[t.name] == ["machine_id", *t.key]
    assert keys["indexer_machines"] == ["machine_id"]
    tables = {n for n, k in relations.items() if k == "r"}
    assert tables == {"indexer_schema", "indexer_machines", *(t.name for t in SHIPPED_TABLES)}
    by_table = {t: (dtype, nullable) for t, dtype, nullable in machine_cols}
    assert {t: by_table[t] for t in tables - {"indexer_schema"}} == {
        t: ("text", "NO") for t in tables - {"indexer_schema"}
    }
    assert all(by_table[v] == ("text", "YES") for v, _ in PG_VIEWS)  # views: a column too


def test_the_sinks_group_delete_is_served_by_an_index(pg_url: str) -> None:
    """``DELETE ... WHERE machine_id = $1 AND <group> = ANY($2)``: an index of every shipped
    table starts with (machine_id, group)."""
    with psycopg.connect(pg_url) as con:
        ensure_schema(con)
        leading = con.execute(
            "SELECT c.relname, a1.attname, a2.attname FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_attribute a1 ON a1.attrelid = c.oid AND a1.attnum = i.indkey[0] "
            "JOIN pg_attribute a2 ON a2.attrelid = c.oid AND a2.attnum = i.indkey[1]"
        ).fetchall()
    for t in SHIPPED_TABLES:
        assert (t.name, "machine_id", t.group) in leading


def test_a_second_run_writes_nothing(pg_url: str) -> None:
    """On an up-to-date server ensure_schema only reads: no transaction id is taken, nothing is
    logged, and the version stays recorded once."""
    with psycopg.connect(pg_url) as con:
        ensure_schema(con)
        with capture_logs() as logs, con.transaction():
            assert ensure_schema(con) == PG_SCHEMA_VERSION
            wrote = con.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()
        assert wrote == (None,)
        assert logs == []
        assert _versions(con) == [PG_SCHEMA_VERSION]


def test_dropped_views_are_created_again(pg_url: str) -> None:
    """A view someone dropped, or one of other SQL, is put back as this code has it."""
    with psycopg.connect(pg_url) as con:
        ensure_schema(con)
        con.execute("DROP VIEW v_delegations")
        con.execute("COMMENT ON VIEW v_tool_usage IS 'indexer-service views 0000'")
        con.commit()
        ensure_schema(con)
        comments = con.execute(
            "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class "
            "WHERE relkind = 'v' AND relnamespace = current_schema()::regnamespace"
        ).fetchall()
    assert {c for _, c in comments} == {"indexer-service views " + PG_VIEWS_DIGEST}
    assert {n for n, _ in comments} == {n for n, _ in PG_VIEWS}


def test_a_newer_server_is_refused_and_left_alone(pg_url: str) -> None:
    """A server migrated by a newer indexer-service: ShipError says to upgrade, names the
    server without its password, and changes nothing."""
    with psycopg.connect(pg_url) as con:
        ensure_schema(con)
        con.execute("INSERT INTO indexer_schema (version) VALUES (%s)", [PG_SCHEMA_VERSION + 1])
        con.execute("DROP VIEW v_delegations")
        con.commit()
        with pytest.raises(ShipError, match="upgrade indexer-service") as caught:
            ensure_schema(con)
        assert f"schema version {PG_SCHEMA_VERSION + 1}" in str(caught.value)
        assert con.info.password not in str(caught.value)
        assert "v_delegations" not in _relations(con)


def test_an_older_server_is_migrated_by_appending(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 of the code appends a column and a step: a version-1 server with rows gets
    both, keeps its rows, records version 2, and from then on refuses version-1 code."""
    with psycopg.connect(pg_url) as con:
        ensure_schema(con)
        con.execute("INSERT INTO messages (machine_id, id, cost) VALUES ('m1', 'msg1', 0.5)")
        con.commit()
        v2_tables = tuple(
            PgTable(t.name, (*t.columns, ("tokens_new", "bigint NOT NULL")), t.primary_key)
            if t.name == "messages"
            else t
            for t in PG_TABLES
        )
        with monkeypatch.context() as v2:
            v2.setattr(pg_schema, "PG_SCHEMA_VERSION", 2)
            v2.setattr(pg_schema, "PG_TABLES", v2_tables)
            v2.setitem(pg_schema._STEPS, 2, ("CREATE TABLE step_ran (x int)",))
            with capture_logs() as logs:
                assert ensure_schema(con) == 2
            ensure_schema(con)  # the step ran once: a second CREATE TABLE would fail
        assert [e["added"] for e in logs] == [["messages.tokens_new"]]
        assert con.execute("SELECT id, cost, tokens_new FROM messages").fetchall() == [
            ("msg1", 0.5, None)
        ]
        assert _versions(con) == [1, 2]
        assert "step_ran" in _relations(con)
        with pytest.raises(ShipError, match="newer than this indexer-service supports"):
            ensure_schema(con)


def test_two_machines_starting_at_once_both_succeed(pg_url: str) -> None:
    """Two ensure_schema calls released at the same moment on an empty server (both queued
    on the lock first): both return, one creates, the version is recorded once."""
    results: list[object] = []
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [pg_schema._LOCK_KEY])

        def start() -> None:
            try:
                with psycopg.connect(pg_url) as con:
                    results.append(ensure_schema(con))
            except Exception as exc:  # reported below
                results.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        waiting = 0
        while waiting < 2:  # both blocked on the lock (a hang is cut by pytest-timeout)
            row = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            waiting = row[0] if row else 0
        holder.rollback()  # releases the lock: both go
        for t in threads:
            t.join()
        assert results == [PG_SCHEMA_VERSION, PG_SCHEMA_VERSION]
        assert _versions(holder) == [PG_SCHEMA_VERSION]


def test_a_refused_statement_is_a_ship_error(pg_url: str) -> None:
    """A role that may not create tables gets ShipError naming the server, not a psycopg
    error (and no password)."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-Pw-1'")
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    url = pg_url.replace(f"postgres:{PASSWORD}@", f"{role}:reader-Pw-1@")
    try:
        with psycopg.connect(url) as con:
            with pytest.raises(ShipError, match="refused the schema: permission denied") as e:
                ensure_schema(con)
            assert "reader-Pw-1" not in str(e.value)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
