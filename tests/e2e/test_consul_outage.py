"""The gateway keeps answering while Consul is down, and recovers when it comes back empty."""
from __future__ import annotations

import time

import httpx

from tests.support.procs import Consul, wait_until
from tests.support.servers import routable, start_worker, start_wrapper, unique_model

OUTAGE_SECONDS = 30


def test_consul_outage_and_empty_restart(procs):
    consul = Consul(procs, name="consul-outage")
    model = unique_model()
    workers = [start_worker(procs, consul, "generators.echo.EchoGen", "--models", model) for _ in range(2)]
    wrapper = start_wrapper(procs, consul)
    wait_until(lambda: routable(wrapper, model), 5, "routable")

    consul.stop()
    statuses = []
    with httpx.Client(base_url=wrapper.base_url, timeout=10) as client:
        end = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < end:
            r = client.post("/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "up?"}]})
            statuses.append(r.status_code)
            time.sleep(0.05)
        assert client.get(wrapper.url + "/health").json()["consul"] == "down"
    assert len(statuses) > 100 and set(statuses) == {200}
    assert wrapper.proc.output().count("unreachable") == 1  # the outage is logged once, not per retry
    assert all(w.proc.alive() for w in workers)

    consul.start()  # a dev agent comes back with no state at all
    restarted = time.monotonic()
    wait_until(lambda: all(any(s.endswith(f"-{w.port}") for s in consul.services()) for w in workers), 10,
               "every worker to register again")
    assert time.monotonic() - restarted <= 10
    wait_until(lambda: routable(wrapper, model), 5, "the model to be routable again")
    newcomer = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", newcomer)
    wait_until(lambda: routable(wrapper, newcomer), 5, "a new worker to be routable after the restart")
