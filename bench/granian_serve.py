"""Serving an app with granian (issue #13's server candidate), as granian's own command line would.

One granian worker process (forked by granian's supervising process, which only waits) runs the app on a
uvloop event loop, with granian's single-threaded Rust runtime on the same thread (its default for one
worker). HTTP/1.1 only, no WebSocket, no access log, as common/server.py configures uvicorn. The app is
built in the worker by `target`, a "module:factory" that takes its arguments from the environment.

granian also has an "embedded" server that runs in the caller's event loop (marked experimental); a first
quick run with it cost more CPU per request than this mode, so the rows use this one.
"""
from __future__ import annotations

import json
import os
from typing import Any

from granian.constants import HTTPModes, Interfaces, Loops
from granian.log import LogLevels
from granian.server import Server

ARGS_ENV = "BENCH_GRANIAN_APP_ARGS"  # the factory's arguments, JSON


def serve_granian(target: str, args: dict[str, Any], host: str, port: int, interface: str = "asgi") -> None:
    """Serve the app `target` builds from `args` until SIGINT/SIGTERM (granian handles them)."""
    os.environ[ARGS_ENV] = json.dumps(args)
    Server(target, address=host, port=port, interface=Interfaces(interface), workers=1, loop=Loops.uvloop,
           http=HTTPModes.http1, websockets=False, backlog=2048, log_level=LogLevels.warning, log_access=False,
           factory=True).serve()


def factory_args() -> dict[str, Any]:
    """In the worker: the arguments `serve_granian` was given."""
    return json.loads(os.environ[ARGS_ENV])
