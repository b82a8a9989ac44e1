"""OpenAI wire shapes: the only module that knows what requests and responses look like."""
from __future__ import annotations

import base64
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from .errors import InvalidRequest, error_json
from .media_checks import MEDIA_CHECKS
from .settings import LimitSettings
from .usage import from_json_answer as usage_in_answer


class Capability(StrEnum):
    """What a request asks a model to do: one per model-addressed endpoint."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    RESPONSES = "responses"
    RESPONSES_INPUT_TOKENS = "responses_input_tokens"
    SPEECH = "speech"
    TRANSCRIPTION = "transcription"
    TRANSLATION = "translation"
    IMAGE_GENERATION = "image_generation"
    IMAGE_EDIT = "image_edit"
    MODERATION = "moderation"
    RERANK = "rerank"
    SCORE = "score"


PATHS = {Capability.CHAT: "/v1/chat/completions", Capability.COMPLETION: "/v1/completions",
         Capability.EMBEDDING: "/v1/embeddings", Capability.RESPONSES: "/v1/responses",
         Capability.RESPONSES_INPUT_TOKENS: "/v1/responses/input_tokens", Capability.SPEECH: "/v1/audio/speech",
         Capability.TRANSCRIPTION: "/v1/audio/transcriptions", Capability.TRANSLATION: "/v1/audio/translations",
         Capability.IMAGE_GENERATION: "/v1/images/generations", Capability.IMAGE_EDIT: "/v1/images/edits",
         Capability.MODERATION: "/v1/moderations", Capability.RERANK: "/v1/rerank", Capability.SCORE: "/v1/score"}

# What each endpoint's body must carry besides `model`, for routing and validation.
INPUT_FIELD = {Capability.CHAT: "messages", Capability.COMPLETION: "prompt", Capability.EMBEDDING: "input",
               Capability.RESPONSES: "input", Capability.RESPONSES_INPUT_TOKENS: "input",
               Capability.SPEECH: "input", Capability.TRANSCRIPTION: "file", Capability.TRANSLATION: "file",
               Capability.IMAGE_GENERATION: "prompt", Capability.IMAGE_EDIT: "image",
               Capability.MODERATION: "input", Capability.RERANK: "documents", Capability.SCORE: "text_1"}

# Endpoints whose body is multipart/form-data (an upload) rather than JSON.
MULTIPART = frozenset({Capability.TRANSCRIPTION, Capability.TRANSLATION, Capability.IMAGE_EDIT})

# Streams that end with a usage chunk when `stream_options.include_usage` asks for it.
USAGE_CHUNK_STREAMS = frozenset({Capability.CHAT, Capability.COMPLETION})

# Endpoints whose answer is binary (audio), relayed chunk by chunk as it arrives, never read whole.
BINARY_ANSWER = frozenset({Capability.SPEECH})

# What a worker that registers no capabilities serves (registrations older than capabilities).
LEGACY_CAPABILITIES = frozenset({Capability.CHAT, Capability.COMPLETION, Capability.EMBEDDING})

# Fields that point at state kept by an earlier request: the gateway cannot promise the same worker.
STATEFUL_FIELDS: dict[Capability, dict[str, Any]] = dict.fromkeys(
    (Capability.RESPONSES, Capability.RESPONSES_INPUT_TOKENS),
    # field -> the value that asks for no state (None: only absent or null is stateless)
    {"previous_response_id": None, "conversation": None, "background": False, "store": False})


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def now() -> int:
    return int(time.time())


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# ---- SSE framing ----------------------------------------------------------------------------

DONE_EVENT = b"data: [DONE]\n\n"
SSE = "text/event-stream"


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_error_event(exc: BaseException) -> bytes:
    """The event a stream ends with when it fails after it started (no [DONE] follows)."""
    return b"data: " + error_json(exc) + b"\n\n"


_KEEPALIVE_START = frozenset(b":\r\n")


def sse_comments_only(chunk: bytes) -> bool:
    """True if `chunk` holds only SSE comment lines (`: ping`) and blank lines: a keep-alive, no event."""
    if chunk[0] not in _KEEPALIVE_START:
        return False  # the usual chunk, an event: decided on its first byte
    return all(not line or line[0] == 58 for line in chunk.splitlines())  # 58: ":"


_ERROR_EVENT = b'data: {"error":'


def ends_with_error_event(chunk: bytes) -> bool:
    """Whether a stream's last chunk holds the error event a failed stream ends with (`sse_error_event`).
    Inside an event's JSON strings a quote is escaped, so the bytes cannot come from generated text."""
    return _ERROR_EVENT in chunk


def error_code(raw: bytes) -> str | None:
    """The `code` of an OpenAI error body, or None if `raw` is not one."""
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


# ---- requests -------------------------------------------------------------------------------

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _containers(raw: bytes) -> int:
    """At least the arrays and objects in a JSON text: its `[` and `{`, counting those inside strings."""
    return raw.count(b"[") + raw.count(b"{")


def _too_many_containers(raw: bytes, limit: int) -> bool:
    if _containers(raw) <= limit:
        return False  # the usual case: two byte counts
    return _containers(_JSON_STRING.sub(b"", raw)) > limit  # brackets inside strings do not count


def parse_body(raw: bytes, limits: LimitSettings) -> dict[str, Any]:
    """The body as a dict. Arrays and objects beyond `limits.max_json_containers` are refused before the
    parse: parsed, each costs ~70 bytes, so 4 MiB of `[]` would take ~150 MiB. Nesting deeper than 1024 is
    the parser's own limit (invalid_json)."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    if _too_many_containers(raw, limits.max_json_containers):
        raise InvalidRequest(f"The request body holds more than {limits.max_json_containers} arrays and objects.",
                             code="too_many_elements")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def require_routing_fields(body: dict[str, Any], capability: Capability) -> str:
    """Check what routing needs and return the model name; everything else passes through untouched."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string.", param="model", code="invalid_type")
    field = INPUT_FIELD[capability]
    if field not in body and capability not in MULTIPART:  # a form's file is checked by the form reader
        raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    for name, stateless in STATEFUL_FIELDS.get(capability, {}).items():
        if body.get(name) is not None and body.get(name) != stateless:
            raise InvalidRequest(f"'{name}' needs state kept by an earlier request, which this gateway does not "
                                 "keep (any worker may serve the next request); send the whole conversation in "
                                 "'input' instead.", param=name, code="unsupported_parameter")
    return model


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def is_stream(body: dict[str, Any]) -> bool:
    return body.get("stream") is True


def include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


# ---- responses ------------------------------------------------------------------------------

def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_message(content: str | None, tool_calls: list[dict] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _completion_object(object_type: str, cid: str, created: int, model: str, choices: list[dict],
                       usage_: dict | None) -> dict:
    out = {"id": cid, "object": object_type, "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def chat_completion(cid: str, created: int, model: str, choices: list[dict], usage_: dict | None) -> dict:
    return _completion_object("chat.completion", cid, created, model, choices, usage_)


def chat_choice(index: int, message: dict, finish_reason: str) -> dict:
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def chat_chunk(cid: str, created: int, model: str, choices: list[dict], usage_: dict | None = None) -> dict:
    return _completion_object("chat.completion.chunk", cid, created, model, choices, usage_)


def chat_chunk_choice(index: int, delta: dict, finish_reason: str | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def text_completion(cid: str, created: int, model: str, choices: list[dict], usage_: dict | None = None) -> dict:
    """A completion, or one chunk of a streamed one (OpenAI uses the same object for both)."""
    return _completion_object("text_completion", cid, created, model, choices, usage_)


def text_choice(index: int, text: str, finish_reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_call_delta(index: int, call_id: str | None, name: str | None, arguments: str) -> dict[str, Any]:
    """A piece of a streamed tool call: `id`, `type` and `name` come with a call's first piece only."""
    piece: dict[str, Any] = {"index": index}
    if call_id:
        piece["id"] = call_id
        piece["type"] = "function"
    function: dict[str, Any] = {"arguments": arguments}
    if name:
        function["name"] = name
    piece["function"] = function
    return piece


def encode_vector(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 format: little-endian float32, as the SDK decodes it.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return [float(x) for x in vector]


def embedding_list(model: str, vectors: Iterable[Sequence[float]], encoding_format: str, prompt_tokens: int) -> dict:
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_entry(name: str, created: int, owned_by: str) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def model_list(entries: list[dict]) -> dict:
    return {"object": "list", "data": entries}


class ModelObject(BaseModel):
    """`model_entry`'s shape, for /openapi.json (answers are built as dicts, not validated)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# ---- field checks ---------------------------------------------------------------------------
# Only types and ranges of well-known fields are checked; no value is added, changed or dropped.

def _is_int(v: Any) -> bool:
    # JSON Schema, and so OpenAI's spec, counts 1.0 as an integer
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def choice_count(body: dict[str, Any]) -> int:
    return int(body.get("n") or 1)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _messages_ok(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in v)


def _tokens_ok(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_int(t) for t in v)


def _prompt_ok(v: Any) -> bool:
    """What OpenAI's spec accepts as a prompt: null, an empty array, or anything an input may be."""
    return v is None or v == [] or _input_ok(v)


def _input_ok(v: Any) -> bool:
    """A string, or a non-empty array of strings, of tokens, or of token arrays."""
    if isinstance(v, str):
        return True
    if not isinstance(v, list) or not v:
        return False
    return all(isinstance(p, str) for p in v) or _tokens_ok(v) or all(_tokens_ok(p) for p in v)


def embedding_inputs(value: Any) -> list[Any]:
    """The inputs of an embeddings request (or a prompt) as a list: one string or token array, or several."""
    if value is None:
        return []
    if isinstance(value, str) or _tokens_ok(value):
        return [value]
    return list(value)


def _stop_ok(v: Any) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v))


def _optional_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _responses_input_ok(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(item, dict) for item in v))


def _moderation_input_ok(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and len(v) > 0 and (
        all(isinstance(p, str) for p in v) or all(isinstance(p, dict) for p in v)))


def _documents_ok(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(d, (str, dict)) for d in v)


def _texts_ok(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and len(v) > 0 and all(isinstance(t, str) for t in v))


Check = tuple[Callable[[Any], bool], str]


def _int_field(name: str, minimum: int | None = None, maximum: int | None = None) -> Check:
    def ok(v: Any) -> bool:
        return v is None or (_is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum))
    bounds = "" if minimum is None else f" of at least {minimum}" + ("" if maximum is None else f" and at most {maximum}")
    return ok, f"'{name}' must be an integer{bounds}."


def _number_field(name: str, minimum: float, maximum: float) -> Check:
    return (lambda v: v is None or (_is_number(v) and minimum <= v <= maximum),
            f"'{name}' must be a number from {minimum:g} to {maximum:g}.")


_SAMPLING: dict[str, Check] = {
    "n": _int_field("n", 1, 128),
    "temperature": _number_field("temperature", 0, 2),
    "top_p": _number_field("top_p", 0, 1),
    "stop": (_stop_ok, "'stop' must be a string or an array of up to 4 strings."),
    "stream_options": (lambda v: v is None or isinstance(v, dict), "'stream_options' must be an object."),
}

# The constraints OpenAI's spec states for each endpoint: a request the spec accepts is never refused.
_CHECKS: dict[Capability, dict[str, Check]] = {
    Capability.CHAT: {
        "messages": (_messages_ok, "'messages' must be a non-empty array of message objects, each with a 'role'."),
        "max_tokens": _int_field("max_tokens"),
        "max_completion_tokens": _int_field("max_completion_tokens"),
        "tools": (lambda v: v is None or isinstance(v, list), "'tools' must be an array."),
        **_SAMPLING,
    },
    Capability.COMPLETION: {
        "prompt": (_prompt_ok, "'prompt' must be a string, or a non-empty array of strings, tokens or token arrays."),
        "max_tokens": _int_field("max_tokens", 0),
        **_SAMPLING,
    },
    Capability.EMBEDDING: {
        "input": (_input_ok, "'input' must be a string, or a non-empty array of strings, tokens or token arrays."),
        "encoding_format": (lambda v: v in ("float", "base64"), "'encoding_format' must be 'float' or 'base64'."),
        "dimensions": _int_field("dimensions", 1),
    },
    Capability.RESPONSES: {
        "input": (_responses_input_ok, "'input' must be a string or an array of input items."),
        "instructions": (_optional_str, "'instructions' must be a string."),
        "max_output_tokens": _int_field("max_output_tokens", 1),
        "tools": (lambda v: v is None or isinstance(v, list), "'tools' must be an array."),
        "temperature": _SAMPLING["temperature"],
        "top_p": _SAMPLING["top_p"],
    },
    Capability.RESPONSES_INPUT_TOKENS: {
        "input": (_responses_input_ok, "'input' must be a string or an array of input items."),
    },
    Capability.SPEECH: {
        "input": (lambda v: isinstance(v, str), "'input' must be a string."),
        "voice": (lambda v: v is None or isinstance(v, (str, dict)), "'voice' must be a string or an object."),
        "response_format": (lambda v: v is None or isinstance(v, str), "'response_format' must be a string."),
        "speed": _number_field("speed", 0.25, 4),
    },
    Capability.TRANSCRIPTION: {},  # form fields arrive as text; the worker checks their values
    Capability.TRANSLATION: {},
    Capability.IMAGE_GENERATION: {
        "prompt": (lambda v: isinstance(v, str), "'prompt' must be a string."),
        "n": _int_field("n", 1, 10),
        "size": (_optional_str, "'size' must be a string."),
        "response_format": (_optional_str, "'response_format' must be a string."),
    },
    Capability.IMAGE_EDIT: {},
    Capability.MODERATION: {
        "input": (_moderation_input_ok, "'input' must be a string, or a non-empty array of strings or of "
                                        "input objects."),
    },
    Capability.RERANK: {
        "query": (lambda v: isinstance(v, str), "'query' must be a string."),
        "documents": (_documents_ok, "'documents' must be a non-empty array of strings or of objects."),
        "top_n": _int_field("top_n", 1),
    },
    Capability.SCORE: {
        "text_1": (_texts_ok, "'text_1' must be a string or a non-empty array of strings."),
        "text_2": (_texts_ok, "'text_2' must be a string or a non-empty array of strings."),
    },
    **{Capability(name): checks for name, checks in MEDIA_CHECKS.items()},  # common.media_checks
}


def check_fields(body: dict[str, Any], capability: Capability, limits: LimitSettings) -> None:
    """400 with `param` for a well-known field of the wrong type or an absurd value."""
    checks = _CHECKS[capability]
    for name, value in body.items():  # a body names a few fields; a capability checks a dozen
        check = checks.get(name)
        if check is not None and not check[0](value):
            raise InvalidRequest(check[1], param=name, code="invalid_value")
    n = body.get("n")
    if n is not None and _is_int(n) and n > limits.max_n:
        raise InvalidRequest(f"'n' may be at most {limits.max_n}.", param="n", code="invalid_value")
    for name, cap in _item_caps(capability, limits):
        items = body.get(name)
        # one token array is one input, however long
        if isinstance(items, list) and len(items) > cap and not _tokens_ok(items):
            raise InvalidRequest(f"'{name}' may hold at most {cap} items.", param=name, code="invalid_value")


MAX_FUNCTIONS = 128  # OpenAI's spec: the deprecated `functions`' maxItems (`tools` has none)


def _item_caps(capability: Capability, limits: LimitSettings) -> tuple[tuple[str, int], ...]:
    """The array fields whose length is capped, with their caps."""
    if capability is Capability.CHAT:
        return ("messages", limits.max_messages), ("functions", MAX_FUNCTIONS)
    if capability is Capability.COMPLETION:
        return (("prompt", limits.max_prompts),)
    if capability in (Capability.EMBEDDING, Capability.MODERATION):
        return (("input", limits.max_embedding_inputs),)
    if capability is Capability.RERANK:
        return (("documents", limits.max_embedding_inputs),)
    if capability is Capability.SCORE:
        return ("text_1", limits.max_embedding_inputs), ("text_2", limits.max_embedding_inputs)
    return ()


# ---- what an answer says about itself (for traces; read only when spans are exported) ------------

@dataclass(frozen=True)
class AnswerSummary:
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


def answer_summary(raw: bytes) -> AnswerSummary:
    """The model and token usage of a JSON answer, or of one SSE chunk (its last event that has them).
    The usage is read as the metrics read it (common/usage.py)."""
    model = None
    events = [raw] if not raw.startswith(b"data:") else [line[5:] for line in raw.split(b"\n")
                                                         if line.startswith(b"data:") and b"[DONE]" not in line]
    for event in events:
        try:
            obj = orjson.loads(event)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("model"), str):
            model = obj["model"]
    tokens = None
    for event in events:
        tokens = usage_in_answer(event) or tokens
    if tokens is None:
        return AnswerSummary(model)
    return AnswerSummary(model, tokens.prompt_tokens, tokens.completion_tokens)


# ---- what the affinity balancer keys on (#14, docs/routing.md) --------------------------------------

AFFINITY_ID_FIELDS = ("prompt_cache_key", "user", "safety_identifier")  # in this order, after X-Session-ID


def affinity_source(body: dict[str, Any], prompt_chars: int) -> bytes | None:
    """What identifies a conversation in a request: an explicit id field, else the chat's opening (the
    messages up to and including the first user message: the same in every later turn), else a completion
    prompt's first `prompt_chars` characters; None for requests with neither (embeddings). Two requests
    whose sources are equal share a home instance: nothing more, so the forms need not be told apart."""
    for field in AFFINITY_ID_FIELDS:
        value = body.get(field)
        if isinstance(value, str) and value:
            return f"{field}\0{value}".encode()
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        end = 1
        for m in messages:
            if isinstance(m, dict) and m.get("role") == "user":
                break
            end += 1
        return orjson.dumps(messages[:end])
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt[:prompt_chars].encode()
    return None


_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')


def rename_model(data: bytes, name: str, count: int = 1) -> bytes:
    """`data` (a JSON answer, or SSE events) with its top-level `model` values replaced by `name`: the
    first `count` (0: all) occurrences of a "model" key with a string value (inside a JSON string the
    quotes are escaped, so message text never matches)."""
    value = b'"model":' + orjson.dumps(name)
    return _MODEL_FIELD.sub(value, data, count=count)



# ---- rate limits and usage (wrapper/limits.py) -------------------------------------------------------

def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it in x-ratelimit-reset-*: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def ratelimit_headers(kind: str, limit: int, remaining: int, reset: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for `kind` ("requests" or "tokens")."""
    return {f"x-ratelimit-limit-{kind}": str(limit), f"x-ratelimit-remaining-{kind}": str(max(remaining, 0)),
            f"x-ratelimit-reset-{kind}": duration(reset)}


def retry_after_headers(seconds: float) -> dict[str, str]:
    """Retry-After in whole seconds, and the openai SDK's finer retry-after-ms."""
    return {"Retry-After": str(max(math.ceil(seconds), 1)), "retry-after-ms": str(max(math.ceil(seconds * 1000), 1))}


def with_include_usage(raw: bytes) -> bytes:
    """A stream request's body asking for the usage chunk (only re-encoded when a limit needs it)."""
    body = orjson.loads(raw)
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    body["stream_options"] = {**options, "include_usage": True}
    return orjson.dumps(body)


def is_usage_chunk(event: bytes) -> bool:
    """Whether an SSE event is the usage-only chunk a stream ends with when include_usage is asked."""
    if not event.startswith(b"data: {") or b'"usage"' not in event:
        return False
    try:
        obj = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


def usage_entry(key_name: str, model: str, hour: int, requests: int, prompt_tokens: int,
                completion_tokens: int, errors: int) -> dict[str, Any]:
    """One row of GET /admin/usage: a key's use of a model in the hour starting at `hour` (unix time)."""
    return {"object": "usage.bucket", "key_name": key_name, "model": model, "start_time": hour,
            "end_time": hour + 3600, "requests": requests, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "errors": errors}


def usage_list(rows: list[dict[str, Any]], start_time: int, end_time: int) -> dict[str, Any]:
    return {"object": "list", "start_time": start_time, "end_time": end_time, "data": rows}
