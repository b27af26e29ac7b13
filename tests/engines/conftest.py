"""Shared fixtures for the engine tests: small random decoders whose greedy output is varied.

A default-initialised tiny model tends to repeat one token forever, which would let a wrong
cache or position pass a greedy comparison; a wider init makes every step's argmax differ.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from miles_sdk.testing.tiny import tiny_tokenizer


def build_model(tok: PreTrainedTokenizerFast, arch: str = "qwen2", seed: int = 0) -> PreTrainedModel:
    """A 2-layer GQA decoder over the tiny tokenizer's vocabulary, random but spiky."""
    common: dict[str, Any] = {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "initializer_range": 0.3,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": None,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "qwen2":
            model: PreTrainedModel = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
        else:
            # Untied head and a different RoPE base: the engine must not assume Qwen2 defaults.
            rope = {"rope_type": "default", "rope_theta": 500.0}
            model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, rope_parameters=rope, **common))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    model.train(False)
    return model


def logits_of(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """Full-sequence logits [B, T, V] of a plain forward, without a cache."""
    with torch.no_grad():
        out = model.forward(input_ids=ids, use_cache=False)
    logits: torch.Tensor = out.logits
    return logits.float()


@pytest.fixture(scope="session")
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    return build_model(tok)
