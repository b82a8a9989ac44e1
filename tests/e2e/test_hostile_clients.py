"""Hostile clients before authentication, against real processes over raw sockets: huge or slow headers, stalled
bodies, too many connections, forged request ids; and an X-Request-ID on every answer."""
from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.support.procs import get_json, post, wait_until
from tests.support.servers import Server, routable, start_worker, start_wrapper, unique_model

KEY = "sk-hostile-clients-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 1  # limits.header_timeout and limits.body_timeout here, in seconds
SLACK = 5  # on top of a timeout before a test gives up: the machine may be busy
MAX_BODY = 65536
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MODEL = unique_model("hostile")


@pytest.fixture(scope="module")
def servers(module_procs, consul, tmp_path_factory) -> dict[str, Server]:
    config = tmp_path_factory.mktemp("hostile") / "env.yaml"
    config.write_text(f"limits:\n  header_timeout: {TIMEOUT}\n  body_timeout: {TIMEOUT}\n  max_body_bytes: {MAX_BODY}\n"
                      f"wrapper:\n  api_keys:\n    - key: {KEY}\n")
    # DEBUG: the lines that show which request id a worker received, and every client error's id
    worker = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", MODEL,
                          "--config", str(config), "--log-level", "debug")
    wrapper = start_wrapper(module_procs, consul, "--config", str(config), "--log-level", "debug")
    wait_until(lambda: routable(wrapper, MODEL, AUTH), 5, "routable")
    return {"wrapper": wrapper, "worker": worker}


def connect(server: Server, timeout: float = TIMEOUT + SLACK) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def answer_of(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """(status, headers with lower-case names, JSON body) of the one answer on `sock`."""
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    body = answer.read()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, json.loads(body)


def closed(sock: socket.socket) -> bool:
    """True once the server closed `sock` (after any answer); fails with socket.timeout if it stays open."""
    while True:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True


def head(path: str = "/health", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}".encode()


def chat_head(side: str, length: int | None, extra: str = "") -> bytes:
    """A chat request's head, with a Content-Length, or chunked if `length` is None."""
    auth = f"Authorization: Bearer {KEY}\r\n" if side == "wrapper" else ""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return head("/v1/chat/completions", "POST", f"{auth}Content-Type: application/json\r\n{framing}\r\n{extra}\r\n")


def rss_peak_kib(server: Server) -> int:
    status = open(f"/proc/{server.proc.pid}/status").read()  # noqa: SIM115
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


# ---- request line and headers: size ----------------------------------------------------------------

@pytest.mark.parametrize("side", ["wrapper", "worker"])
@pytest.mark.parametrize("where", ["header", "url"])
def test_headers_over_the_cap_get_431_and_under_it_are_served(servers, side, where):
    server = servers[side]
    filler = 64 * 1024
    request = (head(extra=f"X-Filler: {'a' * filler}\r\n") if where == "header"
               else head(path=f"/health?{'a' * filler}")) + b"\r\n"
    with connect(server) as sock:
        sock.sendall(request)
        status, headers, body = answer_of(sock)
        assert status == 431 and body["error"]["code"] == "headers_too_large"
        assert SAFE_ID.fullmatch(headers["x-request-id"])
        assert closed(sock)
    assert headers["x-request-id"] in server.proc.output()  # the warning names the request
    # just under the default 16 KiB cap: served
    with connect(server) as sock:
        sock.sendall(head(extra=f"X-Filler: {'a' * 16000}\r\n") + b"\r\n")
        assert answer_of(sock)[0] == 200


FLOOD_START = {
    "header": head(extra="X-Request-ID: "),
    # a chunked body's trailer is a header too, and httptools joins its pieces the same way
    "trailer": chat_head("wrapper", None) + b"2\r\n{}\r\n0\r\nX-Trailer: ",
}


@pytest.mark.parametrize("where", ["header", "trailer"])
def test_a_flood_of_header_bytes_is_cut_off_without_buffering_it(servers, where):
    """64 MiB in one header once cost seconds of CPU and 128 MiB: httptools joins a header's pieces over
    and over. Now the connection is cut after the cap, and the peak RSS stays put."""
    wrapper = servers["wrapper"]
    before = rss_peak_kib(wrapper)
    piece = b"a" * (256 * 1024)
    with connect(wrapper, timeout=30) as sock:
        sock.sendall(FLOOD_START[where])
        try:
            for _ in range(32 * 1024 * 1024 // len(piece)):  # 32 MiB
                sock.sendall(piece)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off: what the test wants
    assert get_json(wrapper.url + "/health")[0] == 200
    assert rss_peak_kib(wrapper) - before < 16 * 1024


# ---- request line and headers: time ----------------------------------------------------------------

@pytest.mark.parametrize("side", ["wrapper", "worker"])
def test_half_headers_then_silence_get_408_and_the_connection_closed(servers, side):
    server = servers[side]
    with connect(server) as sock:
        sock.sendall(head("/v1/chat/completions", "POST", "Content-Type: applic"))
        status, headers, body = answer_of(sock)  # socket.timeout if nothing comes within TIMEOUT + SLACK
        assert status == 408 and body["error"]["code"] == "header_timeout"
        assert SAFE_ID.fullmatch(headers["x-request-id"])
        assert closed(sock)


def test_a_connection_that_sends_nothing_is_closed(servers):
    with connect(servers["wrapper"]) as sock:
        assert sock.recv(1024) == b""  # closed without a word: socket.timeout if it stays open


def test_headers_trickled_byte_by_byte_still_meet_the_deadline(servers):
    """The header deadline runs from the first byte: trickling does not extend it (slowloris)."""
    with connect(servers["wrapper"]) as sock:
        sock.sendall(head())
        deadline = time.monotonic() + TIMEOUT + SLACK
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() < deadline:
                sock.sendall(b"X")
                time.sleep(0.1)
            raise AssertionError("still open after the header timeout")


# ---- bodies ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["wrapper", "worker"])
def test_a_body_that_stalls_gets_408_and_the_connection_closed(servers, side):
    server = servers[side]
    with connect(server) as sock:
        sock.sendall(chat_head(side, 1000) + b'{"model": "')
        status, headers, body = answer_of(sock)
        assert status == 408 and body["error"]["code"] == "body_timeout"
        assert SAFE_ID.fullmatch(headers["x-request-id"])
        assert closed(sock)
    assert headers["x-request-id"] in server.proc.output()


@pytest.mark.parametrize("path, extra, expected", [
    ("/v1/chat/completions", "", 401),  # refused before its body is read
    ("/v1/no-such-route", f"Authorization: Bearer {KEY}\r\n", 404),
])
def test_a_body_left_unread_after_the_answer_must_still_arrive_in_time(servers, path, extra, expected):
    with connect(servers["wrapper"]) as sock:
        sock.sendall(head(path, "POST", f"{extra}Content-Length: 100000\r\n\r\n") + b"{" * 1000)
        status, headers, _ = answer_of(sock)
        assert status == expected and SAFE_ID.fullmatch(headers["x-request-id"])
        assert closed(sock)  # not after uvicorn's keep-alive (75 s), which a trickle would even defeat


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(servers):
    wrapper = servers["wrapper"]
    with connect(wrapper) as sock:
        sock.sendall(chat_head("wrapper", 1000, "X-Request-ID: rid-hangs-up\r\n") + b'{"model": "')
        time.sleep(0.2)  # let the wrapper start reading the body
    wait_until(lambda: "request rid-hangs-up: the client went away" in wrapper.proc.output(), TIMEOUT + SLACK,
               "the wrapper to notice the hang-up")
    assert "Traceback" not in wrapper.proc.output()


# ---- connections -----------------------------------------------------------------------------------

def test_connections_over_the_limit_get_503_and_the_server_recovers(procs, consul, tmp_path):
    config = tmp_path / "env.yaml"
    config.write_text("limits:\n  max_connections: 3\n  header_timeout: 60\n")  # the idle ones stay
    wrapper = start_wrapper(procs, consul, "--config", str(config))
    idle = [connect(wrapper, timeout=10) for _ in range(2)]
    assert get_json(wrapper.url + "/health")[0] == 200  # 2 idle + this one: within the limit
    idle.append(connect(wrapper, timeout=10))

    def refused() -> bool:
        status, _, raw = post(wrapper.base_url + "/chat/completions", {"model": "m", "messages": []})
        return status == 503 and json.loads(raw)["error"]["code"] == "too_many_connections"

    wait_until(refused, 5, "a request on a 4th connection to get 503")
    status, headers, raw = post(wrapper.base_url + "/chat/completions", {"model": "m", "messages": []})
    assert status == 503 and headers["retry-after"] == "1" and SAFE_ID.fullmatch(headers["x-request-id"])
    # a burst on many more connections: every one refused, nothing held
    burst = [connect(wrapper, timeout=10) for _ in range(50)]
    for sock in burst:
        sock.sendall(head() + b"\r\n")
    assert {answer_of(sock)[0] for sock in burst} == {503}
    for sock in burst + idle:
        sock.close()
    wait_until(lambda: get_json(wrapper.url + "/health")[0] == 200, 5, "the wrapper to serve again")
    assert wrapper.proc.alive()


# ---- request ids -----------------------------------------------------------------------------------

def chat(server: Server, headers: dict[str, str] | None = None, body: bytes | dict | None = None, model=MODEL):
    payload = body if body is not None else {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return post(server.base_url + "/chat/completions", payload, {**AUTH, **(headers or {})})


def worker_logged(worker: Server, request_id: str) -> None:
    wait_until(lambda: f"request {request_id}: chat {MODEL}" in worker.proc.output(), 5,
               f"the worker to log request id {request_id}")


@pytest.mark.parametrize("given", ["has spaces", "semi;colon", "back\\slash", "<script>", "ünïcode"])
def test_an_unsafe_request_id_is_replaced_and_the_worker_gets_the_new_one(servers, given):
    wrapper, worker = servers["wrapper"], servers["worker"]
    status, headers, _ = chat(wrapper, {"X-Request-ID": given})
    assert status == 200
    used = headers["x-request-id"]
    assert used != given and SAFE_ID.fullmatch(used)
    worker_logged(worker, used)
    assert given not in worker.proc.output() and given not in wrapper.proc.output()


def test_a_request_id_of_128_characters_is_kept_and_of_129_replaced(servers):
    wrapper, worker = servers["wrapper"], servers["worker"]
    longest = "Ab0._:-" + "z" * 121  # every kind of character allowed
    status, headers, _ = chat(wrapper, {"X-Request-ID": longest})
    assert status == 200 and headers["x-request-id"] == longest
    worker_logged(worker, longest)
    status, headers, _ = chat(wrapper, {"X-Request-ID": longest + "z"})
    used = headers["x-request-id"]
    assert status == 200 and used != longest + "z" and SAFE_ID.fullmatch(used)
    worker_logged(worker, used)


def test_every_wrapper_answer_carries_a_request_id_that_its_log_names(servers, procs, consul):
    wrapper = servers["wrapper"]
    gone = unique_model("gone")
    doomed = start_worker(procs, consul, "generators.echo.EchoGen", "--models", gone)
    wait_until(lambda: routable(wrapper, gone, AUTH), 5, "routable")
    doomed.proc.signal(signal.SIGKILL)
    wait_until(lambda: not routable(wrapper, gone, AUTH), 10, "the killed worker to leave the table")
    answers = {
        401: post(wrapper.base_url + "/chat/completions", {"model": MODEL, "messages": []}),
        404: chat(wrapper, model="no-such-model"),
        413: chat(wrapper, body=b"x" * (MAX_BODY + 1)),
        400: chat(wrapper, body=b"{not json"),
        503: chat(wrapper, model=gone),
    }
    unknown_url = post(wrapper.url + "/v1/no-such-route", {}, AUTH)
    wrong_method = get_json_answer(wrapper.base_url + "/chat/completions")
    assert (unknown_url[0], wrong_method[0]) == (404, 405)
    assert chat(wrapper)[0] == 200
    assert [got for got, _, _ in answers.values()] == list(answers)
    failures = [*answers.values(), unknown_url, wrong_method]
    ids = [headers.get("x-request-id") for _, headers, _ in failures]
    assert all(i and SAFE_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    logs = wrapper.proc.output()
    assert all(f"request {i}:" in logs for i in ids), [i for i in ids if f"request {i}:" not in logs]
    assert re.search(rf"WARNING .*request {answers[503][1]['x-request-id']}: 503 no_healthy_worker", logs)


def test_every_worker_answer_carries_a_request_id(servers):
    worker = servers["worker"]
    answers = [
        post(worker.base_url + "/chat/completions", b"{not json"),
        post(worker.base_url + "/chat/completions", {"model": "elsewhere", "messages": [{"role": "user"}]}),
        post(worker.url + "/v1/no-such-route", {}),
        get_json_answer(worker.base_url + "/chat/completions"),
        get_json_answer(worker.url + "/health"),
    ]
    assert [status for status, _, _ in answers] == [400, 404, 404, 405, 200]
    assert all(SAFE_ID.fullmatch(headers.get("x-request-id", "")) for _, headers, _ in answers)
    status, headers, _ = post(worker.base_url + "/chat/completions", b"{not json", {"X-Request-ID": "rid-worker-1"})
    assert (status, headers["x-request-id"]) == (400, "rid-worker-1")


def get_json_answer(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
