"""The one place that turns a failure into an OpenAI-shaped error."""
from __future__ import annotations

import orjson


class OpenAIError(Exception):
    """An error the client should see, with OpenAI's status, type, param and code."""

    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


class InvalidRequest(OpenAIError):
    status = 400
    type = "invalid_request_error"


class NotFound(OpenAIError):
    status = 404
    type = "invalid_request_error"


class Unauthorized(OpenAIError):
    status = 401
    type = "invalid_request_error"


class RateLimited(OpenAIError):
    status = 429
    type = "rate_limit_error"


class Unavailable(OpenAIError):
    status = 503
    type = "service_unavailable"


class BadGateway(OpenAIError):
    status = 502
    type = "bad_gateway"


class GatewayTimeout(OpenAIError):
    status = 504
    type = "timeout"


def error_body(exc: BaseException) -> dict:
    """`{"error": {...}}` for any exception; an unexpected one never leaks its details (log it first)."""
    if not isinstance(exc, OpenAIError):
        exc = OpenAIError("The server had an error while processing your request.", code="internal_error")
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_status(exc: BaseException) -> int:
    return exc.status if isinstance(exc, OpenAIError) else 500


def error_json(exc: BaseException) -> bytes:
    return orjson.dumps(error_body(exc))


def sse_error_event(exc: BaseException) -> bytes:
    """The event a stream ends with when it fails after it started (no [DONE] follows)."""
    return b"data: " + error_json(exc) + b"\n\n"
