"""The gateway on a real Consul cluster (3 servers, a client agent per node; tests/support/consul_cluster.py
runs deploy/consul/*.hcl), under a background load of c=16: losing the leader, losing a node's agent,
losing one of three wrapper replicas behind nginx (deploy/nginx.conf).

Layout: node 1 runs the wrapper(s) and a worker of SHARED; node 2 a worker of SHARED and ONLY_ON_2. The module
shares one cluster: the killed leader stays down (two servers keep the quorum), client agents are restarted,
and the last test takes the quorum away."""
from __future__ import annotations

import signal
import time

import pytest

from tests.support.consul_cluster import Agent, ConsulCluster
from tests.support.load import BackgroundLoad
from tests.support.nginx_front import start_nginx
from tests.support.procs import Procs, wait_until
from tests.support.servers import Server, routable, start_worker, start_wrapper, unique_model

SHARED = unique_model("shared")  # served on both nodes
ONLY_ON_2 = unique_model("node2")  # served only by node 2's worker
ROUTABLE_WITHIN = 2.0  # seconds from a registration to the wrapper routing it (the promise)


@pytest.fixture(scope="module")
def cluster(module_procs: Procs):
    cluster = ConsulCluster(module_procs, nodes=2)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def node1(cluster: ConsulCluster) -> Agent:
    return cluster.clients[0]


@pytest.fixture(scope="module")
def node2(cluster: ConsulCluster) -> Agent:
    return cluster.clients[1]


@pytest.fixture(scope="module")
def workers(module_procs: Procs, node1: Agent, node2: Agent) -> list[Server]:
    return [start_worker(module_procs, node1, "generators.echo.EchoGen", "--models", SHARED),
            start_worker(module_procs, node2, "generators.echo.EchoGen", "--models", f"{SHARED},{ONLY_ON_2}")]


@pytest.fixture(scope="module")
def cluster_wrapper(module_procs: Procs, node1: Agent, workers: list[Server]) -> Server:
    """A wrapper reading the catalog through node 1's client agent, with both models routable."""
    wrapper = start_wrapper(module_procs, node1)
    wait_until(lambda: routable(wrapper, SHARED) and routable(wrapper, ONLY_ON_2), 20, "both models routable")
    return wrapper


def restart(cluster: ConsulCluster, agent: Agent) -> None:
    agent.start()  # same node name and data dir: it rejoins as the same member
    cluster.wait_healthy()


def alive_servers(cluster: ConsulCluster) -> list[Agent]:
    return [server for server in cluster.servers if server.alive()]


def test_killing_the_leader_under_load_fails_no_request_and_a_new_worker_is_routable_within_2s(
        procs, cluster, node2, cluster_wrapper):
    old = cluster.wait_healthy()
    with BackgroundLoad(cluster_wrapper.base_url, [SHARED, ONLY_ON_2], max_seconds=90) as load:
        wait_until(lambda: load.answered() > 50, 30, "the load to get going")
        old.kill()
        new = wait_until(lambda: cluster.leader() not in (None, old), 30, "a new leader", interval=0.1)
        leader = cluster.leader()
        assert leader is not None and leader is not old and leader.alive(), f"no new leader after {new:.1f} s"
        newcomer = unique_model("after-election")
        start_worker(procs, node2, "generators.echo.EchoGen", "--models", newcomer)
        registered = time.monotonic()  # start_worker returns once the agent lists the registration
        wait_until(lambda: routable(cluster_wrapper, newcomer), 10, f"{newcomer} to be routable", interval=0.02)
        took = time.monotonic() - registered
        print(f"new leader after {new:.1f} s; a worker registered after it routable after {took:.2f} s")
        answered = load.answered()
        wait_until(lambda: load.answered() > answered + 50, 30, "the load to go on after the election")
    assert load.result.failed == [], str(load.result)
    assert took <= ROUTABLE_WITHIN, f"registered after the election, routable only after {took:.2f} s"
    # the old leader is not restarted: once autopilot has dropped it from the raft configuration it may
    # run elections for tens of seconds until the leader adds it back (seen on a loaded machine, Consul
    # 1.8), and the rest of the module needs only a quorum, which the two others are
    assert len(alive_servers(cluster)) == 2 and cluster.wait_healthy() in alive_servers(cluster)


def test_a_dead_client_agent_takes_its_nodes_workers_out_of_the_table_and_back(cluster, node2, cluster_wrapper):
    with BackgroundLoad(cluster_wrapper.base_url, [SHARED], max_seconds=90) as load:
        wait_until(lambda: load.answered() > 50, 30, "the load to get going")
        node2.kill()  # the node's agent dies: Consul's serfHealth check of node 2 turns critical
        wait_until(lambda: not routable(cluster_wrapper, ONLY_ON_2), 30, f"{ONLY_ON_2} (node 2 only) to leave")
        assert routable(cluster_wrapper, SHARED)
        answered = load.answered()
        wait_until(lambda: load.answered() > answered + 50, 30, "requests served while node 2 is out")
        restart(cluster, node2)
        wait_until(lambda: routable(cluster_wrapper, ONLY_ON_2), 30, f"{ONLY_ON_2} to return with node 2")
    assert load.result.failed_for({SHARED}) == [], str(load.result)


def test_the_wrapper_serves_from_its_table_while_its_own_agent_is_down(cluster, node1, cluster_wrapper):
    with BackgroundLoad(cluster_wrapper.base_url, [SHARED, ONLY_ON_2], max_seconds=60) as load:
        wait_until(lambda: load.answered() > 50, 30, "the load to get going")
        node1.kill()
        answered = load.answered()
        wait_until(lambda: load.answered() > answered + 200, 30, "requests served without the local agent")
        assert routable(cluster_wrapper, SHARED) and routable(cluster_wrapper, ONLY_ON_2)
        restart(cluster, node1)
    assert load.result.failed == [], str(load.result)


def test_killing_one_of_three_wrappers_behind_nginx_fails_no_request(module_procs, procs, cluster, node1, node2,
                                                                     workers, tmp_path):
    replicas = [start_wrapper(procs, agent) for agent in (node1, node1, node2)]
    for replica in replicas:
        wait_until(lambda r=replica: routable(r, SHARED), 20, "SHARED routable on every replica")
    front = start_nginx(procs, [r.port for r in replicas], tmp_path / "nginx")
    with BackgroundLoad(front + "/v1", [SHARED], max_seconds=90) as load:
        wait_until(lambda: load.answered() > 100, 30, "the load to get going")
        replicas[0].proc.signal(signal.SIGKILL)
        replicas[0].proc.popen.wait(10)
        answered = load.answered()
        wait_until(lambda: load.answered() > answered + 300, 30, "requests served by the two replicas left")
    assert load.result.failed == [], str(load.result)
    assert sum(load.result.ok.values()) > 400


def test_a_wrapper_started_while_the_servers_have_no_quorum_routes_from_their_stale_answers(procs, cluster, node1,
                                                                                          cluster_wrapper):
    """Two of three servers dead: no leader, so no consistent read; the wrapper routes from a server's stale
    answer (nothing can be registered without a leader anyway) instead of routing nothing."""
    cluster.wait_replicated()  # the survivor has the registrations (raft commits on 2 of 3: it may lag)
    *lost, survivor = alive_servers(cluster)  # the first test already killed one server
    for server in lost:
        server.kill()
    assert len(alive_servers(cluster)) == 1
    wait_until(lambda: survivor.leader() == "", 30, "the last server to have no leader", interval=0.1)
    late = start_wrapper(procs, node1)
    wait_until(lambda: routable(late, SHARED) and routable(late, ONLY_ON_2), 30,
               f"the models routable without a leader\n{late.proc.output()}")
    with BackgroundLoad(late.base_url, [SHARED, ONLY_ON_2], max_requests=200, max_seconds=30) as load:
        wait_until(lambda: load.answered() >= 200, 30, "200 answers")
    assert load.result.failed == [] and load.answered() == 200, str(load.result)
    assert late.proc.output().count("no Consul leader answered") == 1
    # the last test of the module: the cluster stays without quorum until the module's teardown (restarting
    # the servers would cost some 20 s of elections)
