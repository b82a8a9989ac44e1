"""The token usage of the answers the wrapper relays (metrics here; rate limits by tokens, #12, too).

    TokenUsage(prompt_tokens, completion_tokens)
    from_json_answer(content: bytes) -> TokenUsage | None
    StreamUsage().feed(chunk) for each relayed SSE chunk; then .usage: TokenUsage | None

The reading itself lives in common/usage.py, since workers count the tokens of their answers the same way."""
from __future__ import annotations

from common.usage import StreamUsage, TokenUsage, from_json_answer

__all__ = ["StreamUsage", "TokenUsage", "from_json_answer"]
