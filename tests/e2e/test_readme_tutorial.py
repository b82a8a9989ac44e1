"""The README's tutorial Generator works as written: started with template_worker.py, called with the SDK."""
from __future__ import annotations

import re

import openai

from tests.support.procs import ROOT, wait_until
from tests.support.servers import routable, start_worker


def test_readme_tutorial_generator(procs, consul, wrapper, tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(# my_models/shout\.py\n.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    package = tmp_path / "my_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shout.py").write_text(code)
    start_worker(procs, consul, "my_models.shout.ShoutGen", env={"PYTHONPATH": str(tmp_path)})
    wait_until(lambda: routable(wrapper, "shout"), 5, "the tutorial model to be routable")
    client = openai.OpenAI(base_url=wrapper.base_url, api_key="none", max_retries=0)
    reply = client.chat.completions.create(model="shout", messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "HELLO THERE"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="shout", stream=True, messages=[{"role": "user", "content": "hello there"}]))
    assert streamed == "HELLO THERE "
