"""Endpoints that need state kept between requests (a stored response, files, batches...): the gateway
keeps none, and any worker may serve the next request, so they get an OpenAI-shaped error saying so
instead of a bare 404 for an unknown URL."""
from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from common.errors import unsupported_endpoint

# Under /v1; each also with anything below it. /v1/responses/{id} and /v1/chat/completions/{id} are the
# stored answers of the model endpoints (POST /v1/responses/input_tokens is routed before these).
STATEFUL = ("responses/{rest:path}", "chat/completions/{rest:path}", "conversations", "files", "uploads",
            "batches", "vector_stores", "fine_tuning", "assistants", "threads", "containers", "evals")
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]


async def refuse(request: Request) -> Response:
    raise unsupported_endpoint(request.method, request.url.path)


def add_unsupported_routes(api: FastAPI) -> None:
    for path in STATEFUL:
        paths = [f"/v1/{path}"] if "{" in path else [f"/v1/{path}", f"/v1/{path}/{{rest:path}}"]
        for route in paths:
            api.add_api_route(route, refuse, methods=METHODS, include_in_schema=False)
