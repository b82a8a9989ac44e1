"""scripts/dev_stack.sh, the README's first command, run as a user would: with --smollm2 it also serves the real
SmolLM2-135M-Instruct model, and the curl line it prints for that model answers. Its own ports and log folder;
stopping the script (SIGTERM, as Ctrl-C) stops everything it started."""
from __future__ import annotations

import json
import re
import socket
import subprocess

from tests.support.procs import ROOT, free_port, wait_until


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _curl_lines(output: str, model: str) -> str:
    """The printed curl command (two lines, joined by a backslash) whose body names `model`."""
    match = re.search(r"(curl -s \S+ -H 'Content-Type: application/json' \\\n\s+-d '\{\"model\": \"" + re.escape(model)
                      + r"\".*?\}')\n", output)
    assert match, f"no curl line for {model}:\n{output[-3000:]}"
    return match.group(1)


def test_dev_stack_with_smollm2_serves_the_real_model(procs, tmp_path):
    ports = {name: free_port() for name in ("CONSUL_PORT", "WORKER_PORT", "WRAPPER_PORT", "SMOLLM2_PORT")}
    env = {**{k: str(v) for k, v in ports.items()}, "STACK_LOGS": str(tmp_path / "logs")}
    stack = procs.start("dev-stack", ["bash", str(ROOT / "scripts" / "dev_stack.sh"), "--smollm2"], env=env)

    def up() -> bool:
        assert stack.alive(), f"dev_stack.sh exited\n{stack.output()[-3000:]}"
        return "Press Ctrl-C to stop." in stack.output()

    wait_until(up, 600, "the stack with SmolLM2 to be up", interval=0.5)
    output = stack.output()
    assert f'SmolLM2 worker http://127.0.0.1:{ports["SMOLLM2_PORT"]}  (model "smollm2-135m-instruct"' in output
    for model, expected in (("echo", "Hello, gateway"), ("smollm2-135m-instruct", "Paris")):
        answer = subprocess.run(["bash", "-c", _curl_lines(output, model)], capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
        content = json.loads(answer.stdout)["choices"][0]["message"]["content"]
        assert expected in content, answer.stdout

    stack.stop(timeout=30)
    assert "stack stopped" in stack.output()
    for name, port in ports.items():
        assert not _listening(port), f"{name} {port} still open after the stack stopped"
