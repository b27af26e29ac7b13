"""offload_rollout (issue 21): the embedded engine's fast path frees its KV cache, fused weight
copies and CUDA graphs after a rollout and builds them again, from the weights of that moment,
at the next request; the Trainer does it after every rollout with --offload-rollout. CPU (the
fast path's torch reference kernels)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from miles_sdk.engines._fast import FastRunner
from miles_sdk.engines.base import EngineOutput, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.testing.tiny import tiny_tokenizer

SAMPLED: SamplingParams = {"max_new_tokens": 8, "temperature": 1.0, "ignore_eos": True}


def _model(vocab: int) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def _generate(engine: EmbeddedEngine, seed: int) -> list[EngineOutput]:
    async def run() -> list[EngineOutput]:
        prompts = [[3, 4, 5], [6, 7, 8, 9], [10, 11]]
        return list(
            await asyncio.gather(
                *(engine.generate(p, {**SAMPLED, "sampling_seed": seed + i}) for i, p in enumerate(prompts))
            )
        )

    return asyncio.run(run())


def _tokens(outs: list[EngineOutput]) -> list[list[int]]:
    return [list(o.token_ids) for o in outs]


def test_released_engine_samples_like_one_that_kept_its_memory() -> None:
    tok = tiny_tokenizer()
    model = _model(len(tok))
    kept = EmbeddedEngine(model, tok, fast_path=True, own_weights=True, max_seq_len=32)
    freed = EmbeddedEngine(model, tok, fast_path=True, own_weights=True, max_seq_len=32)
    runner = freed._runner
    assert isinstance(runner, FastRunner)
    assert _tokens(_generate(freed, 0)) == _tokens(_generate(kept, 0))
    freed.release_memory_occupation()
    assert runner.released and runner._k_all.numel() == 0 and not runner._layers
    # The weights change while the engine holds no fused copies: it must sample from the new ones.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    kept.update_weights()
    freed.update_weights()
    assert _tokens(_generate(freed, 7)) == _tokens(_generate(kept, 7))
    assert not runner.released and runner._k_all.numel() > 0
    # A request longer than the cache planned while released: the cache is built large enough.
    freed.release_memory_occupation()
    kept_long, freed_long = (
        asyncio.run(e.generate(list(range(3, 40)), {**SAMPLED, "sampling_seed": 1})) for e in (kept, freed)
    )
    assert list(freed_long.token_ids) == list(kept_long.token_ids)
    assert runner.capacity >= 37 + 8
    kept.close()
    freed.close()


def test_release_is_refused_while_requests_run() -> None:
    tok = tiny_tokenizer()
    engine = EmbeddedEngine(_model(len(tok)), tok, fast_path=True, max_seq_len=32)

    async def run() -> None:
        task = asyncio.ensure_future(engine.generate([3, 4, 5], {**SAMPLED, "max_new_tokens": 64}))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="still running"):
            engine.release_memory_occupation()
        await task

    asyncio.run(run())
    engine.close()


def _trainer_run(offload: bool) -> tuple[list[list[str]], FastRunner]:
    from miles_sdk.demo.task import addition_reward
    from miles_sdk.testing import small_config, tiny_policy
    from miles_sdk.trainer import Trainer

    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, fast_path=True, max_batch_size=8, max_seq_len=32)
    runner = engine._runner
    assert isinstance(runner, FastRunner)
    rows = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
    config = small_config(offload_rollout=offload, rollout_seed=5, sglang_enable_deterministic_inference=True)
    trainer = Trainer(
        config, model=model, tokenizer=tok, engine=engine, dataset=rows, reward_model=addition_reward
    )
    responses = []
    try:
        for _ in range(2):
            trainer.step()
            responses.append([s.response for s in trainer.last_samples])
            assert runner.released == offload
    finally:
        trainer.close()
        engine.close()
    return responses, runner


def test_trainer_offload_rollout_releases_after_each_rollout() -> None:
    plain, _ = _trainer_run(offload=False)
    offloaded, _ = _trainer_run(offload=True)
    assert offloaded == plain


def test_trainer_offload_rollout_warns_for_an_engine_that_cannot_release(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from miles_sdk.testing import run_steps, small_config
    from miles_sdk.testing.engine import ScriptedEngine

    run_steps({"engine": ScriptedEngine([5, 6])}, steps=2, config=small_config(offload_rollout=True))
    warned = [r for r in caplog.records if "offload_rollout" in r.getMessage()]
    assert len(warned) == 1 and "ScriptedEngine" in warned[0].getMessage()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and device memory")
def test_release_frees_device_memory_and_graphs_come_back_on_cuda() -> None:
    tok = tiny_tokenizer()
    model = _model(len(tok)).to("cuda", torch.bfloat16)
    kept = EmbeddedEngine(model, tok, own_weights=True, max_seq_len=64)
    freed = EmbeddedEngine(model, tok, own_weights=True, max_seq_len=64)
    runner = freed._runner
    assert isinstance(runner, FastRunner)
    assert _tokens(_generate(freed, 0)) == _tokens(_generate(kept, 0))
    cache_bytes = runner._k_all.untyped_storage().nbytes() * 2
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    freed.release_memory_occupation()
    assert before - torch.cuda.memory_allocated() >= cache_bytes
    captures = runner.stats["graph_captures"]
    assert _tokens(_generate(freed, 3)) == _tokens(_generate(kept, 3))
    assert runner.stats["graph_captures"] > captures  # captured again on the rebuilt cache
    kept.close()
    freed.close()
