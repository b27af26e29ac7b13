"""The pytest plugin's fixtures (loaded through the ``pytest11`` entry point, no conftest)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

from miles_sdk.config import Config
from miles_sdk.testing.engine import ScriptedEngine
from miles_sdk.testing.hooks import run_sync


def test_miles_config_is_small_and_consistent(miles_config: Config) -> None:
    assert miles_config.device == "cpu"
    assert miles_config.rollout_batch_size * miles_config.n_samples_per_prompt == 4
    assert miles_config.effective_global_batch_size % miles_config.micro_batch_size == 0
    # It is a real, validated Config: replace() re-validates.
    assert miles_config.replace(rollout_batch_size=4).rollout_batch_size == 4


def test_tiny_policy_fixture(tiny_policy: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> None:
    model, tok = tiny_policy
    assert model.config.vocab_size == len(tok)
    with torch.no_grad():
        logits = model.forward(torch.tensor([tok.encode("1+1=")])).logits
    assert logits.shape == (1, 4, len(tok))


def test_tiny_checkpoint_loads_offline(tiny_checkpoint: Path) -> None:
    assert (tiny_checkpoint / "config.json").exists()
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert model.config.vocab_size == len(tok)


def test_scripted_engine_answers_42(
    scripted_engine: ScriptedEngine, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    out = run_sync(scripted_engine.generate(tiny_tokenizer.encode("anything"), {"max_new_tokens": 8}))
    assert tiny_tokenizer.decode(out.token_ids) == "42"
    assert scripted_engine.requests[0].text == "anything"
