"""``indexer-service run --ship-to``: its options, and the real command in a child process,
killed with -9 in the middle of a shipment or given a wrong password. Nothing it prints, logs
or serves holds the password."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import TreeFactory, assert_index_matches_tree
from pg_server import PASSWORD

from indexer_service.cli.main import _settings, build_parser, main
from indexer_service.ship.pg_schema import ensure_schema
from indexer_service.ship.tables import SHIPPED_TABLES
from ship.service_process import ServiceProcess, until
from ship.shipped import index_rows, team_rows

SMALL_BATCHES = {"INDEXER_MAX_FILES": "50", "INDEXER_MAX_BATCH_FILES": "100"}
"""Many small transactions in the index, so that a window holds a few of them."""


def test_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    """``run --help`` says what --ship-to does and where its password should come from."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--ship-to URL also ship the index to a team PostgreSQL" in text
    assert "PGPASSWORD or ~/.pgpass, it is never shown" in text
    assert "--machine-id ID this machine's id on the team database" in text


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "--ship-to", f"mysql://root:{PASSWORD}@db/team"], "a mysql:// URL is not"),
        (["run", "--ship-to", f"root:{PASSWORD}@db/team"], "the value is not a PostgreSQL URL"),
        (["run", "--shipto", f"postgresql://u:{PASSWORD}@db/t"], "unrecognized arguments"),
        (["run", f"--ship_to=postgresql://u:{PASSWORD}@db/t"], "postgresql://u:***@db/t"),
        (["run", "--ship-to", "postgresql://db/t", "--machine-id", "a b"], "--machine-id"),
        (["report", "daily", "--form", f"postgresql://u:{PASSWORD}@db/t"], "u:***@db"),
        (["run", "--shipto", f"u:{PASSWORD}@db/t"], "u:***@db/t"),
        (["run", "--shipto", f"host=db password={PASSWORD} user=u"], "password=*** user=u"),
    ],
)
def test_a_bad_option_is_one_line_without_the_password(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL that is not PostgreSQL's, a mistyped option before a URL, a bad machine id:
    exit 2, one line, the password nowhere."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == "" and err.count("\n") == 1
    assert said in err and PASSWORD not in err


def test_the_variables_and_the_flags_set_the_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    """INDEXER_SHIP_TO and INDEXER_MACHINE_ID work as the flags do; a flag wins; the
    settings' repr shows no URL."""
    env_url = f"postgresql://team:{PASSWORD}@db.example.com/opencode?sslmode=verify-full"
    monkeypatch.setenv("INDEXER_SHIP_TO", env_url)
    monkeypatch.setenv("INDEXER_MACHINE_ID", "ada-laptop")
    settings = _settings(build_parser().parse_args(["run"]))
    assert (settings.ship_to, settings.machine_id) == (env_url, "ada-laptop")
    assert PASSWORD not in repr(settings)
    flags = ["run", "--ship-to", "postgres://db/x", "--machine-id", "m.2@host"]
    settings = _settings(build_parser().parse_args(flags))
    assert (settings.ship_to, settings.machine_id) == ("postgres://db/x", "m.2@host")


def test_a_bad_variable_is_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """INDEXER_SHIP_TO that is not a PostgreSQL URL ends the command before it opens
    anything, naming the variable, not its value."""
    monkeypatch.setenv("INDEXER_SHIP_TO", f"mysql://root:{PASSWORD}@db/team")
    assert main(["run", "--db", str(tmp_path / "i.duckdb")]) == 1
    err = capsys.readouterr().err
    assert err == (
        "indexer-service: error: INDEXER_SHIP_TO is not a PostgreSQL URL "
        "(postgresql://user@host:5432/db)\n"
    )
    assert not (tmp_path / "i.duckdb").exists()


def _status_command(db: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "indexer_service", "status", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    return done.stdout


def _position(con: psycopg.Connection[tuple[object, ...]], machine: str) -> int:
    row = con.execute(
        "SELECT shipped_seq FROM indexer_machines WHERE machine_id = %s", [machine]
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def _sessions(con: psycopg.Connection[tuple[object, ...]]) -> int:
    """Backends of indexer-service on the server (the sink's connections)."""
    row = con.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'indexer-service'"
    ).fetchone()
    return int(str(row[0])) if row else 0


_HOLD_THE_THIRD_WINDOW = """
CREATE SEQUENCE windows_seen;
CREATE FUNCTION hold_window() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('windows_seen') > 2 THEN PERFORM pg_advisory_xact_lock(4242); END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER hold_window BEFORE UPDATE ON indexer_machines
  FOR EACH ROW EXECUTE FUNCTION hold_window();
"""
"""Every window ends by moving the machine's position (an UPDATE of ``indexer_machines``);
from the third on, that waits for advisory lock 4242, which the test holds: the window's rows
are written, its transaction still open."""


def test_kill_9_in_the_middle_of_a_shipment_then_a_restart_converges(
    storage_tree: TreeFactory, tmp_path: Path, pg_url: str
) -> None:
    """The service is killed while the sink's third window is written on the server and not
    committed: that window is rolled back, the server keeps the position of the second.
    The next run resumes there (no shipment from the start) and the team database then holds
    exactly the index's rows: none missing, none twice."""
    tree = storage_tree(sessions=4, seed=7)
    db = tmp_path / "index.duckdb"
    args = ["--storage", str(tree.root), "--db", str(db), "--workers", "2"]
    args += ["--ship-to", pg_url, "--machine-id", "m"]
    with psycopg.connect(pg_url, autocommit=True) as con:
        ensure_schema(con)
        con.execute(_HOLD_THE_THIRD_WINDOW)
        con.execute("SELECT pg_advisory_lock(4242)")
        held = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'indexer-service' "
            "AND wait_event = 'advisory'"
        )
        with ServiceProcess(*args, env=SMALL_BATCHES, window_rows=200) as first:
            until(lambda: con.execute(held).fetchone() == (1,), what="the third window")
            position = _position(con, "m")
            on_server = sum(len(rows) for rows in team_rows(pg_url, "m").values())
            first.kill()
        con.execute("SELECT pg_advisory_unlock(4242)")
        con.execute("DROP TRIGGER hold_window ON indexer_machines")
        until(lambda: _sessions(con) == 0, what="the killed service's session to end")
        assert _position(con, "m") == position >= 0
        assert sum(len(rows) for rows in team_rows(pg_url, "m").values()) == on_server > 0

    with ServiceProcess(*args, env=SMALL_BATCHES, window_rows=200) as second:
        second.wait_for("backfill_done")
        client = second.client(db)

        def caught_up() -> bool:
            sink = client.status()["sink"]
            return bool(
                sink["state"] == "caught_up" and sink["shipped_seq"] >= sink["committed_seq"]
            )

        until(caught_up, what="the sink to catch up")
        status = client.status()
        sink = status["sink"]
        assert second.stop() == 0

    assert_index_matches_tree(tree.root, db)
    local = index_rows(db)
    assert team_rows(pg_url, "m") == local
    assert sink["restarts"] == 0 and sink["windows"] > 1  # resumed, in several windows
    assert sink["rows_shipped"] == sum(len(rows) for rows in local.values()) - on_server
    with psycopg.connect(pg_url) as con:
        for table in SHIPPED_TABLES:  # no row twice, whatever the key
            row = con.execute(f"SELECT count(*) FROM {table.name}").fetchone()
            assert row == (len(local[table.name]),), table.name
    assert sink["target"] == pg_url.replace(PASSWORD, "***")
    assert PASSWORD not in json.dumps(status) + first.text + second.text


def test_a_wrong_password_leaves_indexing_going_and_says_why(
    storage_tree: TreeFactory, tmp_path: Path, pg_url: str
) -> None:
    """Given by INDEXER_SHIP_TO with a wrong password, the service indexes the whole tree;
    /healthz, /status, `status` and the ``sink_failed`` line name the refusal, never the
    password."""
    tree = storage_tree(sessions=2)
    db = tmp_path / "index.duckdb"
    wrong = pg_url.replace(PASSWORD, f"not-{PASSWORD}")
    env = {"INDEXER_SHIP_TO": wrong, "INDEXER_MACHINE_ID": "ada"}
    with ServiceProcess("--storage", str(tree.root), "--db", str(db), env=env) as service:
        service.wait_for("backfill_done")
        failed = service.wait_for("sink_failed")
        client = service.client(db)
        ok, reason = client.health()
        status = client.status()
        status_text = _status_command(db)
        assert service.stop() == 0

    assert_index_matches_tree(tree.root, db)
    refused = 'password authentication failed for user "postgres"'
    assert ok and reason.startswith("running; sink failing ") and refused in reason
    assert refused in failed["error"] and "postgresql://postgres:***@127.0.0.1" in failed["error"]
    assert status["sink"]["machine_id"] == "ada" and refused in status["sink"]["error"]
    assert status["sink"]["target"] == wrong.replace(f"not-{PASSWORD}", "***")
    assert "sink postgresql://postgres:***@127.0.0.1:" in status_text
    assert "as machine ada: " in status_text and "  error: cannot connect" in status_text
    assert refused in status_text
    for text in (reason, json.dumps(status), status_text, service.text):
        assert PASSWORD not in text


def test_index_ships_nothing_and_the_next_run_ships_it(
    storage_tree: TreeFactory, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`index` ignores INDEXER_SHIP_TO (a sink cut off at its exit would ship part); `run`
    then ships everything it indexed."""
    tree = storage_tree(sessions=1)
    db = tmp_path / "index.duckdb"
    monkeypatch.setenv("INDEXER_SHIP_TO", pg_url)
    monkeypatch.setenv("INDEXER_MACHINE_ID", "m")
    assert main(["index", "--storage", str(tree.root), "--db", str(db)]) == 0
    with psycopg.connect(pg_url) as pg:
        tables = pg.execute("SELECT to_regclass('indexer_machines')").fetchall()
    assert tables == [(None,)]  # not even the schema: nothing connected
    env = {"INDEXER_SHIP_TO": pg_url, "INDEXER_MACHINE_ID": "m"}
    with ServiceProcess("--storage", str(tree.root), "--db", str(db), env=env) as service:
        service.wait_for("backfill_done")
        client = service.client(db)

        def shipped() -> bool:
            sink = client.status()["sink"]
            return bool(sink["state"] == "caught_up" and sink["behind_changes"] == 0)

        until(shipped, what="the sink to catch up")
        assert service.stop() == 0
    assert team_rows(pg_url, "m") == index_rows(db)
