"""Settings: env.yaml, overridden by the standard environment variables.

Loaded once at start-up by the entry scripts; nothing here runs at import.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "env.yaml"


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class ConfigError(Exception):
    """A settings file or variable is wrong; the message names the key and the source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ConsulSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8500, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    token: SecretStr | None = None  # secrets print as ********** wherever settings are shown
    verify: bool = True
    stale: bool = False  # the wrapper's catalog reads may be answered by any server, not only the leader

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class TimeoutSettings(_Section):
    connect: float = Field(2.0, gt=0)
    first_byte: float = Field(300.0, gt=0)  # a worker answers JSON only when the whole answer is made
    idle: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class ApiKey(_Section):
    key: SecretStr = Field(min_length=8)
    models: list[str] | None = None  # None: every model
    name: str | None = None


class LimitSettings(_Section):
    """What a request may ask for; the wrapper and every worker enforce the same limits."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_embedding_inputs: int = Field(2048, ge=1)
    max_n: int = Field(128, ge=1)  # OpenAI's own maximum


class WrapperSettings(_Section):
    balancer: Literal["random", "least_in_flight"] = "random"
    max_attempts: int = Field(3, ge=1, le=10)
    cooldown: float = Field(5.0, ge=0)
    timeouts: TimeoutSettings = TimeoutSettings()
    max_connections: int = Field(1000, ge=1)
    api_keys: list[ApiKey] = []
    api_keys_file: str | None = None
    consul_wait: str = "30s"
    consul_min_interval: float = Field(0.1, ge=0)
    empty_catalog_grace: float = Field(30.0, ge=0)
    drain_seconds: float = Field(10.0, ge=0)
    processes: int = Field(1, ge=1, le=64)


class WorkerSettings(_Section):
    check_interval: str = "1s"
    check_timeout: str = "1s"
    deregister_after: str = "1m"
    drain_seconds: float = Field(10.0, ge=0)
    register_attempts: int = Field(5, ge=1)
    keepalive_interval: float = Field(3.0, gt=0)
    secret: SecretStr | None = None
    max_concurrency: int | None = Field(None, ge=1)
    max_queue: int = Field(64, ge=0)


class UpstreamSettings(_Section):
    api_base: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None
    timeout: float = Field(600.0, gt=0)


class Settings(_Section):
    consul: ConsulSettings = ConsulSettings()
    limits: LimitSettings = LimitSettings()
    wrapper: WrapperSettings = WrapperSettings()
    worker: WorkerSettings = WorkerSettings()
    openai: UpstreamSettings = UpstreamSettings()
    source: str = Field("<defaults>", exclude=True)


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"key '{key}': {error['msg']}"


def _consul_addr(value: str) -> dict[str, Any]:
    """Parse CONSUL_HTTP_ADDR the way Consul's own CLI does: host:port or scheme://host:port."""
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"CONSUL_HTTP_ADDR={value!r}: expected host:port or http(s)://host:port")
    default_port = 443 if parts.scheme == "https" else 8500
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"CONSUL_HTTP_ADDR={value!r}: the port is not a number") from None
    return {"scheme": parts.scheme, "host": parts.hostname, "port": port}


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    consul = dict(raw.get("consul") or {})
    if environ.get("CONSUL_HTTP_ADDR"):
        consul.update(_consul_addr(environ["CONSUL_HTTP_ADDR"]))
    if environ.get("CONSUL_HTTP_TOKEN"):
        consul["token"] = environ["CONSUL_HTTP_TOKEN"]
    if environ.get("CONSUL_HTTP_SSL_VERIFY"):
        consul["verify"] = environ["CONSUL_HTTP_SSL_VERIFY"].lower() not in ("0", "false", "no")
    upstream = dict(raw.get("openai") or {})
    if environ.get("OPENAI_BASE_URL"):
        upstream["api_base"] = environ["OPENAI_BASE_URL"]
    if environ.get("OPENAI_API_KEY"):
        upstream["api_key"] = environ["OPENAI_API_KEY"]
    worker = dict(raw.get("worker") or {})
    if environ.get("WORKER_SECRET"):
        worker["secret"] = environ["WORKER_SECRET"]
    out = dict(raw)
    for name, section in (("consul", consul), ("openai", upstream), ("worker", worker)):
        if section:
            out[name] = section
    return out


class _KeysFile(_Section):
    api_keys: list[ApiKey]


def load_api_keys(settings: Settings) -> list[ApiKey]:
    """The wrapper's keys: `wrapper.api_keys` plus those in `wrapper.api_keys_file` (relative to the config)."""
    keys = list(settings.wrapper.api_keys)
    if settings.wrapper.api_keys_file:
        path = Path(settings.source).parent / settings.wrapper.api_keys_file
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            keys += _KeysFile.model_validate(raw).api_keys
        except OSError as exc:
            raise ConfigError(f"{settings.source}: key 'wrapper.api_keys_file': cannot read {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    return keys


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (default: env.yaml beside the scripts) and apply the environment overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return Settings.model_validate({**_apply_environment(raw, environ), "source": str(path)})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
