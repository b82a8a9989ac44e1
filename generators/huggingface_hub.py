"""HfHubGen: embeddings from the Hugging Face Inference API (the hf-inference provider).

    HF_TOKEN=hf_... python3 template_worker.py 127.0.0.1 9006 generators.huggingface_hub.HfHubGen \\
        [--models all-MiniLM-L6-v2=sentence-transformers/all-MiniLM-L6-v2]

Each `--models` item is a Hugging Face model id, or PUBLIC=MODEL_ID to publish it under another name. The
token comes from HF_TOKEN only; it is sent to the API and nowhere else: never logged, never in an error.
A request's inputs go out as one call per `--batch-size` inputs. Vectors come back as unit vectors (like
OpenAI's); a model that answers per-token vectors is mean-pooled. `usage` is the worker's word count: the
API reports no token counts.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from common.errors import BadGateway, GatewayTimeout, InvalidRequest, OpenAIError, RateLimited, Unavailable

from ._shared import text_inputs
from .base import Generator

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://router.huggingface.co/hf-inference"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def parse_model_map(models: Sequence[str] | None) -> dict[str, str]:
    """['a', 'b=org/model'] -> {'a': 'a', 'b': 'org/model'}."""
    mapping: dict[str, str] = {}
    for item in models or (DEFAULT_MODEL,):
        public, sep, model_id = (s.strip() for s in item.partition("="))
        if not public or (sep and not model_id):
            raise ValueError(f"--models: '{item}' is not MODEL_ID or PUBLIC=MODEL_ID")
        mapping[public] = model_id or public
    return mapping


class HfHubGen(Generator):
    service_name = "huggingface-hub"
    owned_by = "huggingface"

    def __init__(self, models: Sequence[str] | None = None, api_base: str = DEFAULT_API_BASE,
                 timeout: float = 60.0, batch_size: int = 32, normalize: bool = True) -> None:
        self.model_ids = parse_model_map(models)
        super().__init__(list(self.model_ids))
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.batch_size = batch_size
        self.normalize = normalize
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api-base", default=DEFAULT_API_BASE, metavar="URL",
                            help=f"the Inference API's base; the worker posts to URL/models/ID/pipeline/"
                                 f"feature-extraction (default: {DEFAULT_API_BASE})")
        parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="per call to the API")
        parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="inputs per call to the API")
        parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                            help="return the API's vectors as they are instead of unit vectors")

    async def startup(self) -> None:
        self._token = os.environ.get("HF_TOKEN") or None
        if not self._token:
            log.warning("HF_TOKEN is not set: the Inference API will likely refuse the calls")
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self._token}"} if self._token else {},
            timeout=httpx.Timeout(self.timeout, connect=10.0),
        )

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def url(self, model_id: str) -> str:
        return f"{self.api_base}/models/{quote(model_id, safe='/')}/pipeline/feature-extraction"

    async def embed(self, request: dict[str, Any]) -> list[list[float]]:
        model_id = self.model_ids[request["model"]]
        texts = text_inputs(request["input"])
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            vectors += [self._finish(v) for v in await self._call(model_id, batch)]
        return vectors

    async def _call(self, model_id: str, texts: list[str]) -> list[Any]:
        assert self._client is not None, "startup() was not called"
        try:
            response = await self._client.post(self.url(model_id), content=orjson.dumps({"inputs": texts}),
                                               headers={"Content-Type": "application/json"})
        except httpx.TimeoutException:
            raise GatewayTimeout("The Hugging Face Inference API did not answer in time.",
                                 code="upstream_timeout") from None
        except httpx.TransportError as exc:
            raise BadGateway(f"The Hugging Face Inference API could not be reached ({exc.__class__.__name__}).",
                             code="upstream_unreachable") from None
        if response.status_code >= 400:
            raise _error_for(response, model_id, self._token)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, list) or len(data) != len(texts):
            raise BadGateway("The Hugging Face Inference API answered with something other than one vector "
                             "per input.", code="upstream_bad_answer")
        return data

    def _finish(self, value: Any) -> list[float]:
        vector = _pooled(value)
        if vector is None:
            raise BadGateway("The Hugging Face Inference API answered with something other than vectors.",
                             code="upstream_bad_answer")
        if self.normalize:
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            vector = [x / norm for x in vector]
        return vector


def _pooled(value: Any) -> list[float] | None:
    """A sentence vector as is; per-token vectors (a list of them) mean-pooled; anything else None."""
    if isinstance(value, list) and value and all(isinstance(x, (int, float)) for x in value):
        return [float(x) for x in value]
    if (isinstance(value, list) and value and all(isinstance(t, list) and t for t in value)
            and len({len(t) for t in value}) == 1):
        tokens = [_pooled(t) for t in value]
        if any(t is None for t in tokens):
            return None
        return [sum(column) / len(tokens) for column in zip(*tokens, strict=False)]
    return None


def _error_for(response: httpx.Response, model_id: str, token: str | None) -> OpenAIError:
    """The OpenAI-shaped error for a failed call; HF's errors are {"error": "..."} (or a list of them)."""
    status = response.status_code
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, list):
        error = "; ".join(map(str, error))
    message = str(error or f"status {status}")
    if token:
        message = message.replace(token, "[HF_TOKEN]")
    if status in (400, 413, 422):
        return InvalidRequest(f"The Hugging Face Inference API refused the input: {message}", param="input",
                              code="invalid_input")
    if status in (401, 403):
        return BadGateway("The Hugging Face Inference API refused this worker's token (HF_TOKEN).",
                          code="upstream_auth_failed")
    if status == 404:
        return BadGateway(f"The Hugging Face Inference API does not serve the model '{model_id}'.",
                          code="upstream_model_not_found")
    retry = response.headers.get("retry-after")
    if status == 429:
        return RateLimited(f"The Hugging Face Inference API is rate limiting this worker: {message}",
                           code="rate_limit_exceeded", headers={"Retry-After": retry} if retry else None)
    if status == 503:
        estimated = body.get("estimated_time") if isinstance(body, dict) else None
        if not retry and isinstance(estimated, (int, float)):
            retry = str(max(1, math.ceil(estimated)))
        return Unavailable(f"The Hugging Face Inference API is not ready: {message}", code="upstream_loading",
                           headers={"Retry-After": retry} if retry else None)
    if status == 504:
        return GatewayTimeout("The Hugging Face Inference API timed out.", code="upstream_timeout")
    return BadGateway(f"The Hugging Face Inference API failed with status {status}: {message}",
                      code="upstream_error")
