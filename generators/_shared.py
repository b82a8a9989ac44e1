"""Helpers several adapters share (private: adapters import this, never each other)."""
from __future__ import annotations

from typing import Any

from common.errors import InvalidRequest


def text_inputs(inputs: list[Any]) -> list[str]:
    """The inputs as strings; token arrays are refused: they are tokens of OpenAI's tokenizer, not this model's."""
    if not all(isinstance(i, str) for i in inputs):
        raise InvalidRequest("This model takes text inputs, not token arrays.", param="input", code="invalid_value")
    return list(inputs)
