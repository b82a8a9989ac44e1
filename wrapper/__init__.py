"""The wrapper side: route each request by its model to a healthy worker and pass the answer on.

    app         Wrapper: the FastAPI app (auth, checks, routing, /v1/models, /health)
    observe     around each model request: metrics, trace, the status page's figures, in one place
    hop         the pooled client to workers: instance choice, failover, timeouts, passing bytes on
    model_plan  aliases and fallbacks; affinity_key: a request's key for the affinity balancer
    auth        gateway API keys; key_watch and keys_cli: keys kept in Consul KV
    limits      rate limits, budgets and usage per key (counters in memory, or redis_store over resp)
    metrics     the wrapper's Prometheus series (key_metrics: per key name); status: /status, /status.json
    gateway     the wrapper's own Consul registration
    key_digest  python3 -m wrapper.key_digest: a key's SHA-256 for key_sha256
    supervisor  several processes on one port
    cli         main_openai_wrapper_v2.py
"""
from .app import Wrapper
from .cli import main

__all__ = ["Wrapper", "main"]
