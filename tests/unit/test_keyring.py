"""wrapper.auth.KeyRing: who may call the wrapper, and which models each key may use, in process."""
from __future__ import annotations

import hashlib
import io

import pytest
from pydantic import ValidationError

from common.errors import Unauthorized
from common.settings import ApiKey, ConfigError, load_api_keys, load_settings
from wrapper import key_digest
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


# ---- keys kept as SHA-256 digests ------------------------------------------------------------------

CAROL_KEY = "sk-carol-5555555555"
CAROL_DIGEST = hashlib.sha256(CAROL_KEY.encode()).hexdigest()


def test_a_key_given_by_its_digest_authenticates_the_key():
    carol = ApiKey(key_sha256=CAROL_DIGEST, name="carol")
    ring = KeyRing([ALICE, carol])
    assert ring.authenticate(f"Bearer {CAROL_KEY}") is carol
    assert ring.authenticate("Bearer sk-alice-0123456789") is ALICE
    with pytest.raises(Unauthorized) as err:
        ring.authenticate(f"Bearer {CAROL_DIGEST}")  # the digest itself is not a key
    assert err.value.code == "invalid_api_key"


def test_an_uppercase_digest_is_the_same_key():
    assert KeyRing([ApiKey(key_sha256=CAROL_DIGEST.upper())]).authenticate(f"Bearer {CAROL_KEY}") is not None


def test_a_key_and_its_digest_are_the_same_digest():
    assert ApiKey(key=CAROL_KEY).digest == ApiKey(key_sha256=CAROL_DIGEST).digest == bytes.fromhex(CAROL_DIGEST)


@pytest.mark.parametrize("fields", [{}, {"key": CAROL_KEY, "key_sha256": CAROL_DIGEST}])
def test_an_entry_needs_exactly_one_of_key_and_key_sha256(fields):
    with pytest.raises(ValidationError, match="exactly one of 'key' and 'key_sha256'"):
        ApiKey(**fields)


@pytest.mark.parametrize("digest", ["abc", CAROL_DIGEST[:-1], CAROL_DIGEST + "0", "g" * 64])
def test_a_malformed_digest_is_refused(digest):
    with pytest.raises(ValidationError, match="key_sha256"):
        ApiKey(key_sha256=digest)


def write(path, text):
    path.write_text(text)
    return path


def test_a_digest_in_the_keys_file_is_loaded(tmp_path):
    write(tmp_path / "keys.yaml", f"api_keys:\n  - key_sha256: {CAROL_DIGEST}\n    name: carol\n")
    settings = load_settings(write(tmp_path / "env.yaml", "wrapper:\n  api_keys_file: keys.yaml\n"), environ={})
    ring = KeyRing(load_api_keys(settings))
    assert ring.authenticate(f"Bearer {CAROL_KEY}").name == "carol"


def test_a_bad_entry_in_the_keys_file_names_the_file_and_the_entry(tmp_path):
    keys = write(tmp_path / "keys.yaml", f"api_keys:\n  - key: {CAROL_KEY}\n    key_sha256: {CAROL_DIGEST}\n")
    settings = load_settings(write(tmp_path / "env.yaml", "wrapper:\n  api_keys_file: keys.yaml\n"), environ={})
    with pytest.raises(ConfigError) as err:
        load_api_keys(settings)
    assert str(keys) in str(err.value) and "api_keys.0" in str(err.value) and "key_sha256" in str(err.value)


def test_a_key_listed_in_the_config_and_by_digest_in_the_keys_file_names_both(tmp_path):
    keys = write(tmp_path / "keys.yaml", f"api_keys:\n  - key: sk-other-000000000\n  - key_sha256: {CAROL_DIGEST}\n")
    config = write(tmp_path / "env.yaml", f"wrapper:\n  api_keys:\n    - key: {CAROL_KEY}\n  api_keys_file: keys.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_api_keys(load_settings(config, environ={}))
    message = str(err.value)
    assert f"{keys}: key 'api_keys.1'" in message and f"{config}: key 'wrapper.api_keys.0'" in message
    assert CAROL_KEY not in message  # the key itself is never printed


def test_a_key_listed_twice_in_one_place_names_both_entries(tmp_path):
    config = write(tmp_path / "env.yaml", f"wrapper:\n  api_keys:\n    - key: {CAROL_KEY}\n      name: a\n"
                                          f"    - key_sha256: {CAROL_DIGEST}\n      name: b\n")
    with pytest.raises(ConfigError, match=r"wrapper\.api_keys\.1'.*wrapper\.api_keys\.0'"):
        load_api_keys(load_settings(config, environ={}))


def test_the_digest_helper_prints_what_key_sha256_expects(capsys):
    assert key_digest.main([], io.StringIO(CAROL_KEY + "\n")) == 0  # as `echo KEY |` sends it
    assert capsys.readouterr().out.strip() == CAROL_DIGEST
    assert key_digest.main([], io.StringIO("")) == 2
    assert key_digest.main(["extra"], io.StringIO(CAROL_KEY)) == 2
