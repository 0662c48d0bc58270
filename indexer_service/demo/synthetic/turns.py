"""User turns: the user message and its parts, then the assistant steps that answer it."""

from __future__ import annotations

import orjson

from indexer_service.demo.synthetic.corpus import _TITLES
from indexer_service.demo.synthetic.state import _DENY, Json, _file_diffs, _Ses
from indexer_service.demo.synthetic.steps import _Steps

_CONTEXT_LIMIT = 150_000  # tokens: past it the next turn is an automatic compaction
_CONTINUE = "Continue if you have next steps, or stop and ask for clarification if you are unsure how to proceed."
_SUMMARIZE = "Summarize the task tool output above and continue with your task."


class _Turns(_Steps):
    """Turns of a session (spec §5.4 "Conversation patterns")."""

    def open_turn(self, s: _Ses) -> tuple[str, int]:
        created = self.tick(3_000, 120_000)
        s.turn, s.messages = {}, s.messages + 1
        return self.ident("msg"), created

    def user_message(self, s: _Ses, mid: str, created: int, summary: bool = True) -> Json:
        msg: Json = {"id": mid, "sessionID": s.id, "role": "user", "time": {"created": created}}
        if summary and (s.turn or s.level >= 1):
            msg["summary"] = {"title": self.r.choice(_TITLES), "diffs": _file_diffs(s, s.turn)}
        if s.level >= 1:
            msg |= {"agent": s.agent, "model": {"providerID": s.model[0], "modelID": s.model[1]}}
        if "parentID" in s.head:
            msg["tools"] = dict.fromkeys(_DENY, False)
        return msg

    def user_parts(self, s: _Ses, mid: str, kind: str, agent: str, prompt: str) -> list[Json]:
        r, c, part = self.r, self.c, self.part
        text = prompt or c.prose(r, r.randint(1, 4))
        if kind == "subtask":
            model = {"providerID": s.model[0], "modelID": s.model[1]}
            sub = {"prompt": text, "description": "review changes", "agent": agent, "model": model}
            return [part(s, mid, "subtask", **sub, command="review")]
        if kind == "compaction":
            return [part(s, mid, "compaction", auto=s.ctx > _CONTEXT_LIMIT)]
        at = {"agent": agent, "file": r.choice(s.project.paths)}.get(kind, "")
        parts = [part(s, mid, "text", text=f"{text} @{at}" if at else text)]
        src = {"value": f"@{at}", "start": len(text) + 1, "end": len(text) + 2 + len(at)}
        if kind == "agent":
            note = f" Use the above message and context to generate a prompt and call the task tool with subagent: {agent}"
            parts.append(part(s, mid, "agent", name=agent, source=src))
            parts.append(part(s, mid, "text", text=note, synthetic=True))
        elif kind == "file":
            inp, out, _, _ = self.t_read(s, at)
            call = f"Called the Read tool with the following input: {orjson.dumps(inp).decode()}"
            parts.append(part(s, mid, "text", text=call, synthetic=True))
            parts.append(part(s, mid, "text", text=out, synthetic=True))
            url, src = f"file://{inp['filePath']}", {"text": src, "type": "file", "path": at}
            name = at.rsplit("/")[-1]
            file = {"mime": "text/plain", "filename": name, "url": url, "source": src}
            parts.append(part(s, mid, "file", **file))
        elif kind == "image":
            url = "data:image/png;base64," + c.b64[: r.randint(500, 60_000) * 4]
            parts.append(part(s, mid, "file", mime="image/png", filename="screenshot.png", url=url))
        return parts

    def turn(self, s: _Ses, steps: int, child: bool, end: str = "stop", prompt: str = "") -> None:
        """A user message with its parts, then the assistant steps; ``end`` is the last step."""
        r = self.r
        agent = r.choice(("explore", "general"))
        kind = "plain" if prompt else r.choice(("file",) * 8 + ("image",) * 4 + ("plain",) * 88)
        if child:
            kind = "subtask" if s.level >= 1 and r.random() < 0.3 else r.choice(("agent", "task"))
        elif s.level >= 1 and s.messages > 10:  # auto past the context limit, else rarely by hand
            kind = "compaction" if s.ctx > _CONTEXT_LIMIT or r.random() < 0.02 else kind
        umid, created = self.open_turn(s)
        parts = self.user_parts(s, umid, kind, agent, prompt)
        parent, task = umid, agent if kind in ("agent", "task") else None
        if kind == "compaction":
            self.step(s, umid, "compaction")
            s.ctx = 20_000
            parent = self.synthetic_user(s, _CONTINUE) if parts[0]["auto"] else ""
        elif kind == "subtask":  # an assistant message holding only the task tool
            acreated = self.tick(50, 500)
            amid = self.ident("msg")
            s.messages += 1
            tool = self.part(s, amid, "tool", callID=self.ulid(), tool="task")
            tool["state"] = self.tool_state(s, "task", agent)
            msg = self.assistant(s, amid, umid, acreated, agent)
            msg["time"]["completed"] = self.t
            self.emit(s, msg, [tool])
            parent = self.synthetic_user(s, _SUMMARIZE)
        for i in range(steps if parent else 0):
            kind = end if i == steps - 1 and not (task and i == 0 and end == "stop") else "tools"
            self.step(s, parent, kind, task if i == 0 else None)
        self.emit(s, self.user_message(s, umid, created, summary=end != "crash"), parts)

    def synthetic_user(self, s: _Ses, text: str) -> str:
        created = self.tick(5, 50)
        mid = self.ident("msg")
        s.messages += 1
        part = self.part(s, mid, "text", text=text, synthetic=True)
        self.emit(s, self.user_message(s, mid, created, summary=False), [part])
        return mid
