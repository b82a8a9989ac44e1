"""OpenAI's error shapes, and the one function that turns any failure into one of them."""
from __future__ import annotations

import orjson
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException


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


def model_not_found(model: str) -> NotFound:
    """The same answer for a model that does not exist and one the caller may not use."""
    return NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")


def unsupported_capability(model: str, path: str) -> InvalidRequest:
    """A model that exists but whose workers do not serve this endpoint."""
    return InvalidRequest(f"The model '{model}' does not support {path}.", param="model",
                          code="unsupported_capability")


def unsupported_endpoint(method: str, path: str) -> NotFound:
    """An endpoint that needs state kept between requests (stored responses, files, batches...)."""
    return NotFound(f"{method} {path} is not supported by this gateway: it keeps no state between requests "
                    "(stored responses, files, batches and the like), and any worker may serve the next one.",
                    code="unsupported_endpoint")


def to_openai_error(exc: BaseException, method: str = "", path: str = "") -> OpenAIError:
    """Any failure as the OpenAI error the client sees. Unexpected ones never leak their details (the
    caller logs them); Starlette's and FastAPI's HTTP errors keep their status."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return NotFound(f"Unknown request URL: {method} {path}.", code="unknown_url")
        if exc.status_code == 405:
            return OpenAIError(f"Method {method} is not allowed for {path}.", status=405,
                               type="invalid_request_error", code="method_not_allowed",
                               headers=dict(exc.headers or {}))  # Starlette's `Allow` header
        return OpenAIError(str(exc.detail), status=exc.status_code, type="invalid_request_error",
                           headers=dict(exc.headers or {}))
    if isinstance(exc, RequestValidationError):  # a FastAPI route's declared parameters
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return InvalidRequest(f"{first.get('msg', 'Invalid request')}.", param=param, code="invalid_value")
    return OpenAIError("The server had an error while processing your request.", code="internal_error")


def error_body(exc: BaseException) -> dict:
    """`{"error": {...}}` for any exception."""
    error = to_openai_error(exc)
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_json(exc: BaseException) -> bytes:
    return orjson.dumps(error_body(exc))


def answer_error(status: int, content: bytes) -> OpenAIError:
    """The error a worker's error answer reports (OpenAI's shape), for passing it on in another form."""
    try:
        error = orjson.loads(content)["error"]
        return OpenAIError(str(error["message"]), status=status, type=error.get("type"), param=error.get("param"),
                           code=error.get("code"))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return BadGateway(f"The worker answered with status {status}.", code="worker_failed")


def rate_limit_exceeded(message: str, headers: dict[str, str]) -> RateLimited:
    """A key over its requests, tokens or concurrency limit: 429, which the openai SDK retries after
    `Retry-After`."""
    return RateLimited(message, code="rate_limit_exceeded", headers=headers)


def insufficient_quota(message: str, headers: dict[str, str]) -> RateLimited:
    """A key over its token budget: 429 as OpenAI answers it, marked as not worth retrying."""
    return RateLimited(message, type="insufficient_quota", code="insufficient_quota",
                       headers={**headers, "x-should-retry": "false"})


def admin_only() -> OpenAIError:
    """A valid key without the `admin` flag asking for an admin endpoint."""
    return OpenAIError("This endpoint needs an API key with admin rights.", status=403,
                       type="invalid_request_error", code="insufficient_permissions")
