"""The affinity balancer's key for one request (docs/routing.md: the key order)."""
from __future__ import annotations

from typing import Any

import xxhash

from common import wire

SESSION_HEADER = "x-session-id"


def affinity_key(session_id: str | None, body: dict[str, Any], prompt_chars: int) -> bytes | None:
    """A 16-byte digest of what identifies the request's conversation: the X-Session-ID header, else the
    body's own fields (common.wire.affinity_source); None if there is nothing to key on."""
    source = b"session\0" + session_id.encode() if session_id else wire.affinity_source(body, prompt_chars)
    if source is None:
        return None
    return xxhash.xxh3_128_digest(source)  # the same in every replica (not Python's salted hash())
