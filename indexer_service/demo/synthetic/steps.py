"""Assistant messages: one per LLM step, with its opening parts, tool calls, usage and cost."""

from __future__ import annotations

import itertools

import orjson

from indexer_service.demo.synthetic.state import Json, _Ses
from indexer_service.demo.synthetic.tools import _Tools

_TOOLS = dict(bash=34, read=26, edit=14, write=4, grep=9, glob=5, todowrite=5, webfetch=3)
_TOOL_BAG = tuple(itertools.chain.from_iterable([k] * n for k, n in _TOOLS.items()))
_CHILD_BAG = tuple(t for t in _TOOL_BAG if t != "todowrite")  # children may not todowrite
_ZERO_TOKENS: Json = {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}}


def _api_error(message: str, status: int, retryable: bool) -> Json:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    data = {"message": message, "statusCode": status, "isRetryable": retryable,
            "responseHeaders": {"content-type": "application/json"},
            "responseBody": orjson.dumps(body).decode(),
            "metadata": {"url": "https://api.anthropic.com/v1/messages"}}  # fmt: skip
    return {"name": "APIError", "data": data}


class _Steps(_Tools):
    """Assistant steps: step-start, [reasoning], [text], tools, step-finish, [patch]."""

    def assistant(
        self, s: _Ses, mid: str, parent: str, created: int, agent: str, error: Json | None = None
    ) -> Json:
        """An assistant message as created: zero cost and tokens, not completed."""
        msg: Json = {"id": mid, "sessionID": s.id, "role": "assistant"}
        msg["time"] = {"created": created}
        if error is not None:
            msg["error"] = error
        msg |= {"parentID": parent, "modelID": s.model[1], "providerID": s.model[0], "mode": agent}
        if s.level >= 2:
            msg["agent"] = agent
        msg["path"] = {"cwd": s.directory, "root": s.project.worktree}
        if agent == "compaction":
            msg["summary"] = True
        return msg | {"cost": 0, "tokens": _ZERO_TOKENS}

    def step(self, s: _Ses, parent: str, kind: str = "tools", task: str | None = None) -> None:
        """One assistant message: step-start, [reasoning], [text], tool x k, step-finish, [patch].

        ``kind``: "tools" (finish "tool-calls"), "stop", "compaction" (the summary), "error"
        (an APIError, no step-finish) or "crash" (cut off: not completed, tools left running).
        """
        created = self.tick(200, 3_000)
        mid, s.changed = self.ident("msg"), []
        s.messages += 1
        snap = {"snapshot": self.hex40()} if s.project.id != "global" else {}
        parts = self.opening(s, mid, snap, kind)
        for j, name in enumerate(self.tool_names(s, kind, task)):
            self.tick(10, 400)
            p = self.part(s, mid, "tool", callID=self.call_id(s), tool=name)
            p["state"] = self.cut_off(j) if kind == "crash" else self.tool_state(s, name, task)
            parts.append(p)
        agent = "compaction" if kind == "compaction" else s.agent
        error = self.error() if kind == "error" else None
        msg = self.assistant(s, mid, parent, created, agent, error)
        if kind == "error":
            msg["time"]["completed"] = self.tick(100, 30_000)
        elif kind != "crash":
            tokens, cost = self.usage(s)
            reason = "tool-calls" if kind == "tools" else "stop"
            self.tick(5, 200)
            fin = {"reason": reason, **snap, "cost": cost, "tokens": tokens}
            parts.append(self.part(s, mid, "step-finish", **fin))
            if s.changed and snap:
                files = sorted(set(s.changed))
                parts.append(self.part(s, mid, "patch", hash=snap["snapshot"], files=files))
            msg["time"]["completed"] = self.tick(1, 30)
            msg |= {"cost": cost, "tokens": tokens}  # existing keys: their position stays
            if s.level >= 1:
                msg["finish"] = reason
            s.stepped = True
        self.emit(s, msg, parts)

    def opening(self, s: _Ses, mid: str, snap: Json, kind: str) -> list[Json]:
        """The parts before the tools: [retry], step-start, [reasoning], [text]."""
        r, c = self.r, self.c
        parts = []
        if s.level == 0 and r.random() < 0.1:  # retry parts were written up to 1.0.61
            err = _api_error("Overloaded", 529, True)
            parts.append(self.part(s, mid, "retry", attempt=1, error=err, time={"created": self.t}))
            self.tick(1_000, 8_000)
        parts.append(self.part(s, mid, "step-start", **snap))
        if s.model[6] and kind != "compaction" and r.random() < 0.4:
            start = self.tick(100, 900)
            p = self.part(s, mid, "reasoning", text=c.prose(r, r.randint(1, 5)))
            if meta := self.provider_meta(s, reasoning=True):
                p["metadata"] = meta
            p["time"] = {"start": start, "end": self.tick(200, 5_000)}
            parts.append(p)
        if kind in ("stop", "compaction") or r.random() < self.text_rate:
            start = self.tick(100, 900)
            text = c.prose(r, 30 if kind == "compaction" else r.randint(1, 4))
            p = self.part(s, mid, "text", text=text)
            now = self.tick(200, 20_000)  # text-end resets time to {now, now}
            p["time"] = {"start": start} if kind == "crash" else {"start": now, "end": now}
            if meta := self.provider_meta(s, reasoning=False):
                p["metadata"] = meta
            parts.append(p)
        return parts

    def tool_names(self, s: _Ses, kind: str, task: str | None) -> list[str]:
        r = self.r
        if kind == "crash":  # the first left running, the others pending
            return ["bash", *(["read"] * r.randint(0, 2))]
        names = ["task"] if task else []
        if kind == "tools":
            bag = _CHILD_BAG if "parentID" in s.head else _TOOL_BAG
            extra = r.randint(1, 4) if r.random() < 0.35 else 0  # parallel tool calls
            names += [r.choice(bag) for _ in range(1 + extra)]
        return names

    def usage(self, s: _Ses) -> tuple[Json, float]:
        """Tokens and cost of one step; its message repeats the same values."""
        r = self.r
        _, _, p_in, p_out, p_read, p_write, thinks = s.model
        out, reasoning = r.randint(15, 1_800), r.randint(0, 1_200) if thinks else 0
        read = s.ctx if p_read else 0
        write = r.randint(200, 6_000) if p_write else 0
        inp = r.randint(2, 2_500) + (0 if p_read else s.ctx)
        s.ctx += out + write + r.randint(100, 3_000)
        tokens: Json = {"total": inp + out + reasoning + read + write} if s.level >= 5 else {}
        tokens |= {"input": inp, "output": out, "reasoning": reasoning}
        tokens["cache"] = {"read": read, "write": write}
        cost = (inp * p_in + (out + reasoning) * p_out + read * p_read + write * p_write) / 1e6
        return tokens, round(cost, 8) or 0  # JSON.stringify writes 0, not 0.0

    def error(self) -> Json:
        if self.r.random() < 0.3:
            return {
                "name": "MessageAbortedError",
                "data": {"message": "The operation was aborted."},
            }
        return _api_error("Invalid request: text content blocks must be non-empty", 400, False)

    def provider_meta(self, s: _Ses, reasoning: bool) -> Json | None:
        r, k = self.r, self.r.randrange(100, 300_000)
        blob = self.c.b64[k : k + r.randint(300, 1_500)]
        if s.model[0] == "anthropic" and reasoning:
            return {"anthropic": {"signature": blob}}
        if s.model[0] != "openai":
            return None
        meta: Json = {"itemId": f"{'rs' if reasoning else 'msg'}_{r.getrandbits(192):048x}"}
        if reasoning:
            meta["reasoningEncryptedContent"] = "gAAAAA" + blob
        return {"openai": meta}
