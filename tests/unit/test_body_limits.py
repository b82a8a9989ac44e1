"""common.http.read_body: bodies up to the limit are read, larger ones are a 413, a stalled one a 408, in process (a tiny Starlette
app with the apps' own error handlers, called with Starlette's TestClient)."""
from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from common.http import DRAIN_FACTOR, EXCEPTION_HANDLERS, ClientGone, read_body

LIMIT = 1024


async def echo_size(request: Request) -> JSONResponse:
    body = await read_body(request, LIMIT)
    return JSONResponse({"size": len(body), "first": body[:1].decode(), "last": body[-1:].decode()})


@pytest.fixture(scope="module")
def client():
    app = Starlette(routes=[Route("/", echo_size, methods=["POST"])], exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as c:
        yield c


def chunks(total: int, size: int = 100):
    """A body sent chunked, with no Content-Length: the limit cannot be checked up front."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"x" * n
        sent += n


def test_a_body_at_the_limit_is_read_whole(client):
    body = b"a" + b"x" * (LIMIT - 2) + b"z"
    r = client.post("/", content=body)
    assert r.status_code == 200
    assert r.json() == {"size": LIMIT, "first": "a", "last": "z"}


def test_an_empty_body_is_read(client):
    assert client.post("/", content=b"").json()["size"] == 0


@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT * DRAIN_FACTOR + 1, LIMIT * DRAIN_FACTOR * 4])
def test_a_body_over_the_limit_is_413(client, size):
    r = client.post("/", content=b"x" * size)
    assert r.status_code == 413
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert str(LIMIT) in error["message"]


def test_a_chunked_body_is_held_to_the_limit_too(client):
    assert client.post("/", content=chunks(LIMIT)).json()["size"] == LIMIT
    r = client.post("/", content=chunks(LIMIT + 1))
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")


@pytest.mark.parametrize("declared", ["abc", "-5", "1e3", " 12"])
def test_a_content_length_that_is_not_a_number_is_400(client, declared):
    r = client.post("/", content=b"{}", headers={"Content-Length": declared})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "Content-Length" in error["message"]


# ---- a body that ends early ------------------------------------------------------------------------------

def paced_request(pieces: list[bytes], pause: float, then: str) -> Request:
    """A request whose body comes in `pieces`, `pause` seconds apart, and `then`: "ends" (the last piece
    is the end of the body), "stalls" or "hangs up"."""
    queue = list(pieces)

    async def receive() -> dict:
        if queue:
            await asyncio.sleep(pause)
            piece = queue.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(queue) or then != "ends"}
        if then == "hangs up":
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # silence
        raise AssertionError("unreachable")

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def test_a_client_that_hangs_up_mid_body_is_gone_not_an_error():
    with pytest.raises(ClientGone):
        asyncio.run(read_body(paced_request([b'{"model": '], 0, "hangs up"), LIMIT))
