"""Auth on every hop: gateway API keys, the worker secret, Consul ACLs; and what the logs may hold."""
from __future__ import annotations

import httpx
import pytest

from tests.support.procs import Consul, get_json, post, wait_until
from tests.support.servers import routable, start_worker, start_wrapper, unique_model

TEAM_KEY = "sk-team-a-0123456789"
ADMIN_KEY = "sk-admin-9876543210"
SECRET = "worker-shared-secret-42"
PROMPT_MARKER = "confidential-prompt-text-7f3a"


@pytest.fixture(scope="module")
def secured(module_procs, consul, tmp_path_factory):
    model_a, model_b = unique_model("team"), unique_model("other")
    config = tmp_path_factory.mktemp("auth") / "env.yaml"
    keys = config.parent / "keys.yaml"
    keys.write_text(f"api_keys:\n  - key: {ADMIN_KEY}\n    name: admin\n")
    config.write_text(f"wrapper:\n  api_keys:\n    - key: {TEAM_KEY}\n      models: [{model_a}]\n"
                      f"  api_keys_file: keys.yaml\n")
    env = {"WORKER_SECRET": SECRET}
    # DEBUG: the per-request lines that carry the request id are DEBUG (they cost throughput at INFO)
    worker = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", f"{model_a},{model_b}",
                          "--log-level", "debug", env=env)
    wrapper = start_wrapper(module_procs, consul, "--config", str(config), "--log-level", "debug", env=env)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    wait_until(lambda: routable(wrapper, model_a, admin) and routable(wrapper, model_b, admin), 5, "routable")
    return wrapper, worker, model_a, model_b


def chat(wrapper, model, key=None, extra_headers=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return post(wrapper.base_url + "/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": f"hello {PROMPT_MARKER}"}]},
                {**headers, **(extra_headers or {})})


def error(body: bytes) -> dict:
    return httpx.Response(200, content=body).json()["error"]


def test_missing_or_wrong_key_is_401(secured, schemas):
    wrapper, _, model_a, _ = secured
    status, _, body = chat(wrapper, model_a)
    assert status == 401 and error(body)["code"] == "missing_api_key"
    status, _, body = chat(wrapper, model_a, "sk-wrong-key-000000")
    assert status == 401 and error(body)["code"] == "invalid_api_key"
    schemas.validate("ErrorResponse", httpx.Response(200, content=body).json())
    assert get_json(wrapper.base_url + "/models")[0] == 401


def test_a_key_sees_and_uses_only_its_models(secured):
    wrapper, _, model_a, model_b = secured
    assert chat(wrapper, model_a, TEAM_KEY)[0] == 200
    status, _, body = chat(wrapper, model_b, TEAM_KEY)
    assert status == 404 and error(body)["code"] == "model_not_found"
    _, missing_body = chat(wrapper, "no-such-model", TEAM_KEY)[::2]
    assert error(body)["message"].replace(model_b, "X") == error(missing_body)["message"].replace("no-such-model", "X")
    listed = {m["id"] for m in get_json(wrapper.base_url + "/models", {"Authorization": f"Bearer {TEAM_KEY}"})[1]["data"]}
    assert model_a in listed and model_b not in listed
    assert get_json(wrapper.base_url + f"/models/{model_b}", {"Authorization": f"Bearer {TEAM_KEY}"})[0] == 404
    assert chat(wrapper, model_b, ADMIN_KEY)[0] == 200  # from the keys file


def test_worker_refuses_calls_without_the_secret(secured):
    _, worker, model_a, _ = secured
    body = {"model": model_a, "messages": [{"role": "user", "content": "direct"}]}
    status, _, raw = post(worker.base_url + "/chat/completions", body)
    assert status == 401 and error(raw)["code"] == "invalid_worker_secret"
    assert post(worker.base_url + "/chat/completions", body, {"X-Worker-Secret": "guess"})[0] == 401
    assert post(worker.base_url + "/chat/completions", body, {"X-Worker-Secret": SECRET})[0] == 200
    assert get_json(worker.url + "/health")[0] == 200  # Consul's check needs no secret


def test_request_id_ties_logs_and_no_secret_is_logged_even_at_debug(secured):
    wrapper, worker, model_a, _ = secured
    status, headers, _ = chat(wrapper, model_a, TEAM_KEY, {"X-Request-ID": "rid-trace-1234"})
    assert status == 200 and headers["x-request-id"] == "rid-trace-1234"
    status, headers, _ = chat(wrapper, model_a, TEAM_KEY)
    generated = headers["x-request-id"]
    wait_until(lambda: "rid-trace-1234" in worker.proc.output() and generated in worker.proc.output(), 5,
               "the worker to log the request ids")
    assert "rid-trace-1234" in wrapper.proc.output() and generated in wrapper.proc.output()
    for proc in (wrapper.proc, worker.proc):
        logs = proc.output()
        for secret in (TEAM_KEY, ADMIN_KEY, SECRET, PROMPT_MARKER):
            assert secret not in logs


def test_open_wrapper_and_secretless_worker_say_so_once(module_procs, consul, wrapper):
    worker = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", unique_model())
    assert wrapper.proc.output().count("no API keys configured") == 1
    assert worker.proc.output().count("no worker secret set") == 1


ACL_HCL = ('acl { enabled = true, default_policy = "deny", down_policy = "extend-cache", '
           'tokens { master = "root-token-1234", agent = "root-token-1234" } }')


def make_token(consul: Consul, name: str, rules: str) -> str:
    root = {"X-Consul-Token": "root-token-1234"}
    base = f"http://{consul.addr}/v1/acl"
    httpx.put(f"{base}/policy", headers=root, json={"Name": name, "Rules": rules}).raise_for_status()
    r = httpx.put(f"{base}/token", headers=root, json={"Policies": [{"Name": name}]})
    r.raise_for_status()
    return r.json()["SecretID"]


def test_consul_acl_default_deny(procs):
    consul = Consul(procs, extra_hcl=ACL_HCL, name="consul-acl")
    worker_token = make_token(consul, "worker", 'service "acl-echo" { policy = "write" }')
    wrapper_token = make_token(consul, "wrapper", 'service_prefix "" { policy = "read" }\n'
                                                  'node_prefix "" { policy = "read" }')
    model = unique_model()

    refused = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, "--svc-name", "acl-echo",
                           wait=False)
    assert refused.proc.popen.wait(30) == 1
    assert "refused the registration" in refused.proc.output() and "Traceback" not in refused.proc.output()

    port_worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, "--svc-name",
                               "acl-echo", env={"CONSUL_HTTP_TOKEN": worker_token}, wait=False)
    wait_until(lambda: any(s.endswith(f"-{port_worker.port}") for s in consul.services("root-token-1234")), 20,
               "the worker to register with its token")
    blind = start_wrapper(procs, consul)  # no token: sees nothing under default deny
    wrapper = start_wrapper(procs, consul, env={"CONSUL_HTTP_TOKEN": wrapper_token})
    wait_until(lambda: routable(wrapper, model), 5, "routable through the ACL'd agent")
    assert post(wrapper.base_url + "/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}]})[0] == 200
    assert not routable(blind, model)
