"""Old code that sets `openai.api_base` (openai 0.28) works against the wrapper, JSON and stream."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.procs import ROOT, wait_until
from tests.support.servers import routable, start_worker, unique_model

VENV = ROOT / ".venv-legacy-openai"


@pytest.fixture(scope="module")
def legacy_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "openai==0.28.1"], check=True)
    return str(python)


def test_openai_028_chat_and_stream(legacy_python, module_procs, consul, wrapper):
    model = unique_model()
    start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", model)
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    out = subprocess.run([legacy_python, str(ROOT / "tests" / "support" / "legacy_client.py"), wrapper.base_url, model],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["version"].startswith("0.28")
    assert result["json"] == result["stream"] == "legacy clients still work"
    assert result["finishes"].count("stop") == 1 and result["finishes"][-1] == "stop"
