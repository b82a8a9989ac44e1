"""Whatever the client sends, the answer is an OpenAI-shaped error with the right status, never a 500."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.support.procs import post, wait_until
from tests.support.servers import routable, start_worker, unique_model

MODEL = unique_model()


@pytest.fixture(scope="module")
def url(module_procs, consul, wrapper):
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", MODEL)
    wait_until(lambda: routable(wrapper, MODEL), 5, "routable")
    return wrapper.base_url


def error_of(status, body, schemas):
    doc = json.loads(body)
    schemas.validate("ErrorResponse", doc)
    assert set(doc) == {"error"}
    return doc["error"]


@pytest.mark.parametrize("raw, param", [
    (b"", None),
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'"just a string"', None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "' + MODEL.encode() + b'"}', "messages"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": "hi"}', "messages"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user"}], "temperature": 99}', "temperature"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user"}], "n": 0}', "n"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user"}], "n": 100000}', "n"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user"}], "max_tokens": "ten"}', "max_tokens"),
])
def test_malformed_chat_bodies_are_400(url, schemas, raw, param):
    status, _, body = post(url + "/chat/completions", raw)
    assert status == 400, body
    err = error_of(status, body, schemas)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


@pytest.mark.parametrize("path, payload, param", [
    ("/completions", {"model": MODEL}, "prompt"),
    ("/completions", {"model": MODEL, "prompt": 5}, "prompt"),
    ("/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
    ("/completions", {"model": MODEL, "prompt": [[1, 2], "mixed"]}, "prompt"),
    ("/embeddings", {"model": MODEL}, "input"),
    ("/embeddings", {"model": MODEL, "input": [1, "two"]}, "input"),
    ("/embeddings", {"model": MODEL, "input": []}, "input"),
    ("/embeddings", {"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
])
def test_malformed_other_bodies_are_400(url, schemas, path, payload, param):
    status, _, body = post(url + path, payload)
    assert status == 400
    assert error_of(status, body, schemas)["param"] == param


def test_unknown_route_is_openai_404(url, schemas):
    r = httpx.get(url + "/nothing/here")
    assert r.status_code == 404
    assert error_of(r.status_code, r.content, schemas)["code"] == "unknown_url"


def test_wrong_method_is_openai_405(url, schemas):
    r = httpx.get(url + "/chat/completions")
    assert r.status_code == 405
    assert "detail" not in r.json()
    error_of(r.status_code, r.content, schemas)


def test_oversize_body_is_413(url, schemas):
    big = b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "' + b"x" * (5 << 20) + b'"}]}'
    status, _, body = post(url + "/chat/completions", big)
    assert status == 413
    assert error_of(status, body, schemas)["code"] == "request_too_large"


def test_too_many_embedding_inputs_is_400(url, schemas):
    status, _, body = post(url + "/embeddings", {"model": MODEL, "input": ["x"] * 3000})
    assert status == 400
    assert error_of(status, body, schemas)["param"] == "input"


def test_capability_the_generator_lacks_is_400(module_procs, consul, wrapper, schemas):
    model = unique_model("chat-only")
    start_worker(module_procs, consul, "tests.support.generators_for_tests.ChatOnlyGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    status, _, body = post(wrapper.base_url + "/embeddings", {"model": model, "input": "x"})
    assert status == 400
    err = error_of(status, body, schemas)
    assert err["type"] == "invalid_request_error" and err["code"] == "unsupported_capability"


def test_generator_crash_is_a_clean_500_without_details(module_procs, consul, wrapper, schemas):
    model = unique_model("broken")
    start_worker(module_procs, consul, "tests.support.generators_for_tests.BrokenGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    status, _, body = post(wrapper.base_url + "/chat/completions",
                           {"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert status == 500
    err = error_of(status, body, schemas)
    assert "secret internals" not in body.decode() and "Traceback" not in body.decode()
    assert err["type"] == "server_error"
