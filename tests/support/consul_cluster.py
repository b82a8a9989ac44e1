"""A real Consul cluster on one machine: 3 servers and a client agent per simulated node, on loopback.

Linux routes all of 127.0.0.0/8 to loopback, so each server gets its own address (127.0.0.2–127.0.0.4) and
each client agent too (127.0.0.11, .12, …), every agent with its own free ports and data dir. The agents run
the shipped configs, deploy/consul/server.hcl and deploy/consul/client.hcl; what a machine would give on
its command line (node name, bind address, data dir, retry-join) is given the same way here, plus ports
and FAST_HCL. Workers register with their node's client agent and wrappers read from theirs: an `Agent`
has the `addr` and `services()` of tests/support/procs.Consul, so start_worker/start_wrapper take one.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
import urllib.request
import uuid
from pathlib import Path

from tests.support.procs import ROOT, Proc, Procs, consul_binary, get_json, wait_until

DEPLOY = ROOT / "deploy" / "consul"
SERVER_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

# test-only: failure detection and join retries at the speed of Consul's -dev profile, so a killed agent
# is noticed in about a second instead of several (production keeps Consul's defaults)
FAST_HCL = ('retry_interval = "200ms" '
            'gossip_lan { gossip_interval = "100ms" probe_interval = "200ms" probe_timeout = "100ms" '
            'suspicion_mult = 3 retransmit_mult = 2 }')


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Agent:
    """One Consul agent (server or client) of the cluster; kill() and start() again keep its data dir."""

    def __init__(self, procs: Procs, role: str, name: str, bind: str, data_dir: Path, join: list[str],
                 fast: bool = True) -> None:
        self.procs, self.role, self.name, self.bind, self.data_dir, self.join = procs, role, name, bind, data_dir, join
        self.fast = fast
        self.http_port = free_port_on("127.0.0.1")
        self.serf_port = free_port_on(bind)
        self.server_port = free_port_on(bind)
        self.proc: Proc | None = None

    @property
    def addr(self) -> str:  # the HTTP API, on 127.0.0.1 as client.hcl/server.hcl say (client_addr)
        return f"127.0.0.1:{self.http_port}"

    @property
    def rpc_addr(self) -> str:  # how /v1/status/leader names a server
        return f"{self.bind}:{self.server_port}"

    def argv(self) -> list[str]:
        ports = (f"ports {{ http = {self.http_port}, serf_lan = {self.serf_port}, server = {self.server_port}, "
                 f"serf_wan = {free_port_on(self.bind)} }}")
        joins = [arg for address in self.join for arg in ("-retry-join", address)]
        return [consul_binary(), "agent", "-config-file", str(DEPLOY / f"{self.role}.hcl"), "-node", self.name,
                "-bind", self.bind, "-data-dir", str(self.data_dir), *joins, "-hcl", ports,
                *(["-hcl", FAST_HCL] if self.fast else []), "-log-level", "warn"]

    def start(self) -> None:
        self.proc = self.procs.start(self.name, self.argv())

    def kill(self) -> None:
        """kill -9: the machine's agent dies without leaving."""
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.popen.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def leader(self) -> str:
        """The leader's RPC address as this agent knows it ("" while there is none)."""
        return get_json(f"http://{self.addr}/v1/status/leader", timeout=2)[1] or ""

    def services(self, token: str | None = None) -> dict:
        return get_json(f"http://{self.addr}/v1/agent/services", {"X-Consul-Token": token} if token else None)[1]

    def catalog_index(self) -> str:
        """The catalog's index as this agent's server holds it (a stale read: no forwarding to the leader)."""
        with urllib.request.urlopen(f"http://{self.addr}/v1/catalog/services?stale", timeout=2) as resp:
            return resp.headers["X-Consul-Index"]

    def members(self) -> dict[str, int]:
        """Serf member name -> status (1 alive, 2 leaving, 3 left, 4 failed), as this agent sees them."""
        with urllib.request.urlopen(f"http://{self.addr}/v1/agent/members", timeout=2) as resp:
            return {m["Name"]: m["Status"] for m in json.loads(resp.read())}


class ConsulCluster:
    """3 servers and `nodes` client agents, all alive and agreeing on a leader once constructed.
    fast=False: the shipped configs alone (Consul's own gossip timing), as the bench runs them."""

    def __init__(self, procs: Procs, nodes: int = 2, fast: bool = True, root: Path | None = None) -> None:
        self.procs = procs
        self.root = Path(tempfile.mkdtemp(prefix="consul-cluster-", dir=root))
        tag = uuid.uuid4().hex[:6]  # node names unique even if two clusters ran on this machine at once
        self.servers: list[Agent] = []
        for i, bind in enumerate(SERVER_ADDRESSES, 1):
            self.servers.append(Agent(procs, "server", f"server-{i}-{tag}", bind, self.root / f"server-{i}", [], fast))
        joins = [f"{s.bind}:{s.serf_port}" for s in self.servers]
        for server in self.servers:
            server.join = [j for j in joins if not j.startswith(server.bind + ":")]
        self.clients = [Agent(procs, "client", f"node-{i}-{tag}", f"127.0.0.{10 + i}", self.root / f"node-{i}", joins,
                              fast)
                        for i in range(1, nodes + 1)]
        for agent in self.agents:
            agent.start()
        self.wait_healthy()

    @property
    def agents(self) -> list[Agent]:
        return self.servers + self.clients

    def leader(self) -> Agent | None:
        """The server every live agent names as leader, or None while they do not agree on one."""
        named = set()
        for agent in self.agents:
            if agent.alive():
                named.add(agent.leader())
        if len(named) != 1:
            return None
        return next((s for s in self.servers if s.rpc_addr in named and s.alive()), None)

    def wait_healthy(self, timeout: float = 60) -> Agent:
        """Until every live agent sees every live agent alive and all agree on a live leader."""
        names = {a.name for a in self.agents if a.alive()}

        def healthy() -> bool:
            return self.leader() is not None and all(
                {n for n, status in a.members().items() if status == 1} >= names for a in self.agents if a.alive())
        wait_until(healthy, timeout, f"the Consul cluster to form\n{self.procs.dump()}", interval=0.2)
        leader = self.leader()
        assert leader is not None
        return leader

    def wait_replicated(self, timeout: float = 30) -> None:
        """Until every live server has applied what the leader has (the same catalog index, read stale)."""
        def same_index() -> bool:
            return len({server.catalog_index() for server in self.servers if server.alive()}) == 1
        wait_until(same_index, timeout, "the servers to apply the same raft index", interval=0.1)

    def close(self) -> None:
        for agent in self.agents:
            if agent.proc is not None:
                agent.proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)
