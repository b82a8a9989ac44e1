"""A tiny random-weight Llama model and a word-level tokenizer with a chat template, built locally.

Nothing is downloaded: the config is small, the weights are random (seeded), the tokenizer is built with
the `tokenizers` library from a fixed vocabulary. Words are "w000".."w149", so no word contains another
and a decoded answer re-tokenizes to the same tokens.
"""
from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = [f"w{i:03d}" for i in range(150)]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CONTEXT = 8192


def build(path: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + MARKERS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # special tokens and role markers get logit 0 while words get random ones: greedy decoding never
        # picks them, so a greedy answer runs to max_tokens and is made of words only
        model.lm_head.weight[: len(SPECIALS) + len(MARKERS)] = 0
    model.generation_config.do_sample = False
    model.save_pretrained(path)
    return path
