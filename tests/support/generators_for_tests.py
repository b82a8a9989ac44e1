"""Generators used by the tests to exercise the worker's adapters and error paths."""
from __future__ import annotations

import time

from generators import Generator


class ChatOnlyGen(Generator):
    """A plain (blocking) chat method and nothing else."""

    models = ("chat-only",)

    def chat(self, request):
        time.sleep(0.01)  # blocking is fine: plain methods run in a thread
        return "only chat"


class BrokenGen(Generator):
    models = ("broken",)

    def chat(self, request):
        raise RuntimeError("secret internals")


class SyncStreamGen(Generator):
    """A blocking iterator stream, and no non-streaming method: the worker joins the stream."""

    models = ("sync-stream",)

    def chat_stream(self, request):
        for word in ("a ", "b ", "c"):
            time.sleep(0.01)
            yield word


class ToolCallerGen(Generator):
    """Always calls tools, streamed as OpenAI streams parallel calls: one call after the other, each call's
    first piece carrying its index, id and name, then its arguments in fragments. The first call's arguments
    echo the request's `tools` and `tool_choice`, so a test can see they arrived exactly as sent."""

    models = ("tool-caller",)

    async def chat_stream(self, request):
        import json

        from generators import Delta, ToolCallDelta

        names = [t.get("function", {}).get("name", "?") for t in request.get("tools") or []] or ["no_tool"]
        calls = [("call_echo", names[0], json.dumps({"tools": request.get("tools"),
                                                      "tool_choice": request.get("tool_choice")})),
                 ("call_second", names[-1], json.dumps({"call": 2}))]
        for index, (call_id, name, arguments) in enumerate(calls):
            yield Delta(tool_calls=[ToolCallDelta(index=index, id=call_id, name=name)])
            for start in range(0, len(arguments), 16):
                yield Delta(tool_calls=[ToolCallDelta(index=index, arguments=arguments[start:start + 16])])
