"""The workers' command lines (template_worker.py, openai_worker.py): parsing only, then `serve_worker`."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from common.cli import Guard, base_parser, check_guards, fail, setup
from common.server import run
from common.settings import ConfigError, Settings
from generators import Generator
from svc_mgr import ConsulUnreachable
from svc_mgr.entry import MAX_WEIGHT, service_id

from .app import Worker
from .lifecycle import serve_worker


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=None, help="comma-separated model names to serve "
                        "(default: the generator's own list)")
    parser.add_argument("--svc-name", default=None, help="Consul service name (default: the generator's)")
    parser.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                        help="requests served at once; more wait in a bounded queue, then get 429")
    parser.add_argument("--weight", type=_weight, default=1, metavar="N",
                        help=f"this instance's share of its models' traffic relative to the others' (1 to {MAX_WEIGHT}, "
                        "default 1): 3 gets three times the requests of 1")
    parser.add_argument("--advertise", default=None, metavar="ADDR",
                        help="address registered in Consul (default: HOST; 127.0.0.1 when HOST is 0.0.0.0 or ::)")


def _weight(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_WEIGHT}")
    return int(text)


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
    parser = base_parser("template_worker.py", "Host a Generator class as an OpenAI-compatible worker. "
                         "Options of the Generator itself follow its dotted path.")
    parser.add_argument("generator", help="dotted path of a Generator class, e.g. generators.echo.EchoGen")
    _worker_options(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        cls = import_generator(args.generator)
    except ValueError as exc:
        return fail(str(exc))
    own = argparse.ArgumentParser(prog=f"template_worker.py HOST PORT {args.generator}",
                                  description=f"Options of {cls.__name__}.")
    cls.add_arguments(own)
    options = vars(own.parse_args(rest))
    try:
        settings = _setup(args)
        generator = cls(models=_split(args.models), **options)
    except (ConfigError, ValueError) as exc:
        return fail(str(exc))
    return _run_worker(args, settings, generator)


def openai_worker(argv: Sequence[str]) -> int:
    from generators.openai_upstream import OpenAIUpstreamGen, parse_aliases, parse_capabilities

    parser = base_parser("openai_worker.py", "Relay an OpenAI-compatible upstream as a worker.")
    _worker_options(parser)
    parser.add_argument("--capabilities", default=None, metavar="CAPS",
                        help="comma-separated endpoints the upstream serves, e.g. chat,embedding,speech "
                             "(default: all); the wrapper refuses the others without a hop")
    args = parser.parse_args(argv)
    try:
        settings = _setup(args)
        generator = OpenAIUpstreamGen(aliases=parse_aliases(args.models), upstream=settings.openai,
                                      capabilities=parse_capabilities(args.capabilities))
    except (ConfigError, ValueError) as exc:
        return fail(str(exc))
    return _run_worker(args, settings, generator)


def _setup(args: argparse.Namespace) -> Settings:
    """The settings, refused in strict mode without a worker secret (else warned about once); ConfigError."""
    settings = setup(args)
    check_guards([Guard("worker.secret (or WORKER_SECRET)", settings.worker.secret is not None,
                        "no worker secret set: anyone who can reach this port can call the model")], settings)
    return settings


def _run_worker(args: argparse.Namespace, settings: Settings, generator: Generator) -> int:
    if args.max_concurrency is not None:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(
            update={"max_concurrency": args.max_concurrency})})
    service = args.svc_name or generator.default_service_name()
    advertised = args.advertise or (args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1")
    worker = Worker(generator, settings, service_id=service_id(service, advertised, args.port))
    try:
        return run(serve_worker(worker, settings, args.host, args.port, advertised, service, weight=args.weight))
    except (ConsulUnreachable, ValueError) as exc:  # ValueError: the Generator's start-up refused its settings
        print(f"error: {exc}", file=sys.stderr)
        return 1
