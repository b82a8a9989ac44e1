"""Serving an app under uvicorn on uvloop, with the start-up and shutdown order both sides need."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import uvicorn
import uvloop

from .protocol import guarded_protocol
from .settings import LimitSettings

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class _Server(uvicorn.Server):
    """uvicorn.Server whose SIGINT/SIGTERM first run `before_stop` (a worker deregisters there), then
    drain as uvicorn does, and which exits normally instead of re-raising the signal."""

    before_stop: Hook | None = None
    _stopping: asyncio.Task | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self._stopping is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        log.info("received %s; stopping", signal.Signals(sig).name)
        self._stopping = asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        try:
            if self.before_stop is not None:
                await self.before_stop()
        finally:
            self.should_exit = True


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run the server's coroutine on uvloop, the event loop uvicorn would pick itself."""
    return uvloop.run(main)


def uvicorn_config(app: Any, host: str, port: int, *, limits: LimitSettings,
                   drain_seconds: float = 10.0) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, http=guarded_protocol(limits), lifespan="on", proxy_headers=False,
        access_log=False, log_config=None,
        ws="none",  # neither app speaks WebSocket: an Upgrade is not handed to a library nobody uses
        # uvicorn answers 503 when, as a request's headers complete, its connection is the limit-th open one
        # or `limit` requests are running: + 1 serves up to max_connections connections
        limit_concurrency=limits.max_connections + 1,
        # longer than the wrapper's pooled keep-alive (30 s): the wrapper closes idle connections first
        timeout_keep_alive=75,
        timeout_graceful_shutdown=math.ceil(drain_seconds),  # uvicorn takes whole seconds
    )


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so several processes serve one port (the kernel spreads
    connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve_quietly(server: uvicorn.Server, sockets: list[socket.socket] | None) -> None:
    try:
        await server.serve(sockets=sockets)
    except SystemExit:
        pass  # uvicorn's way to fail start-up (lifespan raised, port taken); it already logged why


async def serve(config: uvicorn.Config, *, after_start: Hook | None = None, before_stop: Hook | None = None,
                sockets: list[socket.socket] | None = None) -> int:
    """Serve until SIGINT/SIGTERM. `after_start` runs once the port is bound; if it raises, the server
    stops and the exception propagates. Returns 0 after a clean stop, 1 if the server could not start."""
    server = _Server(config)
    server.before_stop = before_stop
    task = asyncio.create_task(_serve_quietly(server, sockets))
    while not server.started:
        if task.done():
            return 1  # uvicorn already logged why (port in use, lifespan failure...)
        await asyncio.sleep(0.02)
    if after_start is not None:
        try:
            await after_start()
        except BaseException:
            server.should_exit = True
            await task
            raise
    await task
    return 0
