"""top_logprobs: refused by name (the engines return only the sampled token's log-prob)."""

from __future__ import annotations

import pytest

from miles_sdk.agents.requests import ChatRequestError, parse_chat_request

MESSAGES = [{"role": "user", "content": "1+2="}]


def test_top_logprobs_is_refused_naming_the_field() -> None:
    """Regression: top_logprobs=5 was answered with empty top_logprobs lists, which a client
    reads as 'no alternatives' rather than 'not computed'."""
    with pytest.raises(ChatRequestError, match="top_logprobs=5 is not supported") as err:
        parse_chat_request({"messages": MESSAGES, "logprobs": True, "top_logprobs": 5}, default_model="p")
    assert err.value.status == 400 and err.value.code == "unsupported_parameter"


def test_top_logprobs_zero_or_absent_is_accepted() -> None:
    assert parse_chat_request({"messages": MESSAGES, "logprobs": True, "top_logprobs": 0}, default_model="p").logprobs
    assert parse_chat_request({"messages": MESSAGES, "logprobs": True}, default_model="p").logprobs
