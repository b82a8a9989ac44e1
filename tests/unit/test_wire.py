"""common.wire's request checks and framing, and common.errors.to_openai_error, in process.

Field checks are held to OpenAI's spec (tests/spec): what the spec accepts must pass, and each refused value
is one the spec refuses too, reported with the field's name as `param`."""
from __future__ import annotations

import base64
import struct

import orjson
import pytest
from starlette.exceptions import HTTPException

from common.errors import InvalidRequest, NotFound, OpenAIError, RateLimited, to_openai_error
from common.settings import LimitSettings
from common.wire import (
    Capability,
    check_fields,
    embedding_inputs,
    encode_vector,
    error_code,
    parse_body,
    require_routing_fields,
    sse_comments_only,
    sse_error_event,
    sse_event,
)
from tests.support.schemas import OpenAPISpec

SPEC = OpenAPISpec()
REQUEST_SCHEMA = {Capability.CHAT: "CreateChatCompletionRequest", Capability.COMPLETION: "CreateCompletionRequest",
                  Capability.EMBEDDING: "CreateEmbeddingRequest"}
LIMITS = LimitSettings()
MESSAGES = [{"role": "user", "content": "hi"}]
BASE = {Capability.CHAT: {"model": "m", "messages": MESSAGES}, Capability.COMPLETION: {"model": "m", "prompt": "hi"},
        Capability.EMBEDDING: {"model": "m", "input": "hi"},
        # the media endpoints (#11); the multipart ones as their form fields, the file marked present
        Capability.SPEECH: {"model": "m", "input": "hi"}, Capability.TRANSCRIPTION: {"model": "m", "file": True},
        Capability.TRANSLATION: {"model": "m", "file": True}, Capability.IMAGE_GENERATION: {"model": "m", "prompt": "a"},
        Capability.IMAGE_EDIT: {"model": "m", "image": True}, Capability.MODERATION: {"model": "m", "input": "hi"},
        Capability.RERANK: {"model": "m", "query": "q", "documents": ["d"]},
        Capability.SCORE: {"model": "m", "text_1": "a", "text_2": "b"}}


def refused(call, *args) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        call(*args)
    assert err.value.status == 400 and err.value.type == "invalid_request_error"
    return err.value


# ---- parse_body ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b'"a string"', b"null", b"\xff\xfe"])
def test_parse_body_refuses_what_is_not_a_json_object(raw):
    assert refused(parse_body, raw, LIMITS).code == "invalid_json"


def test_parse_body_returns_the_object():
    assert parse_body(b'{"model": "m", "n": 1.0}', LIMITS) == {"model": "m", "n": 1.0}


def test_parse_body_refuses_too_many_arrays_and_objects_before_parsing():
    limits = LimitSettings(max_json_containers=100)
    at_limit = b'{"model": "m", "x": [' + b",".join([b"[]"] * 97) + b'], "y": {}}'  # 100 with the body
    assert len(parse_body(at_limit, limits)["x"]) == 97
    over = b'{"model": "m", "x": [' + b",".join([b"[]"] * 98) + b'], "y": {}}'
    assert refused(parse_body, over, limits).code == "too_many_elements"


def test_brackets_inside_strings_are_not_counted():
    text = '[{"a": "b"}] \\" {[ \"' * 100  # brackets, escaped quotes and backslashes inside one string
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    assert parse_body(raw, LimitSettings(max_json_containers=100))["messages"][0]["content"] == text


def test_nesting_beyond_the_parsers_limit_is_invalid_json():
    raw = b'{"x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert refused(parse_body, raw, LIMITS).code == "invalid_json"


# ---- require_routing_fields ------------------------------------------------------------------------

@pytest.mark.parametrize("capability", list(Capability))
def test_routing_fields_return_the_model(capability):
    assert require_routing_fields({**BASE[capability], "stream": True}, capability) == "m"


@pytest.mark.parametrize("capability", list(Capability))
def test_a_missing_model_is_named(capability):
    err = refused(require_routing_fields, {k: v for k, v in BASE[capability].items() if k != "model"}, capability)
    assert (err.param, err.code) == ("model", "missing_required_parameter")


@pytest.mark.parametrize("model", [None, 3, ["m"], {"id": "m"}, True])
def test_a_model_that_is_not_a_string_is_refused(model):
    body = {**BASE[Capability.CHAT], "model": model}
    if model is None:  # explicit null counts as missing
        assert refused(require_routing_fields, body, Capability.CHAT).code == "missing_required_parameter"
        return
    err = refused(require_routing_fields, body, Capability.CHAT)
    assert (err.param, err.code) == ("model", "invalid_type")


@pytest.mark.parametrize("capability, field", [(Capability.CHAT, "messages"), (Capability.COMPLETION, "prompt"),
                                                (Capability.EMBEDDING, "input")])
def test_the_missing_input_field_is_named(capability, field):
    err = refused(require_routing_fields, {"model": "m"}, capability)
    assert (err.param, err.code) == (field, "missing_required_parameter")


def test_a_stream_flag_that_is_not_a_boolean_is_refused():
    err = refused(require_routing_fields, {**BASE[Capability.CHAT], "stream": "yes"}, Capability.CHAT)
    assert (err.param, err.code) == ("stream", "invalid_type")


# ---- check_fields: accepted as the spec accepts ------------------------------------------------------

ACCEPTED = [
    (Capability.COMPLETION, {"prompt": [1212, 318, 257]}),                     # tokens
    (Capability.COMPLETION, {"prompt": [[1212, 318], [257]]}),                 # token arrays
    (Capability.COMPLETION, {"prompt": None}),                                 # null prompt
    (Capability.COMPLETION, {"prompt": []}),                                   # an empty array of strings
    (Capability.COMPLETION, {"prompt": ["a", "b"], "max_tokens": 0}),
    (Capability.COMPLETION, {"max_tokens": 16.0}),                             # 1.0 is an integer in JSON Schema
    (Capability.COMPLETION, {"n": 128}),
    (Capability.COMPLETION, {"stop": ["a", "b", "c", "d"], "temperature": 2, "top_p": 0}),
    (Capability.CHAT, {"n": 1.0, "max_tokens": None, "temperature": None, "stop": None}),
    (Capability.CHAT, {"n": 128, "max_completion_tokens": 5, "stop": "\n", "tools": []}),
    (Capability.CHAT, {"stream_options": {"include_usage": True}}),
    (Capability.EMBEDDING, {"input": [1, 2, 3]}),
    (Capability.EMBEDDING, {"input": [[1, 2], [3]], "encoding_format": "base64", "dimensions": 1.0}),
    (Capability.EMBEDDING, {"input": ["a", "b"], "encoding_format": "float"}),
]


@pytest.mark.parametrize("capability, fields", ACCEPTED)
def test_what_the_spec_accepts_passes(capability, fields):
    body = {**BASE[capability], **fields}
    assert SPEC.accepts(REQUEST_SCHEMA[capability], body), "the example itself is not spec-valid"
    check_fields(body, capability, LIMITS)


# ---- check_fields: refused, with the field as `param` -------------------------------------------------

REFUSED = [
    (Capability.CHAT, "messages", []),
    (Capability.CHAT, "messages", "hi"),
    (Capability.CHAT, "messages", [{"content": "no role"}]),
    (Capability.CHAT, "max_tokens", "10"),
    (Capability.CHAT, "max_tokens", 1.5),
    (Capability.CHAT, "max_completion_tokens", True),
    (Capability.CHAT, "tools", {"type": "function"}),
    (Capability.CHAT, "n", 0),
    (Capability.CHAT, "n", 129),
    (Capability.CHAT, "n", 2.5),
    (Capability.CHAT, "temperature", 2.5),
    (Capability.CHAT, "temperature", "hot"),
    (Capability.CHAT, "top_p", -0.1),
    (Capability.CHAT, "stop", ["a", "b", "c", "d", "e"]),
    (Capability.CHAT, "stop", 7),
    (Capability.CHAT, "stream_options", "include_usage"),
    (Capability.COMPLETION, "prompt", 42),
    (Capability.COMPLETION, "prompt", [1, "a"]),
    (Capability.COMPLETION, "prompt", [[]]),
    (Capability.COMPLETION, "max_tokens", -1),
    (Capability.COMPLETION, "n", 129),
    (Capability.EMBEDDING, "input", []),
    (Capability.EMBEDDING, "input", None),
    (Capability.EMBEDDING, "input", [["a"]]),
    (Capability.EMBEDDING, "encoding_format", "int8"),
    (Capability.EMBEDDING, "dimensions", 0),
    (Capability.EMBEDDING, "dimensions", False),
]


@pytest.mark.parametrize("capability, field, value", REFUSED)
def test_wrong_types_and_ranges_are_refused_with_the_param(capability, field, value):
    body = {**BASE[capability], field: value}
    assert not SPEC.accepts(REQUEST_SCHEMA[capability], body), "the spec accepts this: it must not be refused"
    err = refused(check_fields, body, capability, LIMITS)
    assert (err.param, err.code) == (field, "invalid_value")
    assert f"'{field}'" in err.message


def test_the_configured_limits_are_enforced():
    limits = LimitSettings(max_n=4, max_embedding_inputs=2)
    check_fields({**BASE[Capability.CHAT], "n": 4}, Capability.CHAT, limits)
    assert refused(check_fields, {**BASE[Capability.CHAT], "n": 5}, Capability.CHAT, limits).param == "n"
    check_fields({**BASE[Capability.EMBEDDING], "input": ["a", "b"]}, Capability.EMBEDDING, limits)
    check_fields({**BASE[Capability.EMBEDDING], "input": [1, 2, 3, 4]}, Capability.EMBEDDING, limits)  # one input
    err = refused(check_fields, {**BASE[Capability.EMBEDDING], "input": ["a", "b", "c"]}, Capability.EMBEDDING, limits)
    assert err.param == "input"


def test_array_lengths_are_capped():
    limits = LimitSettings(max_messages=2, max_prompts=2)
    check_fields({**BASE[Capability.CHAT], "messages": MESSAGES * 2}, Capability.CHAT, limits)
    assert refused(check_fields, {**BASE[Capability.CHAT], "messages": MESSAGES * 3}, Capability.CHAT,
                   limits).param == "messages"
    check_fields({**BASE[Capability.COMPLETION], "prompt": ["a", "b"]}, Capability.COMPLETION, limits)
    check_fields({**BASE[Capability.COMPLETION], "prompt": [1, 2, 3]}, Capability.COMPLETION, limits)  # one prompt
    assert refused(check_fields, {**BASE[Capability.COMPLETION], "prompt": ["a", "b", "c"]}, Capability.COMPLETION,
                   limits).param == "prompt"
    functions = [{"name": f"f{i}"} for i in range(129)]  # the spec's maxItems is 128
    assert refused(check_fields, {**BASE[Capability.CHAT], "functions": functions}, Capability.CHAT,
                   limits).param == "functions"


def test_unknown_fields_pass_untouched():
    body = {**BASE[Capability.CHAT], "new_field": [1], "temperature": 1}
    before = dict(body)
    check_fields(body, Capability.CHAT, LIMITS)
    assert body == before


# ---- SSE keep-alives and worker error bodies -----------------------------------------------------

@pytest.mark.parametrize("chunk, comments_only", [
    (b": ping\n\n", True),
    (b": ping - 2025-01-01 00:00:00\r\n\r\n: again\n\n", True),
    (b"\n", True),
    (b'data: {"a": 1}\n\n', False),
    (b': ping\n\ndata: {"a": 1}\n\n', False),  # an event after a ping is progress
    (b"event: x\n\n", False),
])
def test_sse_comments_only(chunk, comments_only):
    assert sse_comments_only(chunk) is comments_only


@pytest.mark.parametrize("raw, code", [
    (b'{"error": {"message": "m", "type": "t", "param": "model", "code": "model_not_found"}}', "model_not_found"),
    (b'{"error": {"message": "m", "code": null}}', None),
    (b'{"detail": "Not Found"}', None),
    (b"[1]", None),
    (b"not json", None),
])
def test_error_code(raw, code):
    assert error_code(raw) == code


# ---- embedding_inputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, inputs", [
    ("one", ["one"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),           # one token array is one input
    ([[1, 2], [3]], [[1, 2], [3]]),     # several token arrays
    (None, []),
])
def test_embedding_inputs(value, inputs):
    assert embedding_inputs(value) == inputs


# ---- encode_vector -------------------------------------------------------------------------------

def test_base64_is_little_endian_float32_and_round_trips():
    vector = [0.5, -1.25, 3.0, 1e-3]
    encoded = encode_vector(vector, "base64")
    raw = base64.b64decode(encoded)
    assert len(raw) == 4 * len(vector)
    assert raw[:4] == b"\x00\x00\x00\x3f"  # 0.5 as little-endian IEEE 754 single precision
    assert list(struct.unpack(f"<{len(vector)}f", raw)) == pytest.approx(vector)


def test_float_format_is_a_list_of_floats():
    assert encode_vector([1, 0.5], "float") == [1.0, 0.5]
    assert all(isinstance(x, float) for x in encode_vector([1, 2], "float"))


# ---- SSE framing ---------------------------------------------------------------------------------

def test_sse_event_is_one_data_line_and_a_blank_line():
    frame = sse_event({"choices": [{"delta": {"content": "a\nb"}}]})
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # the JSON carries newlines escaped, so the event is one line
    assert orjson.loads(frame[len(b"data: "):-2]) == {"choices": [{"delta": {"content": "a\nb"}}]}


def test_sse_error_event_carries_an_openai_error():
    frame = sse_error_event(RateLimited("Slow down", code="busy"))
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
    assert orjson.loads(frame[len(b"data: "):-2]) == {
        "error": {"message": "Slow down", "type": "rate_limit_error", "param": None, "code": "busy"}}


def test_sse_error_event_hides_an_unexpected_failure():
    frame = sse_error_event(RuntimeError("secret internals"))
    error = orjson.loads(frame[len(b"data: "):-2])["error"]
    assert error["code"] == "internal_error" and "secret" not in frame.decode()


# ---- to_openai_error -----------------------------------------------------------------------------

def test_an_openai_error_is_kept_as_it_is():
    exc = InvalidRequest("bad", param="temperature", code="invalid_value", headers={"X-A": "1"})
    assert to_openai_error(exc) is exc


def test_starlette_404_names_the_url():
    err = to_openai_error(HTTPException(404), "GET", "/v1/nope")
    assert isinstance(err, NotFound)
    assert (err.status, err.type, err.code) == (404, "invalid_request_error", "unknown_url")
    assert "GET /v1/nope" in err.message


def test_starlette_405_keeps_the_allow_header():
    err = to_openai_error(HTTPException(405, headers={"Allow": "POST"}), "GET", "/v1/chat/completions")
    assert (err.status, err.type, err.code) == (405, "invalid_request_error", "method_not_allowed")
    assert err.headers == {"Allow": "POST"}
    assert "GET" in err.message and "/v1/chat/completions" in err.message


def test_other_http_errors_keep_their_status_and_detail():
    err = to_openai_error(HTTPException(418, detail="short and stout"))
    assert (err.status, err.message, err.type) == (418, "short and stout", "invalid_request_error")


def test_an_unexpected_exception_is_an_internal_error_that_leaks_nothing():
    err = to_openai_error(ValueError("password=hunter2 at /srv/app.py line 3"))
    assert type(err) is OpenAIError
    assert (err.status, err.type, err.code) == (500, "server_error", "internal_error")
    assert "hunter2" not in err.message and "app.py" not in err.message
