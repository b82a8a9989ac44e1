"""Issue #13's bench rows answer as the wrapper does, with real processes: a Consul agent, an EchoGen worker,
the wrapper served by granian relaying with pyreqwest (bench/candidate_wrapper.py) and a bare relay on
granian's RSGI with pyreqwest (bench/bare_relay.py), reached with the real openai SDK. A row that answered
wrongly, cut streams or lost the wrapper's checks would measure something else than the `wrapper` row."""
from __future__ import annotations

import sys

import openai

from tests.support.procs import free_port, get_json, post, wait_until
from tests.support.servers import Server, sdk_client, start_worker, unique_model

TEXT = "the candidates relay these words"


def start_module(procs, consul, module: str, *args: str) -> Server:
    port = free_port()
    proc = procs.start(f"{module}-{port}", [sys.executable, "-m", module, "127.0.0.1", str(port), *args],
                       env={"CONSUL_HTTP_ADDR": consul.addr})
    server = Server(proc, port)
    wait_until(lambda: get_json(server.url + "/health")[0] == 200, 30, f"{module} on {port}\n{proc.output()}")
    return server


def chat_and_stream(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": TEXT}])
    assert answer.choices[0].message.content == TEXT
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": TEXT}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split() == TEXT.split()
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_wrapper_on_granian_with_pyreqwest_answers_streams_and_checks_like_the_wrapper(procs, consul):
    model = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    wrapper = start_module(procs, consul, "bench.candidate_wrapper", "--server", "granian", "--client", "pyreqwest")
    with sdk_client(wrapper, model) as client:
        chat_and_stream(client, model)
    # the wrapper's own checks are there: a model nobody serves, a body that is not JSON
    status, _, body = post(wrapper.base_url + "/chat/completions",
                           {"model": "nobody-serves-this", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and b'"model_not_found"' in body
    status, _, body = post(wrapper.base_url + "/chat/completions", b"{not json")
    assert status == 400 and b'"invalid_request_error"' in body


def test_the_bare_relay_on_granian_rsgi_with_pyreqwest_relays_json_and_streams(procs, consul):
    model = unique_model()
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model)
    relay = start_module(procs, consul, "bench.bare_relay", "--route", f"{model}={worker.url}", "--server", "granian",
                         "--interface", "rsgi", "--client", "pyreqwest")
    with openai.OpenAI(base_url=relay.base_url, api_key="unused", max_retries=0, timeout=30) as client:
        chat_and_stream(client, model)
