"""Safe defaults: an open set-up says so once per missing setting, strict mode (--require-auth) refuses to
start open, API keys are kept and configured as SHA-256 digests, and /health tells outsiders nothing about
processes or models."""
from __future__ import annotations

import hashlib
import os
import subprocess

import openai
import pytest

from tests.support.procs import ROOT, free_port, get_json, python_script, wait_until
from tests.support.servers import routable, start_worker, start_wrapper, unique_model

KEY = "sk-digest-only-0123456789"
KEY_SHA256 = hashlib.sha256(KEY.encode()).hexdigest()
SECRET = "defaults-worker-secret-77"
STARTED = "Application startup complete"  # uvicorn's line, once per serving process


def run_entry(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """An entry script that is expected to exit by itself (bounded by a timeout)."""
    base = {k: v for k, v in os.environ.items() if k != "WORKER_SECRET"}
    return subprocess.run(python_script(script, "127.0.0.1", str(free_port()), *args), cwd=ROOT,
                          env={**base, "CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}", **(env or {})},
                          capture_output=True, text=True, timeout=60)


def the_error_line(out: subprocess.CompletedProcess) -> str:
    """Exit status 2, one `error:` line, before anything was served; returns the line."""
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "Traceback" not in out.stderr and "Started server process" not in out.stderr, out.stderr
    return errors[0]


def warnings(output: str, phrase: str) -> list[str]:
    return [line for line in output.splitlines() if phrase in line and " WARNING " in line]


# ---- say it loudly -----------------------------------------------------------------------------------

def test_an_open_set_up_warns_once_per_missing_setting(procs, consul):
    wrapper = start_wrapper(procs, consul, "--processes", "2")
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", unique_model())
    wait_until(lambda: wrapper.proc.output().count(STARTED) == 2, 30, "both wrapper processes to start")

    no_keys = warnings(wrapper.proc.output(), "no API keys configured")
    assert len(no_keys) == 1 and "wrapper.api_keys" in no_keys[0]
    for proc in (wrapper.proc, worker.proc):
        no_secret = warnings(proc.output(), "no worker secret set")
        assert len(no_secret) == 1 and "worker.secret" in no_secret[0] and "WORKER_SECRET" in no_secret[0]
    assert not warnings(worker.proc.output(), "no API keys configured")  # a worker takes no API keys


# ---- strict mode -------------------------------------------------------------------------------------

@pytest.mark.parametrize("keys, secret, strict_by, missing, present", [
    (False, False, "flag", ["wrapper.api_keys", "worker.secret"], []),
    (True, False, "flag", ["worker.secret"], ["wrapper.api_keys"]),
    (False, True, "config", ["wrapper.api_keys"], ["worker.secret"]),
])
def test_strict_wrapper_refuses_to_start_without_keys_or_secret(tmp_path, keys, secret, strict_by, missing, present):
    config = tmp_path / "env.yaml"
    config.write_text((f"wrapper:\n  api_keys:\n    - key_sha256: {KEY_SHA256}\n" if keys else "")
                      + ("security:\n  strict: true\n" if strict_by == "config" else ""))
    out = run_entry("main_openai_wrapper_v2.py", "--config", str(config),
                    *(["--require-auth"] if strict_by == "flag" else []),
                    env={"WORKER_SECRET": SECRET} if secret else None)
    line = the_error_line(out)
    assert "security.strict" in line and "--require-auth" in line
    assert all(name in line for name in missing) and not any(name in line for name in present), line


@pytest.mark.parametrize("script, args", [("template_worker.py", ["generators.echo.EchoGen"]),
                                          ("openai_worker.py", ["--models", "m"])])
def test_strict_worker_refuses_to_start_without_a_secret(consul, script, args):
    out = run_entry(script, *args, "--svc-name", "strict-refused", "--require-auth",
                    env={"CONSUL_HTTP_ADDR": consul.addr, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    line = the_error_line(out)
    assert "worker.secret" in line and "WORKER_SECRET" in line and "--require-auth" in line
    assert not any(s.startswith("strict-refused") for s in consul.services())


@pytest.fixture(scope="module")
def strict(module_procs, consul, tmp_path_factory):
    """A strict worker and wrapper, the wrapper's only key given by its digest in a keys file."""
    model = unique_model("strict")
    config = tmp_path_factory.mktemp("strict") / "env.yaml"
    (config.parent / "keys.yaml").write_text(f"api_keys:\n  - key_sha256: {KEY_SHA256}\n    name: digest-only\n")
    config.write_text("wrapper:\n  api_keys_file: keys.yaml\n")
    env = {"WORKER_SECRET": SECRET}
    worker = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", model, "--require-auth",
                          env=env)
    wrapper = start_wrapper(module_procs, consul, "--config", str(config), "--require-auth", env=env)
    wait_until(lambda: routable(wrapper, model, {"Authorization": f"Bearer {KEY}"}), 10, "routable")
    return wrapper, worker, model


def test_strict_mode_starts_with_keys_and_secret_and_warns_of_nothing(strict):
    wrapper, worker, _ = strict
    for proc in (wrapper.proc, worker.proc):
        assert proc.alive()
        assert not warnings(proc.output(), "no API keys") and not warnings(proc.output(), "no worker secret")


# ---- keys as digests ---------------------------------------------------------------------------------

def test_a_key_configured_by_its_digest_works_with_the_sdk(strict):
    wrapper, _, model = strict
    with openai.OpenAI(base_url=wrapper.base_url, api_key=KEY, max_retries=0, timeout=30) as client:
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "by digest"}])
        assert answer.choices[0].message.content == "by digest"
        assert model in {m.id for m in client.models.list()}
    for wrong in ("sk-digest-only-0123456780", KEY_SHA256):  # nor is the digest itself a key
        with (openai.OpenAI(base_url=wrapper.base_url, api_key=wrong, max_retries=0, timeout=30) as client,
              pytest.raises(openai.AuthenticationError) as err):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"


def test_a_key_listed_twice_stops_start_up_naming_the_file(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"api_keys:\n  - key_sha256: {KEY_SHA256}\n    name: again\n")
    config = tmp_path / "env.yaml"
    config.write_text(f"wrapper:\n  api_keys:\n    - key: {KEY}\n  api_keys_file: keys.yaml\n")
    line = the_error_line(run_entry("main_openai_wrapper_v2.py", "--config", str(config)))
    assert "the same API key" in line and str(keys) in line and "wrapper.api_keys.0" in line
    assert KEY not in line


# ---- /health -----------------------------------------------------------------------------------------

def test_health_shows_pid_and_models_only_with_the_secret(strict):
    wrapper, worker, model = strict
    for outsider in (None, {"X-Worker-Secret": "a-wrong-secret"}, {"X-Worker-Secret": ""}):
        status, health = get_json(wrapper.url + "/health", outsider)
        assert status == 200 and health["status"] == "ok" and "pid" not in health, health
        status, health = get_json(worker.url + "/health", outsider)  # Consul's check: 200, nothing more
        assert (status, health) == (200, {"status": "ok"})

    insider = {"X-Worker-Secret": SECRET}
    status, health = get_json(wrapper.url + "/health", insider)
    assert status == 200 and health["pid"] == wrapper.proc.pid
    status, health = get_json(worker.url + "/health", insider)
    assert status == 200 and health["models"] == [model] and isinstance(health["served"], int)
    assert routable(wrapper, model, {"Authorization": f"Bearer {KEY}"})  # Consul's check still passes
