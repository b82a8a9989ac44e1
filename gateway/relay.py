"""The hop from the wrapper to a worker: pick an instance, fail over, relay bytes untouched."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp

from svc_mgr import Instance, RoutingTable

from .config import TimeoutSettings, WrapperSettings
from .errors import BadGateway, GatewayTimeout, NotFound, OpenAIError, Unavailable, sse_error_event

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503})
_CONNECT_FAILURES = (aiohttp.ClientConnectionError, OSError)


@dataclass
class Upstream:
    """A worker's answer whose headers arrived; the body is still to be read or streamed."""

    response: aiohttp.ClientResponse
    instance: Instance
    deadline: float
    released: bool = False

    def close(self) -> None:
        """Free the connection (kept alive if the body was read to the end) and the in-flight slot, once."""
        if self.released:
            return
        self.released = True
        self.instance.in_flight -= 1
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def content_type(self) -> str:
        return self.response.headers.get("Content-Type", "application/json")

    def headers(self) -> dict[str, str]:
        retry_after = self.response.headers.get("Retry-After")
        return {"Retry-After": retry_after} if retry_after else {}


def model_not_found(model: str) -> NotFound:
    return NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")


class Hop:
    """One pooled HTTP client to all workers, created at start-up and reused by every request."""

    def __init__(self, table: RoutingTable, settings: WrapperSettings, worker_secret: str | None) -> None:
        self.table = table
        self.settings = settings
        self.timeouts: TimeoutSettings = settings.timeouts
        self._secret = worker_secret
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            # shorter than the worker's keep-alive (75 s), so the wrapper never reuses a connection the
            # worker is closing
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        if self._secret:
            headers["X-Worker-Secret"] = self._secret
        return headers

    async def open(self, model: str, path: str, body: bytes, request_id: str) -> Upstream:
        """Send to a healthy instance and wait for its headers, failing over on connection errors,
        first-byte timeouts and 429/502/503, within the attempt limit and the overall deadline."""
        assert self._session is not None, "Hop.start() was not called"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total
        tried: list[Instance] = []
        last: OpenAIError | Upstream | None = None
        for _ in range(self.settings.max_attempts):
            inst = self.table.pick(model, exclude=tried) or (self.table.pick(model) if tried else None)
            if inst is None:
                break
            tried.append(inst)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            inst.in_flight += 1
            try:
                async with asyncio.timeout(min(self.timeouts.first_byte, remaining)):
                    response = await self._session.post(inst.base_url + path, data=body,
                                                        headers=self._headers(request_id))
            except TimeoutError:
                inst.in_flight -= 1
                self.table.cool_down(inst)
                last = GatewayTimeout(f"The worker for '{model}' sent nothing within the first-byte timeout.",
                                      code="first_byte_timeout")
                continue
            except _CONNECT_FAILURES as exc:
                inst.in_flight -= 1
                self.table.cool_down(inst)
                log.warning("worker %s failed before answering (%s); trying another", inst.id,
                            exc.__class__.__name__)
                last = BadGateway(f"The worker for '{model}' could not be reached.", code="worker_unreachable")
                continue
            except BaseException:
                inst.in_flight -= 1
                raise
            upstream = Upstream(response, inst, deadline)
            if response.status in RETRY_STATUSES:
                self.table.cool_down(inst)
                if isinstance(last, Upstream):
                    last.close()
                last = upstream
                continue
            if isinstance(last, Upstream):
                last.close()
            return upstream
        if isinstance(last, Upstream):
            return last  # every instance was busy or failing: pass the last worker answer on
        if last is not None:
            raise last
        if model in self.table.known_models:
            raise Unavailable(f"No healthy worker serves '{model}' right now.", code="no_healthy_worker",
                              headers={"Retry-After": "1"})
        raise model_not_found(model)

    async def read(self, upstream: Upstream) -> bytes:
        """The whole body of a JSON answer."""
        try:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(min(self.timeouts.idle, max(upstream.deadline - loop.time(), 0))):
                return await upstream.response.read()
        except TimeoutError:
            raise GatewayTimeout("The worker stopped sending its answer.", code="idle_timeout") from None
        except _CONNECT_FAILURES + (aiohttp.ClientPayloadError,):
            raise BadGateway("The worker failed while sending its answer.", code="worker_failed") from None
        finally:
            upstream.close()

    async def stream(self, upstream: Upstream) -> AsyncIterator[bytes]:
        """Relay an SSE body chunk by chunk as it arrives. If the worker fails or stalls mid-stream, end
        with one OpenAI error event and no [DONE], so the client can tell the answer is truncated."""
        content = upstream.response.content
        loop = asyncio.get_running_loop()
        tail = b"\n\n"
        try:
            while True:
                async with asyncio.timeout(min(self.timeouts.idle, max(upstream.deadline - loop.time(), 0))):
                    chunk = await content.readany()
                if not chunk:
                    return
                tail = chunk[-2:]
                yield chunk
        except TimeoutError:
            yield self._boundary(tail) + sse_error_event(
                GatewayTimeout("The worker stopped sending the stream.", code="idle_timeout"))
        except _CONNECT_FAILURES + (aiohttp.ClientPayloadError,):
            log.warning("worker %s failed mid-stream", upstream.instance.id)
            yield self._boundary(tail) + sse_error_event(
                BadGateway("The worker failed in the middle of the stream.", code="worker_failed"))
        finally:
            upstream.close()

    @staticmethod
    def _boundary(tail: bytes) -> bytes:
        return b"" if tail == b"\n\n" else b"\n\n"

