"""A worker's life: start its Generator, bind, check its own /health, register in Consul and keep the
entry there; on SIGTERM/SIGINT deregister first, then drain and stop the Generator."""
from __future__ import annotations

import aiohttp

from common.server import serve, uvicorn_config
from common.settings import Settings
from common.wire import Capability
from svc_mgr import Registration
from svc_mgr.entry import http_base

from .app import Worker


async def serve_worker(worker: Worker, settings: Settings, host: str, port: int, advertised: str,
                       service: str, weight: int = 1) -> int:
    """Serve `worker` until SIGTERM/SIGINT; returns the exit status."""
    await worker.start()  # before binding: a Generator that cannot start fails with one clear line
    health = http_base(advertised, port) + "/health"
    registration = Registration(settings.consul, settings.worker, name=service, host=advertised, port=port,
                                models=worker.generator.models, health_url=health,
                                capabilities=[c for c in Capability if worker.generator.supports(c)], weight=weight)

    async def after_start() -> None:
        # the very check Consul will run: it also proves the Worker knows the id it is registered under
        async with aiohttp.ClientSession() as session, session.get(registration.check_url) as resp:
            resp.raise_for_status()
        await registration.register()
        registration.start_keepalive()

    async def before_stop() -> None:
        await registration.deregister()

    try:
        config = uvicorn_config(worker.app(), host, port, limits=settings.limits,
                                drain_seconds=settings.worker.drain_seconds)
        return await serve(config, after_start=after_start, before_stop=before_stop)
    finally:
        await registration.close()
        await worker.stop()
