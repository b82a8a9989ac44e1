"""Cut standalone JSON Schema files out of OpenAI's OpenAPI document, for tests/spec/schemas.

    python3 scripts/extract_openai_schema.py /path/to/openapi.full.json Response ResponseStreamEvent

Writes tests/spec/schemas/NAME.schema.json for each NAME: the component with every schema it refers to,
transitively, under `$defs` (OpenAPI 3.1 schemas are JSON Schema 2020-12 already). Run by hand when the
spec changes; the tests read only the files written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PREFIX = "#/components/schemas/"
OUT = Path(__file__).resolve().parent.parent / "tests" / "spec" / "schemas"


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"][len(PREFIX):]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace(PREFIX, "#/$defs/") if k == "$ref" else _rewrite(v)) for k, v in node.items()
                if k not in ("x-oaiMeta", "example")}
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def standalone(components: dict[str, Any], name: str) -> dict[str, Any]:
    wanted, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in wanted:
            wanted.add(current)
            todo.extend(_refs(components[current]))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"#/$defs/{name}",
            "$defs": {n: _rewrite(components[n]) for n in sorted(wanted)}}


def main(spec: str, *names: str) -> None:
    components = json.loads(Path(spec).read_text())["components"]["schemas"]
    for name in names:
        (OUT / f"{name}.schema.json").write_text(json.dumps(standalone(components, name), indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
