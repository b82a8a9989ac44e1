"""Several wrapper processes on one port: the kernel spreads connections over them (SO_REUSEPORT), and
each keeps its own routing table in step with Consul."""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile

from common.cli import configure_logging, fail
from common.metrics import use_multiprocess_dir, use_one_thread_values
from common.server import run, serve, shared_port_socket, uvicorn_config
from common.settings import ConfigError, Settings

from .app import Wrapper

log = logging.getLogger(__name__)


def serve_wrapper(settings: Settings, host: str, port: int, share_port: bool, log_level: str | None = None,
                  log_format: str = "text") -> int:
    """One wrapper process until SIGTERM/SIGINT; returns the exit status."""
    if log_level is not None:  # a spawned process configures its own logging
        configure_logging(log_level, log_format)
    try:
        # registered in Consul by the first process only (spawned ones have a parent): one instance per address
        listen = (host, port) if multiprocessing.parent_process() is None else None
        use_one_thread_values()  # the wrapper's metrics live on its event loop's thread only
        app = Wrapper(settings, listen).app()
    except ConfigError as exc:
        return fail(str(exc))
    sockets = [shared_port_socket(host, port)] if share_port else None
    config = uvicorn_config(app, host, port, limits=settings.limits, drain_seconds=settings.wrapper.drain_seconds)
    return run(serve(config, sockets=sockets))


def supervise(settings: Settings, host: str, port: int, processes: int, log_level: str,
              log_format: str = "text") -> int:
    """Serve from `processes` processes: this one and processes - 1 spawned children, which are stopped
    (SIGTERM, then waited for up to the drain time) when this one stops."""
    if processes == 1:
        return serve_wrapper(settings, host, port, share_port=False)
    if settings.metrics.enabled:  # every process counts into files here; /metrics in any shows the sum
        metrics_dir = tempfile.mkdtemp(prefix="oaw-metrics-")
        use_multiprocess_dir(metrics_dir)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=serve_wrapper, args=(settings, host, port, True, log_level, log_format), daemon=True)
                for _ in range(processes - 1)]
    for child in children:
        child.start()
    try:
        return serve_wrapper(settings, host, port, share_port=True)
    finally:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(settings.wrapper.drain_seconds + 5)
        if settings.metrics.enabled:
            shutil.rmtree(metrics_dir, ignore_errors=True)
