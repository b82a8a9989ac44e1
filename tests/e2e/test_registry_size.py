"""#13, registry at size: what the wrapper does per Consul answer and what it loads, against real processes.

The figures (registration → routable, RSS at 10,000 instances) are the bench's (docs/performance.md);
these tests pin the behaviours behind them, with bounds far from any timing."""
from __future__ import annotations

import subprocess
import sys

from tests.support import consul_bulk
from tests.support.consul_bulk import Entry
from tests.support.procs import ROOT, wait_until
from tests.support.servers import routable, start_wrapper, unique_model

SLOW_PACE = 60  # wrapper.consul_min_interval of the test's wrapper: seconds, far beyond any wait below


def test_small_answers_are_not_paced_a_registration_after_another_is_routed_at_once(procs, consul, tmp_path):
    """With a minute between two reads of a big answer, two registrations one after the other still reach
    the table within seconds: the catalog's answers are small, so no watch waits min_interval."""
    config = tmp_path / "env.yaml"
    config.write_text(f"wrapper:\n  consul_min_interval: {SLOW_PACE}\n")
    wrapper = start_wrapper(procs, consul, "--config", str(config))
    node = unique_model("pace-node")
    first, second = (Entry(node, unique_model("pace-svc"), unique_model("pace"), 0) for _ in range(2))
    try:
        for entry in (first, second):  # each right after the answer of the change before
            consul_bulk.register(consul, [entry])
            wait_until(lambda entry=entry: routable(wrapper, entry.model), 15,
                       f"{entry.model} to be routable with consul_min_interval {SLOW_PACE} s")
    finally:
        consul_bulk.deregister(consul, [first, second])


def test_a_default_wrapper_does_not_load_redis_or_the_opentelemetry_sdk():
    """Without Redis configured or trace export on, their libraries stay out of the wrapper's memory
    (redis-py imports OpenTelemetry's SDK: together ~8 MiB of every wrapper's RSS)."""
    probe = ("import sys, main_openai_wrapper_v2, wrapper.app, wrapper.cli; "
             "print(' '.join(m for m in ('redis', 'opentelemetry.sdk', 'selenium', 'psutil') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == []
