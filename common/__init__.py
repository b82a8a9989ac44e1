"""The shared base both sides of the product stand on; it imports nothing of the project above it.

    settings  env.yaml + environment -> Settings (every section's type)
    errors    OpenAI's error types and `to_openai_error`, the one normaliser
    wire      OpenAI's wire shapes: request checks, response builders, SSE framing (the only module that knows them)
    media_wire, media_checks   the same for the media endpoints (audio, images, moderations, rerank, score)
    http      FastAPI/Starlette glue: the app with its direct hot routes, error responses, bounded bodies,
              the disconnect watch, `SSEResponse` (the one SSE writer)
    server    uvicorn on uvloop: start-up and shutdown order, a port shared by several processes
    cli       what every entry script's command line shares

Only settings and errors are imported here, so `import common` stays light.
"""
from .errors import OpenAIError, to_openai_error
from .settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "OpenAIError", "Settings", "load_settings", "to_openai_error"]
