"""Thousands of catalog entries in a test's Consul agent within seconds, and the connections a process holds.

Entries go through `/v1/txn` (64 operations a request, over keep-alive connections) on nodes of their
own: the agent's anti-entropy leaves other nodes alone, and their checks stay as written (nobody runs
them), so the addresses need not answer.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from tests.support.procs import Consul

TXN_OPS = 64  # Consul 1.8's limit per transaction
MARKER_TAG = "openai-api-wrapper"


@dataclass(frozen=True)
class Entry:
    """One service instance on a node of its own, with one check."""

    node: str
    service: str
    model: str
    index: int  # of the instance within its service
    port: int = 9  # discard: nothing listens there

    @property
    def id(self) -> str:
        return f"{self.service}-{self.index}"


def catalog(services: int, instances: int, prefix: str = "scale") -> list[Entry]:
    """`services` services × `instances` instances, instance i of each on node PREFIX-node-i, one model each."""
    return [Entry(f"{prefix}-node-{i}", f"{prefix}-svc-{s}", f"{prefix}-model-{s}", i)
            for s in range(services) for i in range(instances)]


def register_ops(entry: Entry, status: str) -> list[dict]:
    service = {"ID": entry.id, "Service": entry.service, "Tags": [MARKER_TAG, f"model={entry.model}"],
               "Address": "127.0.0.1", "Port": entry.port}
    check = {"Node": entry.node, "CheckID": f"check-{entry.id}", "Name": "fake", "Status": status,
             "ServiceID": entry.id}
    return [{"Service": {"Verb": "set", "Node": entry.node, "Service": service}},
            {"Check": {"Verb": "set", "Check": check}}]


def _txn(consul: Consul, batches: Sequence[list[dict]], threads: int = 4) -> None:
    def send(share: Sequence[list[dict]]) -> None:
        with httpx.Client(base_url=f"http://{consul.addr}", timeout=30) as client:
            for ops in share:
                resp = client.put("/v1/txn", json=ops)
                assert resp.status_code == 200, resp.text[:500]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, [batches[k::threads] for k in range(threads)]))


def _batches(ops: list[dict]) -> list[list[dict]]:
    return [ops[k:k + TXN_OPS] for k in range(0, len(ops), TXN_OPS)]


def register(consul: Consul, entries: Iterable[Entry], status: str = "passing") -> None:
    entries = list(entries)
    nodes = sorted({e.node for e in entries})
    _txn(consul, _batches([{"Node": {"Verb": "set", "Node": {"Node": n, "Address": "127.0.0.1"}}} for n in nodes]),
         threads=1)
    _txn(consul, _batches([op for e in entries for op in register_ops(e, status)]))


def set_status(consul: Consul, entry: Entry, status: str) -> None:
    _txn(consul, [register_ops(entry, status)[1:]], threads=1)


def deregister(consul: Consul, entries: Iterable[Entry]) -> None:
    ops = [{"Service": {"Verb": "delete", "Node": e.node, "Service": {"ID": e.id, "Service": e.service}}} for e in entries]
    _txn(consul, _batches(ops), threads=1)


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections that process `pid` holds to `port` (from /proc, like `ss -tnp`)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port == port and fields[9] in inodes:  # 01: ESTABLISHED
                    count += 1
    return count
