"""multipart/form-data bodies (uploads: transcriptions, translations, image edits): their small text fields
read with a streaming parser, the uploaded files skipped over, never copied. Both sides route and check
by these fields and pass the body's original bytes on unchanged."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from . import wire
from .errors import InvalidRequest
from .wire import Capability

FORM = b"multipart/form-data"
MAX_FIELD_BYTES = 64 * 1024  # one text field (a prompt); the files have the body limit only
MAX_PARTS = 256  # parts in one form: an upload has a handful

# the parser logs a warning for each malformed body: a client's mistake, answered with a 400, must not
# let any client flood the log
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


@dataclass
class Form:
    """What a form holds: its text fields, the names of its file parts, and where each text field's value
    lies in the body (to rename a model in place)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)


def _malformed(why: str) -> InvalidRequest:
    return InvalidRequest(f"The request body is not valid multipart/form-data: {why}.", code="invalid_multipart")


def boundary(content_type: str | None) -> bytes:
    """The form's boundary; 400 if the body is not declared as multipart/form-data with one."""
    kind, options = parse_options_header(content_type or "")
    if kind != FORM:
        declared = content_type or "a body without Content-Type"
        raise InvalidRequest(f"This endpoint takes multipart/form-data (an upload), not {declared}.",
                             code="invalid_content_type")
    value = options.get(b"boundary")
    if not value:
        raise _malformed("the Content-Type names no boundary")
    return value


class _Reader:
    """The parser's callbacks: collect the text fields' bytes, note the file parts' names."""

    def __init__(self) -> None:
        self.form = Form()
        self.parts = 0
        self.ended = False
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._span: tuple[int, int] | None = None

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidRequest(f"The form holds more than {MAX_PARTS} parts.", code="too_many_elements")
        self._disposition, self._name, self._is_file = b"", None, False
        self._value.clear()
        self._span = None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field = self._header_value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise _malformed("a part has no Content-Disposition name")
        self._name = name.decode("utf-8", "replace")
        self._is_file = b"filename" in options

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            return  # an upload is passed on, never copied here
        if len(self._value) + end - start > MAX_FIELD_BYTES:
            raise InvalidRequest(f"The form field '{self._name}' is longer than {MAX_FIELD_BYTES} bytes.",
                                 param=self._name, code="invalid_value")
        self._value += data[start:end]
        self._span = (start, end) if self._span is None else (self._span[0], end)

    def part_end(self) -> None:
        assert self._name is not None
        if self._is_file:
            self.form.files.add(self._name)
        elif self._name not in self.form.fields:  # a repeated field: the first counts, as for JSON keys
            try:
                self.form.fields[self._name] = self._value.decode()
            except UnicodeDecodeError:
                raise InvalidRequest(f"The form field '{self._name}' is not UTF-8 text.", param=self._name,
                                     code="invalid_value") from None
            self.form.spans[self._name] = self._span or (0, 0)

    def end(self) -> None:
        self.ended = True


def read_form(raw: bytes, content_type: str | None) -> Form:
    """The form in `raw`; 400 for a body that is not a whole, well-formed multipart/form-data."""
    reader = _Reader()
    parser = MultipartParser(boundary(content_type), reader.callbacks())  # type: ignore[arg-type]
    try:
        parser.write(raw)  # one call: the callbacks' offsets are then offsets into `raw`
        parser.finalize()
    except MultipartParseError as exc:
        raise _malformed(str(exc).rstrip(".")) from None
    if not reader.ended:
        raise _malformed("it ends before its closing boundary")
    return reader.form


def routing_body(form: Form, capability: Capability) -> dict[str, Any]:
    """The form as the dict the routing checks read: its text fields, `stream` as a boolean when it is one,
    and a model sent as a file refused; 400 when the endpoint's upload is missing."""
    if "model" in form.files:
        raise InvalidRequest("'model' must be a string, not a file.", param="model", code="invalid_type")
    upload = wire.INPUT_FIELD[capability]
    if upload not in form.files and upload + "[]" not in form.files:
        raise InvalidRequest(f"Missing required parameter: '{upload}' (a file).", param=upload,
                             code="missing_required_parameter")
    body: dict[str, Any] = dict(form.fields)
    stream = body.get("stream")
    if stream in ("true", "false"):
        body["stream"] = stream == "true"
    return body


def admit_form(raw: bytes, content_type: str | None, capability: Capability) -> tuple[dict[str, Any], str]:
    """The form's routing fields and its model, checked as a JSON body's are."""
    body = routing_body(read_form(raw, content_type), capability)
    return body, wire.require_routing_fields(body, capability)


def replace_field(raw: bytes, content_type: str | None, name: str, value: str) -> bytes:
    """`raw` with the text field `name`'s value replaced, every other byte unchanged."""
    form = read_form(raw, content_type)
    start, end = form.spans[name]
    return raw[:start] + value.encode() + raw[end:]
