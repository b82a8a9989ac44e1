"""The wrapper's command line (main_openai_wrapper_v2.py): parsing only, then the supervisor."""
from __future__ import annotations

import logging
from collections.abc import Sequence

from common.cli import base_parser, fail, setup
from common.settings import ConfigError

from .supervisor import supervise

log = logging.getLogger(__name__)


def main(argv: Sequence[str]) -> int:
    parser = base_parser("main_openai_wrapper_v2.py", "The OpenAI-compatible gateway in front of the workers.")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="serve the port from N processes (default: wrapper.processes)")
    args = parser.parse_args(argv)
    try:
        settings = setup(args)
    except ConfigError as exc:
        return fail(str(exc))
    processes = args.processes or settings.wrapper.processes
    log.info("wrapper listening on http://%s:%s/v1 with %d process(es) (Consul at %s)", args.host, args.port,
             processes, settings.consul.address)
    return supervise(settings, args.host, args.port, processes, args.log_level)
