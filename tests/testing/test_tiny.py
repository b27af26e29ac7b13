"""The tiny tokenizer and policy: lossless bytes, ChatML, seeded weights, offline save/load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from miles_sdk.testing.tiny import EOS_TOKEN, PAD_TOKEN, save_tiny_policy, tiny_policy, tiny_tokenizer

_TOK = tiny_tokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_encode_is_lossless_on_any_text(text: str) -> None:
    ids = _TOK.encode(text, add_special_tokens=False)
    assert _TOK.decode(ids) == text


def test_bytes_are_ids_0_to_255_and_digits_stay_single_tokens() -> None:
    assert _TOK.encode("A") == [65]
    assert _TOK.encode("é") == [0xC3, 0xA9]
    assert _TOK.encode("12345") == [49, 50, 51, 52, 53]


def test_special_tokens_and_no_bos() -> None:
    assert _TOK.eos_token == EOS_TOKEN == "<|im_end|>"
    assert _TOK.pad_token == PAD_TOKEN
    assert _TOK.eos_token_id != _TOK.pad_token_id
    assert _TOK.bos_token is None
    # Special tokens are single ids, and encode() adds nothing around the text.
    assert _TOK.encode("<|im_start|>x<|im_end|>") == [
        _TOK.convert_tokens_to_ids("<|im_start|>"),
        120,
        _TOK.eos_token_id,
    ]
    assert _TOK.decode(_TOK.encode("a<|im_end|>"), skip_special_tokens=True) == "a"
    # Tool tags are single tokens that survive skip_special_tokens (a tool parser needs them).
    assert len(_TOK.encode("<tool_call>")) == 1
    assert _TOK.decode(_TOK.encode("<tool_call>"), skip_special_tokens=True) == "<tool_call>"


def test_chat_template_chatml_with_generation_prompt() -> None:
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "1+1?"}]
    text = _TOK.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert (
        text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_prompt = _TOK.apply_chat_template(msgs, tokenize=False)
    assert no_prompt == text.removesuffix("<|im_start|>assistant\n")


def test_chat_template_tools_tool_calls_and_tool_results() -> None:
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "add"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}],
        },
        {"role": "tool", "content": "2"},
        {"role": "tool", "content": "3"},
    ]
    tools: list[dict[Any, Any] | Callable[..., Any]] = [
        {"type": "function", "function": {"name": "add", "parameters": {}}}
    ]
    text = _TOK.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    assert text.startswith("<|im_start|>system\n# Tools")
    assert '{"type": "function", "function": {"name": "add", "parameters": {}}}' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>\n'
        in text
    )
    # Both tool results share one user turn.
    assert text.count("<|im_start|>user") == 2
    assert "<tool_response>\n2\n</tool_response>\n<tool_response>\n3\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_policy_is_seeded_and_matches_tokenizer() -> None:
    m1, tok = tiny_policy("unit", seed=7)
    m2, _ = tiny_policy("unit", seed=7)
    m3, _ = tiny_policy("unit", seed=8)
    assert m1.config.vocab_size == len(tok)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert not m1.training
    assert m1.generation_config.eos_token_id == tok.eos_token_id


def test_policy_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_policy("unit")
    assert torch.equal(torch.rand(3), expected)


def test_policy_size_overrides_and_errors() -> None:
    model, _ = tiny_policy("unit", hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (48, 2)
    with pytest.raises(ValueError, match="unknown task preset 'nope'"):
        tiny_policy("nope")
    with pytest.raises(ValueError, match="hidden_size=50 is not divisible by num_heads=4"):
        tiny_policy("unit", hidden_size=50, num_heads=4)


def test_generate_works_and_stops_at_budget() -> None:
    model, tok = tiny_policy("unit", seed=0)
    prompt = torch.tensor([tok.encode("What is 1 + 2 =")])
    torch.manual_seed(0)
    out = model.generate(prompt, max_new_tokens=6, do_sample=True, attention_mask=torch.ones_like(prompt))
    assert out.shape[0] == 1 and prompt.shape[1] < out.shape[1] <= prompt.shape[1] + 6
    assert torch.equal(out[0, : prompt.shape[1]], prompt[0])


def test_save_and_reload_offline(tmp_path: Path) -> None:
    path = save_tiny_policy(tmp_path / "ckpt", "unit", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ref_model, ref_tok = tiny_policy("unit", seed=3)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.backend_tokenizer.to_str() == ref_tok.backend_tokenizer.to_str()
    assert tok.chat_template == ref_tok.chat_template
    assert (tok.eos_token_id, tok.pad_token_id) == (ref_tok.eos_token_id, ref_tok.pad_token_id)
    ids = torch.tensor([tok.encode("héllo <tool_call> 12")])
    with torch.no_grad():
        assert torch.allclose(model.forward(ids).logits, ref_model.forward(ids).logits)
