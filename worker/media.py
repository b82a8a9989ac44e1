"""The worker's media endpoints: speech, transcriptions and translations, image generations and edits,
moderations, rerank and score, each in front of one Generator method (generators/base.py)."""
from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

from python_multipart.exceptions import FormParserError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

from common import media_checks, media_wire, wire
from common.errors import InvalidRequest
from common.http import CLIENT_CLOSED, ClientGone, Endpoint, SSEResponse, json_response, read_body, unless_disconnected
from common.wire import Capability

from .base import WorkerBase, started, then

T = TypeVar("T")
TEXT = "text/plain; charset=utf-8"
_PIECE = re.compile(r"\s*\S+\s*|\s+")  # a word with its spacing: the pieces join back to the text


class Upload:
    """A multipart request: its text fields (converted, checked) and its files (field name, filename, bytes)."""

    def __init__(self, fields: dict[str, Any], files: list[tuple[str, str, bytes]]) -> None:
        self.fields = fields
        self.files = files

    def named(self, *names: str) -> list[tuple[str, bytes]]:
        return [(filename, data) for name, filename, data in self.files if name in names]


class MediaEndpoints:
    """The media endpoints of one worker, sharing its checks, concurrency limit and settings."""

    def __init__(self, worker: WorkerBase) -> None:
        self.worker = worker
        self.generator = worker.generator

    def routes(self) -> dict[str, Endpoint]:
        return {wire.PATHS[Capability.SPEECH]: self.speech,
                wire.PATHS[Capability.TRANSCRIPTION]: self.transcriptions,
                wire.PATHS[Capability.TRANSLATION]: self.translations,
                wire.PATHS[Capability.IMAGE_GENERATION]: self.image_generations,
                wire.PATHS[Capability.IMAGE_EDIT]: self.image_edits,
                wire.PATHS[Capability.MODERATION]: self.moderations,
                wire.PATHS[Capability.RERANK]: self.rerank,
                wire.PATHS[Capability.SCORE]: self.score}

    # ---- running the Generator -----------------------------------------------------------------

    async def _limited(self, work: Awaitable[T]) -> T:
        async with self.worker.limit:
            return await work

    async def _run(self, request: Request, work: Awaitable[T]) -> T:
        """`work` in a concurrency slot, abandoned if the client hangs up (ClientGone)."""
        return await unless_disconnected(request, self._limited(work))

    async def _json(self, request: Request, capability: Capability) -> tuple[dict[str, Any], str]:
        """A JSON request's body and model, checked as the worker checks every JSON body, plus the
        endpoint's other required fields."""
        body, model, _ = await self.worker.parse(request, capability)
        media_checks.check_required(body, capability)
        return body, model

    # ---- JSON endpoints -----------------------------------------------------------------------

    async def speech(self, request: Request) -> Response:
        """The audio streamed through as the Generator produces it; a failure before its first chunk is a
        plain HTTP error. The concurrency slot is held until the stream ends."""
        body, _ = await self._json(request, Capability.SPEECH)
        release = await self.worker.limit.hold()
        try:  # a client that hangs up before the first chunk stops the Generator at once
            chunks = await unless_disconnected(request, started(then(self.generator.speech_chunks(body), release)))
        except ClientGone:
            release()
            return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            release()
            raise
        fmt = media_wire.speech_format(body)
        return SSEResponse(chunks, on_close=release, media_type=media_wire.speech_content_type(fmt))

    async def image_generations(self, request: Request) -> Response:
        body, _ = await self._json(request, Capability.IMAGE_GENERATION)
        _only_b64(body)
        return await self._images(request, body, [])

    async def moderations(self, request: Request) -> Response:
        body, model = await self._json(request, Capability.MODERATION)
        inputs = media_wire.moderation_inputs(body["input"])
        try:
            results = await self._run(request, self.generator.moderations(body))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if len(results) != len(inputs):
            raise RuntimeError(f"{type(self.generator).__name__}.moderate returned {len(results)} results "
                               f"for {len(inputs)} inputs")
        return json_response(media_wire.moderation_answer(model, results))

    async def rerank(self, request: Request) -> Response:
        body, model = await self._json(request, Capability.RERANK)
        documents = media_wire.document_texts(body["documents"])
        self._check_documents(len(documents), "documents")
        try:
            scores = await self._run(request, self.generator.relevance({**body, "documents": documents}))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        tokens = sum(map(self.generator.count_tokens, [body["query"], *documents]))
        return json_response(media_wire.rerank_answer(model, documents, scores, body.get("top_n"), tokens))

    async def score(self, request: Request) -> Response:
        """vLLM's /v1/score: each pair's relevance, through the Generator's `rerank`."""
        body, model = await self._json(request, Capability.SCORE)
        pairs = media_wire.score_pairs(body)
        self._check_documents(sum(len(docs) for _, docs in pairs), "text_2")
        try:
            grouped = await self._run(request, self._scores(body, pairs))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        scores = [s for group in grouped for s in group]
        tokens = sum(self.generator.count_tokens(q) + sum(map(self.generator.count_tokens, docs)) for q, docs in pairs)
        return json_response(media_wire.score_answer(model, scores, tokens))

    async def _scores(self, body: dict[str, Any], pairs: list[tuple[str, list[str]]]) -> list[list[float]]:
        return [await self.generator.relevance({**body, "query": query, "documents": docs}) for query, docs in pairs]

    def _check_documents(self, count: int, param: str) -> None:
        cap = self.worker.settings.limits.max_embedding_inputs
        if count > cap:
            raise InvalidRequest(f"'{param}' may hold at most {cap} items.", param=param, code="invalid_value")

    # ---- multipart endpoints ------------------------------------------------------------------

    async def transcriptions(self, request: Request) -> Response:
        return await self._transcribe(request, Capability.TRANSCRIPTION, "transcribe")

    async def translations(self, request: Request) -> Response:
        return await self._transcribe(request, Capability.TRANSLATION, "translate")

    async def _transcribe(self, request: Request, capability: Capability, task: str) -> Response:
        upload = await self._upload(request, capability)
        (filename, audio), = upload.named("file")[:1] or [("", b"")]
        fields = {**upload.fields, "filename": filename, "task": task}
        try:
            result = await self._run(request, self.generator.transcription(fields, audio))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        parts = media_wire.transcript_parts(result)
        if fields.get("stream") is True:
            return SSEResponse(_transcript_events(parts["text"]))
        return _transcript_response(media_wire.transcript_format(fields), task, parts)

    async def image_edits(self, request: Request) -> Response:
        upload = await self._upload(request, Capability.IMAGE_EDIT)
        _only_b64(upload.fields)
        images = [data for _, data in upload.named("image", "image[]")]
        filename = next((name for name, _ in upload.named("image", "image[]")), "")
        mask = next((data for _, data in upload.named("mask")), None)
        fields = {**upload.fields, "filename": filename, **({"mask": mask} if mask is not None else {})}
        return await self._images(request, fields, images)

    async def _images(self, request: Request, body: dict[str, Any], images: list[bytes]) -> Response:
        try:
            pngs = await self._run(request, self.generator.images(body, images))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(media_wire.images_answer(pngs))

    async def _upload(self, request: Request, capability: Capability) -> Upload:
        """The multipart body, read whole up to limits.max_upload_bytes (413 past it, never held), parsed
        with python-multipart (Starlette's form parser) within limits.max_upload_parts parts; then the same
        checks as a JSON body: model, the file, field types, the model served and the capability."""
        worker = self.worker
        worker.authorize(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest("This endpoint takes a multipart/form-data body.", code="invalid_content_type")
        limits = worker.settings.limits
        raw = await read_body(request, limits.max_upload_bytes)
        upload = await _parse_form(request, raw, limits.max_upload_parts, limits.max_body_bytes)
        fields = media_checks.form_fields(capability, upload.fields)
        present = {name.removesuffix("[]"): True for name, _, _ in upload.files}
        model = wire.require_routing_fields({**fields, **present}, capability)
        file_field = wire.INPUT_FIELD[capability]
        if file_field not in present:  # checked here too: the wrapper's routing does not need the file
            raise InvalidRequest(f"Missing required parameter: '{file_field}'.", param=file_field,
                                 code="missing_required_parameter")
        worker.admit(model, capability)
        upload.fields = fields
        return upload


async def _parse_form(request: Request, raw: bytes, max_parts: int, max_field_bytes: int) -> Upload:
    """The form in `raw`, parsed by Starlette's multipart parser (python-multipart; what `request.form()`
    runs) from the bytes already read, its files kept in memory (the body is there already: no temporary
    files); a malformed body or one with too many parts is a 400. Repeated `name[]` fields become lists."""
    async def body() -> AsyncGenerator[bytes, None]:
        yield raw

    parser = MultiPartParser(request.headers, body(), max_files=max_parts, max_fields=max_parts,
                             max_part_size=max_field_bytes)
    parser.spool_max_size = len(raw) + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"The multipart body cannot be parsed: {exc.message}", code="invalid_multipart") from None
    except FormParserError as exc:  # python-multipart's own: a malformed body
        raise InvalidRequest(f"The multipart body cannot be parsed: {exc}", code="invalid_multipart") from None
    try:
        fields: dict[str, Any] = {}
        files: list[tuple[str, str, bytes]] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((name, value.filename or "", await value.read()))
            elif name.endswith("[]"):
                fields.setdefault(name, []).append(value)
            else:
                fields[name] = value
        return Upload(fields, files)
    finally:
        await form.close()


def _only_b64(fields: dict[str, Any]) -> None:
    if fields.get("response_format") == "url":
        raise InvalidRequest("This server returns images as 'b64_json' only; it keeps no URLs to serve.",
                             param="response_format", code="unsupported_value")


def _transcript_response(fmt: str, task: str, parts: dict[str, Any]) -> Response:
    if fmt == "text":
        return Response(parts["text"], media_type=TEXT)
    if fmt == "srt":
        return Response(media_wire.srt(parts["segments"]), media_type=TEXT)
    if fmt == "vtt":
        return Response(media_wire.vtt(parts["segments"]), media_type="text/vtt; charset=utf-8")
    if fmt == "verbose_json":
        return json_response(media_wire.verbose_transcript(task, parts))
    return json_response({"text": parts["text"]})


async def _transcript_events(text: str) -> AsyncGenerator[bytes, None]:
    """OpenAI's transcription stream: a `transcript.text.delta` per word, then `transcript.text.done`."""
    for piece in _PIECE.findall(text):
        yield wire.sse_event(media_wire.transcript_delta_event(piece))
    yield wire.sse_event(media_wire.transcript_done_event(text))

