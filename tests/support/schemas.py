"""The OpenAI spec kept in tests/spec/: response schemas to validate answers with, request schemas to check
what the spec accepts."""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"
OPENAPI = SPEC_DIR / "openai-subset.testing.openapi.yaml"


class Schemas:
    """Standalone JSON Schemas of OpenAI's responses, `tests/spec/schemas/NAME.schema.json`."""

    def __init__(self, directory: Path = SPEC_DIR / "schemas") -> None:
        if not directory.is_dir():
            raise FileNotFoundError(f"OpenAI schemas not found at {directory}")
        self.directory = directory
        self._cache: dict[str, jsonschema.protocols.Validator] = {}

    def validate(self, name: str, instance: dict) -> None:
        if name not in self._cache:
            schema = json.loads((self.directory / f"{name}.schema.json").read_text())
            cls = jsonschema.validators.validator_for(schema)
            self._cache[name] = cls(schema)
        self._cache[name].validate(instance)


class OpenAPISpec:
    """The component schemas of the OpenAPI document, e.g. `CreateCompletionRequest`, as validators."""

    URI = "urn:openai-spec"

    def __init__(self, path: Path = OPENAPI) -> None:
        self.path = path

    @cached_property
    def _registry(self) -> Registry:
        document = yaml.safe_load(self.path.read_text())
        return Registry().with_resource(self.URI, Resource.from_contents(document, default_specification=DRAFT202012))

    def accepts(self, component: str, instance: Any) -> bool:
        schema = {"$ref": f"{self.URI}#/components/schemas/{component}"}
        return jsonschema.Draft202012Validator(schema, registry=self._registry).is_valid(instance)
