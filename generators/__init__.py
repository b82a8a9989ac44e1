"""Model adapters. Subclass `Generator` to wrap a new model or API."""
from .base import Delta, Embeddings, Generator, Output, ToolCall, ToolCallDelta, Usage

__all__ = ["Delta", "Embeddings", "Generator", "Output", "ToolCall", "ToolCallDelta", "Usage"]
