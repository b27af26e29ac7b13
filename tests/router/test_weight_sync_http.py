"""rollout_engine="http": the trained weights reach the server (13.3), the sync is checked (13.4)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk._loop import LoopThread
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_server import ServerHandle, start_server
from miles_sdk.engines.weight_sync import WeightSyncError
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
GAP = "train/train_rollout_logprob_abs_diff"


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


@pytest.fixture
def remote_loop() -> Iterator[LoopThread]:
    """The 'remote' SGLang-like server runs on its own loop thread, as a separate process would."""
    loop = LoopThread()
    yield loop
    loop.close()


def _serve_copy(loop: LoopThread, model: torch.nn.Module, tok: Any, **server_kwargs: Any) -> ServerHandle:
    """A server over its own copy of the policy (what an SGLang server loaded from hf_checkpoint holds)."""
    engine = EmbeddedEngine(copy.deepcopy(model), tok, max_batch_size=8)  # type: ignore[arg-type]
    return loop.run(start_server(engine, tok, **server_kwargs))


def _train_over_http(server: ServerHandle, model: Any, tok: Any, steps: int, **overrides: Any) -> list[float]:
    cfg = small_config(
        rollout_engine="http",
        sglang_router_ip=server.host,
        sglang_router_port=server.port,
        lr=5e-2,
        rollout_max_response_len=6,
        **overrides,
    )
    with Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward) as t:
        return [t.step()[GAP] for _ in range(steps)]


def test_trained_weights_reach_the_http_server(remote_loop: LoopThread) -> None:
    """Old code only bumped a version: the gap grew 0 -> 1.1 -> 2.7 as the server kept sampling
    from the initial weights. Now every step is on-policy, as with the embedded engine."""
    model, tok = tiny_policy("unit", seed=0)
    server = _serve_copy(remote_loop, model, tok)
    try:
        gaps = _train_over_http(server, model, tok, steps=4, check_weight_sync=True)
    finally:
        remote_loop.run(server.close())
    embedded_model, _ = tiny_policy("unit", seed=0)
    cfg = small_config(lr=5e-2, rollout_max_response_len=6)
    with Trainer(cfg, model=embedded_model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward) as t:
        embedded = [t.step()[GAP] for _ in range(4)]
    assert max(embedded) < 1e-3  # fp32 on the CPU: the embedded engine's level
    assert max(gaps) < 1e-3, gaps


def test_a_server_that_ignores_the_weights_fails_the_sync_check(remote_loop: LoopThread) -> None:
    model, tok = tiny_policy("unit", seed=0)
    server = _serve_copy(remote_loop, model, tok, load_weights_from_disk=lambda path: None)
    try:
        with pytest.raises(WeightSyncError, match="does not sample from the weights just synced"):
            _train_over_http(server, model, tok, steps=1, check_weight_sync=True)
    finally:
        remote_loop.run(server.close())


def test_the_gap_guard_warns_on_an_on_policy_step(
    remote_loop: LoopThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the sync check, a stale server still shows: the next on-policy step warns loudly."""
    monkeypatch.setenv("MILES_SDK_CHECK_WEIGHT_SYNC", "0")
    model, tok = tiny_policy("unit", seed=0)
    server = _serve_copy(remote_loop, model, tok, load_weights_from_disk=lambda path: None)
    try:
        with caplog.at_level(logging.WARNING, logger="miles_sdk.trainer"):
            gaps = _train_over_http(server, model, tok, steps=3)
    finally:
        remote_loop.run(server.close())
    assert gaps[0] < 1e-3 < gaps[-1]
    warnings = [r.getMessage() for r in caplog.records if "on-policy by construction" in r.getMessage()]
    assert warnings and "rollout 2" in warnings[-1] and "dropout" in warnings[-1]
