"""The hop from the wrapper to a worker: pick an instance, fail over, pass the answer's bytes on untouched."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import aiohttp

from common.errors import BadGateway, GatewayTimeout, OpenAIError, Unavailable, model_not_found
from common.settings import TimeoutSettings, WrapperSettings
from common.wire import sse_error_event
from svc_mgr import Instance, RoutingTable

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503})
_CONNECT_FAILURES = (aiohttp.ClientConnectionError, OSError)


class Attempt:
    """One attempt at a worker: its instance's in-flight slot, then its answer once headers arrived."""

    def __init__(self, instance: Instance, deadline: float, request_id: str) -> None:
        self.instance = instance
        self.request_id = request_id
        self.deadline = deadline
        self.response: aiohttp.ClientResponse | None = None
        self.content: bytes | None = None  # the whole body, for answers read inside the attempt
        self.released = False
        instance.in_flight += 1

    @property
    def status(self) -> int:
        assert self.response is not None
        return self.response.status

    @property
    def content_type(self) -> str:
        assert self.response is not None
        return self.response.headers.get("Content-Type", "application/json")

    def headers(self) -> dict[str, str]:
        retry_after = self.response.headers.get("Retry-After") if self.response is not None else None
        return {"Retry-After": retry_after} if retry_after else {}

    def close(self) -> None:
        """Free the connection (kept alive if the body was read to the end) and the in-flight slot, once."""
        if self.released:
            return
        self.released = True
        self.instance.in_flight -= 1
        if self.response is None:
            return
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


class Hop:
    """One pooled HTTP client to all workers, created at start-up and reused by every request."""

    def __init__(self, table: RoutingTable, settings: WrapperSettings, worker_secret: str | None) -> None:
        self.table = table
        self.settings = settings
        self.timeouts: TimeoutSettings = settings.timeouts
        self._base_headers = {"Content-Type": "application/json"}
        if worker_secret:
            self._base_headers["X-Worker-Secret"] = worker_secret
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
        return {**self._base_headers, "X-Request-ID": request_id}

    def _remaining(self, deadline: float, limit: float) -> float:
        return max(min(limit, deadline - asyncio.get_running_loop().time()), 0)

    async def open(self, model: str, path: str, body: bytes, request_id: str, *, whole: bool) -> Attempt:
        """Send to a healthy instance and wait for its headers (and, if `whole`, its whole body), failing
        over on connection errors, resets, timeouts and 429/502/503, within the attempt limit and the
        overall deadline. A stream is never retried once its first byte was relayed: that is the caller's
        part, which starts only after this returns."""
        assert self._session is not None, "Hop.start() was not called"
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        tried: list[Instance] = []
        last: OpenAIError | Attempt | None = None
        for _ in range(self.settings.max_attempts):
            inst = self.table.pick(model, exclude=tried) or (self.table.pick(model) if tried else None)
            if inst is None or self._remaining(deadline, 1) <= 0:
                break
            tried.append(inst)
            attempt = Attempt(inst, deadline, request_id)
            try:
                await self._send(attempt, path, body, request_id, whole)
            except OpenAIError as exc:
                attempt.close()
                self.table.cool_down(inst)
                log.warning("request %s: worker %s failed (%s); %s", request_id, inst.id, exc.code,
                            "trying another" if len(tried) < self.settings.max_attempts else "giving up")
                last = exc
                continue
            except BaseException:
                attempt.close()
                raise
            if attempt.status in RETRY_STATUSES:
                self.table.cool_down(inst)
                if isinstance(last, Attempt):
                    last.close()
                last = attempt
                continue
            if isinstance(last, Attempt):
                last.close()
            return attempt
        if isinstance(last, Attempt):
            return last  # every instance was busy or failing: pass the last worker answer on
        if last is not None:
            raise last
        if model in self.table.known_models:
            raise Unavailable(f"No healthy worker serves '{model}' right now.", code="no_healthy_worker",
                              headers={"Retry-After": "1"})
        raise model_not_found(model)

    async def _send(self, attempt: Attempt, path: str, body: bytes, request_id: str, whole: bool) -> None:
        assert self._session is not None
        try:
            # aiohttp enforces the connect timeout; the first-byte clock starts once connected
            first_byte = self.timeouts.connect + self.timeouts.first_byte
            async with asyncio.timeout(self._remaining(attempt.deadline, first_byte)):
                attempt.response = await self._session.post(attempt.instance.base_url + path, data=body,
                                                             headers=self._headers(request_id))
        except aiohttp.ConnectionTimeoutError:
            raise GatewayTimeout("Connecting to the worker timed out.", code="connect_timeout") from None
        except TimeoutError:
            raise GatewayTimeout("The worker sent nothing within the first-byte timeout.",
                                 code="first_byte_timeout") from None
        except _CONNECT_FAILURES:
            raise BadGateway("The worker could not be reached.", code="worker_unreachable") from None
        if whole:
            attempt.content = await self._read_body(attempt)

    async def _read_body(self, attempt: Attempt) -> bytes:
        assert attempt.response is not None
        try:
            async with asyncio.timeout(self._remaining(attempt.deadline, self.timeouts.idle)):
                return await attempt.response.read()
        except TimeoutError:
            raise GatewayTimeout("The worker stopped sending its answer.", code="idle_timeout") from None
        except _CONNECT_FAILURES + (aiohttp.ClientPayloadError,):
            raise BadGateway("The worker failed while sending its answer.", code="worker_failed") from None

    async def read(self, attempt: Attempt) -> bytes:
        """The whole body of an answer that was not read inside its attempt (a stream request's error)."""
        try:
            return await self._read_body(attempt)
        finally:
            attempt.close()

    async def stream(self, attempt: Attempt) -> AsyncGenerator[bytes, None]:
        """Relay an SSE body chunk by chunk as it arrives. If the worker fails or stalls mid-stream, end
        with one OpenAI error event and no [DONE], so the client can tell the answer is truncated."""
        assert attempt.response is not None
        content = attempt.response.content
        tail = b"\n\n"
        try:
            while True:
                async with asyncio.timeout(self._remaining(attempt.deadline, self.timeouts.idle)):
                    chunk = await content.readany()
                if not chunk:
                    return
                tail = chunk[-2:]
                yield chunk
        except TimeoutError:
            if asyncio.get_running_loop().time() >= attempt.deadline:
                error = GatewayTimeout("The request took longer than the gateway's total timeout.",
                                       code="total_timeout")
            else:
                error = GatewayTimeout("The worker stopped sending the stream.", code="idle_timeout")
            yield self._boundary(tail) + sse_error_event(error)
        except _CONNECT_FAILURES + (aiohttp.ClientPayloadError,):
            log.warning("request %s: worker %s failed mid-stream", attempt.request_id, attempt.instance.id)
            yield self._boundary(tail) + sse_error_event(
                BadGateway("The worker failed in the middle of the stream.", code="worker_failed"))
        finally:
            attempt.close()

    @staticmethod
    def _boundary(tail: bytes) -> bytes:
        return b"" if tail == b"\n\n" else b"\n\n"

