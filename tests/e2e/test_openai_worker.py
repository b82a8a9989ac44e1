"""openai_worker.py end to end: a real OpenAI-compatible upstream (an EchoGen worker on loopback) behind
openai_worker.py, behind the wrapper, called with the openai SDK. OpenAIUpstreamGen against a mocked
upstream, in process: tests/unit/test_openai_upstream.py."""
from __future__ import annotations

import openai
import pytest

from generators.echo import unit_vector
from tests.support.procs import get_json, wait_until
from tests.support.servers import INSIDER, SECRET_ENV, routable, start_worker, unique_model

# ---- end to end: SDK -> wrapper -> openai_worker.py -> a real OpenAI-compatible server --------------

UP = unique_model("upstream")
PUBLIC = unique_model("public")
MISSING = unique_model("missing")
E2E_KEY = "sk-e2e-secret-9876543210"


@pytest.fixture(scope="module")
def upstream(module_procs, consul):
    return start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", UP,
                        "--svc-name", unique_model("upstream-svc"))


@pytest.fixture(scope="module")
def relay_worker(module_procs, consul, upstream):
    return start_worker(module_procs, consul, "(openai_worker.py takes no generator)",
                        "--models", f"{PUBLIC}={UP},{MISSING}=not-on-the-upstream",
                        "--svc-name", unique_model("relay-svc"), script="openai_worker.py",
                        env={"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": E2E_KEY})


@pytest.fixture(scope="module")
def client(relay_worker, wrapper):
    wait_until(lambda: routable(wrapper, PUBLIC), 10, f"{PUBLIC} to be routable")
    with openai.OpenAI(base_url=wrapper.base_url, api_key="unused", max_retries=0) as c:
        yield c


def test_e2e_chat_json_and_stream(client):
    text = "relayed  through two  hops"
    whole = client.chat.completions.create(model=PUBLIC, messages=[{"role": "user", "content": text}])
    assert whole.choices[0].message.content == text
    assert whole.model == UP  # the upstream's bytes, untouched: it names the model it ran (OpenAI does too)
    assert whole.usage.completion_tokens == 4
    chunks = list(client.chat.completions.create(model=PUBLIC, messages=[{"role": "user", "content": text}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == len(text.split())
    assert chunks[-1].usage.completion_tokens == 4


def test_e2e_completions_and_embeddings(client):
    assert client.completions.create(model=PUBLIC, prompt="say this").choices[0].text == "say this"
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=PUBLIC, prompt="a b c", stream=True))
    assert streamed == "a b c"
    floats = client.embeddings.create(model=PUBLIC, input=["one", "two"], encoding_format="float")
    assert floats.data[1].embedding == pytest.approx(unit_vector("two"))
    packed = client.embeddings.create(model=PUBLIC, input="one")  # the SDK asks for base64
    assert packed.data[0].embedding == pytest.approx(unit_vector("one"), abs=1e-6)


def test_e2e_upstream_404_passes_through(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model=MISSING, messages=[{"role": "user", "content": "x"}])
    assert err.value.response.json()["error"]["code"] == "model_not_found"
    assert "not-on-the-upstream" in err.value.message  # the upstream's own message


def test_e2e_the_key_is_never_logged(client, relay_worker):
    client.chat.completions.create(model=PUBLIC, messages=[{"role": "user", "content": "x"}])
    assert E2E_KEY not in relay_worker.proc.output()


def test_e2e_models_are_discovered_without_models_option(module_procs, consul, upstream):
    discovering = start_worker(module_procs, consul, "(openai_worker.py takes no generator)",
                               "--svc-name", unique_model("discovering-svc"), script="openai_worker.py",
                               env={"OPENAI_BASE_URL": upstream.base_url, **SECRET_ENV})
    status, health = get_json(discovering.url + "/health", INSIDER)  # models: only with the secret
    assert (status, health["models"]) == (200, [UP])
