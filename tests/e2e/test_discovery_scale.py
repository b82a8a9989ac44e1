"""Discovery at the size of a real catalog, and an empty catalog after a full one, against real processes.

2,000 services × 5 instances are written straight into the test's own Consul agent (tests/support/
consul_bulk.py); their addresses need not answer, since only the routing table is under test there."""
from __future__ import annotations

import time

import httpx

from tests.support import consul_bulk
from tests.support.consul_bulk import Entry, connections_to
from tests.support.procs import Consul, get_json, post, wait_until
from tests.support.servers import routable, start_worker, start_wrapper, unique_model

SERVICES, INSTANCES = 2000, 5
MAX_CONSUL_CONNECTIONS = 6  # the two watches and svc_mgr.discovery.READS_AT_ONCE address reads


def chat(wrapper, model: str):
    return post(wrapper.base_url + "/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]})


def known(wrapper, model: str) -> bool:
    return get_json(wrapper.base_url + f"/models/{model}")[0] == 200


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return str(path)


def test_2000_services_of_5_instances_are_routed_over_a_handful_of_connections(procs):
    consul = Consul(procs, name="consul-scale")
    entries = consul_bulk.catalog(SERVICES, INSTANCES)
    consul_bulk.register(consul, entries)
    real = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", real)

    wrapper = start_wrapper(procs, consul)  # returns once /health answers: the table must be whole by then
    models = {m["id"] for m in get_json(wrapper.base_url + "/models")[1]["data"]}
    assert models == {e.model for e in entries} | {real}
    health = get_json(wrapper.url + "/health")[1]
    assert health["consul"] == "up" and health["models"] == SERVICES + 1
    assert chat(wrapper, real)[0] == 200
    assert connections_to(wrapper.proc.pid, consul.port) <= MAX_CONSUL_CONNECTIONS

    # a change to one service among the 2,000 reaches the table (the time is reported, not asserted:
    # docs/performance.md has the figures)
    newcomer = Entry("scale-node-0", "scale-svc-new", unique_model("scale"), 0)
    started = time.monotonic()
    consul_bulk.register(consul, [newcomer])
    wait_until(lambda: known(wrapper, newcomer.model), 10, "a new service among 2,000 to be routable")
    print(f"\na new service was routable after {1000 * (time.monotonic() - started):.0f} ms")
    started = time.monotonic()
    consul_bulk.set_status(consul, newcomer, "critical")
    wait_until(lambda: not known(wrapper, newcomer.model), 10, "a failing instance to leave the table")
    print(f"a failing instance left the table after {1000 * (time.monotonic() - started):.0f} ms")
    assert chat(wrapper, newcomer.model)[0] == 503

    consul_bulk.deregister(consul, [e for e in entries if e.service == "scale-svc-7"][:4])
    consul_bulk.deregister(consul, [e for e in entries if e.service == "scale-svc-8"])
    wait_until(lambda: not known(wrapper, "scale-model-8"), 10, "a deregistered service to leave the table")
    assert known(wrapper, "scale-model-7")  # one of its five instances is left
    health = get_json(wrapper.url + "/health")[1]
    assert health["consul"] == "up" and health["models"] == SERVICES
    assert connections_to(wrapper.proc.pid, consul.port) <= MAX_CONSUL_CONNECTIONS


def restart_empty(consul: Consul, wrapper) -> None:
    """Restart the dev agent (it keeps no state) and wait until the wrapper has read its empty catalog."""
    consul.stop()
    wait_until(lambda: get_json(wrapper.url + "/health")[1]["consul"] == "down", 10, "the wrapper to see the outage")
    consul.start()
    wait_until(lambda: get_json(wrapper.url + "/health")[1]["consul"] == "up", 15, "the wrapper to read Consul again")


GRACE = 8


def test_an_empty_catalog_keeps_the_last_routes_for_the_grace_period(procs, tmp_path):
    consul = Consul(procs, name="consul-empty")
    # the worker checks its registration only every 10 minutes: it will not be back during this test
    config = write_config(tmp_path, f"wrapper:\n  empty_catalog_grace: {GRACE}\nworker:\n  keepalive_interval: 600\n")
    model = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, "--config", config)
    wrapper = start_wrapper(procs, consul, "--config", config)
    wait_until(lambda: routable(wrapper, model), 5, "routable")

    restart_empty(consul, wrapper)
    held = time.monotonic()
    statuses = []
    with httpx.Client(base_url=wrapper.base_url, timeout=10) as client:
        while time.monotonic() < held + GRACE - 3:
            r = client.post("/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]})
            statuses.append(r.status_code)
            time.sleep(0.05)
    assert not consul.services()  # the worker has not registered again: the wrapper routed from its last table
    assert len(statuses) > 20 and set(statuses) == {200}

    wait_until(lambda: not routable(wrapper, model), GRACE + 10, "the empty catalog to apply after the grace period")
    assert chat(wrapper, model)[0] == 503
    log = wrapper.proc.output()
    assert log.count("keeping the last routing table") == 1, log
    assert log.count("stayed empty") == 1


def test_entries_coming_back_end_the_grace_period_at_once(procs, tmp_path):
    consul = Consul(procs, name="consul-back")
    config = write_config(tmp_path, "wrapper:\n  empty_catalog_grace: 60\nworker:\n  keepalive_interval: 600\n")
    kept, back = unique_model(), unique_model()
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", f"{kept},{back}", "--config", config)
    wrapper = start_wrapper(procs, consul, "--config", config)
    wait_until(lambda: routable(wrapper, kept) and routable(wrapper, back), 5, "routable")

    restart_empty(consul, wrapper)
    assert routable(wrapper, kept)  # held
    # one entry comes back, for one of the worker's two models: from then on the table is what Consul
    # says, long before the 60 s grace period would have ended
    consul_bulk.register(consul, [Entry("back-node", "echo", back, 0, port=worker.port)])
    wait_until(lambda: not routable(wrapper, kept), 10, "the table to follow Consul once entries are back")
    assert routable(wrapper, back) and chat(wrapper, back)[0] == 200
    log = wrapper.proc.output()
    assert log.count("keeping the last routing table") == 1 and log.count("back in Consul's catalog") == 1
    assert "stayed empty" not in log


ACL_HCL = ('acl { enabled = true, default_policy = "deny", down_policy = "extend-cache", '
           'tokens { master = "root-token-1234", agent = "root-token-1234" } }')
ROOT = {"X-Consul-Token": "root-token-1234"}
READ_ALL = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'


def test_a_token_that_suddenly_sees_nothing_keeps_the_last_routes(procs, tmp_path):
    consul = Consul(procs, extra_hcl=ACL_HCL, name="consul-acl-grace")
    acl = f"http://{consul.addr}/v1/acl"
    httpx.put(f"{acl}/policy", headers=ROOT, json={"Name": "worker", "Rules": 'service "echo" { policy = "write" }'}
              ).raise_for_status()
    worker_token = httpx.put(f"{acl}/token", headers=ROOT, json={"Policies": [{"Name": "worker"}]}).json()["SecretID"]
    policy = httpx.put(f"{acl}/policy", headers=ROOT, json={"Name": "wrapper", "Rules": READ_ALL}).json()
    wrapper_token = httpx.put(f"{acl}/token", headers=ROOT, json={"Policies": [{"Name": "wrapper"}]}).json()
    # a short wait: a policy change moves no index, so the wrapper sees it at its next wake-up
    config = write_config(tmp_path, f"wrapper:\n  empty_catalog_grace: {GRACE}\n  consul_wait: 1s\n")
    model = unique_model()
    start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, "--config", config,
                 env={"CONSUL_HTTP_TOKEN": worker_token}, wait=False)
    wrapper = start_wrapper(procs, consul, "--config", config, env={"CONSUL_HTTP_TOKEN": wrapper_token["SecretID"]})
    wait_until(lambda: routable(wrapper, model), 20, "routable through the ACL'd agent")

    # the wrapper's policy is changed to see nothing: Consul 1.8 answers [] (no header says why)
    httpx.put(f"{acl}/policy/{policy['ID']}", headers=ROOT,
              json={"Name": "wrapper", "Rules": 'node_prefix "" { policy = "deny" }'}).raise_for_status()
    wait_until(lambda: "keeping the last routing table" in wrapper.proc.output(), 10, "the empty answer to be held")
    assert "ACL token" in wrapper.proc.output()
    assert chat(wrapper, model)[0] == 200 and routable(wrapper, model)

    # given its rights back within the grace period, the wrapper routes from Consul again
    httpx.put(f"{acl}/policy/{policy['ID']}", headers=ROOT, json={"Name": "wrapper", "Rules": READ_ALL}
              ).raise_for_status()
    wait_until(lambda: "back in Consul's catalog" in wrapper.proc.output(), 10, "the entries to be seen again")
    # a deleted token: Consul answers 403, which is an outage (the last table stays, /health says down)
    httpx.delete(f"{acl}/token/{wrapper_token['AccessorID']}", headers=ROOT).raise_for_status()
    wait_until(lambda: get_json(wrapper.url + "/health")[1]["consul"] == "down", 10, "the 403 to count as an outage")
    assert chat(wrapper, model)[0] == 200
    log = wrapper.proc.output()
    assert log.count("keeping the last routing table") == 1 and "stayed empty" not in log
    assert log.count("unreachable") == 1 and "403" in log


def test_an_instance_registered_without_checks_is_routed_as_consul_counts_it_passing(procs, tmp_path):
    consul = Consul(procs, name="consul-unchecked")
    config = write_config(tmp_path, "worker:\n  keepalive_interval: 600\n")
    model = unique_model()
    worker = start_worker(procs, consul, "generators.echo.EchoGen", "--models", model, "--config", config)
    wrapper = start_wrapper(procs, consul)
    wait_until(lambda: routable(wrapper, model), 5, "routable")
    # the worker's own entry (with its check) goes; an entry without any check takes its place
    agent = f"http://{consul.addr}/v1/agent/service"
    httpx.put(f"{agent}/deregister/{next(iter(consul.services()))}").raise_for_status()
    wait_until(lambda: not routable(wrapper, model), 5, "the checked entry to leave")
    httpx.put(f"{agent}/register", json={"Name": "plain", "ID": "plain-1", "Address": "127.0.0.1",
                                         "Port": worker.port, "Tags": [consul_bulk.MARKER_TAG, f"model={model}"]}
              ).raise_for_status()
    wait_until(lambda: routable(wrapper, model), 5, "the entry without checks to be routable")
    assert chat(wrapper, model)[0] == 200
    assert {m["owned_by"] for m in get_json(wrapper.base_url + "/models")[1]["data"]} == {"plain"}
    httpx.put(f"{agent}/deregister/plain-1").raise_for_status()
    wait_until(lambda: not routable(wrapper, model), 5, "the entry without checks to leave")
