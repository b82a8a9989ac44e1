"""The wrapper's added time to first chunk, with and without an idle gap before each stream (issue #15).

A real model's stream reaches the wrapper after ~180 ms of prompt processing during which the relay sits
idle; on a VM whose idle vCPUs halt, that gap makes the relay's work slower. This isolates the effect with
an EchoGen worker (no model): one-word streams, direct and through the wrapper, interleaved in pairs,
with `--gaps` seconds of sleep before each stream. A raw keep-alive socket per path is the client, so the
client's own cost is the same on both paths and the pairs' differences are the relay's.

    python3 -m bench.idle_gap --pairs 100 --gaps 0,0.05,0.2

It prints, per gap, the median time to first chunk of each path and the median of the paired differences,
and the machine's idle setting (`haltpoll.guest_halt_poll_ns`, when the haltpoll cpuidle driver is used).
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

from tests.support.procs import Consul, Procs, free_port, get_json, wait_until
from tests.support.servers import Server, routable, start_worker, start_wrapper

MODEL = "idle-gap-echo"
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


class StreamClient:
    """One keep-alive connection; `first_chunk()` sends a one-word stream request and returns the seconds
    until its first `data:` event arrives, then reads the stream to its end."""

    def __init__(self, port: int) -> None:
        body = (b'{"model":"%s","stream":true,"messages":[{"role":"user","content":"hi"}]}' % MODEL.encode())
        self.request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def first_chunk(self) -> float:
        start = time.perf_counter()
        self.sock.sendall(self.request)
        seen = b""
        first = 0.0
        while b"[DONE]" not in seen or not seen.endswith(b"0\r\n\r\n"):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            seen += data
            if not first and b"data: {" in seen:
                first = time.perf_counter() - start
        return first

    def close(self) -> None:
        self.sock.close()


def measure(direct: StreamClient, wrapped: StreamClient, pairs: int, gap: float) -> tuple[float, float, float]:
    """Medians: direct, through the wrapper, and the paired difference (seconds)."""
    d_times, w_times, diffs = [], [], []
    for i in range(pairs):
        order = (direct, wrapped) if i % 2 == 0 else (wrapped, direct)
        got = {}
        for client in order:
            time.sleep(gap)
            got[client] = client.first_chunk()
        d_times.append(got[direct])
        w_times.append(got[wrapped])
        diffs.append(got[wrapped] - got[direct])
    return statistics.median(d_times), statistics.median(w_times), statistics.median(diffs)


def halt_poll_setting() -> str:
    try:
        return HALT_POLL.read_text().strip() + " ns"
    except OSError:
        return "n/a (no haltpoll driver)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--gaps", default="0,0.05,0.2", help="seconds of idle before each stream, comma-separated")
    parser.add_argument("--wrapper-config", default=None, help="an env.yaml-style file for the wrapper (e.g. metrics off)")
    parser.add_argument("--relay", choices=("wrapper", "bare"), default="wrapper",
                        help="what is measured against direct: the wrapper, or bench/bare_relay.py (uvicorn + "
                             "aiohttp, no features: what the libraries alone add)")
    args = parser.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    procs = Procs()
    try:
        consul = Consul(procs)
        worker: Server = start_worker(procs, consul, "generators.echo.EchoGen", "--models", MODEL)
        if args.relay == "bare":
            port = free_port()
            procs.start("bare-relay", [sys.executable, "-m", "bench.bare_relay", "127.0.0.1", str(port), "--route",
                                       f"{MODEL}=http://127.0.0.1:{worker.port}", "--server", "uvicorn",
                                       "--interface", "asgi", "--client", "aiohttp"])
            wait_until(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, 20, "the bare relay")
        else:
            wrapper = start_wrapper(procs, consul, *(["--config", args.wrapper_config] if args.wrapper_config else []))
            wait_until(lambda: routable(wrapper, MODEL), 20, f"{MODEL} routable")
            port = wrapper.port
        direct, wrapped = StreamClient(worker.port), StreamClient(port)
        for client in (direct, wrapped):
            for _ in range(20):
                client.first_chunk()  # warm-up: connections, caches, the routing table
        print(f"guest_halt_poll_ns: {halt_poll_setting()}; {args.pairs} pairs per gap; relay: {args.relay}; "
              f"wrapper config: {args.wrapper_config or 'defaults'}")
        print(f"| idle gap before each stream | direct TTFC p50 ms | {args.relay} TTFC p50 ms | {args.relay} − direct (paired p50) ms |")
        print("|---:|---:|---:|---:|")
        for gap in gaps:
            d, w, diff = measure(direct, wrapped, args.pairs, gap)
            print(f"| {gap * 1000:.0f} ms | {d * 1000:.3f} | {w * 1000:.3f} | {diff * 1000:+.3f} |", flush=True)
        direct.close()
        wrapped.close()
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
