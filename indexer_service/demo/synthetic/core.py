"""Generator core: the seeded RNG, a fake monotonic clock, opencode's ID formats, record output."""

from __future__ import annotations

import random
from typing import Any

from indexer_service.demo.synthetic.corpus import _corpus
from indexer_service.demo.synthetic.files import _Sink
from indexer_service.demo.synthetic.spec import TreeSpec
from indexer_service.demo.synthetic.state import Json, _Ses

_B62 = ("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" * 5)[:256].encode()
_CROCKFORD = ("0123456789ABCDEFGHJKMNPQRSTVWXYZ" * 8).encode()  # byte -> byte % 32 (ULID)
_MASK48 = (1 << 48) - 1


class _Core:
    """Generator state: one seeded RNG, a fake monotonic clock, the process-global ID counter."""

    def __init__(self, spec: TreeSpec, sink: _Sink) -> None:
        self.spec, self.sink, self.c = spec, sink, _corpus()
        self.r = random.Random(spec.seed)
        self.t, self.id_ms, self.id_n = spec.base_time_ms, -1, 0
        self.session_ids: list[str] = []
        self.text_rate = 0.5  # chance of a text part in a tool-calling step
        self.last_text = ""

    def tick(self, lo: int, hi: int) -> int:
        """Advance the clock by lo..hi ms (random() is cheaper than randint on this hot path)."""
        self.t += lo + int(self.r.random() * (hi - lo + 1))
        return self.t

    def ident(self, prefix: str, descending: bool = False) -> str:
        """``src/id/id.ts``: hex of ms*4096+counter (inverted if descending), 14 base62 chars."""
        if self.t != self.id_ms:
            self.id_ms, self.id_n = self.t, 0
        self.id_n += 1
        v = (self.t * 4096 + self.id_n) & _MASK48
        return f"{prefix}_{v ^ _MASK48 if descending else v:012x}{self.b62(14)}"

    def b62(self, n: int, table: bytes = _B62) -> str:
        return self.r.randbytes(n).translate(table).decode()  # randomByte % 62, as opencode does

    def hex40(self) -> str:
        return f"{self.r.getrandbits(160):040x}"

    def call_id(self, s: _Ses) -> str:
        return f"toolu_01{self.b62(22)}" if s.model[0] == "anthropic" else f"call_{self.b62(24)}"

    def ulid(self) -> str:
        """The ULID that opencode makes itself as callID of a ``/command`` subtask."""
        stamp = bytes(_CROCKFORD[(self.t >> (45 - 5 * i)) & 31] for i in range(10)).decode()
        return stamp + self.b62(16, _CROCKFORD)

    def part(self, s: _Ses, mid: str, type_: str, **fields: Any) -> Json:
        return {
            "id": self.ident("prt"),
            "sessionID": s.id,
            "messageID": mid,
            "type": type_,
        } | fields

    def emit(self, s: _Ses, msg: Json, parts: list[Json]) -> None:
        self.sink.put(f"message/{s.id}/{msg['id']}.json", msg, s.compact)
        for p in parts:
            path = self.sink.put(f"part/{msg['id']}/{p['id']}.json", p, s.compact)
            if p["type"] == "text":
                self.last_text = path
