"""The request checks of the media endpoints (speech, transcriptions, images, moderations, rerank, score):
the types and ranges OpenAI's spec (or vLLM's, for rerank and score) states. `common.wire.check_fields`
applies them; the multipart endpoints' form fields are converted and checked by `form_fields`. Kept apart
from `common.wire` (which imports this module) so that it imports nothing of the project but errors."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InvalidRequest

Check = tuple[Callable[[Any], bool], str]

SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
MAX_SPEECH_INPUT = 4096  # characters: OpenAI's own maximum

# keyed by the Capability values (a StrEnum member finds its entry)
SPEECH, TRANSCRIPTION, TRANSLATION = "speech", "transcription", "translation"
IMAGE_GENERATION, IMAGE_EDIT, MODERATION, RERANK, SCORE = "image_generation", "image_edit", "moderation", "rerank", "score"


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _int_field(name: str, minimum: int, maximum: int | None = None) -> Check:
    def ok(v: Any) -> bool:
        return v is None or (_is_int(v) and v >= minimum and (maximum is None or v <= maximum))
    upper = "" if maximum is None else f" and at most {maximum}"
    return ok, f"'{name}' must be an integer of at least {minimum}{upper}."


def _number_field(name: str, minimum: float, maximum: float) -> Check:
    return (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and minimum <= v <= maximum),
            f"'{name}' must be a number from {minimum:g} to {maximum:g}.")


# ---- JSON bodies -------------------------------------------------------------------------

def _one_of(name: str, values: Sequence[str]) -> Check:
    return (lambda v: v is None or v in values), f"'{name}' must be one of: {', '.join(values)}."


def _text_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(s, str) for s in v)


def _moderation_input_ok(v: Any) -> bool:
    if isinstance(v, str) or _text_list(v):
        return True
    return isinstance(v, list) and len(v) > 0 and all(isinstance(p, dict) and isinstance(p.get("type"), str)
                                                      for p in v)


def _documents_ok(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(
        isinstance(d, str) or (isinstance(d, dict) and isinstance(d.get("text"), str)) for d in v)


def _speech_input_ok(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_SPEECH_INPUT


_TEXTS = "must be a string or a non-empty array of strings."

MEDIA_CHECKS: dict[str, dict[str, Check]] = {
    SPEECH: {
        "input": (_speech_input_ok, f"'input' must be a non-empty string of at most {MAX_SPEECH_INPUT} characters."),
        "voice": (lambda v: isinstance(v, (str, dict)), "'voice' must be a string."),
        "response_format": _one_of("response_format", SPEECH_FORMATS),
        "speed": _number_field("speed", 0.25, 4.0),
        "instructions": (lambda v: v is None or isinstance(v, str), "'instructions' must be a string."),
    },
    IMAGE_GENERATION: {
        "prompt": (lambda v: isinstance(v, str) and v != "", "'prompt' must be a non-empty string."),
        "n": _int_field("n", 1, 10),
        "size": (lambda v: v is None or isinstance(v, str), "'size' must be a string such as '1024x1024'."),
        "response_format": _one_of("response_format", ("url", "b64_json")),
    },
    MODERATION: {
        "input": (_moderation_input_ok, "'input' must be a string, an array of strings, or an array of "
                                        "multimodal input objects."),
    },
    RERANK: {
        "query": (lambda v: isinstance(v, str), "'query' must be a string."),
        "documents": (_documents_ok, "'documents' must be a non-empty array of strings or {\"text\": ...} objects."),
        "top_n": _int_field("top_n", 1),
    },
    SCORE: {
        "text_1": (lambda v: isinstance(v, str) or _text_list(v), "'text_1' " + _TEXTS),
        "text_2": (lambda v: isinstance(v, str) or _text_list(v), "'text_2' " + _TEXTS),
    },
    # the multipart endpoints' fields are checked as form fields (FORM_CHECKS)
    TRANSCRIPTION: {}, TRANSLATION: {}, IMAGE_EDIT: {},
}

REQUIRED = {RERANK: ("query",), SCORE: ("text_1",)}


def check_required(body: Mapping[str, Any], capability: str) -> None:
    """The required fields besides `model` and the routing input field (wire.INPUT_FIELD)."""
    for name in REQUIRED.get(capability, ()):
        if name not in body:
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name,
                                 code="missing_required_parameter")


# ---- multipart form fields ------------------------------------------------------------------
# A form's values are strings: the ones OpenAI types otherwise are converted, then checked.

def _to_bool(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0", ""):
        return False
    raise ValueError(text)


_CONVERT: dict[str, Callable[[str], Any]] = {"stream": _to_bool, "temperature": float, "n": int}

FORM_CHECKS: dict[str, dict[str, Check]] = {
    TRANSCRIPTION: {
        "response_format": _one_of("response_format", TRANSCRIPT_FORMATS),
        "temperature": _number_field("temperature", 0, 1),
    },
    IMAGE_EDIT: {
        "prompt": (lambda v: isinstance(v, str) and v != "", "'prompt' must be a non-empty string."),
        "n": _int_field("n", 1, 10),
        "response_format": _one_of("response_format", ("url", "b64_json")),
    },
}
FORM_CHECKS[TRANSLATION] = FORM_CHECKS[TRANSCRIPTION]


def form_fields(capability: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A form's text fields with `stream`, `temperature` and `n` as the types OpenAI gives them; 400 with
    `param` for a value of the wrong type or out of range. Array fields (`name[]`, lists) keep their name."""
    out: dict[str, Any] = dict(fields)
    for name, convert in _CONVERT.items():
        if name in out:
            try:
                out[name] = convert(out[name])
            except ValueError:
                raise InvalidRequest(f"'{name}' has an invalid value: {out[name]!r}.", param=name,
                                     code="invalid_value") from None
    if "n" in out and not _is_int(out["n"]):
        raise InvalidRequest("'n' must be an integer.", param="n", code="invalid_value")
    for name, (ok, message) in FORM_CHECKS[capability].items():
        if name in out and not ok(out[name]):
            raise InvalidRequest(message, param=name, code="invalid_value")
    return out
