"""#14 against real processes, with the openai SDK: a model alias and a fallback chain (wrapper.aliases,
wrapper.fallbacks), which never crosses what a key may use."""
from __future__ import annotations

import json

import openai
import pytest

from tests.support.procs import free_port, post, wait_until
from tests.support.routing_generators import served_by
from tests.support.servers import registered, routable, start_worker, start_wrapper, unique_model

WHO = "tests.support.routing_generators.WhoGen"
ALL_KEY = "sk-aliases-all-0123"
NARROW_KEY = "sk-aliases-narrow-0123"


@pytest.fixture(scope="module")
def gateway(module_procs, consul, tmp_path_factory):
    real, backup, broken, dead, never = (unique_model(p) for p in ("real", "backup", "broken", "dead", "never"))
    public = unique_model("gpt-4o-mini")
    start_worker(module_procs, consul, WHO, "--models", real, "--name", "real")
    start_worker(module_procs, consul, WHO, "--models", backup, "--name", "backup")
    start_worker(module_procs, consul, "tests.support.generators_for_tests.BrokenGen", "--models", broken)
    config = tmp_path_factory.mktemp("aliases") / "env.yaml"
    config.write_text(
        "wrapper:\n"
        f"  aliases: {{{public}: [{real}]}}\n"
        f"  fallbacks: {{{broken}: [{backup}], {dead}: [{never}, {public}], {never}: [{backup}]}}\n"
        "  api_keys:\n"
        f"    - key: {ALL_KEY}\n"
        f"    - key: {NARROW_KEY}\n"
        f"      models: [{broken}, {public}]\n")
    wrapper = start_wrapper(module_procs, consul, "--config", str(config))
    auth = {"Authorization": f"Bearer {ALL_KEY}"}
    wait_until(lambda: all(routable(wrapper, m, auth) for m in (real, backup, broken, public)), 10, "routable")
    models = {"real": real, "backup": backup, "broken": broken, "dead": dead, "never": never, "public": public}
    with registered(consul, "dead-svc", free_port(), dead):  # registered, but nothing listens there
        yield wrapper, models


def client(wrapper, key: str = ALL_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=wrapper.base_url, api_key=key, max_retries=0, timeout=30)


def hello(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


def test_an_alias_is_listed_and_answers_under_its_public_name(gateway):
    wrapper, m = gateway
    with client(wrapper) as sdk:
        assert m["public"] in {model.id for model in sdk.models.list()}
        assert sdk.models.retrieve(m["public"]).id == m["public"]
        raw = sdk.chat.completions.with_raw_response.create(**hello(m["public"]))
        answer = raw.parse()
        assert answer.model == m["public"] and served_by(answer.choices[0].message.content) == "real"
        assert raw.headers["x-served-model"] == m["real"]
        chunks = list(sdk.chat.completions.create(**hello(m["public"]), stream=True))
        assert chunks and all(chunk.model == m["public"] for chunk in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("[real]")


def test_a_fallback_serves_after_a_failed_first_attempt(gateway):
    wrapper, m = gateway
    with client(wrapper) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(**hello(m["broken"]))  # its worker answers 500
        answer = raw.parse()
        assert answer.model == m["backup"] and raw.headers["x-served-model"] == m["backup"]
        assert served_by(answer.choices[0].message.content) == "backup"


def test_a_fallback_chain_passes_unreachable_and_unknown_models(gateway):
    wrapper, m = gateway
    # dead: its only instance refuses connections; never: no instance at all (and its own fallbacks are not
    # followed); then the alias, answering under its public name
    with client(wrapper) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(**hello(m["dead"]))
        assert raw.headers["x-served-model"] == m["real"] and raw.parse().model == m["public"]


def test_a_fallback_never_crosses_what_a_key_may_use(gateway):
    wrapper, m = gateway
    with client(wrapper, NARROW_KEY) as sdk, pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(**hello(m["broken"]))  # backup is not this key's: the failure stands
    status, headers, body = post(wrapper.base_url + "/chat/completions", hello(m["broken"]),
                                 {"Authorization": f"Bearer {NARROW_KEY}"})
    served = {k.lower(): v for k, v in headers.items()}.get("x-served-model")
    assert status == 500 and json.loads(body)["error"]["type"] == "server_error" and served == m["broken"]
