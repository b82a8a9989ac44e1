"""wrapper.auth.KeyRing: who may call the wrapper, and which models each key may use, in process."""
from __future__ import annotations

import pytest

from common.errors import Unauthorized
from common.settings import ApiKey
from wrapper.auth import KeyRing

ALICE = ApiKey(key="sk-alice-0123456789", name="alice")
BOB = ApiKey(key="sk-bob-9876543210", name="bob", models=["small", "large"])
RING = KeyRing([ALICE, BOB])


def refused(authorization: str | None) -> Unauthorized:
    with pytest.raises(Unauthorized) as err:
        RING.authenticate(authorization)
    assert (err.value.status, err.value.type) == (401, "invalid_request_error")
    return err.value


def test_an_open_ring_lets_everyone_in_to_every_model():
    ring = KeyRing([])
    assert ring.open
    assert ring.authenticate(None) is None
    assert ring.authenticate("Bearer anything") is None
    assert KeyRing.allows(None, "any-model")


def test_a_ring_with_keys_is_not_open():
    assert not RING.open


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic c2stYWxpY2U=", "sk-alice-0123456789"])
def test_a_missing_key_is_401_missing_api_key(authorization):
    err = refused(authorization)
    assert err.code == "missing_api_key"
    assert "Authorization: Bearer" in err.message


@pytest.mark.parametrize("authorization", ["Bearer sk-wrong-0000000000", "Bearer sk-alice-012345678",
                                           "Bearer sk-alice-0123456789x", "Bearer SK-ALICE-0123456789"])
def test_a_wrong_key_is_401_invalid_api_key(authorization):
    err = refused(authorization)
    assert err.code == "invalid_api_key"
    assert "sk-" not in err.message  # the given key is not echoed back


@pytest.mark.parametrize("authorization, key", [("Bearer sk-alice-0123456789", ALICE),
                                                ("bearer sk-bob-9876543210", BOB),  # the scheme is case-insensitive
                                                ("Bearer  sk-bob-9876543210 ", BOB)])
def test_the_right_key_is_found(authorization, key):
    assert RING.authenticate(authorization) is key


def test_allows_follows_the_keys_models():
    assert KeyRing.allows(ALICE, "small") and KeyRing.allows(ALICE, "anything")  # no list: every model
    assert KeyRing.allows(BOB, "small") and KeyRing.allows(BOB, "large")
    assert not KeyRing.allows(BOB, "other")
    assert not KeyRing.allows(BOB, "Small")  # names match exactly
    assert not KeyRing.allows(ApiKey(key="sk-none-0123456789", models=[]), "small")  # an empty list: none
