"""python-consul2's API over one long-lived aiohttp session.

python-consul2's own asyncio client opens a new connection pool per call; blocking queries and
re-registration loops want one pooled, cancellable session instead. Only the transport is ours:
endpoints, parameters and response handling are python-consul2's.
"""
from __future__ import annotations

import aiohttp
import consul.base

from common.settings import ConsulSettings, secret

ConsulException = consul.base.ConsulException


class _SessionTransport(consul.base.HTTPClient):
    def __init__(self, host: str, port: int, scheme: str, verify: bool = True, cert=None, timeout=None) -> None:
        super().__init__(host, port, scheme, verify, cert, timeout)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=bool(self.verify), limit=0),
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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncConsul(consul.base.Consul):
    """`consul.Consul`'s API with awaitable calls. Create inside a running event loop; close() when done."""

    def __init__(self, settings: ConsulSettings) -> None:
        self.settings = settings
        super().__init__(host=settings.host, port=settings.port, scheme=settings.scheme,
                         token=secret(settings.token), verify=settings.verify)

    def http_connect(self, host, port, scheme, verify=True, cert=None, timeout=None):
        # python-consul2 re-reads CONSUL_HTTP_ADDR with a looser parser (no default port, no bare
        # https://host); the settings already applied it the way Consul's own tools do.
        s = self.settings
        return _SessionTransport(s.host, s.port, s.scheme, s.verify, cert, timeout)

    async def close(self) -> None:
        await self.http.close()


def connect(settings: ConsulSettings) -> AsyncConsul:
    return AsyncConsul(settings)
