"""Fuzz the wrapper with schemathesis from the official OpenAI spec: no 5xx, every answer conforms.

Reproducible: Hypothesis generates from a fixed seed (FUZZ_SEED overrides it, to explore other cases), and
which cases name the served model is derived from that seed and the case's body. (Not from `random`:
Hypothesis reseeds the global `random` to the same state for every example, so `random.random() < 0.5`
was the same draw every time, above 0.5, and no case reached a worker.) Hypothesis also draws constants
from the project's loaded modules, so this file alone and the whole suite generate different cases; each
run is reproducible. Two worker bugs it found are pinned in tests/unit/test_echo_worker.py."""
from __future__ import annotations

import base64
import json
import os
import random
import struct

import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.support.procs import wait_until
from tests.support.schemas import OPENAPI
from tests.support.servers import routable, start_worker, start_wrapper, unique_model

SEED = int(os.environ.get("FUZZ_SEED", "20251126"))
schema = schemathesis.openapi.from_path(OPENAPI)
MODEL = unique_model("fuzz")
KEY = "sk-fuzz-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def base_url(module_procs, consul, tmp_path_factory):
    config = tmp_path_factory.mktemp("fuzz") / "env.yaml"
    config.write_text(f"wrapper:\n  api_keys:\n    - key: {KEY}\n")
    wrapper = start_wrapper(module_procs, consul, "--config", str(config))
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", MODEL)
    wait_until(lambda: routable(wrapper, MODEL, AUTH), 5, "routable")
    return wrapper.base_url


def call_and_validate(case, base_url, **kwargs):
    return case.call_and_validate(base_url=base_url, headers=AUTH, **kwargs)


# ---- the tests -------------------------------------------------------------------------------------

def coin(body: dict) -> bool:
    """Heads for half the bodies, the same ones on every run: seeded with SEED and the body itself."""
    return random.Random(f"{SEED}:{json.dumps(body, sort_keys=True, default=repr)}").random() < 0.5


def is_positive(case) -> bool:
    """Whether schemathesis generated the case to be valid by the spec."""
    return case.meta is None or case.meta.generation.mode.is_positive


def asks_for_base64(case) -> bool:
    return case.path == "/embeddings" and isinstance(case.body, dict) and case.body.get("encoding_format") == "base64"


def decoded(answer: dict) -> dict:
    """An embeddings answer with base64 vectors (little-endian float32) turned into the spec's float arrays."""
    for item in answer["data"]:
        raw = base64.b64decode(item["embedding"], validate=True)
        item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return answer


@schema.parametrize()
@seed(SEED)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_wrapper_conforms_to_the_openai_spec(case, base_url, schemas):
    """Valid bodies: half name the served model and reach a real worker. Invalid bodies name a model no
    worker serves: the wrapper must refuse them itself. Every answer conforms to the spec."""
    if isinstance(case.body, dict) and "model" in case.body and is_positive(case) and coin(case.body):
        case.body["model"] = MODEL
    base64_answer = asks_for_base64(case)
    # OpenAI's spec types `embedding` as an array only, though the API answers a base64 string when asked
    # for one: those answers are checked below, with the vectors decoded.
    response = call_and_validate(case, base_url, excluded_checks=[response_schema_conformance] if base64_answer else [])
    if base64_answer and response is not None and response.status_code == 200:
        schemas.validate("CreateEmbeddingResponse", decoded(response.json()))


@schema.include(method="POST").parametrize()
@seed(SEED)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_invalid_bodies_for_a_served_model_are_never_a_server_error(case, base_url):
    """Bodies the spec refuses, sent to the served model. The wrapper and the worker check only the fields
    they use (common.wire.check_fields) and pass the rest on, so a 200 is fine; a 5xx is not."""
    if not (isinstance(case.body, dict) and "model" in case.body) or is_positive(case):
        return
    case.body["model"] = MODEL
    call_and_validate(case, base_url, checks=[not_a_server_error])
