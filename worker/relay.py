"""The endpoints a proxy worker (openai_worker.py) relays to its upstream as they are, beyond chat,
completions and embeddings: the body is checked as the wrapper checks it, then passed on byte for byte
(a form with its own Content-Type), and the upstream's answer comes back the same way."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from common import multipart, wire
from common.http import Endpoint, read_body
from common.wire import Capability
from generators import ProxyGenerator

from .base import WorkerBase

RELAYED = tuple(c for c in Capability if c not in wire.LEGACY_CAPABILITIES)


def relay_endpoints(worker: WorkerBase) -> dict[str, Endpoint]:
    """Path -> endpoint for every relayed capability; none unless the worker's Generator is a proxy."""
    proxy = worker.generator
    if not isinstance(proxy, ProxyGenerator):
        return {}

    def endpoint(capability: Capability) -> Endpoint:
        async def relay(request: Request) -> Response:
            body, raw, content_type = await _admit(worker, request, capability)
            return await worker.forward(request, proxy, capability, body, raw, content_type)
        relay.__name__ = capability.value
        return relay

    return {wire.PATHS[c]: endpoint(c) for c in RELAYED}


async def _admit(worker: WorkerBase, request: Request, capability: Capability
                 ) -> tuple[dict[str, Any], bytes, str | None]:
    """The checked body (a form's text fields), its raw bytes and, for a form, its Content-Type."""
    worker.authorize(request)
    limits = worker.settings.limits
    content_type = None
    if capability in wire.MULTIPART:
        raw = await read_body(request, limits.max_upload_bytes)
        content_type = request.headers.get("content-type")
        body, model = multipart.admit_form(raw, content_type, capability)
    else:
        raw = await read_body(request, limits.max_body_bytes)
        body = wire.parse_body(raw, limits)
        model = wire.require_routing_fields(body, capability)
    wire.check_fields(body, capability, limits)
    worker.admit(model, capability)
    return body, raw, content_type
