"""What every entry script's command line shares: HOST PORT, --config, --log-level."""
from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("host", help="address to listen on, e.g. 127.0.0.1")
    parser.add_argument("port", type=int, help="port to listen on")
    parser.add_argument("--config", default=None, metavar="PATH", help="settings file (default: env.yaml)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    # httpx logs every request at INFO; a line per request costs a third of the throughput
    # (docs/performance.md), so openai_worker's upstream calls log only when something is wrong
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def setup(args: argparse.Namespace) -> Settings:
    """Logging as asked, then the settings; raises ConfigError."""
    configure_logging(args.log_level)
    return load_settings(args.config)


def fail(message: str) -> int:
    """One `error:` line for a mistake in the command line or the settings; exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2
