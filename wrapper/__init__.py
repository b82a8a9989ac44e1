"""The wrapper side: route each request by its model to a healthy worker and pass the answer on.

    app         Wrapper: the FastAPI app (auth, checks, routing, /v1/models, /health)
    hop         the pooled client to workers: instance choice, failover, timeouts, passing bytes on
    auth        gateway API keys
    key_digest  python3 -m wrapper.key_digest: a key's SHA-256 for key_sha256
    supervisor  several processes on one port
    cli         main_openai_wrapper_v2.py
"""
from .app import Wrapper
from .cli import main

__all__ = ["Wrapper", "main"]
