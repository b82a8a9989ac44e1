"""How a worker's models are written into its Consul service entry, and read back.

A worker registers one service instance whose tags are the marker tag plus one `model=NAME` tag per
model it serves (tags have no length cap, unlike meta values, which Consul limits to 512 characters).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MARKER_TAG = "openai-api-wrapper"
MODEL_TAG_PREFIX = "model="


def service_id(name: str, host: str, port: int) -> str:
    return f"{name}-{host}-{port}"


def model_tags(models: Iterable[str]) -> list[str]:
    return [MARKER_TAG, *(MODEL_TAG_PREFIX + m for m in models)]


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
    base_url: str = field(init=False)
    in_flight: int = field(default=0, compare=False)
    cooled_until: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.base_url = f"http://{host}:{self.port}"


def instance_from_health(entry: dict[str, Any]) -> Instance | None:
    """An Instance from one element of /v1/health/service/NAME, or None if it is not ours."""
    svc = entry.get("Service") or {}
    tags = svc.get("Tags") or []
    if MARKER_TAG not in tags:
        return None
    address = svc.get("Address") or (entry.get("Node") or {}).get("Address") or "127.0.0.1"
    return Instance(id=svc["ID"], service=svc["Service"], address=address, port=int(svc["Port"]),
                    models=models_from_tags(tags))
