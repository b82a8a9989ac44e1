"""Generators for the Responses tests: they show what the worker's translation hands a chat Generator."""
from __future__ import annotations

import json

from generators import Generator, Output


class ChatRequestEchoGen(Generator):
    """Answers with the chat request it was given, as JSON text (`messages` and all), so a test sees exactly
    what a Responses request was translated into; reports finish_reason "length" when max_tokens is set."""

    models = ("chat-request-echo",)

    async def chat(self, request):
        return Output(text=json.dumps(request, sort_keys=True),
                      finish_reason="length" if request.get("max_tokens") is not None else None)
