"""The rewrites from the local index's DuckDB SQL to the team database's: what each turns into,
string literals left alone, and shapes they do not know refused rather than mistranslated.
(That the views' numbers match is tests/ship/test_team_views.py.)"""

from __future__ import annotations

import pytest

from indexer_service.ship.pg_dialect import bind_named, to_postgres
from indexer_service.ship.pg_views import per_machine


@pytest.mark.parametrize(
    ("duckdb", "postgres"),
    [
        ("SELECT x::DOUBLE FROM t", "SELECT x::double precision FROM t"),
        ("SELECT median(d) FROM t", "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) FROM t"),
        (
            "SELECT quantile_cont(d, 0.95) FROM t",
            "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY d) FROM t",
        ),
        ("SELECT epoch(b - a) FROM t", "SELECT extract(epoch FROM b - a) FROM t"),
        ("SELECT coalesce(l, []::VARCHAR[]) FROM t", "SELECT coalesce(l, ARRAY[]::text[]) FROM t"),
        (
            "SELECT list_sort(list_distinct(list(a) FILTER (WHERE k = 1))) FROM t",
            'SELECT array_agg(DISTINCT (a) COLLATE "C" ORDER BY (a) COLLATE "C") '
            "FILTER (WHERE (k = 1) AND (a) IS NOT NULL) FROM t",
        ),
        ("SELECT 'median(x)::DOUBLE' FROM t", "SELECT 'median(x)::DOUBLE' FROM t"),
    ],
)
def test_rewrites(duckdb: str, postgres: str) -> None:
    """Each DuckDB spelling becomes PostgreSQL's with the same figures; literals stay as is."""
    assert to_postgres(duckdb) == postgres


@pytest.mark.parametrize("sql", ["SELECT * FROM t GROUP BY ALL", "SELECT list(x) FROM t"])
def test_what_has_no_rewrite_is_refused(sql: str) -> None:
    with pytest.raises(ValueError, match="no PostgreSQL rewrite"):
        to_postgres(sql)


def test_named_parameters_become_typed_placeholders() -> None:
    """``$name`` -> ``(%(name)s)::text``; every % doubled, in literals too; ``'$x'`` kept."""
    sql = "SELECT '$x 5%' WHERE a LIKE 'b%' AND ($p IS NULL OR c = $p) AND d % 2 = 0"
    assert bind_named(sql) == (
        "SELECT '$x 5%%' WHERE a LIKE 'b%%' AND ((%(p)s)::text IS NULL OR c = (%(p)s)::text) "
        "AND d %% 2 = 0"
    )


def test_per_machine_on_a_join_and_a_group() -> None:
    """The machine comes first, every join matches it (on what was joined before: both sides
    of a FULL JOIN), every grouping keeps it, ``x IN (SELECT y ...)`` compares pairs."""
    sql = (
        "WITH c AS (SELECT k, count(*) AS n FROM t WHERE k IN (SELECT k FROM u) GROUP BY k) "
        "SELECT a.k, c.n FROM a FULL JOIN c ON c.k = a.k LEFT JOIN b x ON x.id = a.k"
    )
    assert per_machine(sql) == (
        "WITH c AS (SELECT t.machine_id AS machine_id, k, count(*) AS n FROM t "
        "WHERE (t.machine_id, k) IN (SELECT u.machine_id AS machine_id, k FROM u) "
        "GROUP BY t.machine_id, k) "
        "SELECT coalesce(a.machine_id, c.machine_id) AS machine_id, a.k, c.n FROM a "
        "FULL JOIN c ON c.machine_id = a.machine_id AND (c.k = a.k) "
        "LEFT JOIN b x ON x.machine_id = coalesce(a.machine_id, c.machine_id) AND (x.id = a.k)"
    )


def test_aliases_with_as() -> None:
    assert per_machine("SELECT y.k FROM t AS y JOIN u AS z ON z.k = y.k") == (
        "SELECT y.machine_id AS machine_id, y.k FROM t AS y "
        "JOIN u AS z ON z.machine_id = y.machine_id AND (z.k = y.k)"
    )


def test_group_by_all_becomes_the_positions_of_the_keys() -> None:
    sql = "SELECT d, date_trunc('month', d) AS m, sum(x) AS s, k FROM v GROUP BY ALL"
    assert per_machine(sql).endswith("GROUP BY 1, 2, 3, 5")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT (SELECT max(x) FROM u) FROM t",  # a scalar subquery would gain a column
        "SELECT x FROM (SELECT x FROM u) s",  # a derived table
        "SELECT x FROM t RIGHT JOIN u ON u.k = t.k",
        "SELECT x FROM t, u",
        "SELECT x FROM t JOIN u USING (k)",
        "SELECT x FROM t UNION SELECT x FROM u",
        "SELECT k, count(*) FROM t GROUP BY ROLLUP (k)",
        "SELECT 1",
        "SELECT x, row_number() OVER (PARTITION BY k ORDER BY x) FROM t",
    ],
)
def test_shapes_per_machine_does_not_know_are_refused(sql: str) -> None:
    """A new construct in the views fails here instead of mixing machines on the server."""
    with pytest.raises(ValueError, match="per_machine"):
        per_machine(sql)
