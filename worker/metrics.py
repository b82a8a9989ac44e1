"""A worker's Prometheus metrics (docs/observability.md lists them): the request series of
common/metrics.py named `oaw_worker_*`, plus its `--max-concurrency` queue and the 429s it sends."""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from common.errors import OpenAIError
from common.http import CLIENT_CLOSED, ClientGone, SSEResponse
from common.metrics import PREFIX, Exposition, Observation, RequestMetrics
from common.wire import PATHS, Capability

WORKER_PREFIX = PREFIX + "worker_"
_OBSERVATION = "oaw.observation"  # where a request's Observation waits in its ASGI scope for its model


class WorkerMetrics:
    def __init__(self, known: Callable[[str], bool], queue_length: Callable[[], int]) -> None:
        self.exposition = Exposition()
        registry = self.exposition.registry
        self.requests = RequestMetrics(WORKER_PREFIX, registry, known, "worker")
        self.queue = Gauge(f"{WORKER_PREFIX}queue_length", "Requests waiting for a --max-concurrency slot",
                           registry=registry)
        self.queue.set_function(lambda: queue_length())
        self.busy = Counter(f"{WORKER_PREFIX}concurrency_rejections_total", "Requests refused with 429: every "
                            "--max-concurrency slot taken and the queue (worker.max_queue) full", registry=registry)

    def begin(self, request: Request, capability: Capability) -> Observation:
        obs = self.requests.begin(PATHS[capability])
        request.scope[_OBSERVATION] = obs
        return obs

    @staticmethod
    def admit(request: Request, model: str, stream: bool) -> None:
        """The request's model is known (a served one) and it is about to be generated."""
        obs: Observation | None = request.scope.get(_OBSERVATION)
        if obs is not None:
            obs.admit(model, stream)

    def responded(self, obs: Observation, response: Response) -> None:
        if isinstance(response, SSEResponse):
            response.chunks = self.requests.relay(obs, response.chunks)
            response.on_close = self.requests.closing(obs, response.status_code, response.on_close)
        else:
            self.requests.finish_json(obs, response)

    def failed(self, obs: Observation, exc: BaseException) -> None:
        if isinstance(exc, ClientGone) or not isinstance(exc, Exception):
            self.requests.finish(obs, CLIENT_CLOSED)
            return
        status = exc.status if isinstance(exc, OpenAIError) else exc.status_code if isinstance(
            exc, HTTPException) else 500
        if status == 429:
            self.busy.inc()
        self.requests.finish(obs, status)

    async def endpoint(self, request: Request) -> Response:
        return await self.exposition.endpoint(request)
