"""OpenAI wire shapes of the media endpoints: speech, transcriptions and translations, images, moderations,
and the rerank / score endpoints in vLLM's (Cohere / Jina) shape. `common.wire` holds the chat, completion
and embedding shapes and the `Capability` enum; this module holds the rest, to keep each readable."""
from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidRequest
from .wire import new_id, now

# ---- speech ---------------------------------------------------------------------------------

SPEECH_CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg", "opus": "audio/ogg",
                        "aac": "audio/aac", "flac": "audio/flac"}


def speech_format(body: Mapping[str, Any]) -> str:
    return body.get("response_format") or "mp3"  # OpenAI's default


def speech_content_type(fmt: str) -> str:
    return SPEECH_CONTENT_TYPES.get(fmt, "application/octet-stream")


# ---- transcriptions and translations --------------------------------------------------------

def transcript_format(fields: Mapping[str, Any]) -> str:
    return fields.get("response_format") or "json"


def transcript_parts(result: str | Mapping[str, Any]) -> dict[str, Any]:
    """A Generator's transcription (text, or a dict with "text" and optionally "language", "duration",
    "segments") as a dict with all four; without segments the whole text is one segment."""
    parts: dict[str, Any] = {"text": result} if isinstance(result, str) else dict(result)
    if not isinstance(parts.get("text"), str):
        raise TypeError("a Generator's transcription must be a str or a dict with a str 'text'")
    parts.setdefault("language", "english")
    parts.setdefault("duration", 0.0)
    if not parts.get("segments"):
        parts["segments"] = [{"start": 0.0, "end": float(parts["duration"]), "text": parts["text"]}]
    return parts


def _segment(i: int, seg: Mapping[str, Any]) -> dict[str, Any]:
    """A segment in verbose_json's shape, the fields a Generator does not know at neutral values."""
    return {"id": i, "seek": 0, "start": float(seg["start"]), "end": float(seg["end"]), "text": seg["text"],
            "tokens": list(seg.get("tokens") or []), "temperature": 0.0, "avg_logprob": 0.0,
            "compression_ratio": 1.0, "no_speech_prob": 0.0}


def verbose_transcript(task: str, parts: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": task, "language": parts["language"], "duration": float(parts["duration"]),
            "text": parts["text"], "segments": [_segment(i, s) for i, s in enumerate(parts["segments"])]}


def _timestamp(seconds: float, decimal: str) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: Sequence[Mapping[str, Any]]) -> str:
    """SubRip: numbered cues, comma before the milliseconds."""
    cues = [f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{str(s['text']).strip()}\n"
            for i, s in enumerate(segments, 1)]
    return "\n".join(cues) + "\n"


def vtt(segments: Sequence[Mapping[str, Any]]) -> str:
    """WebVTT: a header, then cues with a dot before the milliseconds."""
    cues = [f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{str(s['text']).strip()}\n"
            for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def transcript_delta_event(delta: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": delta}


def transcript_done_event(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text}


# ---- images ---------------------------------------------------------------------------------

def images_answer(pngs: Sequence[bytes]) -> dict[str, Any]:
    return {"created": now(), "data": [{"b64_json": base64.b64encode(png).decode("ascii")} for png in pngs],
            "output_format": "png"}


# ---- moderations ----------------------------------------------------------------------------

MODERATION_CATEGORIES = ("hate", "hate/threatening", "harassment", "harassment/threatening", "illicit",
                         "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                         "sexual/minors", "violence", "violence/graphic")


def moderation_inputs(value: Any) -> list[str]:
    """The texts of a moderation input: a string, an array of strings, or an array of multimodal parts
    (their text parts; an image part counts as an empty text)."""
    if isinstance(value, str):
        return [value]
    return [p if isinstance(p, str) else str(p.get("text") or "") for p in value]


def moderation_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A Generator's verdict on one input, with every category OpenAI lists (unnamed ones: not flagged)."""
    flags = result.get("categories") or {}
    scores = result.get("category_scores") or {}
    return {"flagged": bool(result.get("flagged")),
            "categories": {c: bool(flags.get(c, False)) for c in MODERATION_CATEGORIES},
            "category_scores": {c: float(scores.get(c, 0.0)) for c in MODERATION_CATEGORIES},
            "category_applied_input_types": {c: ["text"] if flags.get(c) else [] for c in MODERATION_CATEGORIES}}


def moderation_answer(model: str, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"id": new_id("modr"), "model": model, "results": [moderation_result(r) for r in results]}


# ---- rerank and score (vLLM's shapes) -------------------------------------------------------

def document_texts(documents: Sequence[Any]) -> list[str]:
    """Documents as strings: Cohere and Jina also send `{"text": ...}` objects."""
    return [d if isinstance(d, str) else d["text"] for d in documents]


def rerank_answer(model: str, documents: Sequence[str], scores: Sequence[float], top_n: int | None,
                  tokens: int) -> dict[str, Any]:
    """`results` best first, each with its document's `index`; at most `top_n` of them."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: top_n or None]
    results = [{"index": i, "document": {"text": documents[i]}, "relevance_score": float(scores[i])} for i in order]
    return {"id": new_id("rerank"), "model": model, "usage": {"total_tokens": tokens}, "results": results}


def score_pairs(body: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """vLLM's /v1/score pairs, grouped by query: one `text_1` against every `text_2`, or two lists of the
    same length pair by pair."""
    first, second = body["text_1"], body["text_2"]
    seconds = [second] if isinstance(second, str) else list(second)
    if isinstance(first, str):
        return [(first, seconds)]
    if len(first) == 1:
        return [(first[0], seconds)]
    if len(first) != len(seconds):
        raise InvalidRequest("'text_1' and 'text_2' must hold as many texts, or 'text_1' just one.",
                             param="text_1", code="invalid_value")
    return [(q, [d]) for q, d in zip(first, seconds, strict=True)]


def score_answer(model: str, scores: Sequence[float], tokens: int) -> dict[str, Any]:
    return {"id": new_id("score"), "object": "list", "created": now(), "model": model,
            "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
