"""GET /admin/usage: the hourly usage per key name and model, for a key with `admin: true` (or anyone on
an open wrapper, which keeps no usage). Query: key_name, model, start_time, end_time (unix seconds;
default the last 24 hours)."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from common import wire
from common.errors import InvalidRequest, admin_only
from common.http import json_response

from .auth import KeyRing
from .limits import Limiter

DAY = 86400


def _time(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise InvalidRequest(f"'{name}' must be a unix time in seconds.", param=name, code="invalid_value")
    return int(value)


def usage_endpoint(keys: KeyRing, limits: Limiter) -> Callable[[Request], Awaitable[Response]]:
    async def usage(request: Request) -> Response:
        key = keys.authenticate(request.headers.get("authorization"))
        if key is not None and not key.admin:
            raise admin_only()
        end = _time(request, "end_time", int(time.time()) + 1)
        start = _time(request, "start_time", end - DAY)
        if start >= end:
            raise InvalidRequest("'start_time' must be before 'end_time'.", param="start_time", code="invalid_value")
        rows = await limits.usage(start, end, request.query_params.get("key_name"), request.query_params.get("model"))
        return json_response(wire.usage_list([wire.usage_entry(r.key_name, r.model, r.hour, r.requests, r.prompt_tokens,
                                                               r.completion_tokens, r.errors) for r in rows], start, end))

    return usage
