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
