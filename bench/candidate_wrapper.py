"""The wrapper on issue #13's candidates: the same app (wrapper/app.py's Wrapper, every default feature on)
served by uvicorn or granian, relaying with aiohttp or pyreqwest. Bench-side only; the product's entry is
main_openai_wrapper_v2.py (uvicorn + aiohttp, with common/protocol.py's guard).

    python -m bench.candidate_wrapper HOST PORT --server granian --client pyreqwest [--config PATH]

With `--server uvicorn --client aiohttp` it is the product's one-process path (common/server.py's config).
Under granian, common/protocol.py's guard is absent (it is a uvicorn protocol class): no 431 for large
headers, no 408 for a slow request head or body, no max_connections 503 — granian's own limits apply
(its HTTP/1 header-read timeout and buffer size, its `backpressure`); see docs/performance.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from common.cli import configure_logging
from common.server import run, serve, uvicorn_config
from common.settings import Settings, load_settings, secret
from wrapper.app import Wrapper

SERVERS = ("uvicorn", "granian")
CLIENTS = ("aiohttp", "pyreqwest", "pyreqwest-json")  # pyreqwest-json: pyreqwest for JSON, aiohttp for streams


def build(settings: Settings, host: str, port: int, client: str) -> Wrapper:
    """The wrapper as the product builds it, its Hop replaced by a pyreqwest one if asked."""
    wrapper = Wrapper(settings, (host, port))
    if client != "aiohttp":
        from .pyreqwest_hop import JsonPyreqwestHop, PyreqwestHop
        hop_class = PyreqwestHop if client == "pyreqwest" else JsonPyreqwestHop
        hop = hop_class(wrapper.table, settings.wrapper, secret(settings.worker.secret))
        hop.observer, hop.trace_headers = wrapper.hop.observer, wrapper.hop.trace_headers
        wrapper.hop = hop
    return wrapper


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.candidate_wrapper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--server", choices=SERVERS, default="uvicorn")
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp")
    parser.add_argument("--config", default=None, help="settings file (default: env.yaml)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    settings = load_settings(args.config)
    if args.server == "granian":
        from .granian_serve import serve_granian
        serve_granian("bench.candidate_wrapper:granian_app", {"host": args.host, "port": args.port, "client": args.client,
                                                               "config": args.config, "log_level": args.log_level},
                      args.host, args.port)
        return 0
    app = build(settings, args.host, args.port, args.client).app()
    config = uvicorn_config(app, args.host, args.port, limits=settings.limits,
                            drain_seconds=settings.wrapper.drain_seconds)
    return run(serve(config))


def granian_app() -> Any:
    """granian's factory, called in its worker process: the wrapper's ASGI app."""
    from .granian_serve import factory_args
    args = factory_args()
    configure_logging(args["log_level"])
    return build(load_settings(args["config"]), args["host"], args["port"], args["client"]).app()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
