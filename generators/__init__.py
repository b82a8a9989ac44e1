"""Model adapters. Subclass `Generator` to wrap a new model or API (`ProxyGenerator` to relay one)."""
from common.wire import Capability

from .base import (
    ACCEPTED,
    Delta,
    Embeddings,
    Forwarded,
    Generator,
    Output,
    ProxyGenerator,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["ACCEPTED", "Capability", "Delta", "Embeddings", "Forwarded", "Generator", "Output", "ProxyGenerator",
           "ToolCall", "ToolCallDelta", "Usage"]
