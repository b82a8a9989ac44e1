"""env.yaml loading: defaults, the standard environment overrides, and errors that name key and file."""
from __future__ import annotations

import pytest

from common.settings import ConfigError, load_settings, secret
from tests.support.config import config_error
from tests.support.procs import ROOT


def write(tmp_path, text):
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return path


def test_the_shipped_env_yaml_loads_with_defaults():
    settings = load_settings(ROOT / "env.yaml", environ={})
    assert settings.consul.address == "http://127.0.0.1:8500"
    assert settings.wrapper.balancer == "random"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "env.yaml"
    message = config_error(path, "wrapper:\n  balancr: random\n")
    assert str(path) in message and "wrapper.balancr" in message


def test_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "env.yaml"
    message = config_error(path, "consul:\n  port: eighty\n")
    assert str(path) in message and "consul.port" in message


def test_consul_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, "consul:\n  host: file-host\n  port: 1234\n  token: file-token\n")
    s = load_settings(path, environ={"CONSUL_HTTP_ADDR": "https://10.1.2.3:8501", "CONSUL_HTTP_TOKEN": "env-token"})
    assert (s.consul.scheme, s.consul.host, s.consul.port, secret(s.consul.token)) == ("https", "10.1.2.3", 8501, "env-token")
    assert "env-token" not in repr(s)  # secrets never print
    s = load_settings(path, environ={"CONSUL_HTTP_ADDR": "127.0.0.1:9500"})
    assert (s.consul.scheme, s.consul.host, s.consul.port, secret(s.consul.token)) == ("http", "127.0.0.1", 9500, "file-token")


def test_bad_consul_addr_is_named(tmp_path):
    with pytest.raises(ConfigError, match="CONSUL_HTTP_ADDR"):
        load_settings(write(tmp_path, ""), environ={"CONSUL_HTTP_ADDR": "ftp://x:1"})


def test_openai_upstream_environment_overrides(tmp_path):
    path = write(tmp_path, "openai:\n  api_base: http://file/v1\n")
    s = load_settings(path, environ={"OPENAI_BASE_URL": "http://env/v1", "OPENAI_API_KEY": "sk-env"})
    assert (s.openai.api_base, secret(s.openai.api_key)) == ("http://env/v1", "sk-env")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "absent.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "consul: [\n"), environ={})


def test_consul_client_uses_the_address_as_consul_parses_it(tmp_path, monkeypatch):
    from svc_mgr.consul_client import connect

    monkeypatch.setenv("CONSUL_HTTP_ADDR", "https://consul.example")
    settings = load_settings(write(tmp_path, ""))
    assert connect(settings.consul).http.base_uri == "https://consul.example:443"


def test_a_backoff_range_upside_down_names_the_section(tmp_path):
    path = tmp_path / "env.yaml"
    message = config_error(path, "wrapper:\n  retries:\n    backoff_min: 0.5\n    backoff_max: 0.1\n")
    assert str(path) in message and "wrapper.retries" in message and "backoff_min" in message


def test_the_hardening_settings_load_from_a_file(tmp_path):
    path = write(tmp_path, "wrapper:\n  max_answer_bytes: 2048\n  retries:\n    budget: 0\n    after_send: false\n"
                           "limits:\n  max_json_containers: 500\n")
    s = load_settings(path, environ={})
    assert (s.wrapper.max_answer_bytes, s.wrapper.retries.budget, s.wrapper.retries.after_send) == (2048, 0, False)
    assert s.limits.max_json_containers == 500
