"""What every entry script's command line shares: HOST PORT, --config, --log-level, --require-auth, and
the start-up check of the security settings."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .logs import JsonFormatter
from .settings import ConfigError, Settings, load_settings

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("host", help="address to listen on, e.g. 127.0.0.1")
    parser.add_argument("port", type=int, help="port to listen on")
    parser.add_argument("--config", default=None, metavar="PATH", help="settings file (default: env.yaml)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                        help="text (for people, the default) or json (one object per line, for log shippers)")
    parser.add_argument("--require-auth", action="store_true",
                        help="refuse to start without API keys / worker secret (sets security.strict)")
    return parser


def configure_logging(level: str, log_format: str = "text") -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # httpx logs every request at INFO; a line per request costs a third of the throughput
    # (docs/performance.md), so openai_worker's upstream calls log only when something is wrong
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def setup(args: argparse.Namespace) -> Settings:
    """Logging as asked, then the settings with the command line's overrides; raises ConfigError."""
    configure_logging(args.log_level, args.log_format)
    settings = load_settings(args.config)
    if args.require_auth:
        settings = settings.model_copy(update={"security": settings.security.model_copy(update={"strict": True})})
    return settings


@dataclass(frozen=True)
class Guard:
    """A security setting: strict mode refuses to start without it, otherwise its absence is logged."""

    setting: str  # as the operator sets it, e.g. "worker.secret (or WORKER_SECRET)"
    is_set: bool
    risk: str  # what running without it means


def check_guards(guards: Sequence[Guard], settings: Settings) -> None:
    """Once at start-up, before binding: raises ConfigError in strict mode (security.strict, --require-auth)
    naming every missing setting; otherwise one WARNING line for each."""
    missing = [g for g in guards if not g.is_set]
    if missing and settings.security.strict:
        names = "; ".join(g.setting for g in missing)
        raise ConfigError(f"security.strict (--require-auth) is on, so this will not start without: {names}")
    for guard in missing:
        log.warning("%s; set %s", guard.risk, guard.setting)


def fail(message: str) -> int:
    """One `error:` line for a mistake in the command line or the settings; exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2
