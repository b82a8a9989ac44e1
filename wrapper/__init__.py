"""The wrapper side: route each request by its model to a healthy worker and pass the answer on.

    app         Wrapper: the FastAPI app (auth, checks, routing, /v1/models, /health)
    hop         the pooled client to workers: instance choice, failover, timeouts, passing bytes on
    auth        gateway API keys
    supervisor  several processes on one port
    cli         main_openai_wrapper_v2.py
"""
from .app import Wrapper
from .cli import main

__all__ = ["Wrapper", "main"]
