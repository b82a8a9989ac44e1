"""Gateway API keys: who may call the wrapper, and which models each key may use."""
from __future__ import annotations

import hmac
from collections.abc import Sequence

from common.errors import Unauthorized
from common.settings import ApiKey


class KeyRing:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = [(k.key.get_secret_value().encode(), k) for k in keys]

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
        given = token.strip().encode()
        found: ApiKey | None = None
        for secret, key in self._keys:  # compare with every key, in constant time each
            if hmac.compare_digest(given, secret):
                found = key
        if found is None:
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        return found

    @staticmethod
    def allows(key: ApiKey | None, model: str) -> bool:
        return key is None or key.models is None or model in key.models
