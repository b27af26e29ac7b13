"""An agent endpoint over the embedded engine and the tiny policy, for the openai client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.agents import AgentEndpoint
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.testing.tiny import tiny_policy


@pytest.fixture(scope="module")
def policy() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return tiny_policy("unit", seed=0)


@pytest.fixture
async def endpoint(policy: tuple[PreTrainedModel, PreTrainedTokenizerFast]) -> AsyncIterator[AgentEndpoint]:
    model, tok = policy
    engine = EmbeddedEngine(model, tok, max_batch_size=8)
    ep = AgentEndpoint(engine, tok, max_seq_len=512, default_max_tokens=16)
    await ep.start()
    try:
        yield ep
    finally:
        await ep.close()
