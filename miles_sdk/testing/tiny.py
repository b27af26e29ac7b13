"""A tiny tokenizer and causal LM built in code, for tests and the demo (no model hub here).

- :func:`tiny_tokenizer`: byte-level BPE over the 256 bytes (any UTF-8 text round-trips), a few
  merges for chat-template words, ChatML special tokens and a Jinja chat template with tools.
- :func:`tiny_policy`: a seeded, randomly initialised Llama causal LM sized by a task preset.
  (Llama, not Qwen2: ``AutoTokenizer`` forces ``Qwen2Tokenizer`` on a qwen2 checkpoint, which
  would swap our pre-tokenizer on reload; for llama it keeps ``tokenizer.json`` as saved.)
- :func:`save_tiny_policy`: both saved with ``save_pretrained``, so the real loading path
  (``AutoModelForCausalLM.from_pretrained(dir)``) is exercised on them offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict, Unpack

import attrs
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TINY_CHAT_TEMPLATE",
    "TINY_PRESETS",
    "TinyPreset",
    "TinySizes",
    "save_tiny_policy",
    "tiny_policy",
    "tiny_tokenizer",
]

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN)
# Not "special": they survive skip_special_tokens, as in Qwen, so tool-call parsers see them.
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

# Words merged into single tokens: they recur in every chat-rendered prompt, and shorter prompts
# make the CPU demo faster. Digits stay one token each so arithmetic stays learnable.
_MERGED_WORDS = (
    "user",
    "assistant",
    "system",
    "tool",
    "Answer",
    "answer",
    "What",
    " is",
    " the",
    " of",
    "Question",
    " =",
    " +",
)

TINY_CHAT_TEMPLATE = (
    # Newlines are emitted inside {{ }} expressions only: transformers renders with
    # trim_blocks, which would eat a literal newline that directly follows a {% %} tag.
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages[0].role == 'system' %}{{ messages[0].content + '\n\n' }}{% endif %}"
    "{{ '# Tools\n\nYou may call one or more functions. Available functions:\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    '{{ \'\n</tools>\n\nCall a function as <tool_call>\n{"name": <name>, "arguments": <args-json>}\n'
    "</tool_call><|im_end|>\n' }}"
    "{% elif messages[0].role == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' %}"
    "{% if not loop.first %}{{ '<|im_start|>system\n' + message.content + '<|im_end|>\n' }}{% endif %}"
    "{% elif message.role == 'tool' %}"
    # Consecutive tool results share one user turn, each wrapped in <tool_response>.
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% else %}"
    "{{ '<|im_start|>' + message.role + '\n' }}"
    "{% if message.content is string %}{{ message.content }}{% endif %}"
    "{% if message.role == 'assistant' and message.tool_calls %}"
    "{% for call in message.tool_calls %}"
    "{% set fn = call.function if call.function is defined else call %}"
    "{% if (message.content is string and message.content) or not loop.first %}{{ '\n' }}{% endif %}"
    '{{ \'<tool_call>\n{"name": "\' + fn.name + \'", "arguments": \' }}'
    "{% if fn.arguments is string %}{{ fn.arguments }}{% else %}{{ fn.arguments | tojson }}{% endif %}"
    "{{ '}\n</tool_call>' }}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML (Qwen-style) template: system/user/assistant/tool roles, ``tools`` and
``add_generation_prompt``. Every message ends with ``<|im_end|>\\n``."""


def _byte_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 256 byte symbols (GPT-2's printable byte alphabet) plus left-to-right word merges."""
    alphabet = ByteLevel.alphabet()
    # Sort by the byte each symbol stands for, so token id == byte value for ids 0..255.
    byte_to_symbol = {b: s for b, s in zip(range(256), _gpt2_byte_symbols(), strict=True)}
    assert set(byte_to_symbol.values()) == set(alphabet)
    vocab = {byte_to_symbol[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in _MERGED_WORDS:
        symbols = "".join(byte_to_symbol[b] for b in word.encode())
        for k in range(1, len(symbols)):
            left, right = symbols[:k], symbols[k]
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
    return vocab, merges


def _gpt2_byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable unicode mapping, indexed by byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shift)
            shift += 1
    return [symbols[b] for b in range(256)]


def tiny_tokenizer(*, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer built in code: lossless on any UTF-8 text, ChatML special tokens.

    Ids 0..255 are the raw bytes; a few merged words follow; then ``<|endoftext|>`` (pad),
    ``<|im_start|>``, ``<|im_end|>`` (eos) and the tool-call tags. No BOS token is added, as
    in Qwen. ``decode(encode(text)) == text`` for every string.
    """
    vocab, merges = _byte_merges()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="left",
    )
    tok.add_tokens(list(TOOL_TOKENS))
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


@attrs.frozen(kw_only=True)
class TinyPreset:
    """Model sizes for one task preset of :func:`tiny_policy`."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512


TINY_PRESETS: dict[str, TinyPreset] = {
    # Unit tests: fastest possible forward pass; it cannot learn much.
    "unit": TinyPreset(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
    # The CPU demo: small enough for 2 cores, big enough to learn short arithmetic.
    "arithmetic": TinyPreset(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=192
    ),
    # GPU smoke runs and benchmarks of the loop itself.
    "small": TinyPreset(
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=768,
        max_position_embeddings=2048,
    ),
}


class TinySizes(TypedDict, total=False):
    """Size overrides accepted by :func:`tiny_policy` and :func:`save_tiny_policy`."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int


def _token_id(tok: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tok.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise TypeError(f"token {token!r} maps to {token_id!r}, expected one id")
    return token_id


def tiny_policy(
    task: str = "arithmetic",
    seed: int = 0,
    *,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int | None = None,
    initializer_range: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A seeded random-init Llama causal LM and the :func:`tiny_tokenizer`.

    ``task`` picks sizes from :data:`TINY_PRESETS` (``"unit"``, ``"arithmetic"``, ``"small"``);
    keyword arguments override single sizes. The same ``seed`` gives the same weights. Embeddings
    are tied and the vocabulary is exactly ``len(tokenizer)``. The model is in eval mode.

    ``initializer_range`` is the std of the weights' normal init (None: transformers' 0.02, sized
    for wide models). At width 64, 0.02 gives a policy whose answer barely depends on the prompt
    (each layer shrinks the signal ~6x), which RL must first break; the demo uses
    ``hidden_size ** -0.5`` (fan-in) instead.
    """
    if task not in TINY_PRESETS:
        raise ValueError(f"tiny_policy: unknown task preset {task!r}; choose one of {sorted(TINY_PRESETS)}")
    p = TINY_PRESETS[task]
    tok = tiny_tokenizer()
    heads = num_heads or p.num_heads
    hidden = hidden_size or p.hidden_size
    if hidden % heads:
        raise ValueError(f"tiny_policy: hidden_size={hidden} is not divisible by num_heads={heads}")
    kv_heads = num_kv_heads or min(p.num_kv_heads, heads)
    if heads % kv_heads:
        raise ValueError(f"tiny_policy: num_heads={heads} is not divisible by num_kv_heads={kv_heads}")
    eos_id = _token_id(tok, EOS_TOKEN)
    pad_id = _token_id(tok, PAD_TOKEN)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate_size or p.intermediate_size,
        num_hidden_layers=num_layers or p.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings or p.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        use_cache=True,
    )
    if initializer_range is not None:
        config.initializer_range = initializer_range
    # Initialise under a private generator state so building a model never perturbs the
    # caller's global RNG stream (tests seed it themselves).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # Module.to casts in place; PreTrainedModel.to's decorator confuses type checkers.
    torch.nn.Module.to(model, dtype=dtype)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = None
    model.train(False)
    return model, tok


def save_tiny_policy(
    directory: str | os.PathLike[str], task: str = "arithmetic", seed: int = 0, **sizes: Unpack[TinySizes]
) -> Path:
    """Build :func:`tiny_policy` and save model + tokenizer into ``directory``; returns its path.

    Afterwards ``AutoModelForCausalLM.from_pretrained(directory)`` and
    ``AutoTokenizer.from_pretrained(directory)`` load them offline (``Config.hf_checkpoint``).
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_policy(task, seed, **sizes)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
