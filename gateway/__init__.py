"""The HTTP side of the gateway.

    config       env.yaml + environment -> Settings
    wire         the OpenAI wire shapes (the only module that knows them)
    errors       OpenAIError and the one function that turns any failure into an OpenAI error
    http         Starlette glue shared by both apps
    worker_app   Worker: OpenAI endpoints in front of one Generator
    wrapper_app  Wrapper: auth, validation, routing by model
    relay        Hop: the pooled client to workers, failover, relaying
    auth, limits gateway API keys; per-worker concurrency
    server, cli  uvicorn start-up/shutdown order; the entry scripts' command lines

Only config and errors are imported here, so `import gateway.config` stays light and svc_mgr can use it.
"""
from .config import ConfigError, Settings, load_settings
from .errors import OpenAIError

__all__ = ["ConfigError", "OpenAIError", "Settings", "load_settings"]
