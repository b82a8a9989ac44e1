"""Cut standalone JSON Schema 2020-12 files out of OpenAI's OpenAPI document (run by hand when the spec
changes; the tests read only the files it writes):

    python -m tests.spec.extract_schemas PATH/TO/openapi.full.json NAME...

Each NAME (a component schema) becomes schemas/NAME.schema.json, holding it and every schema it refers
to under $defs; OpenAPI's `nullable: true` becomes a JSON Schema union with null."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PREFIX = "#/components/schemas/"
OUT = Path(__file__).resolve().parent / "schemas"


def _convert(node: Any, refs: set[str]) -> Any:
    if isinstance(node, list):
        return [_convert(n, refs) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _convert(v, refs) for k, v in node.items() if k != "nullable"}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith(PREFIX):
        refs.add(ref[len(PREFIX):])
        out["$ref"] = "#/$defs/" + ref[len(PREFIX):]
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def standalone(components: dict[str, Any], name: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in defs:
            continue
        refs: set[str] = set()
        defs[current] = _convert(components[current], refs)
        todo.extend(refs - defs.keys())
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"#/$defs/{name}", "$defs": defs}


def main(argv: list[str]) -> None:
    components = json.loads(Path(argv[0]).read_text())["components"]["schemas"]
    for name in argv[1:]:
        (OUT / f"{name}.schema.json").write_text(json.dumps(standalone(components, name), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
