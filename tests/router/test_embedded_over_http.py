"""The real embedded engine behind our server and router: what a Miles run with HTTP generate sees."""

from __future__ import annotations

import torch

from miles_sdk.config import Config
from miles_sdk.engines.base import FinishReason, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_client import HttpEngine
from miles_sdk.router import PrefixCacheMiddleware, Router, serve_rollout
from miles_sdk.testing.tiny import tiny_policy


async def test_greedy_tokens_and_log_probs_survive_the_round_trip() -> None:
    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, max_batch_size=4)
    prompt = tok.encode("1+2=", add_special_tokens=False)
    params: SamplingParams = {"temperature": 0.0, "max_new_tokens": 6, "ignore_eos": True}
    direct = await engine.generate(prompt, params)

    cache = PrefixCacheMiddleware()
    serving = await serve_rollout(Config(use_miles_router=True), engine, tok, middlewares=[cache])
    try:
        assert isinstance(serving.engine, Router)
        async with HttpEngine(
            f"http://{serving.args.sglang_router_ip}:{serving.args.sglang_router_port}"
        ) as client:
            over_http = await client.generate(prompt, params)
            again = await client.generate(prompt, params)
    finally:
        await serving.close()
    assert over_http.token_ids == direct.token_ids and len(direct.token_ids) == 6
    assert over_http.finish_reason is FinishReason.LENGTH
    torch.testing.assert_close(torch.tensor(over_http.log_probs), torch.tensor(direct.log_probs))
    assert again == over_http and cache.stats.cache_hits == 1
