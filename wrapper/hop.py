"""The hop from the wrapper to a worker: pick an instance, fail over, pass the answer's bytes on untouched."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import aiohttp

from common.errors import BadGateway, GatewayTimeout, OpenAIError, Unavailable, answer_error, model_not_found
from common.http import SECRET_HEADER
from common.settings import TimeoutSettings, WrapperSettings
from common.wire import SSE, Capability, error_code, sse_comments_only, sse_error_event
from svc_mgr import Instance, RoutingTable

from .retry_budget import RetryBudget

log = logging.getLogger(__name__)

# Answers that fail an attempt over. 429 and 503 come before the worker started the work (its queue is
# full, it is draining), and so does a stale instance's 404: retrying them is safe. A 502 may come after
# (a proxy's upstream failed half-way).
SAFE_RETRY_STATUSES = frozenset({429, 503})
RETRY_STATUSES = SAFE_RETRY_STATUSES | {502}
STALE_CODE = "model_not_found"  # a 404 with it: the registration is stale (the port now serves others)
# Failures before the request reached the worker: retrying them cannot do the work twice.
NOTHING_SENT_CODES = frozenset({"worker_unreachable", "connect_timeout"})
_CONNECT_FAILURES = (aiohttp.ClientConnectionError, OSError)


class AttemptObserver(Protocol):
    """Told each attempt's outcome ("ok", an error code, or the status that refused it) and each failover
    (with what failed the attempt before): wrapper/metrics.py."""

    def attempted(self, model: str, instance: Instance, outcome: str | int) -> None: ...

    def failover(self, reason: str | int) -> None: ...


def _no_trace(instance: Instance) -> dict[str, str]:
    return {}


@dataclass(slots=True)
class Tries:
    """One request's way through its model's instances: what the Hop needs to go on failing over, also
    once a stream's head was passed on (up to its first event)."""

    model: str
    path: str
    body: bytes
    request_id: str
    whole: bool
    capability: Capability | None
    content_type: str | None
    key: bytes | None
    deadline: float
    tried: list[Instance] = field(default_factory=list)
    last: OpenAIError | Attempt | None = None
    safe: bool = True  # whether `last` failed before the worker could start the work
    outcome: str | int | None = None  # of the attempt before: a failover's reason


class Attempt:
    """One attempt at a worker: its instance's in-flight slot, then its answer once headers arrived."""

    def __init__(self, instance: Instance, tries: Tries) -> None:
        self.instance = instance
        self.tries = tries
        self.request_id = tries.request_id
        self.deadline = tries.deadline
        self.first_byte_by = tries.deadline  # when the first-byte timeout runs out (set when sent)
        self.response: aiohttp.ClientResponse | None = None
        self.content: bytes | None = None  # the whole body, for answers read inside the attempt
        self.released = False
        self.on_ok: Callable[[], None] | None = None  # counts the attempt as answered, once (`confirm`)
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

    def confirm(self) -> None:
        """Count the attempt as answered, once: at once for a whole answer, at a stream's first event (up to
        which it may still fail over), or when the attempt closes unfailed."""
        if self.on_ok is not None:
            on_ok, self.on_ok = self.on_ok, None
            on_ok()

    def close(self) -> None:
        """Free the connection (kept alive if the body was read to the end) and the in-flight slot, once."""
        if self.released:
            return
        self.released = True
        self.confirm()
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
        self.retries = settings.retries
        self.budget = RetryBudget(self.retries.budget, self.retries.min_per_second)
        self._base_headers = {"Content-Type": "application/json"}
        if worker_secret:
            self._base_headers[SECRET_HEADER] = worker_secret
        self._session: aiohttp.ClientSession | None = None
        self.observer: AttemptObserver | None = None
        self.trace_headers: Callable[[Instance], dict[str, str]] = _no_trace  # set by the wrapper's Observer

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

    def _headers(self, request_id: str, content_type: str | None, instance: Instance) -> dict[str, str]:
        headers = {**self._base_headers, "X-Request-ID": request_id, **self.trace_headers(instance)}
        if content_type is not None:  # a form's, with its boundary
            headers["Content-Type"] = content_type
        return headers

    def _remaining(self, deadline: float, limit: float) -> float:
        return max(min(limit, deadline - asyncio.get_running_loop().time()), 0)

    async def open(self, model: str, path: str, body: bytes, request_id: str, *, whole: bool,
                   capability: Capability | None = None, content_type: str | None = None,
                   key: bytes | None = None) -> Attempt:
        """Send to a healthy instance and wait for its headers (and, if `whole`, its whole body), failing
        over on connection errors, resets, timeouts, 429/502/503 and a stale instance's 404, within the
        attempt limit, the retry budget and the overall deadline. `key`: the affinity balancer's key. A
        stream's failover goes on in `stream` up to its first event (a worker may send its head early)."""
        assert self._session is not None, "Hop.start() was not called"
        self.budget.request()
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        return await self._next(Tries(model, path, body, request_id, whole, capability, content_type, key, deadline))

    async def _next(self, tries: Tries) -> Attempt:
        """The next attempt of `tries` that answers, or the last refusal; raises the last failure."""
        observer = self.observer
        model, deadline = tries.model, tries.deadline
        while len(tries.tried) < self.settings.max_attempts:
            inst = (self.table.pick(model, tries.tried, tries.capability, tries.key)
                    or (self.table.pick(model, (), tries.capability, tries.key) if tries.tried else None))
            if inst is None or self._remaining(deadline, 1) <= 0:
                break
            if tries.tried:
                if not self._may_retry(tries.safe):
                    break
                if observer is not None and tries.outcome is not None:
                    observer.failover(tries.outcome)
                if inst in tries.tried:  # the only instance left: give it a moment
                    await self._backoff(deadline)
            tries.tried.append(inst)
            attempt = Attempt(inst, tries)
            try:
                await self._send(attempt)
            except OpenAIError as exc:
                self._failed(attempt, exc)
                continue
            except BaseException:
                attempt.close()
                raise
            if self._refused(attempt):
                self.table.cool_down(inst)
                inst.last_error = (time.time(), f"status {attempt.status}")
                if observer is not None:
                    tries.outcome = attempt.status
                    observer.attempted(model, inst, tries.outcome)
                if isinstance(tries.last, Attempt):
                    tries.last.close()
                tries.last, tries.safe = attempt, attempt.status in SAFE_RETRY_STATUSES or attempt.status == 404
                continue
            if isinstance(tries.last, Attempt):
                tries.last.close()
            if observer is not None:
                if tries.whole or not attempt.content_type.startswith(SSE):
                    observer.attempted(model, inst, "ok")
                else:  # a stream may still fail over up to its first event: counted then (`Attempt.confirm`)
                    attempt.on_ok = partial(observer.attempted, model, inst, "ok")
            return attempt
        if isinstance(tries.last, Attempt):
            return tries.last  # every instance was busy or failing: pass the last worker answer on
        if tries.last is not None:
            raise tries.last
        if model in self.table.known_models:
            raise Unavailable(f"No healthy worker serves '{model}' right now.", code="no_healthy_worker",
                              headers={"Retry-After": "1"})
        raise model_not_found(model)

    def _failed(self, attempt: Attempt, exc: OpenAIError) -> None:
        """Book an attempt that failed with `exc`: its instance cools down, and `exc` is what its request
        ends with if no other attempt answers."""
        attempt.on_ok = None
        attempt.close()
        inst, tries = attempt.instance, attempt.tries
        self.table.cool_down(inst)
        inst.last_error = (time.time(), exc.code or exc.type)
        log.warning("request %s: worker %s failed (%s)", tries.request_id, inst.id, exc.code)
        if self.observer is not None:
            tries.outcome = exc.code or "error"
            self.observer.attempted(tries.model, inst, tries.outcome)
        if isinstance(tries.last, Attempt):
            tries.last.close()
        tries.last, tries.safe = exc, exc.code in NOTHING_SENT_CODES

    def _may_retry(self, safe: bool) -> bool:
        """Whether a failure of this kind may be retried, taking the retry from the budget if so."""
        allowed = self.retries.safe if safe else self.retries.after_send
        return allowed and self.budget.try_retry()

    async def _backoff(self, deadline: float) -> None:
        """A short jittered pause, so retries of many requests do not hit one instance in lockstep."""
        delay = random.uniform(self.retries.backoff_min, self.retries.backoff_max)
        await asyncio.sleep(self._remaining(deadline, delay))

    @staticmethod
    def _refused(attempt: Attempt) -> bool:
        """An answer that fails the attempt over: busy, failing, or not (any longer) serving the model."""
        if attempt.status == 404:
            stale = attempt.content is not None and error_code(attempt.content) == STALE_CODE
            if stale:
                log.warning("request %s: worker %s does not serve the model (stale registration?)",
                            attempt.request_id, attempt.instance.id)
            return stale
        return attempt.status in RETRY_STATUSES

    async def _send(self, attempt: Attempt) -> None:
        """Send the request of `attempt.tries` to its instance; wait for the answer's head (a whole answer:
        all of it)."""
        assert self._session is not None
        tries = attempt.tries
        try:
            # aiohttp enforces the connect timeout; the first-byte clock starts once connected
            first_byte = self.timeouts.connect + self.timeouts.first_byte
            attempt.first_byte_by = min(asyncio.get_running_loop().time() + first_byte, attempt.deadline)
            async with asyncio.timeout_at(attempt.first_byte_by):
                attempt.response = await self._session.post(
                    attempt.instance.base_url + tries.path, data=tries.body,
                    headers=self._headers(tries.request_id, tries.content_type, attempt.instance))
        except aiohttp.ConnectionTimeoutError:
            raise GatewayTimeout("Connecting to the worker timed out.", code="connect_timeout") from None
        except TimeoutError:
            raise GatewayTimeout("The worker sent nothing within the first-byte timeout.",
                                 code="first_byte_timeout") from None
        except aiohttp.ClientConnectorError:  # refused, unroutable: nothing was sent
            raise BadGateway("The worker could not be reached.", code="worker_unreachable") from None
        except _CONNECT_FAILURES:  # reset or closed once connected: the worker may have read the request
            raise BadGateway("The worker closed the connection without answering.", code="worker_failed") from None
        if tries.whole or attempt.status == 404:  # a 404's body tells a stale instance from other 404s
            attempt.content = await self._read_body(attempt)

    async def _read_body(self, attempt: Attempt) -> bytes:
        """The whole answer, read within the idle timeout and never more than `max_answer_bytes` of it."""
        response = attempt.response
        assert response is not None
        cap = self.settings.max_answer_bytes
        if response.content_length is not None and response.content_length > cap:
            raise self._too_large(cap)
        try:
            async with asyncio.timeout(self._remaining(attempt.deadline, self.timeouts.idle)):
                if response.content_length is not None:
                    return await response.read()  # aiohttp reads no more than the length
                return await self._read_capped(response.content, cap)
        except TimeoutError:
            raise GatewayTimeout("The worker stopped sending its answer.", code="idle_timeout") from None
        except _CONNECT_FAILURES + (aiohttp.ClientPayloadError,):
            raise BadGateway("The worker failed while sending its answer.", code="worker_failed") from None

    async def _read_capped(self, content: aiohttp.StreamReader, cap: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > cap:
                raise self._too_large(cap)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _too_large(cap: int) -> OpenAIError:
        return BadGateway(f"The worker's answer is larger than {cap} bytes.", code="answer_too_large")

    async def read(self, attempt: Attempt) -> bytes:
        """The whole body of an answer that was not read inside its attempt (a stream request's error)."""
        try:
            return await self._read_body(attempt)
        finally:
            attempt.close()

    async def stream(self, attempt: Attempt) -> AsyncGenerator[bytes, None]:
        """Relay an SSE body chunk by chunk as it arrives. Up to its first event (a worker may send its head
        early: generators' ACCEPTED) the first-byte timeout rules, and a failure or that timeout fails over
        to another instance, whose stream goes on in the same answer: the client has seen nothing of the
        first. After it, a failure or stall ends the stream with one OpenAI error event and no [DONE], so
        the client can tell the answer is truncated."""
        loop = asyncio.get_running_loop()
        idle = self.timeouts.idle
        tail = b"\n\n"
        evented = False  # an event (not only comments, which move no clock) was passed on
        progress_by = attempt.first_byte_by
        try:
            while True:
                assert attempt.response is not None
                try:
                    async with asyncio.timeout_at(min(progress_by, attempt.deadline)):
                        chunk = await attempt.response.content.readany()
                except (TimeoutError, *_CONNECT_FAILURES, aiohttp.ClientPayloadError) as exc:
                    error = self._stream_error(exc, attempt, evented)
                    if not evented and error.code != "total_timeout":
                        self._failed(attempt, error)
                        try:
                            attempt = await self._next(attempt.tries)
                        except OpenAIError as last:
                            error = last
                        else:
                            if attempt.status == 200 and attempt.content_type.startswith(SSE):
                                progress_by = attempt.first_byte_by
                                continue
                            error = await self._refusal(attempt)
                    yield self._boundary(tail) + sse_error_event(error)
                    return
                if not chunk:
                    return
                if not sse_comments_only(chunk):
                    if not evented:  # no failover from here on: the request's body need not be held
                        evented = True
                        attempt.tries.body = b""
                        attempt.confirm()
                    progress_by = loop.time() + idle
                tail = chunk[-2:]
                yield chunk
        finally:
            attempt.close()

    def _stream_error(self, exc: BaseException, attempt: Attempt, evented: bool) -> OpenAIError:
        if isinstance(exc, TimeoutError):
            if asyncio.get_running_loop().time() >= attempt.deadline:
                return GatewayTimeout("The request took longer than the gateway's total timeout.",
                                      code="total_timeout")
            if not evented:
                return GatewayTimeout("The worker sent nothing within the first-byte timeout.",
                                      code="first_byte_timeout")
            return GatewayTimeout("The worker stopped sending the stream.", code="idle_timeout")
        if evented:  # before, `_failed` tells
            log.warning("request %s: worker %s failed mid-stream", attempt.request_id, attempt.instance.id)
        return BadGateway("The worker failed in the middle of the stream.", code="worker_failed")

    async def _refusal(self, attempt: Attempt) -> OpenAIError:
        """The error a stream ends with when the instance that was to take it over refused it."""
        try:
            return answer_error(attempt.status, await self.read(attempt))
        except OpenAIError as exc:
            return exc

    async def relay(self, attempt: Attempt) -> AsyncGenerator[bytes, None]:
        """Relay a binary body (audio) chunk by chunk as it arrives. A failure or stall midway raises, so
        the connection to the client is cut and it sees a truncated body (no error can be framed in it)."""
        assert attempt.response is not None
        content = attempt.response.content
        try:
            while True:
                async with asyncio.timeout_at(min(asyncio.get_running_loop().time() + self.timeouts.idle,
                                                  attempt.deadline)):
                    chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, *_CONNECT_FAILURES, aiohttp.ClientPayloadError):
            log.warning("request %s: worker %s failed or stalled mid-answer; cutting the client's connection",
                        attempt.request_id, attempt.instance.id)
            raise
        finally:
            attempt.close()

    @staticmethod
    def _boundary(tail: bytes) -> bytes:
        return b"" if tail == b"\n\n" else b"\n\n"

