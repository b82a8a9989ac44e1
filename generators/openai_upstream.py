"""OpenAIUpstreamGen: relays to any OpenAI-compatible API (OpenAI, vLLM, Ollama, llama.cpp's server...).

It answers with the upstream's own bytes (JSON or SSE), decoded from any gzip/deflate the upstream
compressed them with but otherwise untouched, so every field the upstream returns reaches the client.
A JSON answer is read whole before it is relayed, a stream chunk by chunk as it arrives. Requests pass
through unchanged but for `model`, which an alias may map. Its models are `--models` (NAME or
PUBLIC=UPSTREAM), or else the upstream's own `GET /models` list, read at start-up. Upstream errors keep
their meaning (see `_raise_for_upstream`); the API key is sent to the upstream only, and is cut out of
every field of an upstream error passed on.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from common import multipart, tracing
from common.errors import BadGateway, GatewayTimeout, OpenAIError, RateLimited
from common.settings import UpstreamSettings, secret
from common.wire import BINARY_ANSWER, PATHS, SSE, Capability, sse_error_event

from .base import Forwarded, ProxyGenerator

log = logging.getLogger(__name__)

# below the upstream's base URL, which ends in /v1 as OpenAI's does
UPSTREAM_PATHS = {c: PATHS[c].removeprefix("/v1") for c in Capability}
JSON = "application/json"
PASS_THROUGH_STATUSES = frozenset({400, 404, 409, 413, 422})


def parse_aliases(spec: str | None) -> dict[str, str] | None:
    """'a,b=upstream-b' -> {'a': 'a', 'b': 'upstream-b'}; None means: ask the upstream."""
    if not spec:
        return None
    aliases: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        public, _, upstream = item.partition("=")
        if not public.strip() or (_ and not upstream.strip()):
            raise ValueError(f"--models: '{item}' is not NAME or PUBLIC=UPSTREAM")
        aliases[public.strip()] = upstream.strip() or public.strip()
    return aliases


def parse_capabilities(spec: str | None) -> frozenset[Capability]:
    """'chat,responses' -> those capabilities; None or 'all' means every one."""
    if not spec or spec.strip() == "all":
        return frozenset(Capability)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in Capability.__members__.values()]
    if unknown or not names:
        raise ValueError(f"--capabilities: {', '.join(unknown) or repr(spec)} is not a capability; "
                         f"choose from all, {', '.join(Capability)}")
    return frozenset(Capability(n) for n in names)


class OpenAIUpstreamGen(ProxyGenerator):
    service_name = "openai-upstream"
    owned_by = "openai-upstream"

    def __init__(self, models: list[str] | None = None, aliases: dict[str, str] | None = None,
                 upstream: UpstreamSettings | None = None, capabilities: frozenset[Capability] | None = None) -> None:
        if aliases is None and models:  # e.g. template_worker.py's --models, which may hold PUBLIC=UPSTREAM items
            aliases = parse_aliases(",".join(models))
        self.aliases = dict(aliases or {})
        self.upstream = upstream or UpstreamSettings()
        self.capabilities = frozenset(Capability) if capabilities is None else capabilities  # what the upstream serves
        self.models = tuple(self.aliases)  # filled from the upstream at start-up when empty
        self._client: httpx.AsyncClient | None = None

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    async def startup(self) -> None:
        api_key = secret(self.upstream.api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.upstream.api_base.rstrip("/"), headers=headers,
            timeout=httpx.Timeout(self.upstream.timeout, connect=10.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        if not self.aliases:
            self.aliases = {m: m for m in await self._discover()}
            self.models = tuple(self.aliases)
            log.info("serving the upstream's models: %s", ", ".join(self.models))

    async def _discover(self) -> list[str]:
        """The model ids of the upstream's `GET /models`, in its order."""
        where = f"the upstream at {self.upstream.api_base}"
        try:
            response = await self._send("GET", "/models", None)
        except OpenAIError as exc:
            raise ValueError(f"cannot list the models of {where}: {exc.message} Pass --models to skip this.") from None
        try:
            entries = orjson.loads(await response.aread()).get("data")
        except (orjson.JSONDecodeError, AttributeError, httpx.RequestError):
            entries = None
        finally:
            await response.aclose()
        if not isinstance(entries, list):
            raise ValueError(f"{where} answered GET /models without an OpenAI model list; pass --models")
        ids = list(dict.fromkeys(m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)))
        if not ids:
            raise ValueError(f"{where} lists no models; pass --models")
        return ids

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _send(self, method: str, path: str, body: bytes | None, content_type: str = JSON) -> httpx.Response:
        assert self._client is not None
        # the worker's span (its request's traceparent) is the upstream's parent
        headers = {"Content-Type": content_type, **tracing.outgoing_headers()} if body else None
        request = self._client.build_request(method, path, content=body, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise GatewayTimeout("The upstream API did not answer in time.", code="upstream_timeout") from None
        except httpx.TransportError as exc:
            raise BadGateway(f"The upstream API could not be reached ({exc.__class__.__name__}).",
                             code="upstream_unreachable") from None
        if response.status_code >= 400:
            await _raise_for_upstream(response, secret(self.upstream.api_key))
        return response

    async def forward(self, capability: Capability, request: dict[str, Any], raw: bytes,
                      content_type: str | None = None) -> Forwarded:
        """Send the client's request upstream (a form with its own `content_type`), changed only where an
        alias renames the model: a JSON body re-encoded, a form's model field replaced in place."""
        upstream_model = self.aliases.get(request["model"], request["model"])
        if upstream_model != request["model"]:
            if content_type is None:
                raw = orjson.dumps({**request, "model": upstream_model})
            else:
                raw = multipart.replace_field(raw, content_type, "model", upstream_model)
        response = await self._send("POST", UPSTREAM_PATHS[capability], raw, content_type or JSON)
        # the upstream's Content-Encoding and Content-Length describe bytes we decode: neither is passed on
        answer_type = response.headers.get("content-type", JSON)
        if answer_type.startswith(SSE):
            return Forwarded(response.status_code, answer_type, _stream_chunks(response))
        if capability in BINARY_ANSWER and not answer_type.startswith(JSON):  # audio, relayed as it arrives
            return Forwarded(response.status_code, answer_type, _binary_chunks(response))
        return Forwarded(response.status_code, answer_type, await _whole_body(response))


def _failed_midway() -> BadGateway:
    return BadGateway("The upstream API failed in the middle of the answer.", code="upstream_failed")


async def _whole_body(response: httpx.Response) -> bytes:
    """The decoded body (httpx undoes the gzip/deflate it asked for); a failure midway is a clean error."""
    try:
        return await response.aread()
    except httpx.TimeoutException:
        raise GatewayTimeout("The upstream API stopped sending its answer.", code="upstream_timeout") from None
    except httpx.RequestError:  # a reset, a body shorter than announced, a body that does not decompress
        raise _failed_midway() from None
    finally:
        await response.aclose()


async def _stream_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """A stream's decoded chunks as they arrive (aiter_bytes decodes each on arrival, without buffering);
    a failure midway ends it with an error event and no [DONE]."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.RequestError:
        yield sse_error_event(_failed_midway())
    finally:
        await response.aclose()


async def _binary_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """A binary answer's chunks as they arrive; a failure midway raises, which cuts the client's connection
    (a truncated body is the only signal a binary answer can carry)."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.RequestError:
        log.warning("the upstream failed in the middle of a binary answer; cutting the connection")
        raise
    finally:
        await response.aclose()


async def _raise_for_upstream(response: httpx.Response, api_key: str | None = None) -> None:
    """Map an upstream error status to the error the client should see; the key never appears in it.

    400/404/409/413/422: the client's own mistake, passed on with the upstream's status and error body.
    429: passed on with its Retry-After. 401/403: the worker's key is wrong, not the client's: 502.
    504: 504. Anything else: 502 (the wrapper then tries another instance, if there is one)."""
    try:
        raw = await response.aread()
    except httpx.RequestError:  # the error body itself failed: the status still says what happened
        raw = b""
    finally:
        await response.aclose()
    status = response.status_code
    try:
        error = orjson.loads(raw).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": error}
    error = _scrub(error, api_key)
    message = _text(error.get("message")) or f"The upstream API answered {status}."
    if status in PASS_THROUGH_STATUSES:
        raise OpenAIError(message, status=status, type=_text(error.get("type")) or "invalid_request_error",
                          param=_text(error.get("param")), code=_text(error.get("code")))
    if status == 429:
        retry = response.headers.get("retry-after")
        raise RateLimited(message, code=_text(error.get("code")) or "rate_limit_exceeded",
                          headers={"Retry-After": retry} if retry else None)
    if status in (401, 403):
        raise BadGateway("The upstream API refused this worker's credentials (openai.api_key / OPENAI_API_KEY).",
                         code="upstream_auth_failed")
    if status == 504:
        raise GatewayTimeout("The upstream API timed out.", code="upstream_timeout")
    raise BadGateway(f"The upstream API failed with status {status}: {message}", code="upstream_error")


KEY_PLACEHOLDER = "[OPENAI_API_KEY]"


def _scrub(value: Any, api_key: str | None) -> Any:
    """`value` (any JSON) with the key cut out of every string in it, at any depth, object keys included:
    an upstream may echo the key in any field of its error."""
    if not api_key:
        return value
    if isinstance(value, str):
        return value.replace(api_key, KEY_PLACEHOLDER)
    if isinstance(value, dict):
        return {_scrub(k, api_key): _scrub(v, api_key) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, api_key) for v in value]
    return value


def _text(value: Any) -> str | None:
    """An error field as OpenAI types it (a string or null), whatever JSON the upstream put there."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
