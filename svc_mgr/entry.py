"""How a worker's models are written into its Consul service entry, and read back.

A worker registers one service instance whose tags are the marker tag plus one `model=NAME` tag per
model it serves (tags have no length cap, unlike meta values, which Consul limits to 512 characters), and
one `caps=chat,responses,...` tag naming the endpoints (wire.Capability) all its models serve: one
Generator serves all of a worker's models, so one tag per instance keeps the entry compact. An entry
without it (a worker older than capabilities) serves chat, completions and embeddings.

Anyone who can write to Consul's catalog can register anything, so what an entry claims is checked
before the wrapper routes to it: a malformed entry is skipped (with one warning per service id), never
routed to and never allowed to break the watch that reads it.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from common.wire import LEGACY_CAPABILITIES, Capability

log = logging.getLogger(__name__)
T = TypeVar("T")

MARKER_TAG = "openai-api-wrapper"
MODEL_TAG_PREFIX = "model="
CAPS_TAG_PREFIX = "caps="

# Bounds on what one registration may claim; an entry beyond them is skipped, not truncated.
MAX_MODEL_NAME_LENGTH = 256  # characters of one model name (OpenAI's ids are far shorter)
MAX_MODELS_PER_INSTANCE = 1000  # models one instance may claim; more is a bug or an attack on the table
MAX_HOSTNAME_LENGTH = 253  # DNS's limit for a whole name
WEIGHT_META = "weight"  # service meta key of a worker's --weight (#14); absent means 1
MAX_WEIGHT = 100  # a weight beyond this is a typo; the balancers expand weights into lists of that length

# One DNS label (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def service_id(name: str, host: str, port: int) -> str:
    return f"{name}-{host}-{port}"


def http_base(address: str, port: int) -> str:
    """`http://ADDRESS:PORT`, an IPv6 address in brackets."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def model_tags(models: Iterable[str], capabilities: Iterable[Capability] | None = None) -> list[str]:
    """The entry's tags; without `capabilities`, none is claimed (read back as the legacy set)."""
    tags = [MARKER_TAG, *(MODEL_TAG_PREFIX + m for m in models)]
    if capabilities is not None:
        tags.append(CAPS_TAG_PREFIX + ",".join(sorted(capabilities)))
    return tags


_KNOWN_CAPABILITIES = {c.value: c for c in Capability}


def capabilities_from_tags(tags: Iterable[str]) -> frozenset[Capability]:
    """What the entry's `caps=` tags claim; names this wrapper does not know (a newer worker's) are
    ignored. No tag at all: the legacy set."""
    claimed: set[Capability] | None = None
    for tag in tags:
        if tag.startswith(CAPS_TAG_PREFIX):
            claimed = claimed or set()
            names = tag[len(CAPS_TAG_PREFIX):].split(",")
            claimed.update(_KNOWN_CAPABILITIES[n] for n in names if n in _KNOWN_CAPABILITIES)
    return LEGACY_CAPABILITIES if claimed is None else frozenset(claimed)


def models_from_tags(tags: Iterable[str]) -> tuple[str, ...]:
    return tuple(t[len(MODEL_TAG_PREFIX):] for t in tags if t.startswith(MODEL_TAG_PREFIX))


@dataclass(eq=False, slots=True)
class Instance:
    """One healthy worker as the wrapper sees it. Identity is the Consul service id."""

    id: str
    service: str
    address: str
    port: int
    models: tuple[str, ...]
    capabilities: frozenset[Capability] = LEGACY_CAPABILITIES  # the endpoints all its models serve
    base_url: str = field(init=False)
    in_flight: int = field(default=0, compare=False)
    cooled_until: float = field(default=0.0, compare=False)
    seen_since: float = field(default_factory=time.time, compare=False)  # when this wrapper read it (/status)
    last_error: tuple[float, str] | None = field(default=None, compare=False)  # (time.time(), error code)
    weight: int = 1  # its share relative to the model's other instances (worker --weight)

    def __post_init__(self) -> None:
        self.base_url = http_base(self.address, self.port)


class BadEntry(ValueError):
    """A registration the wrapper will not route to; the message says why."""


def valid_host(host: str) -> bool:
    """An IP address or a DNS name, and nothing else: no scheme, userinfo, port, path, query or spaces."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host[:-1] if host.endswith(".") else host  # a fully qualified name may end with a dot
        labels = name.split(".")
        # an all-digit last label is a malformed IP address (999.0.0.1), never a name
        return (0 < len(name) <= MAX_HOSTNAME_LENGTH and all(_DNS_LABEL.fullmatch(p) for p in labels)
                and not labels[-1].isdigit())
    # a zone id (fe80::1%eth0) would need escaping in a URL, and a worker is never registered with one
    return not (isinstance(address, ipaddress.IPv6Address) and address.scope_id)


def valid_model_name(name: str) -> bool:
    """Printable, no whitespace, 1 to MAX_MODEL_NAME_LENGTH characters."""
    return (0 < len(name) <= MAX_MODEL_NAME_LENGTH and name.isprintable()
            and not any(c.isspace() for c in name))


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadEntry(f"{what} is {value!r}, not a non-empty string")
    return value


class _Shared(Generic[T]):
    """One object per distinct value read lately, held by every instance that claims an equal one: 10,000
    instances of one model held 10,000 equal tuples of model names, and as many equal port numbers (an int
    above 256 is a new object each time it is decoded). Emptied when it outgrows `limit`, so that what
    registrations long gone claimed is not kept for good."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._values: dict[T, T] = {}

    def __call__(self, value: T) -> T:
        kept = self._values.get(value)
        if kept is None:
            if len(self._values) >= self._limit:
                self._values.clear()
            kept = self._values[value] = value
        return kept


_shared_ports: _Shared[int] = _Shared(4096)
_shared_models: _Shared[tuple[str, ...]] = _Shared(4096)


def _port(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 65535:  # bool is an int subclass: not a port
        raise BadEntry(f"port {value!r} is not a number from 1 to 65535")
    return _shared_ports(value)


def _weight(meta: Any) -> int:
    value = meta.get(WEIGHT_META) if isinstance(meta, dict) else None
    if value is None:
        return 1
    if not isinstance(value, str) or not value.isdigit() or not 1 <= int(value) <= MAX_WEIGHT:
        raise BadEntry(f"weight {str(value)[:20]!r} is not a whole number from 1 to {MAX_WEIGHT}")
    return int(value)


def _models(tags: list[Any]) -> tuple[str, ...]:
    models = models_from_tags(t for t in tags if isinstance(t, str))
    if len(models) > MAX_MODELS_PER_INSTANCE:
        raise BadEntry(f"it claims {len(models)} models, more than {MAX_MODELS_PER_INSTANCE}")
    for name in models:
        if not valid_model_name(name):
            raise BadEntry(f"model name {name[:40]!r}{'...' if len(name) > 40 else ''} is empty, longer than "
                           f"{MAX_MODEL_NAME_LENGTH} characters or holds whitespace or control characters")
    # a model tagged twice is one model; a name, and a list of them, is kept once however many instances serve it
    return _shared_models(tuple(dict.fromkeys(map(sys.intern, models))))


def parse_instance(entry: Any) -> Instance | None:
    """An Instance from one element of /v1/health/service/NAME; None if it is not ours; BadEntry if it
    is ours but malformed."""
    if not isinstance(entry, dict) or not isinstance(svc := entry.get("Service"), dict):
        return None
    tags = svc.get("Tags")
    if not isinstance(tags, list) or MARKER_TAG not in tags:
        return None
    node = entry.get("Node")
    address = svc.get("Address") or (node.get("Address") if isinstance(node, dict) else None) or "127.0.0.1"
    if not isinstance(address, str) or not valid_host(address):
        raise BadEntry(f"address {address!r} is not an IP address or a DNS name")
    return Instance(id=_text(svc.get("ID"), "the service id"),
                    service=sys.intern(_text(svc.get("Service"), "the service name")),
                    address=sys.intern(address), port=_port(svc.get("Port")), models=_models(tags),
                    capabilities=capabilities_from_tags(t for t in tags if isinstance(t, str)),

                    weight=_weight(svc.get("Meta")))


class EntryReader:
    """Reads health entries into Instances, skipping malformed ones with one warning per service id (a
    watch reads every entry again on each Consul update; the log should not repeat itself)."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()

    def __call__(self, entry: Any) -> Instance | None:
        try:
            return parse_instance(entry)
        except BadEntry as exc:
            svc = entry["Service"]  # parse_instance got this far, so both are dicts
            key = (str(svc.get("Service")), str(svc.get("ID")))
            if key not in self._warned:
                self._warned.add(key)
                log.warning("ignoring the Consul registration %r of service %r: %s", key[1], key[0], exc)
            return None


def instance_from_health(entry: Any) -> Instance | None:
    """An Instance from one element of /v1/health/service/NAME, or None if it is not ours or malformed."""
    try:
        return parse_instance(entry)
    except BadEntry:
        return None
