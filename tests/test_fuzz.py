"""Fuzz the wrapper with schemathesis from the official OpenAI spec: no 5xx, every answer conforms."""
from __future__ import annotations

import random

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from conftest import SPEC_DIR, routable, start_worker, start_wrapper, unique_model
from procs import wait_until

schema = schemathesis.openapi.from_path(SPEC_DIR / "openai-subset.testing.openapi.yaml")
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


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_wrapper_conforms_to_the_openai_spec(case, base_url):
    # Half the cases name a model that exists, so generated bodies reach a real worker too.
    if isinstance(case.body, dict) and "model" in case.body and random.random() < 0.5:
        case.body["model"] = MODEL
    case.call_and_validate(base_url=base_url, headers=AUTH)
