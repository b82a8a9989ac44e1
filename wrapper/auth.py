"""Gateway API keys: who may call the wrapper, and which models each key may use. Keys are kept as
SHA-256 digests only (`python3 -m wrapper.key_digest` prints one for `key_sha256`)."""
from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Iterable, Sequence

from common.errors import Unauthorized
from common.settings import ApiKey, key_digest


class KeyRing:
    def __init__(self, keys: Sequence[ApiKey], watched: bool = False) -> None:
        # digest -> (digest, key): one dict lookup per request, whatever the number of keys
        self._keys = {k.digest: (k.digest, k) for k in keys}
        self._configured = dict(self._keys)
        self._watched = watched  # keys also come from Consul KV (wrapper/key_watch.py): never open

    @property
    def open(self) -> bool:
        return not self._keys and not self._watched

    def replace_watched(self, keys: Iterable[ApiKey]) -> None:
        """The keys found in Consul KV now, beside the configured ones (which win a clash): one swap of
        the dict, so a request sees either the old keys or the new ones."""
        self._keys = {**{k.digest: (k.digest, k) for k in keys}, **self._configured}

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key behind an `Authorization: Bearer ...` header; None when the wrapper runs open."""
        if self.open:
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
        if key is None or key.models is None or model in key.models:
            return True
        # `gpt-*`: an fnmatch glob, as in wrapper.routes; tried only when no name matched exactly
        return any(fnmatch.fnmatchcase(model, p) for p in key.models if "*" in p or "?" in p or "[" in p)
