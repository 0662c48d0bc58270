"""The analytics views of the team database: the local index's views with a machine dimension.

`PG_VIEWS` is derived from `store.views.VIEWS`, not written a second time: `per_machine` gives
every ``SELECT`` a first column ``machine_id``, makes every join match on it and every grouping
keep it, so rows of two machines with the same OpenCode ids never mix; `pg_dialect.to_postgres`
then rewrites what PostgreSQL spells differently. `per_machine` knows the shapes the views use
(a table or view with joins, CTEs, ``GROUP BY``, ``x IN (SELECT ...)``) and raises `ValueError`
on any other (subqueries elsewhere, set operations, windows, ``USING``...), so a new shape
fails the tests instead of mixing machines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import pairwise

from indexer_service.ship.pg_dialect import Token, masked, to_postgres, tokens
from indexer_service.store.views import VIEWS

__all__ = ["PG_VIEWS", "PG_VIEWS_DIGEST", "per_machine"]

_CLAUSES = frozenset({"WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "WINDOW", "QUALIFY"})
_SET_OPS = frozenset({"UNION", "EXCEPT", "INTERSECT"})
_JOIN_WORDS = frozenset({"LEFT", "RIGHT", "FULL", "INNER", "CROSS", "OUTER", "JOIN", "NATURAL"})
_AGGREGATES = frozenset(
    {"COUNT", "SUM", "MIN", "MAX", "AVG", "MEDIAN", "QUANTILE_CONT", "LIST", "ANY_VALUE",
     "ARRAY_AGG", "STRING_AGG", "BOOL_AND", "BOOL_OR", "FIRST", "LAST", "ARG_MAX", "ARG_MIN"}
)  # fmt: skip


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


def _unsupported(what: str, at: Token) -> ValueError:
    return ValueError(f"per_machine: {what} at {at.text!r} (offset {at.start}) is not supported")


def _is_name(t: Token) -> bool:
    return (t.text[0].isalpha() or t.text[0] == "_") and t.word not in _JOIN_WORDS | {"ON"}


class _Select:
    """One ``SELECT`` of masked SQL: its select list, FROM clause and the clauses after, at
    its own depth; `edits` adds the machine dimension."""

    def __init__(self, toks: list[Token], at: int) -> None:
        self.toks = toks
        self.at = at
        self._check_place()
        depth = toks[at].depth
        end = next((k for k in range(at + 1, len(toks)) if toks[k].depth < depth), len(toks))
        self.level = [k for k in range(at + 1, end) if toks[k].depth == depth]
        froms = [k for k in self.level if toks[k].word == "FROM" and toks[k - 1].word != "DISTINCT"]
        if not froms:
            raise _unsupported("a SELECT without FROM", toks[at])
        self.from_k = froms[0]
        rest = [k for k in self.level if k > self.from_k]
        for k in rest:
            if toks[k].word in _SET_OPS:
                raise _unsupported("a set operation", toks[k])
        self.from_end = next((k for k in rest if toks[k].word in _CLAUSES), end)
        self.machine = ""  # the machine expression, set by `edits`

    def _check_place(self) -> None:
        """Only a whole statement (after its CTEs), a CTE's body or an ``IN (SELECT ...)``
        gains a column."""
        toks, at = self.toks, self.at
        if at == 0 or (toks[at].depth == 0 and toks[0].word == "WITH"):
            return
        if toks[at - 1].text == "(" and at >= 2 and toks[at - 2].word in ("AS", "IN"):
            return
        raise _unsupported("a subquery", toks[at])

    def edits(self) -> list[_Edit]:
        """The machine column, the join conditions, the groupings and the ``IN`` subqueries."""
        toks = self.toks
        edits = self._from_edits()
        select = toks[self.at]
        edits.append(_Edit(select.end, select.end, f" {self.machine} AS machine_id,"))
        after = [k for k in self.level if k >= self.from_end]
        for n, k in enumerate(after):
            t = toks[k]
            if t.word == "GROUP":
                edits.append(self._group_edit(toks[after[n + 1]], toks[after[n + 2]]))
            elif t.word == "IN" and toks[k + 1].text == "(" and toks[k + 2].word == "SELECT":
                before = toks[after[n - 1]] if toks[after[n - 1]].word != "NOT" else None
                if before is None or not _is_name(before):
                    raise _unsupported("IN (SELECT ...) after an expression", t)
                edits.append(_Edit(before.start, before.end, f"({self.machine}, {before.text})"))
        return edits

    def _from_edits(self) -> list[_Edit]:
        """Parse ``FROM table [alias] {[LEFT|FULL|INNER] JOIN table [alias] ON cond}``; each
        condition also matches the machine of what was joined before it."""
        toks = self.toks
        seq = [
            toks[k] for k in self.level if self.from_k < k < self.from_end and toks[k].word != "AS"
        ]
        if not seq or not _is_name(seq[0]):
            raise _unsupported("a FROM that is not a table", seq[0] if seq else toks[self.at])
        n = 2 if len(seq) > 1 and _is_name(seq[1]) else 1
        self.machine = f"{seq[n - 1].text}.machine_id"
        edits: list[_Edit] = []
        while n < len(seq):
            kind = seq[n].word
            if kind not in ("LEFT", "FULL", "INNER", "JOIN"):
                raise _unsupported("this join", seq[n])
            while seq[n].word != "JOIN":
                n += 1
            n += 1
            alias_at = n + 1 if _is_name(seq[n + 1]) else n
            on = seq[alias_at + 1]
            if on.word != "ON":
                raise _unsupported("a join without ON", on)
            n = alias_at + 2
            while n < len(seq) and seq[n].word not in _JOIN_WORDS:
                n += 1
            alias, first, last = seq[alias_at].text, seq[alias_at + 2], seq[n - 1]
            edits += [
                _Edit(on.end, on.end, f" {alias}.machine_id = {self.machine} AND"),
                _Edit(first.start, first.start, "("),
                _Edit(last.end, last.end, ")"),
            ]
            if kind == "FULL":
                inner = self.machine.removeprefix("coalesce(").removesuffix(")")
                self.machine = f"coalesce({inner}, {alias}.machine_id)"
        return edits

    def _group_edit(self, by: Token, first: Token) -> _Edit:
        if by.word != "BY" or first.word in ("GROUPING", "ROLLUP", "CUBE"):
            raise _unsupported("this grouping", first)
        if first.word != "ALL":
            return _Edit(by.end, by.end, f" {self.machine},")
        # GROUP BY ALL: the select list's items without an aggregate, by position (machine 1st)
        items: list[list[Token]] = [[]]
        for k in range(self.at + 1, self.from_k):
            t = self.toks[k]
            if t.text == "," and t.depth == self.toks[self.at].depth:
                items.append([])
            else:
                items[-1].append(t)
        keys = [1] + [
            i + 2
            for i, item in enumerate(items)
            if not any(t.word in _AGGREGATES and u.text == "(" for t, u in pairwise(item))
        ]
        return _Edit(first.start, first.end, ", ".join(map(str, keys)))


@masked
def per_machine(sql: str) -> str:
    """``sql`` (one statement of the views' shapes) with the machine dimension: every SELECT
    starts with ``machine_id``, every join and grouping includes it. Raises `ValueError` for a
    shape it does not know."""
    toks = tokens(sql)
    for t in toks:
        if t.word == "OVER":  # a window would need the machine in its PARTITION BY
            raise _unsupported("a window function", t)
    edits = [e for k, t in enumerate(toks) if t.word == "SELECT" for e in _Select(toks, k).edits()]
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        sql = sql[: edit.start] + edit.text + sql[edit.end :]
    return sql


PG_VIEWS: tuple[tuple[str, str], ...] = tuple(
    (name, to_postgres(per_machine(sql))) for name, sql in VIEWS
)
"""(view name, SELECT) on PostgreSQL, in dependency order: `store.views.VIEWS`, per machine."""

PG_VIEWS_DIGEST = hashlib.sha256(repr(PG_VIEWS).encode()).hexdigest()[:16]
"""A digest of `PG_VIEWS`: the views are re-created when the server's differ."""
