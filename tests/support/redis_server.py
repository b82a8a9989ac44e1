"""A real redis-server (Debian's /usr/bin/redis-server) on a free loopback port, without persistence."""
from __future__ import annotations

import shutil
import socket

from tests.support.procs import Proc, Procs, free_port, wait_until


def redis_binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    return found


def _pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer:
    """Started at once; stop() / start() again on the same port (a Redis outage and its end)."""

    def __init__(self, procs: Procs) -> None:
        self.procs = procs
        self.port = free_port()
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = self.procs.start(f"redis-{self.port}", [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no"])
        wait_until(lambda: _pong(self.port), 20, f"redis-server on {self.port}\n{self.proc.output()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
