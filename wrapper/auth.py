"""Gateway API keys: who may call the wrapper, and which models each key may use. Keys are kept as
SHA-256 digests only (`python3 -m wrapper.key_digest` prints one for `key_sha256`)."""
from __future__ import annotations

import hmac
from collections.abc import Sequence

from common.errors import Unauthorized
from common.settings import ApiKey, key_digest


class KeyRing:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        # digest -> (digest, key): one dict lookup per request, whatever the number of keys
        self._keys = {k.digest: (k.digest, k) for k in keys}

    @property
    def open(self) -> bool:
        return not self._keys

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key behind an `Authorization: Bearer ...` header; None when the wrapper runs open."""
        if not self._keys:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Missing API key. Send 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key")
        given = key_digest(token.strip())
        # the lookup hashes a digest, which tells a timing attacker nothing about a key; the comparison
        # of the digest itself is constant-time all the same
        stored, key = self._keys.get(given, (b"", None))
        if key is None or not hmac.compare_digest(given, stored):
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        return key

    @staticmethod
    def allows(key: ApiKey | None, model: str) -> bool:
        return key is None or key.models is None or model in key.models
