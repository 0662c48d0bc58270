"""The tables of opencode 1.18's ``opencode.db`` (same names, types, keys, cascades and indexes),
opening it as opencode does, and its secret rows.

Compatible with the schema the real binary creates, not a copy of its text: a reader that works on
a database made with this DDL works on a real one. Secrets live in ``account``,
``control_account``, ``credential`` and ``session_share``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

OPENCODE_SCHEMA = """
CREATE TABLE account (
  id text PRIMARY KEY, email text NOT NULL, url text NOT NULL,
  access_token text NOT NULL, refresh_token text NOT NULL, token_expiry integer,
  time_created integer NOT NULL, time_updated integer NOT NULL
);
CREATE TABLE account_state (
  id integer PRIMARY KEY, active_account_id text, active_org_id text,
  FOREIGN KEY (active_account_id) REFERENCES account (id) ON DELETE SET NULL
);
CREATE TABLE control_account (
  email text NOT NULL, url text NOT NULL,
  access_token text NOT NULL, refresh_token text NOT NULL, token_expiry integer,
  active integer NOT NULL, time_created integer NOT NULL, time_updated integer NOT NULL,
  PRIMARY KEY (email, url)
);
CREATE TABLE credential (
  id text PRIMARY KEY, integration_id text, label text NOT NULL, value text NOT NULL,
  connector_id text, method_id text, active integer,
  time_created integer NOT NULL, time_updated integer NOT NULL
);
CREATE TABLE data_migration (name text PRIMARY KEY, time_completed integer NOT NULL);
CREATE TABLE event_sequence (aggregate_id text PRIMARY KEY, seq integer NOT NULL, owner_id text);
CREATE TABLE event (
  id text PRIMARY KEY, aggregate_id text NOT NULL, seq integer NOT NULL,
  type text NOT NULL, data text NOT NULL,
  FOREIGN KEY (aggregate_id) REFERENCES event_sequence (aggregate_id) ON DELETE CASCADE
);
CREATE TABLE migration (id TEXT PRIMARY KEY, time_completed INTEGER NOT NULL);
CREATE TABLE project (
  id text PRIMARY KEY, worktree text NOT NULL, vcs text, name text,
  icon_url text, icon_url_override text, icon_color text,
  time_created integer NOT NULL, time_updated integer NOT NULL, time_initialized integer,
  sandboxes text NOT NULL, commands text
);
CREATE TABLE permission (
  id text PRIMARY KEY, project_id text NOT NULL, action text NOT NULL, resource text NOT NULL,
  time_created integer NOT NULL, time_updated integer NOT NULL,
  FOREIGN KEY (project_id) REFERENCES project (id) ON DELETE CASCADE
);
CREATE TABLE project_directory (
  project_id text NOT NULL, directory text NOT NULL, type text, strategy text,
  time_created integer NOT NULL,
  PRIMARY KEY (project_id, directory),
  FOREIGN KEY (project_id) REFERENCES project (id) ON DELETE CASCADE
);
CREATE TABLE workspace (
  id text PRIMARY KEY, type text NOT NULL, name text DEFAULT '' NOT NULL, branch text,
  directory text, extra text, project_id text NOT NULL, time_used integer NOT NULL,
  FOREIGN KEY (project_id) REFERENCES project (id) ON DELETE CASCADE
);
CREATE TABLE session (
  id text PRIMARY KEY, project_id text NOT NULL, workspace_id text, parent_id text,
  slug text NOT NULL, directory text NOT NULL, path text, title text NOT NULL,
  version text NOT NULL, share_url text,
  summary_additions integer, summary_deletions integer, summary_files integer,
  summary_diffs text, metadata text,
  cost real DEFAULT 0 NOT NULL,
  tokens_input integer DEFAULT 0 NOT NULL, tokens_output integer DEFAULT 0 NOT NULL,
  tokens_reasoning integer DEFAULT 0 NOT NULL,
  tokens_cache_read integer DEFAULT 0 NOT NULL, tokens_cache_write integer DEFAULT 0 NOT NULL,
  revert text, permission text, agent text, model text,
  time_created integer NOT NULL, time_updated integer NOT NULL,
  time_compacting integer, time_archived integer,
  FOREIGN KEY (project_id) REFERENCES project (id) ON DELETE CASCADE
);
CREATE TABLE message (
  id text PRIMARY KEY, session_id text NOT NULL,
  time_created integer NOT NULL, time_updated integer NOT NULL, data text NOT NULL,
  FOREIGN KEY (session_id) REFERENCES session (id) ON DELETE CASCADE
);
CREATE TABLE part (
  id text PRIMARY KEY, message_id text NOT NULL, session_id text NOT NULL,
  time_created integer NOT NULL, time_updated integer NOT NULL, data text NOT NULL,
  FOREIGN KEY (message_id) REFERENCES message (id) ON DELETE CASCADE
);
CREATE TABLE todo (
  session_id text NOT NULL, content text NOT NULL, status text NOT NULL,
  priority text NOT NULL, position integer NOT NULL,
  time_created integer NOT NULL, time_updated integer NOT NULL,
  PRIMARY KEY (session_id, position),
  FOREIGN KEY (session_id) REFERENCES session (id) ON DELETE CASCADE
);
CREATE TABLE session_share (
  session_id text PRIMARY KEY, id text NOT NULL, secret text NOT NULL, url text NOT NULL,
  time_created integer NOT NULL, time_updated integer NOT NULL,
  FOREIGN KEY (session_id) REFERENCES session (id) ON DELETE CASCADE
);
CREATE TABLE session_context_epoch (
  session_id text PRIMARY KEY, baseline text NOT NULL, snapshot text NOT NULL,
  baseline_seq integer NOT NULL,
  FOREIGN KEY (session_id) REFERENCES session (id) ON DELETE CASCADE
);
CREATE TABLE session_input (
  id text PRIMARY KEY, session_id text NOT NULL, prompt text NOT NULL, delivery text NOT NULL,
  admitted_seq integer NOT NULL, promoted_seq integer, time_created integer NOT NULL,
  FOREIGN KEY (session_id) REFERENCES session (id) ON DELETE CASCADE
);
CREATE TABLE session_message (
  id text PRIMARY KEY, session_id text NOT NULL, type text NOT NULL, seq integer NOT NULL,
  time_created integer NOT NULL, time_updated integer NOT NULL, data text NOT NULL,
  FOREIGN KEY (session_id) REFERENCES session (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX event_aggregate_seq_idx ON event (aggregate_id, seq);
CREATE INDEX event_aggregate_type_seq_idx ON event (aggregate_id, type, seq);
CREATE INDEX message_session_time_created_id_idx ON message (session_id, time_created, id);
CREATE INDEX part_message_id_id_idx ON part (message_id, id);
CREATE INDEX part_session_idx ON part (session_id);
CREATE UNIQUE INDEX permission_project_action_resource_idx
  ON permission (project_id, action, resource);
CREATE UNIQUE INDEX session_input_session_admitted_seq_idx
  ON session_input (session_id, admitted_seq);
CREATE INDEX session_input_session_pending_delivery_seq_idx
  ON session_input (session_id, promoted_seq, delivery, admitted_seq);
CREATE UNIQUE INDEX session_input_session_promoted_seq_idx
  ON session_input (session_id, promoted_seq);
CREATE UNIQUE INDEX session_message_session_seq_idx ON session_message (session_id, seq);
CREATE INDEX session_message_session_time_created_id_idx
  ON session_message (session_id, time_created, id);
CREATE INDEX session_message_session_type_seq_idx ON session_message (session_id, type, seq);
CREATE INDEX session_message_time_created_idx ON session_message (time_created);
CREATE INDEX session_parent_idx ON session (parent_id);
CREATE INDEX session_project_idx ON session (project_id);
CREATE INDEX session_workspace_idx ON session (workspace_id);
CREATE INDEX todo_session_idx ON todo (session_id);
"""
"""DDL for a fresh ``opencode.db`` as opencode 1.18 lays it out (``executescript`` it)."""

SECRET_MARKERS: tuple[str, ...] = (
    "sk-secret-account-access-7Q4XK2",
    "sk-secret-account-refresh-9V1MZC",
    "sk-secret-control-access-3H8RTW",
    "sk-secret-control-refresh-5N2LBD",
    "sk-secret-credential-value-6F0PQY",
)
"""The secrets ``insert_secrets`` stores (account and control_account access and refresh tokens,
a credential's value): none of them may ever reach an index."""


def connect(path: Path | str, *, foreign_keys: bool = True) -> sqlite3.Connection:
    """Open ``path`` as opencode does: WAL, synchronous=NORMAL, busy_timeout=5000, foreign keys.

    No implicit transactions (``isolation_level=None``): writers BEGIN and COMMIT themselves.
    A writer may move between threads (the demo's agent runs each step in a worker thread),
    one at a time.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Create opencode's tables in one transaction (no reader sees half a schema)."""
    conn.executescript(f"BEGIN;\n{OPENCODE_SCHEMA}\nCOMMIT;")


def insert_secrets(conn: sqlite3.Connection, t: int) -> None:
    """One logged-in account, control account and credential, holding ``SECRET_MARKERS``."""
    acc_access, acc_refresh, ctl_access, ctl_refresh, value = SECRET_MARKERS
    email, expiry = "dev@example.com", t + 3_600_000
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO account VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("acc_01synthetic", email, "https://opencode.ai", acc_access, acc_refresh, expiry, t, t),
    )
    conn.execute("INSERT INTO account_state VALUES (1, 'acc_01synthetic', NULL)")
    conn.execute(
        "INSERT INTO control_account VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (email, "https://console.example.com", ctl_access, ctl_refresh, expiry, 1, t, t),
    )
    conn.execute(
        "INSERT INTO credential (id, label, value, active, time_created, time_updated)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        ("cred_01synthetic", "anthropic api key", value, 1, t, t),
    )
    conn.execute("COMMIT")
