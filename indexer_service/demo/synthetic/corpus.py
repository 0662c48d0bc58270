"""The shared text corpus that generated records quote: code, shell output, prose, base64."""

from __future__ import annotations

import base64
import functools
import itertools
import random
from dataclasses import dataclass

_WORDS = (
    "index batch store watcher event parse session message part token cost queue flush reader "
    "writer tree node cache limit retry error value result config state loader schema column "
    "row table client server handler router model agent prompt"
).split()
_TITLES = (
    "Fix flaky watcher test", "Add DuckDB loader", "Refactor config parsing", "Explain build failure",
    "Investigate slow startup", "Implement retry with backoff", "Débogage du parseur JSON — v2",
    "Add CLI stats command", "Review PR feedback", "Speed up reconcile scan", "日本語のドキュメント更新",
)  # fmt: skip


class _Lines:
    """A pre-generated text blob; ``take`` slices ``n`` whole lines out of it."""

    def __init__(self, lines: list[str]) -> None:
        self.text = "".join(line + "\n" for line in lines)
        self.starts = list(itertools.accumulate((len(x) + 1 for x in lines), initial=0))

    def take(self, r: random.Random, n: int) -> str:
        n = min(n, len(self.starts) - 1)
        i = r.randrange(len(self.starts) - n)
        return self.text[self.starts[i] : self.starts[i + n]]


@dataclass(frozen=True)
class _Corpus:
    code: _Lines
    shell: _Lines
    sentences: tuple[str, ...]
    b64: str

    def prose(self, r: random.Random, n: int) -> str:
        return " ".join(r.choices(self.sentences, k=n))


@functools.cache
def _corpus() -> _Corpus:
    """Build the shared text blobs once (fixed seed: the same text for every tree)."""
    r = random.Random(0x5EED)
    code, shell, sentences = [], [], []
    for n in range(8000):
        a, b, c = r.choice(_WORDS), r.choice(_WORDS), r.choice(_WORDS)
        code.append(r.choice((
            f"def {a}_{b}(self, {c}: int) -> None:", f"    {a} = self.{b}.get({c!r})",
            f"    return {a}_{b}", f"class {a.title()}{b.title()}:", f"    if not {a}:",
            f'        raise ValueError("bad {a}: {b}")', f"from .{a} import {b}", "",
            f"    for {a} in {b}s:", f"        {a}.append({c})", f"# {a} {b} → {c} (naïve)",
        )))  # fmt: skip
        shell.append(r.choice((
            f"tests/test_{a}.py::test_{b}_{c} PASSED{' ' * 20}[{n % 100:3d}%]",
            f"{a}/{b}.py:{n % 400 + 1}:{n % 80 + 1}: E501 Line too long ({n % 40 + 100} > 100)",
            f"\x1b[32m✓\x1b[0m {a} > {b} {c} ({n % 900} ms)", f"npm warn deprecated {a}-{b}@1.{n % 9}.0",
            f'  File "/home/dev/{a}/{b}.py", line {n % 300 + 1}, in {c}',
            f"-rw-r--r-- 1 dev dev {n * 7 % 90000:6d} Nov 24 10:{n % 60:02d} {a}_{b}.py",
        )))  # fmt: skip
        sentences.append(r.choice((
            f"The {a} {b} now checks the {c} before each flush.",
            f"I'll update `{a}_{b}` so the {c} is not read twice.", f"Tests for {a} pass ✓.",
            f"Next, look at how {b} handles a missing {c} — it may be None.",
            f"Le {a} gère le {b} côté {c}.", f"{a.title()} の {b} を確認しました 🚀",
        )))  # fmt: skip
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + r.randbytes(300_000)
    b64 = base64.b64encode(png).decode()
    return _Corpus(_Lines(code), _Lines(shell), tuple(sentences[:600]), b64)
