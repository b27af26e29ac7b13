"""make_sample / make_group / make_batch keep the per-token fields consistent."""

from __future__ import annotations

import pytest

from miles_sdk.testing.builders import make_batch, make_group, make_sample
from miles_sdk.testing.tiny import tiny_tokenizer
from miles_sdk.types import Sample

TOK = tiny_tokenizer()


def test_text_prompt_and_response() -> None:
    s = make_sample("ab", "cd", reward=1.0, label="cd")
    assert s.tokens == [97, 98, 99, 100]
    assert (s.prompt, s.response, s.response_length, s.prompt_length) == ("ab", "cd", 2, 2)
    assert s.loss_mask == [1, 1]
    assert s.rollout_log_probs == [-1.0, -1.0]
    assert s.status is Sample.Status.COMPLETED
    assert (s.reward, s.label, s.weight_versions) == (1.0, "cd", [0])
    assert s.get_reward_value() == 1.0


def test_token_id_prompt_and_response_decode_to_text() -> None:
    s = make_sample([104, 105], [33, 33], loss_mask=[1, 0], rollout_log_probs=[-0.5, -0.25])
    assert s.tokens == [104, 105, 33, 33]
    assert (s.prompt, s.response) == ("hi", "!!")
    assert s.loss_mask == [1, 0]
    assert s.rollout_log_probs == [-0.5, -0.25]


def test_chat_prompt_uses_template_with_generation_prompt() -> None:
    msgs = [{"role": "user", "content": "x"}]
    s = make_sample(msgs, "y")
    assert s.prompt == msgs
    assert TOK.decode(s.tokens) == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\ny"
    assert s.response_tokens == TOK.encode("y")


def test_add_eos_and_unset_fields() -> None:
    s = make_sample("p", "r", add_eos=True, loss_mask=None, rollout_log_probs=None)
    assert s.response_tokens == [ord("r"), TOK.eos_token_id]
    assert s.response == "r<|im_end|>"
    assert s.loss_mask is None and s.rollout_log_probs is None
    assert s.effective_loss_mask() == [1, 1]


def test_extra_fields_and_length_errors() -> None:
    s = make_sample("p", "rr", teacher_log_probs=[-1.0, -2.0], metadata={"rm_type": "math"})
    assert s.teacher_log_probs == [-1.0, -2.0] and s.metadata == {"rm_type": "math"}
    with pytest.raises(ValueError, match="loss_mask has 3 entries but the response has 2 tokens"):
        make_sample("p", "rr", loss_mask=[1, 1, 1])
    with pytest.raises(ValueError, match="teacher_log_probs"):
        make_sample("p", "rr", teacher_log_probs=[0.0])
    with pytest.raises(TypeError, match="mixes token ids and chat messages"):
        make_sample([1, {"role": "user", "content": "x"}], "r")  # type: ignore[arg-type]


def test_group_indices_and_rewards() -> None:
    g = make_group(3, "q", rewards=[1.0, 0.0, 1.0], group_index=2)
    assert [s.index for s in g] == [6, 7, 8]
    assert {s.group_index for s in g} == {2}
    assert [s.response for s in g] == ["0", "1", "2"]
    assert [s.reward for s in g] == [1.0, 0.0, 1.0]
    assert all(s.prompt == "q" for s in g)
    with pytest.raises(ValueError, match="2 rewards for n=3"):
        make_group(3, rewards=[1.0, 0.0])


def test_batch_has_unique_increasing_indices() -> None:
    batch = make_batch(3, 2, rewards=[[1, 0], [0, 0], [1, 1]])
    assert [[s.index for s in g] for g in batch] == [[0, 1], [2, 3], [4, 5]]
    assert [g[0].group_index for g in batch] == [0, 1, 2]
    assert batch[1][0].prompt == "What is 1 + 1?"
    assert [s.reward for s in batch[2]] == [1, 1]
