"""The floor for a Python worker: a minimal Starlette endpoint under the same uvicorn settings as the
worker (uvloop + httptools, no access log). It parses the JSON body and answers an OpenAI-shaped chat
completion echoing the last message, like EchoGen, with none of the worker's checks.

    python3 bench/min_app.py PORT
"""
from __future__ import annotations

import os
import sys
import time

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def chat(request: Request) -> Response:
    body = orjson.loads(await request.body())
    text = body["messages"][-1]["content"]
    words = len(text.split())
    answer = {
        "id": "chatcmpl-" + os.urandom(12).hex(), "object": "chat.completion", "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words},
    }
    return Response(orjson.dumps(answer), media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning", timeout_keep_alive=75)
