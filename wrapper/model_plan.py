"""Aliases and fallbacks (wrapper.aliases, wrapper.fallbacks): which registered models may serve a
requested name, in which order, and under which name the answer goes back (docs/routing.md).

Only names that have an alias or fallbacks get a plan; every other request takes the plain path and
pays for none of this."""
from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from common import wire
from common.errors import OpenAIError, model_not_found
from common.settings import WrapperSettings

from .hop import Attempt, Hop

SERVED_MODEL_HEADER = "X-Served-Model"  # the registered model that served an aliased or fallen-back request


@dataclass(frozen=True, slots=True)
class Target:
    model: str  # the registered model the request is sent to
    name: str  # the name it was listed under (a public name or the model itself): the key must allow it


class ModelPlan:
    def __init__(self, settings: WrapperSettings) -> None:
        self.aliases = {name: tuple(models) for name, models in settings.aliases.items()}
        self.fallbacks = {name: tuple(models) for name, models in settings.fallbacks.items()}
        self.answer_public_name = settings.answer_public_name

    def __contains__(self, name: str) -> bool:
        return name in self.aliases or name in self.fallbacks

    def public_names(self) -> list[str]:
        return sorted(self.aliases)

    def _targets(self, name: str, key: bytes | None) -> list[Target]:
        models = self.aliases.get(name)
        if models is None:
            return [Target(name, name)]
        # a group: its models in an order that is stable for a conversation (affinity) and spread over them
        start = key[0] % len(models) if key else random.randrange(len(models))
        return [Target(m, name) for m in models[start:] + models[:start]]

    def chain(self, name: str, key: bytes | None, allows: Callable[[str], bool]) -> list[Target]:
        """`name`'s own targets, then its fallbacks' (a fallback's own fallbacks are not followed), leaving
        out the fallbacks the caller's key may not use."""
        chain = self._targets(name, key)
        for source in (name, *self.aliases.get(name, ())):
            for fallback in self.fallbacks.get(source, ()):
                if allows(fallback):
                    chain += self._targets(fallback, key)
        seen: set[str] = set()
        return [t for t in chain if not (t.model in seen or seen.add(t.model))]  # type: ignore[func-returns-value]

    def answer_name(self, target: Target) -> str | None:
        """The name to write into the answer's `model` field, or None to leave it as the worker wrote it."""
        if self.answer_public_name and target.name != target.model:
            return target.name
        return None


class Reroute:
    """One request's plan: the chain, and the parsed body to re-send under each target model's name."""

    def __init__(self, requested: str, chain: Sequence[Target], body: dict[str, Any], raw: bytes) -> None:
        self.requested = requested
        self.chain = chain
        self.body = body
        self.raw = raw

    def body_for(self, model: str) -> bytes:
        if model == self.requested:
            return self.raw
        return orjson.dumps({**self.body, "model": model})

    async def open(self, hop: Hop, path: str, request_id: str, *, whole: bool,
                   key: bytes | None) -> tuple[Attempt, Target]:
        """The first target that answers: a target fails over to the next when it has no healthy instance
        or every attempt at it failed before the answer started (an error status: 429 or 5xx)."""
        last: OpenAIError | None = None
        for i, target in enumerate(self.chain):
            try:
                attempt = await hop.open(target.model, path, self.body_for(target.model), request_id,
                                         whole=whole, key=key)
            except OpenAIError as exc:
                last = exc
                continue
            if i + 1 < len(self.chain) and (attempt.status >= 500 or attempt.status == 429):
                attempt.close()
                continue
            return attempt, target
        if last is None or last.code == "model_not_found":
            raise model_not_found(self.requested)
        raise last


def renamed_json(content: bytes, name: str | None) -> bytes:
    return content if name is None else wire.rename_model(content, name)


async def renamed_stream(chunks: AsyncGenerator[bytes, None], name: str) -> AsyncGenerator[bytes, None]:
    """SSE chunks with `model` renamed in each event; an event split across two chunks waits for its end."""
    held = b""
    async for chunk in chunks:
        data = held + chunk
        cut = data.rfind(b"\n\n") + 2
        if cut == 1:  # no event boundary yet
            held = data
            continue
        held = data[cut:]
        yield wire.rename_model(data[:cut], name, count=0)
    if held:
        yield wire.rename_model(held, name, count=0)
