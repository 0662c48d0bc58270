"""Aligned text tables for the terminal: the one formatter behind ``query`` and ``report``."""

from __future__ import annotations

from collections.abc import Container, Sequence

__all__ = ["table_lines"]


def table_lines(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    total: Sequence[str] | None = None,
    right: Container[int] = (),
    sep: str = "  ",
    rule_sep: str | None = None,
) -> list[str]:
    """``header``, a rule, the ``rows`` and, when given, a rule and the ``total`` row, each
    column as wide as its widest cell; columns in ``right`` are right-aligned, the others left.
    Cells are joined with ``sep`` (the rule's dashes with ``rule_sep``, by default ``sep``)."""
    every = [header, *rows, *([total] if total is not None else [])]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return sep.join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = (sep if rule_sep is None else rule_sep).join("-" * w for w in widths)
    out = [line(header), rule, *(line(r) for r in rows)]
    if total is not None:
        out += [rule, line(total)]
    return out
