"""The local index's DuckDB SQL in PostgreSQL's dialect: `to_postgres`, and the pieces to read it.

The views (`store.views`) and the reports (`reports.usage`) are written once, for DuckDB; the
team database runs the same text after `to_postgres` rewrites the few constructs PostgreSQL
spells differently. Each rewrite is a small, exact pattern; `to_postgres` refuses SQL that still
holds a DuckDB-only construct it does not know, so a new one in the views fails the tests rather
than the server. String literals are set aside first (`mask`) and put back last, so no rewrite
ever touches their text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Token", "bind_named", "mask", "to_postgres", "tokens", "unmask"]

_LITERAL = re.compile(r"'(?:[^']|'')*'")
_SLOT = re.compile(r"\x00(\d+)\x00")


def mask(sql: str) -> tuple[str, list[str]]:
    """``sql`` with each string literal replaced by a numbered slot, and the literals."""
    literals: list[str] = []

    def slot(m: re.Match[str]) -> str:
        literals.append(m.group(0))
        return f"\x00{len(literals) - 1}\x00"

    return _LITERAL.sub(slot, sql), literals


def unmask(sql: str, literals: list[str]) -> str:
    """The inverse of `mask`."""
    return _SLOT.sub(lambda m: literals[int(m.group(1))], sql)


def masked(rewrite: Callable[[str], str]) -> Callable[[str], str]:
    """``rewrite`` applied to SQL whose string literals are set aside."""

    def run(sql: str) -> str:
        text, literals = mask(sql)
        return unmask(rewrite(text), literals)

    return run


@dataclass(frozen=True)
class Token:
    """A word, number, literal slot or sign of masked SQL, with its place and paren depth (a
    parenthesis has the depth outside it)."""

    start: int
    end: int
    text: str
    depth: int

    @property
    def word(self) -> str:
        """The text upper-cased: keywords compare through it."""
        return self.text.upper()


_TOKEN = re.compile(r"\x00\d+\x00|[A-Za-z_][\w.]*|\d+(?:\.\d+)?|::|\|\||[<>!=]=?|\S")


def tokens(text: str) -> list[Token]:
    """The tokens of masked SQL (see `mask`)."""
    out: list[Token] = []
    depth = 0
    for m in _TOKEN.finditer(text):
        t = m.group(0)
        if t == ")":
            depth -= 1
        out.append(Token(m.start(), m.end(), t, depth))
        if t == "(":
            depth += 1
    return out


# -- the rewrites ------------------------------------------------------------------------------

_ARG = r"([^()]+?)"  # one argument without parentheses
_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE | re.DOTALL), replacement)
    for pattern, replacement in (
        # DOUBLE is spelled DOUBLE PRECISION; VARCHAR is text; an empty list is an ARRAY[]
        (r"\[\]::VARCHAR\[\]", "ARRAY[]::text[]"),
        (r"::DOUBLE\b(?!\s+PRECISION)", "::double precision"),
        (r"::VARCHAR\b", "::text"),
        # median and quantile_cont are ordered-set aggregates (continuous: the same figures)
        (rf"\bmedian\({_ARG}\)", r"percentile_cont(0.5) WITHIN GROUP (ORDER BY \1)"),
        (
            rf"\bquantile_cont\({_ARG},\s*([0-9.]+)\)",
            r"percentile_cont(\2) WITHIN GROUP (ORDER BY \1)",
        ),
        # the sorted distinct non-NULL values of a group, in DuckDB's byte order
        (
            rf"\blist_sort\(list_distinct\(list\({_ARG}\)\s*FILTER\s*\(WHERE\s+{_ARG}\)\)\)",
            r'array_agg(DISTINCT (\1) COLLATE "C" ORDER BY (\1) COLLATE "C") '
            r"FILTER (WHERE (\2) AND (\1) IS NOT NULL)",
        ),
        # an interval in seconds
        (r"\bepoch\(", "extract(epoch FROM "),
        # any value of the group: PostgreSQL has any_value only from 16 on
        (r"\bany_value\(", "min("),
    )
)

_LEFT_OVER = re.compile(
    r"\b(median|quantile_cont|quantile_disc|list|list_sort|list_distinct|epoch|any_value"
    r"|struct_pack|strftime|epoch_ms|list_value)\(|GROUP\s+BY\s+ALL\b|ORDER\s+BY\s+ALL\b"
    r"|::(DOUBLE|VARCHAR|HUGEINT|UBIGINT)\b(?!\s+PRECISION)|\bINSERT\s+OR\b|\bQUALIFY\b",
    re.IGNORECASE,
)


@masked
def to_postgres(sql: str) -> str:
    """DuckDB ``sql`` of this project rewritten for PostgreSQL (13 or later). Raises
    `ValueError` for a DuckDB-only construct it has no rewrite for."""
    for pattern, replacement in _REWRITES:
        sql = pattern.sub(replacement, sql)
    left = _LEFT_OVER.search(sql)
    if left:
        raise ValueError(f"no PostgreSQL rewrite for {left.group(0)!r} in: {sql.strip()[:200]}")
    return sql


_NAMED = re.compile(r"\$([A-Za-z_]\w*)")


def bind_named(sql: str) -> str:
    """DuckDB's ``$name`` parameters as psycopg's ``%(name)s``, each typed ``text`` so that
    PostgreSQL knows its type even when it is NULL (``$x IS NULL``); every ``%`` (in string
    literals too) becomes ``%%``."""
    text, literals = mask(sql)
    text = _NAMED.sub(r"(%(\1)s)::text", text.replace("%", "%%"))
    return unmask(text, [lit.replace("%", "%%") for lit in literals])
