"""Request ids, in process: which client ids are kept, and that every answer of an `openai_app` (direct hot
route, framework route, error before routing) carries the id its handler saw."""
from __future__ import annotations

import re

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from common.errors import InvalidRequest
from common.http import assign_request_id, json_response, openai_app, request_id

SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def scope_with(*headers: tuple[bytes, bytes]) -> dict:
    return {"type": "http", "headers": [(b"host", b"x"), *headers]}


@pytest.mark.parametrize("given", [b"a", b"rid-1234", b"A.b_c:d-9", b"z" * 128])
def test_a_short_safe_id_is_kept_and_the_headers_untouched(given):
    scope = scope_with((b"x-request-id", given))
    headers = scope["headers"]
    assert assign_request_id(scope) == given and scope["request_id"] == given.decode()
    assert scope["headers"] is headers


@pytest.mark.parametrize("given", [b"", b"z" * 129, b"has space", b"semi;colon", b"new\nline", b"\xc3\xbc", b"<x>"])
def test_a_missing_long_or_unsafe_id_is_replaced_in_the_headers_too(given):
    scope = scope_with((b"x-request-id", given), (b"x-request-id", b"second"))
    used = assign_request_id(scope)
    assert SAFE.fullmatch(used.decode()) and used != given
    assert [v for k, v in scope["headers"] if k == b"x-request-id"] == [used]  # what the app reads


def test_no_id_gets_a_new_one_each_time():
    ids = {assign_request_id(scope_with()) for _ in range(100)}
    assert len(ids) == 100 and all(SAFE.fullmatch(i.decode()) for i in ids)


@pytest.fixture(scope="module")
def client():
    seen: list[str] = []

    async def direct(request: Request) -> Response:
        seen.append(request_id(request))
        if request.headers.get("x-fail"):
            raise InvalidRequest("no", code="nope")
        return json_response({"header": request.headers.get("x-request-id")})

    async def framework(request: Request) -> Response:
        seen.append(request_id(request))
        return json_response({})

    api, asgi = openai_app("t", posts={"/direct": direct}, lifespan=None)
    api.add_api_route("/framework", framework, methods=["GET"])
    with TestClient(asgi) as c:
        c.seen = seen  # type: ignore[attr-defined]
        yield c


@pytest.mark.parametrize("method, path, headers, status", [
    ("POST", "/direct", {}, 200),
    ("POST", "/direct", {"x-fail": "1"}, 400),
    ("GET", "/framework", {}, 200),
    ("GET", "/nowhere", {}, 404),
    ("GET", "/direct", {}, 405),
])
def test_every_answer_carries_the_id_its_handler_saw(client, method, path, headers, status):
    for given in (None, "rid-kept", "not kept!"):
        sent = {**headers, **({"X-Request-ID": given} if given else {})}
        client.seen.clear()
        r = client.request(method, path, headers=sent)
        assert r.status_code == status
        ids = r.headers.get_list("x-request-id")
        assert len(ids) == 1 and SAFE.fullmatch(ids[0])
        if given == "rid-kept":
            assert ids[0] == given
        if client.seen:
            assert client.seen == [ids[0]]
        if path == "/direct" and status == 200:
            assert r.json()["header"] == ids[0]
