"""Command lines of the three entry scripts. Parsing only; the work happens in the modules they start."""
from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import signal
import logging
import sys
from typing import Sequence

from generators import Generator

from .config import ConfigError, Settings, load_settings
from .server import run, serve, serve_worker, shared_port_socket, uvicorn_config

log = logging.getLogger("gateway")


def _base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("host", help="address to listen on, e.g. 127.0.0.1")
    parser.add_argument("port", type=int, help="port to listen on")
    parser.add_argument("--config", default=None, metavar="PATH", help="settings file (default: env.yaml)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=None, help="comma-separated model names to serve "
                        "(default: the generator's own list)")
    parser.add_argument("--svc-name", default=None, help="Consul service name (default: the generator's)")
    parser.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                        help="requests served at once; more wait in a bounded queue, then get 429")
    parser.add_argument("--advertise", default=None, metavar="ADDR",
                        help="address registered in Consul (default: HOST; 127.0.0.1 when HOST is 0.0.0.0 or ::)")


def _setup(args: argparse.Namespace) -> Settings:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return load_settings(args.config)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def import_generator(dotted: str) -> type[Generator]:
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"'{dotted}' is not a dotted path like generators.echo.EchoGen")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import '{dotted}': {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise ValueError(f"'{dotted}' is not a Generator subclass")
    return cls


def _split(models: str | None) -> list[str] | None:
    return [m.strip() for m in models.split(",") if m.strip()] if models else None


def template_worker(argv: Sequence[str]) -> int:
    parser = _base_parser("template_worker.py", "Host a Generator class as an OpenAI-compatible worker. "
                          "Options of the Generator itself follow its dotted path.")
    parser.add_argument("generator", help="dotted path of a Generator class, e.g. generators.echo.EchoGen")
    _worker_options(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        cls = import_generator(args.generator)
    except ValueError as exc:
        return _fail(str(exc))
    own = argparse.ArgumentParser(prog=f"template_worker.py HOST PORT {args.generator}",
                                  description=f"Options of {cls.__name__}.")
    cls.add_arguments(own)
    options = vars(own.parse_args(rest))
    try:
        settings = _setup(args)
        generator = cls(models=_split(args.models), **options)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    return _run_worker(args, settings, generator)


def openai_worker(argv: Sequence[str]) -> int:
    from generators.openai_upstream import OpenAIUpstreamGen, parse_aliases

    parser = _base_parser("openai_worker.py", "Relay an OpenAI-compatible upstream as a worker.")
    _worker_options(parser)
    args = parser.parse_args(argv)
    try:
        settings = _setup(args)
        generator = OpenAIUpstreamGen(aliases=parse_aliases(args.models), upstream=settings.openai)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    return _run_worker(args, settings, generator)


def _run_worker(args: argparse.Namespace, settings: Settings, generator: Generator) -> int:
    from svc_mgr import ConsulUnreachable
    from .worker_app import Worker

    if args.max_concurrency is not None:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(
            update={"max_concurrency": args.max_concurrency})})
    worker = Worker(generator, settings)
    service = args.svc_name or generator.default_service_name()
    advertised = args.advertise or (args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1")
    try:
        return run(serve_worker(worker, settings, args.host, args.port, advertised, service))
    except (ConsulUnreachable, ValueError) as exc:  # ValueError: the Generator's start-up refused its settings
        print(f"error: {exc}", file=sys.stderr)
        return 1


def wrapper(argv: Sequence[str]) -> int:
    parser = _base_parser("main_openai_wrapper_v2.py", "The OpenAI-compatible gateway in front of the workers.")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="serve the port from N processes (default: wrapper.processes)")
    args = parser.parse_args(argv)
    try:
        settings = _setup(args)
    except ConfigError as exc:
        return _fail(str(exc))
    processes = args.processes or settings.wrapper.processes
    log.info("wrapper listening on http://%s:%s/v1 with %d process(es) (Consul at %s)", args.host, args.port,
             processes, settings.consul.address)
    if processes == 1:
        return _serve_wrapper(settings, args.host, args.port, share_port=False)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_serve_wrapper, args=(settings, args.host, args.port, True, args.log_level),
                                daemon=True) for _ in range(processes - 1)]
    for child in children:
        child.start()
    try:
        return _serve_wrapper(settings, args.host, args.port, share_port=True)
    finally:
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(settings.wrapper.drain_seconds + 5)


def _serve_wrapper(settings: Settings, host: str, port: int, share_port: bool, log_level: str | None = None) -> int:
    """One wrapper process, with its own routing table kept in step with Consul by its own watches."""
    from .wrapper_app import Wrapper

    if log_level is not None:  # a spawned process configures its own logging
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = Wrapper(settings).app()
    except ConfigError as exc:
        return _fail(str(exc))
    sockets = [shared_port_socket(host, port)] if share_port else None
    return run(serve(uvicorn_config(app, host, port, drain_seconds=settings.wrapper.drain_seconds), sockets=sockets))
