"""A simulated engine prefix (KV) cache, for EchoGen's --prefix-cache: measures what affinity routing buys.

Like vLLM's automatic prefix caching, it works in blocks: a text is cut into blocks of BLOCK_CHARS, each
identified by the hash of everything up to its end, so a block is cached only if its whole prefix is.
The cache keeps the blocks of the last N sequences served (a prompt with its answer, as an engine keeps
both), least recently used first out."""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

BLOCK_CHARS = 64


def block_chain(text: str) -> list[int]:
    """One hash per whole block of `text`, each covering the text up to that block's end."""
    chain: list[int] = []
    h = 0
    for start in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):
        h = hash((h, text[start:start + BLOCK_CHARS]))
        chain.append(h)
    return chain


class PrefixCache:
    def __init__(self, sequences: int) -> None:
        self.capacity = sequences
        self._sequences: OrderedDict[int, list[int]] = OrderedDict()  # last block hash -> the sequence's chain
        self._blocks: Counter[int] = Counter()  # block hash -> cached sequences holding it
        self.hits = 0  # requests that found some prefix of their prompt cached
        self.misses = 0
        self.prompt_chars = 0
        self.cached_chars = 0

    def lookup(self, prompt: str) -> int:
        """How many leading characters of `prompt` are cached (counted in the stats)."""
        cached_blocks = 0
        for h in block_chain(prompt):
            if not self._blocks.get(h):
                break
            cached_blocks += 1
        cached = cached_blocks * BLOCK_CHARS
        self.prompt_chars += len(prompt)
        self.cached_chars += cached
        if cached:
            self.hits += 1
        else:
            self.misses += 1
        return cached

    def store(self, sequence: str) -> None:
        chain = block_chain(sequence)
        if not chain:
            return
        if chain[-1] in self._sequences:
            self._sequences.move_to_end(chain[-1])
            return
        self._sequences[chain[-1]] = chain
        self._blocks.update(chain)
        if len(self._sequences) > self.capacity:
            _, evicted = self._sequences.popitem(last=False)
            self._blocks.subtract(evicted)
            for h in evicted:
                if self._blocks[h] <= 0:
                    del self._blocks[h]

    def stats(self) -> dict[str, Any]:
        return {"prefix_cache": {"hits": self.hits, "misses": self.misses, "prompt_chars": self.prompt_chars,
                                 "cached_chars": self.cached_chars, "sequences": len(self._sequences)}}
