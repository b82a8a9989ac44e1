"""Settings: env.yaml, overridden by the standard environment variables.

Loaded once at start-up by the entry scripts; nothing here runs at import.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

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
    stale: bool = True  # the wrapper's catalog reads may be answered by any server, not only the leader

    # a stale answer from a server out of touch with the leader longer than this (X-Consul-LastContact, in
    # seconds), or knowing no leader, is read again from the leader
    max_stale: float = Field(5.0, gt=0)

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class TimeoutSettings(_Section):
    connect: float = Field(2.0, gt=0)
    first_byte: float = Field(300.0, gt=0)  # a worker answers JSON only when the whole answer is made
    idle: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class Budget(_Section):
    """A token budget per calendar day or month (UTC)."""

    tokens: int = Field(ge=1)
    per: Literal["day", "month"]


class Limits(_Section):
    """A key's limits for one model (ApiKey.model_limits), on top of the key's own; each optional."""

    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    budget: Budget | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.max_concurrent, self.budget))


class ApiKey(_Section):
    """A gateway key, given as the key itself or as its SHA-256 digest (so a keys file need not hold keys)."""

    key: SecretStr | None = Field(None, min_length=8)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] | None = None  # None: every model
    name: str | None = None
    # limits (wrapper/limits.py), each optional: absent = unlimited
    rpm: int | None = Field(None, ge=1)  # requests per minute
    tpm: int | None = Field(None, ge=1)  # tokens (prompt + completion) per minute
    max_concurrent: int | None = Field(None, ge=1)
    budget: Budget | None = None
    admin: bool = False  # may read /status, /status.json and /admin/usage
    # model name or fnmatch glob -> limits for this key's use of that model (the first match applies)
    model_limits: dict[Annotated[str, Field(min_length=1)], Limits] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of 'key' and 'key_sha256'")
        return self

    @property
    def digest(self) -> bytes:
        """SHA-256 of the key: what the wrapper keeps and compares."""
        if self.key_sha256 is not None:
            return bytes.fromhex(self.key_sha256)
        assert self.key is not None  # _one_form
        return key_digest(self.key.get_secret_value())

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.max_concurrent, self.budget))


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class LimitSettings(_Section):
    """What a client may send and hold; the wrapper and every worker enforce the same limits."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line + headers
    header_timeout: float = Field(10.0, gt=0)  # from a connection's opening or a request's first byte
    body_timeout: float = Field(30.0, gt=0)  # between two reads of a body
    max_connections: int = Field(2048, ge=1)  # client connections served at once, per process
    max_embedding_inputs: int = Field(2048, ge=1)  # OpenAI's own maximum
    max_n: int = Field(128, ge=1)  # OpenAI's own maximum
    max_messages: int = Field(10_000, ge=1)  # OpenAI states none
    max_prompts: int = Field(2048, ge=1)  # a completion's prompt array; OpenAI states none
    # arrays and objects in one body, counted on the raw bytes before parsing: parsed, a 4 MiB body of
    # empty arrays would take ~150 MiB
    max_json_containers: int = Field(100_000, ge=100)
    # a multipart upload (audio to transcribe, images to edit), files and fields together: OpenAI's 25 MB
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_upload_parts: int = Field(64, ge=1)  # files plus fields in one multipart body


class RetrySettings(_Section):
    """When a failed attempt is tried again (on another instance if there is one)."""

    budget: float = Field(0.2, ge=0)  # retries may add this share of the requests of the last 10 s...
    min_per_second: float = Field(10.0, ge=0)  # ...plus this many a second, so a quiet wrapper still retries
    backoff_min: float = Field(0.01, ge=0)  # seconds, jittered, before trying the same instance again
    backoff_max: float = Field(0.05, ge=0)
    safe: bool = True  # retry failures where the worker cannot have started the work
    after_send: bool = True  # retry failures after the request was sent (the work may be done twice)

    @model_validator(mode="after")
    def _backoff_range(self) -> RetrySettings:
        if self.backoff_min > self.backoff_max:
            raise ValueError("backoff_min must not exceed backoff_max")
        return self


NonEmpty = Annotated[str, Field(min_length=1)]


class AffinitySettings(_Section):
    """The `affinity` balancer (docs/routing.md)."""

    epsilon: float = Field(0.25, ge=0)  # a remembered key's instance may hold (1 + epsilon) x its share (+ keep_slack)
    max_keys: int = Field(100_000, ge=1)  # keys whose last instance is remembered (LRU), per wrapper process
    vnodes: int = Field(40, ge=1, le=1000)  # ring points per instance and unit of weight
    prompt_chars: int = Field(2048, ge=1)  # a completion prompt's leading characters that form its key
    place_epsilon: float = Field(0.0, ge=0)  # the bound for placing a key that has no cache yet (new or moving)
    keep_slack: int = Field(1, ge=0)  # requests above the epsilon bound a remembered key's instance may hold


class WrapperSettings(_Section):
    balancer: Literal["random", "least_in_flight", "affinity"] = "random"
    max_attempts: int = Field(3, ge=1, le=10)
    cooldown: float = Field(5.0, ge=0)
    timeouts: TimeoutSettings = TimeoutSettings()
    retries: RetrySettings = RetrySettings()
    max_answer_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # a worker's JSON answer; larger is a 502
    max_connections: int = Field(1000, ge=1)
    api_keys: list[ApiKey] = []
    api_keys_file: str | None = None
    consul_wait: str = "30s"
    consul_min_interval: float = Field(0.1, ge=0)
    empty_catalog_grace: float = Field(30.0, ge=0)
    drain_seconds: float = Field(10.0, ge=0)
    processes: int = Field(1, ge=1, le=64)
    # model name or fnmatch glob -> the Consul services allowed to serve it (svc_mgr/routes.py)
    routes: dict[NonEmpty, list[NonEmpty]] = {}
    affinity: AffinitySettings = AffinitySettings()
    # public name -> the registered model(s) that serve it (several: a group, spread across them)
    aliases: dict[NonEmpty, Annotated[list[NonEmpty], Field(min_length=1)]] = {}
    # model or public name -> models tried in order when it has no healthy instance or failed before answering
    fallbacks: dict[NonEmpty, list[NonEmpty]] = {}
    answer_public_name: bool = True  # an alias's answer names the public name in `model` (else the served one)
    # API keys kept in Consul's KV store under this prefix (wrapper/key_watch.py); null: not watched
    keys_consul_prefix: str | None = None
    rate_window: float = Field(60.0, gt=0)  # seconds of the "minute" of rpm/tpm (shorter only for tests)
    usage_days: int = Field(30, ge=1)  # hourly usage figures are kept this many days
    # the wrapper's own Consul service (wrapper/gateway.py), never routed to; null: not registered
    gateway_service: Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")] | None = (
        "openai-api-wrapper-gateway")  # a DNS label, as Consul wants service names


class WorkerSettings(_Section):
    check_interval: str = "1s"
    check_timeout: str = "1s"
    deregister_after: str = "1m"
    drain_seconds: float = Field(10.0, ge=0)
    register_attempts: int = Field(5, ge=1)
    keepalive_interval: float = Field(3.0, gt=0)
    secret: SecretStr | None = Field(None, min_length=8)  # an empty secret would let every caller in
    max_concurrency: int | None = Field(None, ge=1)
    max_queue: int = Field(64, ge=0)


class UpstreamSettings(_Section):
    api_base: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None
    timeout: float = Field(600.0, gt=0)


class SecuritySettings(_Section):
    strict: bool = False  # refuse to start without API keys / worker secret (--require-auth)


class MetricsSettings(_Section):
    """Prometheus metrics at GET /metrics on the wrapper and the workers (docs/observability.md)."""

    enabled: bool = True
    server_timing: bool = True  # the wrapper's Server-Timing header: its own time and the worker's, per request


class TracingSettings(_Section):
    """OpenTelemetry export of spans (traceparent is passed on whether or not spans are exported)."""

    otlp_endpoint: str | None = None  # OTLP/HTTP base URL, e.g. http://127.0.0.1:4318; None: no export
    service_name: str | None = None  # default: openai-api-wrapper / openai-api-wrapper-worker


class RedisSettings(_Section):
    """Where the wrapper replicas share their rate-limit and usage counters (wrapper/limits.py)."""

    url: SecretStr | None = None  # redis://host:port/db; null: counters in each process's memory
    fail_closed: bool = False  # Redis unreachable: 503 instead of letting requests through
    timeout: float = Field(0.25, gt=0)  # seconds per Redis call (connect or answer) before it counts as down
    retry_interval: float = Field(1.0, gt=0)  # seconds between checks whether an unreachable Redis is back
    prefix: str = "oaw:"  # of every Redis key the wrapper writes


class Settings(_Section):
    consul: ConsulSettings = ConsulSettings()
    limits: LimitSettings = LimitSettings()
    wrapper: WrapperSettings = WrapperSettings()
    worker: WorkerSettings = WorkerSettings()
    openai: UpstreamSettings = UpstreamSettings()
    security: SecuritySettings = SecuritySettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    redis: RedisSettings = RedisSettings()
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
    redis = dict(raw.get("redis") or {})
    if environ.get("REDIS_URL"):
        redis["url"] = environ["REDIS_URL"]
    out = dict(raw)
    for name, section in (("consul", consul), ("openai", upstream), ("worker", worker), ("redis", redis)):
        if section:
            out[name] = section
    return out


class _KeysFile(_Section):
    api_keys: list[ApiKey]


def load_api_keys(settings: Settings) -> list[ApiKey]:
    """The wrapper's keys: `wrapper.api_keys` plus those in `wrapper.api_keys_file` (relative to the config)."""
    keys = [(f"{settings.source}: key 'wrapper.api_keys.{i}'", k) for i, k in enumerate(settings.wrapper.api_keys)]
    if settings.wrapper.api_keys_file:
        path = Path(settings.source).parent / settings.wrapper.api_keys_file
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            keys += [(f"{path}: key 'api_keys.{i}'", k) for i, k in enumerate(_KeysFile.model_validate(raw).api_keys)]
        except OSError as exc:
            raise ConfigError(f"{settings.source}: key 'wrapper.api_keys_file': cannot read {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    _refuse_duplicates(keys)
    return [k for _, k in keys]


def _refuse_duplicates(keys: list[tuple[str, ApiKey]]) -> None:
    """A key listed twice is a mistake: which entry's models would apply?"""
    seen: dict[bytes, str] = {}
    for place, key in keys:
        if key.digest in seen:
            raise ConfigError(f"{place}: the same API key as {seen[key.digest]}")
        seen[key.digest] = place


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
