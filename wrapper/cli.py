"""The wrapper's command line (main_openai_wrapper_v2.py): parsing only, then the supervisor."""
from __future__ import annotations

import logging
from collections.abc import Sequence

from common.cli import Guard, base_parser, check_guards, fail, setup
from common.settings import ConfigError, Settings, load_api_keys

from .supervisor import supervise

log = logging.getLogger(__name__)


def main(argv: Sequence[str]) -> int:
    parser = base_parser("main_openai_wrapper_v2.py", "The OpenAI-compatible gateway in front of the workers.")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="serve the port from N processes (default: wrapper.processes)")
    args = parser.parse_args(argv)
    try:
        settings = setup(args)
        check_guards(guards(settings), settings)
    except ConfigError as exc:
        return fail(str(exc))
    processes = args.processes or settings.wrapper.processes
    # the status page shows the number of processes
    settings = settings.model_copy(update={"wrapper": settings.wrapper.model_copy(update={"processes": processes})})
    if processes > 1 and settings.redis.url is None:
        log.warning("redis.url is not set: each of the %d processes keeps its own rate-limit counters, so a key "
                    "may get up to %d times its limits (docs/keys-and-limits.md)", processes, processes)
    log.info("wrapper listening on http://%s:%s/v1 with %d process(es) (Consul at %s)", args.host, args.port,
             processes, settings.consul.address)
    return supervise(settings, args.host, args.port, processes, args.log_level, args.log_format)


def guards(settings: Settings) -> list[Guard]:
    """The wrapper's security settings, checked here once for every process (raises ConfigError on a bad
    or duplicated key, before any process starts)."""
    return [
        Guard("wrapper.api_keys (or wrapper.api_keys_file, wrapper.keys_consul_prefix)",
              bool(load_api_keys(settings)) or settings.wrapper.keys_consul_prefix is not None,
              "no API keys configured: the wrapper accepts every caller"),
        Guard("worker.secret (or WORKER_SECRET)", settings.worker.secret is not None,
              "no worker secret set: the wrapper sends none, so its workers take calls from anyone who can reach them"),
    ]
