"""python-consul2's API over one long-lived aiohttp session.

python-consul2's own asyncio client opens a new connection pool per call; blocking queries and
re-registration loops want one pooled, cancellable session instead. Only the transport is ours:
endpoints, parameters and response handling are python-consul2's — except `read`, a raw GET for the
wrapper's whole-catalog query, whose answer is too large for the stdlib decoder python-consul2 uses.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import consul.base
import orjson

from common.settings import ConsulSettings, secret

ConsulException = consul.base.ConsulException
log = logging.getLogger(__name__)

# every request of one client shares these connections: a bounded number whatever the caller does
# (Consul refuses more than http_max_conns_per_client, 200 by default, from one address)
MAX_CONNECTIONS = 8


@dataclass(frozen=True, slots=True)
class Answer:
    """A Consul read with the headers that matter to a watcher."""

    index: int  # X-Consul-Index: pass it back as `index` to block until something changed
    raw: bytes  # compared as is: an unchanged answer need not be decoded
    filtered_by_acls: bool  # X-Consul-Results-Filtered-By-ACLs (Consul >= 1.11): the token hid entries
    # how far behind the leader the answering server may be: X-Consul-LastContact (ms) in seconds, and
    # X-Consul-KnownLeader; a leader's own answer says 0 and true
    last_contact: float = 0.0
    known_leader: bool = True

    def json(self) -> Any:
        return orjson.loads(self.raw)


class _SessionTransport(consul.base.HTTPClient):
    def __init__(self, host: str, port: int, scheme: str, verify: bool = True, cert=None, timeout=None) -> None:
        super().__init__(host, port, scheme, verify, cert, timeout)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=bool(self.verify), limit=MAX_CONNECTIONS),
                # blocking queries wait up to their `wait` (30 s by default) before Consul answers
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout or 5, sock_read=120),
            )
        return self._session

    async def _request(self, callback, method: str, path: str, params=None, data=None, headers=None):
        async with self._get_session().request(method, self.uri(path, params), data=data, headers=headers) as resp:
            content = await resp.read()
            return callback(consul.base.Response(resp.status, resp.headers, content.decode("utf-8", "replace"), content))

    async def get(self, callback, path, params=None, headers=None):
        return await self._request(callback, "GET", path, params, headers=headers)

    async def put(self, callback, path, params=None, data="", headers=None):
        return await self._request(callback, "PUT", path, params, data, headers)

    async def delete(self, callback, path, params=None, data="", headers=None):
        return await self._request(callback, "DELETE", path, params, data, headers)

    async def post(self, callback, path, params=None, data="", headers=None):
        return await self._request(callback, "POST", path, params, data, headers)

    async def read(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Answer:
        # identity: for the multi-MB catalog answer gzip measured no faster on loopback (Consul compresses,
        # the wrapper inflates); the agent is usually local
        async with self._get_session().get(self.uri(path, params),
                                           headers={"Accept-Encoding": "identity", **headers}) as resp:
            content = await resp.read()
            if resp.status != 200:
                raise ConsulException(f"{resp.status} from GET {path}: {content[:200].decode('utf-8', 'replace')}")
            return Answer(index=int(resp.headers.get("X-Consul-Index", "0")), raw=content,
                          filtered_by_acls=resp.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true",
                          last_contact=int(resp.headers.get("X-Consul-LastContact", "0")) / 1000,
                          known_leader=resp.headers.get("X-Consul-KnownLeader", "true") == "true")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncConsul(consul.base.Consul):
    """`consul.Consul`'s API with awaitable calls. Create inside a running event loop; close() when done."""

    def __init__(self, settings: ConsulSettings) -> None:
        self.settings = settings
        super().__init__(host=settings.host, port=settings.port, scheme=settings.scheme,
                         token=secret(settings.token), verify=settings.verify,
                         consistency="stale" if settings.stale else "default")
        self._leaderless = False  # the last stale answer could not be checked with a leader (logged once)

    def http_connect(self, host, port, scheme, verify=True, cert=None, timeout=None):
        # python-consul2 re-reads CONSUL_HTTP_ADDR with a looser parser (no default port, no bare
        # https://host); the settings already applied it the way Consul's own tools do.
        s = self.settings
        return _SessionTransport(s.host, s.port, s.scheme, s.verify, cert, timeout)

    async def read(self, path: str, index: int | None = None, wait: str | None = None,
                   params: Mapping[str, str] | None = None) -> Answer:
        """GET `path` with the client's token (decode with orjson: `.json()`); with `index`, a blocking query
        that returns when Consul's index passed it or after `wait`."""
        query = dict(params or {})
        if index:
            query.update(index=str(index), wait=wait or "5m")
        if self.consistency != "default":
            query[self.consistency] = "1"
        headers = {"X-Consul-Token": self.token} if self.token else {}
        answer = await self.http.read(path, query, headers)
        if self.consistency == "stale" and (answer.last_contact > self.settings.max_stale or not answer.known_leader):
            if self._leaderless and not answer.known_leader:
                return answer  # asking would only wait rpc_hold_timeout again for a leader nobody knows
            # this server lost touch with the leader (partitioned, or an election is under way): ask the
            # leader now, without blocking; Consul holds the read until a leader is elected (rpc_hold_timeout)
            query = {k: v for k, v in query.items() if k not in ("stale", "index", "wait")}
            try:
                answer = await self.http.read(path, query, headers)
            except ConsulException as exc:
                # no leader at all (quorum lost): nothing can be registered or deregistered until there is
                # one, so the stale answer is the newest there is; better than no routes
                if not self._leaderless:
                    log.warning("no Consul leader answered (%s); using the servers' stale answers until one "
                                "does", exc)
                self._leaderless = True
                return answer
        if self._leaderless:
            log.info("a Consul leader answers again")
            self._leaderless = False
        return answer

    async def close(self) -> None:
        await self.http.close()


def connect(settings: ConsulSettings) -> AsyncConsul:
    return AsyncConsul(settings)
