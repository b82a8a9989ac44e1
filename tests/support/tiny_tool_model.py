"""A tiny model that always answers with the same tool calls, built locally (nothing downloaded).

The tokenizer knows the special tokens, the chat template's role markers, and the answer's pieces (added
tokens, cut at awkward places: inside keys and values, and the second call's tags across two tokens). The
Llama model is a chain: every layer's output projections are zero and the embeddings one-hot, so its next
token depends on the current token only, and the lm_head maps each piece to the next one. Greedy decoding
after the generation prompt writes ANSWER, then the end-of-sequence token.
"""
from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]
PIECES = ["Let", " me", " check.\n", "<tool_call>", '\n{"na', 'me": "get_', 'weather", "argu', 'ments": {"ci',
          'ty": "Par', 'is", "unit', '": "c"}', "}\n", "</tool_call>", "\n<tool_",
          'call>\n{"name": "get_time", "arguments": ', "{}}", "\n</tool", "_call>"]
ANSWER = "".join(PIECES)
CONTENT = "Let me check."  # the text before the first call
CALLS = [("get_weather", '{"city": "Paris", "unit": "c"}'), ("get_time", "{}")]
CHAT_TEMPLATE = (
    "{% if tools %}<|system|> Call a tool as <tool_call> name and arguments </tool_call> {{ tools | tojson }} <|end|> "
    "{% endif %}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] or '' }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(path: Path | None = None):  # -> PreTrainedTokenizerFast
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + MARKERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.Fuse()  # pieces join as they are, no spaces between
    # not special, as Qwen's <tool_call>: a decoder that skips special tokens keeps them
    backend.add_tokens([AddedToken(p, normalized=False) for p in PIECES])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer


def build(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(path)
    ids = tokenizer.convert_tokens_to_ids(["<|assistant|>", *PIECES, "</s>"])
    size = len(tokenizer)
    hidden = 8 * ((size + 7) // 8)  # one-hot embeddings: a dimension per token (4 heads of an even size)
    config = LlamaConfig(vocab_size=size, hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :size] = torch.eye(size)
        head = torch.zeros(size, hidden)
        head[tokenizer.eos_token_id, :size] = 1.0  # anything off the chain ends the answer
        for current, following in zip(ids, ids[1:], strict=False):
            head[following, current], head[tokenizer.eos_token_id, current] = 10.0, 0.0
        model.lm_head.weight.copy_(head)
    model.generation_config.do_sample = False
    model.save_pretrained(path)
    return path
