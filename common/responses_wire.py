"""The Responses API's wire shapes (/v1/responses): request checks, the translation of a Responses request into
a chat request, and the Response object, its output items and its stream events.

A worker serves Responses from any chat Generator by translation (worker/responses.py); what is stateful
(previous_response_id, store, background, conversation) is refused with a clear error by
wire.require_routing_fields, since no response is kept after it is sent.
"""
from __future__ import annotations

import os
from typing import Any

import orjson

from .errors import InvalidRequest, to_openai_error

# ---- requests -------------------------------------------------------------------------------

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})


def _unsupported(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def check_request(body: dict[str, Any]) -> None:
    """400 for a well-known field of the wrong type (stateful features are refused by
    wire.require_routing_fields, on both sides)."""
    value = body.get("input")
    if not isinstance(value, (str, list)):
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input",
                             code="invalid_type")
    for name, kind, what in (("instructions", str, "a string"), ("max_output_tokens", int, "an integer"),
                             ("tools", list, "an array"), ("text", dict, "an object"),
                             ("parallel_tool_calls", bool, "a boolean")):
        value = body.get(name)
        if value is not None and not _typed(value, kind):
            raise InvalidRequest(f"'{name}' must be {what}.", param=name, code="invalid_type")
    limit = body.get("max_output_tokens")
    if limit is not None and limit < 1:
        raise InvalidRequest("'max_output_tokens' must be at least 1.", param="max_output_tokens",
                             code="invalid_value")


def _typed(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no integer
    return isinstance(value, kind)


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request a Responses request stands for: what a chat Generator understands."""
    chat: dict[str, Any] = {"model": body["model"], "messages": chat_messages(body.get("input"), body.get("instructions"))}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "seed", "user"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("tools"):
        chat["tools"] = [_chat_tool(t, i) for i, t in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _chat_tool_choice(body["tool_choice"])
    text = body.get("text") or {}
    response_format = _response_format(text.get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    return chat


def chat_messages(items: Any, instructions: str | None = None) -> list[dict[str, Any]]:
    """Input items (or one string) as chat messages; `instructions` becomes the first, a system message.
    Consecutive function calls join into one assistant message, as chat templates expect them."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest("Each input item must be an object.", param=f"input[{i}]", code="invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, i))
        elif kind == "function_call":
            call = _function_call(item, i)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(item, i))
        elif kind == "reasoning":
            continue  # a reasoning model's notes: nothing a chat template renders
        else:
            raise _unsupported(f"Input items of type '{kind}' are not supported by this server.", f"input[{i}].type")
    if not messages:
        raise InvalidRequest("'input' must hold at least one item.", param="input", code="invalid_value")
    return messages


def _message(item: dict[str, Any], i: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise InvalidRequest(f"A message's 'role' must be one of {sorted(_MESSAGE_ROLES)}.", param=f"input[{i}].role",
                             code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest("A message's 'content' must be a string or an array of content parts.",
                             param=f"input[{i}].content", code="invalid_type")
    return {"role": role, "content": [_content_part(p, i, j) for j, p in enumerate(content)]}


def _content_part(part: Any, i: int, j: int) -> dict[str, Any]:
    param = f"input[{i}].content[{j}]"
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _TEXT_PARTS:
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            raise InvalidRequest("A text content part needs a string 'text'.", param=param, code="invalid_type")
        return {"type": "text", "text": text}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}}
    raise _unsupported(f"Content parts of type '{kind}' are not supported by this server.", param)


def _function_call(item: dict[str, Any], i: int) -> dict[str, Any]:
    for field in ("call_id", "name", "arguments"):
        if not isinstance(item.get(field), str):
            raise InvalidRequest(f"A function_call item needs a string '{field}'.", param=f"input[{i}].{field}",
                                 code="invalid_type")
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _function_output(item: dict[str, Any], i: int) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str):
        raise InvalidRequest("A function_call_output item needs a string 'call_id'.", param=f"input[{i}].call_id",
                             code="invalid_type")
    output = item.get("output")
    if isinstance(output, list):
        output = "".join(p.get("text", "") for p in output if isinstance(p, dict) and isinstance(p.get("text"), str))
    if not isinstance(output, str):
        raise InvalidRequest("A function_call_output item needs an 'output' string.", param=f"input[{i}].output",
                             code="invalid_type")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _chat_tool(tool: Any, i: int) -> dict[str, Any]:
    """A Responses tool (flat: `{type, name, parameters}`) as a chat tool (`{type, function: {...}}`)."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise _unsupported(f"Tools of type '{kind}' are not supported by this server; only 'function' tools are.",
                           f"tools[{i}].type")
    if not isinstance(tool.get("name"), str):
        raise InvalidRequest("A function tool needs a string 'name'.", param=f"tools[{i}].name", code="invalid_type")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _unsupported("'tool_choice' must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}.",
                       "tool_choice")


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("'text.format.type' must be 'text', 'json_object' or 'json_schema'.",
                         param="text.format.type", code="invalid_value")


# ---- answers --------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": parts}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def response(response_id: str, created_at: int, body: dict[str, Any], status: str, output: list[dict[str, Any]],
             usage_: dict[str, Any] | None = None, *, error: dict[str, str] | None = None,
             incomplete_reason: str | None = None, completed_at: int | None = None) -> dict[str, Any]:
    """A Response object; the request's settings are echoed as OpenAI does."""
    text = body.get("text")
    text = text if isinstance(text, dict) else {}
    out = {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "completed_at": completed_at, "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"], "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "store": False,
        "temperature": body.get("temperature"), "top_p": body.get("top_p"),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": [_echoed_tool(t) for t in body.get("tools") or ()],
        "truncation": "disabled", "metadata": body.get("metadata") or {},
    }
    if usage_ is not None:  # the spec's `usage` is an object or absent, never null
        out["usage"] = usage_
    return out


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool as a Response lists it: `strict` and `parameters` always present (null if not sent)."""
    return {"parameters": None, "strict": None, "description": None, **tool}


def response_error(exc: BaseException) -> dict[str, str]:
    """A failure as a Response's `error` (its codes are few: anything the model did not finish is a server_error)."""
    return {"code": "server_error", "message": to_openai_error(exc).message}


def input_tokens(count: int) -> dict[str, Any]:
    return {"object": "response.input_tokens", "input_tokens": count}


# ---- streaming ------------------------------------------------------------------------------

def sse_named_event(kind: str, fields: dict[str, Any], sequence_number: int) -> bytes:
    """One Responses stream event as OpenAI frames it: an `event:` line naming the type, then the data."""
    data = orjson.dumps({"type": kind, "sequence_number": sequence_number, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
