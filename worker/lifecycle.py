"""A worker's life: start its Generator, bind, check its own /health, register in Consul and keep the
entry there; on SIGTERM/SIGINT deregister first, then drain and stop the Generator."""
from __future__ import annotations

import logging

import aiohttp

from common.server import serve, uvicorn_config
from common.settings import Settings
from svc_mgr import Registration

from .app import Worker

log = logging.getLogger(__name__)


async def serve_worker(worker: Worker, settings: Settings, host: str, port: int, advertised: str,
                       service: str) -> int:
    """Serve `worker` until SIGTERM/SIGINT; returns the exit status."""
    if settings.worker.secret is None:
        log.warning("no worker secret set (worker.secret or WORKER_SECRET): anyone who can reach this port "
                    "can call the model")
    await worker.start()  # before binding: a Generator that cannot start fails with one clear line
    health = f"http://{advertised}:{port}/health"
    registration = Registration(settings.consul, settings.worker, name=service, host=advertised, port=port,
                                models=worker.generator.models, health_url=health)

    async def after_start() -> None:
        async with aiohttp.ClientSession() as session, session.get(health) as resp:
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
