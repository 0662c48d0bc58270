"""Analytics views over the record tables: cost, tokens, models, agents, tools, delegations.

`VIEWS` holds ``(name, SELECT)`` pairs in dependency order; `apply_views` creates them with
``CREATE OR REPLACE VIEW`` when they are missing or their SQL changed (a digest of the SQL is
kept in ``schema_meta``), so an up-to-date database is not written to on open. Columns are
documented in docs/schema.md ("Views").

Conventions: times are naive UTC ``TIMESTAMP``s and days UTC ``DATE``s; durations carry their
unit in the name (``duration_ms``, ``duration_s``); token counts and costs are never NULL
(absent counts as 0); ``tokens_total`` is the sum of the five kinds (OpenCode writes
``tokens.total`` only from 1.1.65 on). Usage counts assistant messages only.
"""

from __future__ import annotations

import hashlib

import duckdb

__all__ = ["TOOL_AGGREGATES", "USAGE_AGGREGATES", "VIEWS", "VIEWS_DIGEST", "apply_views"]

_KINDS = ("input", "output", "reasoning", "cache_read", "cache_write")
_TOTAL = " + ".join(f"coalesce(m.tokens_{k}, 0)" for k in _KINDS)

USAGE_AGGREGATES = ",\n  ".join(
    (
        "count(DISTINCT session_id) AS sessions",
        "count(*) AS messages",
        "count(*) FILTER (WHERE is_error) AS errors",
        *(f"coalesce(sum(tokens_{k}), 0)::BIGINT AS tokens_{k}" for k in (*_KINDS, "total")),
        "coalesce(sum(cost), 0)::DOUBLE AS cost",
    )
)
"""Aggregates over rows of ``v_message_usage``: the usage views and reports share them."""

TOOL_AGGREGATES = ",\n  ".join(
    (
        "count(*) AS calls",
        "count(*) FILTER (WHERE status = 'completed') AS completed",
        "count(*) FILTER (WHERE status = 'error') AS errors",
        "count(*) FILTER (WHERE status IS DISTINCT FROM 'completed' "
        "AND status IS DISTINCT FROM 'error') AS unfinished",
        "(count(*) FILTER (WHERE status = 'error'))::DOUBLE / nullif(count(*), 0) AS error_rate",
        "median(duration_ms)::DOUBLE AS median_ms",
        "quantile_cont(duration_ms, 0.95)::DOUBLE AS p95_ms",
    )
)
"""Aggregates over rows of ``v_tool_calls``."""

_MESSAGE_USAGE = f"""
SELECT
  m.id AS message_id, m.session_id, s.project_id, coalesce(pr.worktree, m.root) AS worktree,
  coalesce(s.directory, m.cwd) AS directory, s.parent_id AS parent_session_id,
  m.created_at, m.completed_at, m.created_at::DATE AS day,
  m.provider_id, m.model_id, m.agent, m.finish, m.error_name,
  m.error_name IS NOT NULL AS is_error,
  {", ".join(f"coalesce(m.tokens_{k}, 0) AS tokens_{k}" for k in _KINDS)},
  ({_TOTAL})::BIGINT AS tokens_total,
  coalesce(m.cost, 0)::DOUBLE AS cost
FROM messages m
LEFT JOIN sessions s ON s.id = m.session_id
LEFT JOIN projects pr ON pr.id = s.project_id
WHERE m.role = 'assistant'
"""

_DAILY_USAGE = f"""
SELECT day, provider_id, model_id, agent,
  {USAGE_AGGREGATES}
FROM v_message_usage
GROUP BY ALL
"""

_MONTHLY_USAGE = f"""
SELECT date_trunc('month', day)::DATE AS month, provider_id, model_id, agent,
  {USAGE_AGGREGATES}
FROM v_message_usage
GROUP BY ALL
"""

_TOOL_CALLS = """
SELECT
  p.id AS part_id, p.message_id, coalesce(p.session_id, m.session_id) AS session_id,
  s.project_id, coalesce(pr.worktree, m.root) AS worktree,
  coalesce(s.directory, m.cwd) AS directory, p.tool, p.tool_status AS status,
  coalesce(p.tool_status = 'error', false) AS is_error,
  coalesce(p.start_at, m.created_at) AS started_at, p.end_at AS ended_at, p.duration_ms,
  coalesce(p.start_at, m.created_at)::DATE AS day
FROM parts p
LEFT JOIN messages m ON m.id = p.message_id
LEFT JOIN sessions s ON s.id = coalesce(p.session_id, m.session_id)
LEFT JOIN projects pr ON pr.id = s.project_id
WHERE p.type = 'tool'
"""

_TOOL_USAGE = f"""
SELECT tool,
  {TOOL_AGGREGATES}
FROM v_tool_calls
GROUP BY tool
"""

_msg_sum = ",\n    ".join(
    f"coalesce(sum(tokens_{k}) FILTER (WHERE role = 'assistant'), 0)::BIGINT AS tokens_{k}"
    for k in _KINDS
)
_SESSION_SUMMARY = f"""
WITH msg AS (
  SELECT session_id,
    count(*) AS messages,
    count(*) FILTER (WHERE role = 'user') AS user_messages,
    count(*) FILTER (WHERE role = 'assistant') AS assistant_messages,
    count(*) FILTER (WHERE role = 'assistant' AND completed_at IS NULL) AS incomplete_messages,
    count(*) FILTER (WHERE error_name IS NOT NULL) AS error_messages,
    min(created_at) AS first_message_at,
    greatest(max(completed_at), max(created_at)) AS last_message_at,
    {_msg_sum},
    coalesce(sum(cost) FILTER (WHERE role = 'assistant'), 0)::DOUBLE AS cost,
    list_sort(list_distinct(list(provider_id || '/' || model_id)
      FILTER (WHERE role = 'assistant'))) AS models_used,
    list_sort(list_distinct(list(agent) FILTER (WHERE role = 'assistant'))) AS agents_used,
    any_value(cwd) AS cwd, any_value(root) AS root
  FROM messages
  GROUP BY session_id
),
prt AS (
  SELECT session_id, count(*) AS parts,
    count(*) FILTER (WHERE type = 'tool') AS tool_calls,
    count(*) FILTER (WHERE type = 'tool' AND tool_status = 'error') AS tool_errors
  FROM parts
  GROUP BY session_id
),
kids AS (
  SELECT parent_id, count(*) AS subagent_sessions
  FROM sessions WHERE parent_id IS NOT NULL GROUP BY parent_id
),
base AS (
  SELECT coalesce(s.id, msg.session_id) AS session_id, s.project_id,
    coalesce(pr.worktree, msg.root) AS worktree, coalesce(s.directory, msg.cwd) AS directory,
    s.title, s.parent_id, s.parent_id IS NOT NULL AS is_subagent,
    coalesce(s.created_at, msg.first_message_at) AS started_at,
    greatest(msg.last_message_at, s.updated_at, s.created_at) AS ended_at,
    coalesce(msg.messages, 0) AS messages, coalesce(msg.user_messages, 0) AS user_messages,
    coalesce(msg.assistant_messages, 0) AS assistant_messages,
    coalesce(msg.incomplete_messages, 0) AS incomplete_messages,
    coalesce(msg.error_messages, 0) AS error_messages,
    {", ".join(f"coalesce(msg.tokens_{k}, 0) AS tokens_{k}" for k in _KINDS)},
    coalesce(msg.cost, 0)::DOUBLE AS cost,
    coalesce(msg.models_used, []::VARCHAR[]) AS models_used,
    coalesce(msg.agents_used, []::VARCHAR[]) AS agents_used,
    s.additions, s.deletions, s.files_changed, s.id IS NULL AS session_file_missing
  FROM sessions s
  FULL JOIN msg ON msg.session_id = s.id
  LEFT JOIN projects pr ON pr.id = s.project_id
)
SELECT b.session_id, b.project_id, b.worktree, b.directory, b.title, b.parent_id,
  b.is_subagent, b.started_at, b.ended_at,
  epoch(b.ended_at - b.started_at)::DOUBLE AS duration_s,
  b.messages, b.user_messages, b.assistant_messages, b.incomplete_messages, b.error_messages,
  coalesce(prt.parts, 0) AS parts, coalesce(prt.tool_calls, 0) AS tool_calls,
  coalesce(prt.tool_errors, 0) AS tool_errors,
  {", ".join(f"b.tokens_{k}" for k in _KINDS)},
  ({" + ".join(f"b.tokens_{k}" for k in _KINDS)})::BIGINT AS tokens_total,
  b.cost, b.models_used, b.agents_used,
  coalesce(kids.subagent_sessions, 0) AS subagent_sessions,
  coalesce(b.additions, 0) AS additions, coalesce(b.deletions, 0) AS deletions,
  coalesce(b.files_changed, 0) AS files_changed, b.session_file_missing
FROM base b
LEFT JOIN prt ON prt.session_id = b.session_id
LEFT JOIN kids ON kids.parent_id = b.session_id
"""

PROMPT_SUMMARY_CHARS = 120
"""``prompt_summary``: the prompt on one line (whitespace runs -> one space), at most this many
characters (longer ones are cut to one less and end with an ellipsis)."""

_one_line = r"trim(regexp_replace(p.prompt, '\s+', ' ', 'g'))"
_DELEGATIONS = f"""
WITH child AS (
  SELECT session_id, count(*) AS messages,
    coalesce(sum(cost) FILTER (WHERE role = 'assistant'), 0)::DOUBLE AS cost,
    coalesce(sum({_TOTAL}) FILTER (WHERE role = 'assistant'), 0)::BIGINT AS tokens_total
  FROM messages m
  WHERE session_id IN (SELECT task_session_id FROM parts WHERE type = 'tool' AND tool = 'task')
  GROUP BY session_id
)
SELECT p.session_id AS parent_session_id, p.message_id, p.id AS part_id, p.call_id,
  p.task_session_id AS child_session_id, p.subagent_type, p.description,
  CASE WHEN length({_one_line}) > {PROMPT_SUMMARY_CHARS}
    THEN left({_one_line}, {PROMPT_SUMMARY_CHARS - 1}) || '…' ELSE {_one_line} END AS prompt_summary,
  p.tool_status AS status, p.start_at AS started_at, p.end_at AS ended_at, p.duration_ms,
  cs.id IS NOT NULL AS child_found, cs.title AS child_title,
  coalesce(child.messages, 0) AS child_messages, coalesce(child.cost, 0)::DOUBLE AS child_cost,
  coalesce(child.tokens_total, 0) AS child_tokens_total
FROM parts p
LEFT JOIN sessions cs ON cs.id = p.task_session_id
LEFT JOIN child ON child.session_id = p.task_session_id
WHERE p.type = 'tool' AND p.tool = 'task'
"""

VIEWS: tuple[tuple[str, str], ...] = (
    ("v_message_usage", _MESSAGE_USAGE),
    ("v_daily_usage", _DAILY_USAGE),
    ("v_monthly_usage", _MONTHLY_USAGE),
    ("v_tool_calls", _TOOL_CALLS),
    ("v_tool_usage", _TOOL_USAGE),
    ("v_session_summary", _SESSION_SUMMARY),
    ("v_delegations", _DELEGATIONS),
)
"""(view name, SELECT) in dependency order."""

VIEWS_DIGEST = hashlib.sha256(repr(VIEWS).encode()).hexdigest()
"""Stored in ``schema_meta`` under ``views_digest``: the views are re-created when it differs."""

_DIGEST_KEY = "views_digest"


def apply_views(con: duckdb.DuckDBPyConnection) -> bool:
    """Create or replace every view unless all exist with the current SQL; return whether any
    was (re)created. Needs the record tables and ``schema_meta``; the caller checkpoints."""
    existing = {
        r[0]
        for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    }
    stored = con.execute("SELECT value FROM schema_meta WHERE key = ?", [_DIGEST_KEY]).fetchall()
    if stored and stored[0][0] == VIEWS_DIGEST and all(name in existing for name, _ in VIEWS):
        return False
    for name, sql in VIEWS:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}").fetchall()
    con.execute(
        "INSERT OR REPLACE INTO schema_meta VALUES (?, ?)", [_DIGEST_KEY, VIEWS_DIGEST]
    ).fetchall()
    return True
