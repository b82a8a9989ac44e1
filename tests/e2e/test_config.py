"""A config mistake stops a real process with one line naming key and file (the loading itself is
covered in process by tests/unit/test_config.py)."""
from __future__ import annotations

import subprocess

from tests.support.procs import ROOT, python_script


def test_a_config_mistake_stops_the_wrapper_with_one_line(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("wrapper:\n  max_attempts: many\n")
    out = subprocess.run(python_script("main_openai_wrapper_v2.py", "127.0.0.1", "1", "--config", str(path)),
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "wrapper.max_attempts" in out.stderr and str(path) in out.stderr
    assert "Traceback" not in out.stderr
