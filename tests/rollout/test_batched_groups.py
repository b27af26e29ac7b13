"""The default rollout's batched path (one ``generate_batch`` call per single-turn group) against
its per-sample path (a task and a ``generate`` call per sample) on the same embedded engine: the
same samples, tokens, log-probs, rewards and counts, with over-sampling, the dynamic filter,
abort, partial rollout, deterministic seeds and a concurrency limit smaller than a wave."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest

from miles_sdk.config import Config
from miles_sdk.data import RolloutDataSourceWithBuffer
from miles_sdk.demo.task import make_addition_dataset
from miles_sdk.engines.base import EngineOutput, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.rollout import RolloutContext, check_reward_nonzero_std, train_rollout, use_rollout_context
from miles_sdk.rollout.eval import eval_rollout
from miles_sdk.rollout.generate import generate_with_engine
from miles_sdk.testing import tiny_policy
from miles_sdk.types import Metrics, Sample


async def parity_reward(args: Config, sample: Sample) -> float:
    """0 or 1 from the response tokens: varies within a group, so the filter keeps some groups."""
    return float(sum(sample.tokens[len(sample.tokens) - sample.response_length :]) % 2)


class PerSample:
    """The embedded engine without ``generate_batch``: the rollout takes its per-sample path."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        self.calls = 0

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        self.calls += 1
        return await self.engine.generate(input_ids, sampling_params)

    async def abort_all(self) -> None:
        await self.engine.abort_all()

    def update_weights(self, version: int | None = None) -> None:
        self.engine.update_weights(version)

    @property
    def weight_version(self) -> int:
        return self.engine.weight_version


def config(**overrides: Any) -> Config:
    base: dict[str, Any] = {
        "label_key": "label",
        "rollout_batch_size": 3,
        "over_sampling_batch_size": 5,
        "n_samples_per_prompt": 4,
        "rollout_max_response_len": 6,
        "rollout_temperature": 1.0,
        # A tenth of the vocabulary stops a response: lengths vary, so groups finish at different
        # steps and some are still running when the batch is full (aborted, or resumed later).
        "rollout_stop_token_ids": list(range(100, 131)),
        "rollout_seed": 3,
        "seed": 3,
    }
    return Config(**(base | overrides))


def snapshot(sample: Sample) -> tuple[object, ...]:
    return (
        sample.index,
        sample.group_index,
        sample.tokens,
        sample.response,
        sample.response_length,
        sample.rollout_log_probs,
        sample.loss_mask,
        sample.reward,
        sample.status,
        sample.weight_versions,
        sample.rollout_id,
        sorted(sample.metadata.items()),
    )


def counts(metrics: Metrics) -> dict[str, float]:
    """The metrics that count things (not the timings)."""
    return {k: v for k, v in metrics.items() if not k.startswith("perf/") and k != "rollout/time_s"}


async def rollouts(
    args: Config, *, batched: bool, n: int = 3
) -> tuple[list[list[object]], list[dict[str, float]], int]:
    model, tok = tiny_policy("unit", seed=1)
    engine = EmbeddedEngine(model, tok, max_batch_size=64, seed=args.rollout_seed)
    wrapped = PerSample(engine)
    ctx = RolloutContext(
        engine=engine if batched else wrapped,
        tokenizer=tok,
        reward_fn=parity_reward,
        dynamic_sampling_filter=check_reward_nonzero_std,
    )
    source = RolloutDataSourceWithBuffer(args, dataset=make_addition_dataset(0)[:40])
    samples: list[list[object]] = []
    metrics: list[dict[str, float]] = []
    with use_rollout_context(ctx):
        for rollout_id in range(n):
            out = await train_rollout(args, rollout_id, source)
            samples.append([snapshot(s) for group in out.samples for s in group])
            metrics.append(counts(out.metrics))
    return samples, metrics, wrapped.calls


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"sglang_enable_deterministic_inference": True},
        # Unfinished groups go back to the buffer with their tokens and resume next rollout.
        {"partial_rollout": True, "mask_offpolicy_in_partial_rollout": True, "rollout_max_response_len": 12},
        # Fewer slots than a wave's samples: groups wait for slots (and take the per-sample path).
        {"sglang_server_concurrency": 6},
    ],
    ids=["default", "deterministic", "partial", "concurrency"],
)
async def test_batched_groups_equal_per_sample_generation(overrides: dict[str, Any]) -> None:
    args = config(**overrides)
    batched, batched_metrics, per_sample_calls_there = await rollouts(args, batched=True)
    per_sample, per_sample_metrics, calls = await rollouts(args, batched=False)
    assert per_sample_calls_there == 0
    assert batched == per_sample
    assert batched_metrics == per_sample_metrics
    assert calls == sum(m["rollout/generate_calls"] for m in per_sample_metrics)
    assert all(len(s) == args.rollout_batch_size * args.n_samples_per_prompt for s in batched)
    if args.partial_rollout:
        assert sum(m.get("rollout/partial_groups_returned", 0) for m in batched_metrics) > 0


async def test_a_custom_generate_fn_is_still_called_once_per_sample() -> None:
    calls: list[int | None] = []

    async def generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
        calls.append(sample.index)
        return await generate_with_engine(args, sample, sampling_params)

    args = config()
    model, tok = tiny_policy("unit", seed=1)
    engine = EmbeddedEngine(model, tok)
    ctx = RolloutContext(engine=engine, tokenizer=tok, generate_fn=generate, reward_fn=parity_reward)
    source = RolloutDataSourceWithBuffer(args, dataset=make_addition_dataset(0)[:40])
    with use_rollout_context(ctx):
        out = await train_rollout(args, 0, source)
    assert len(calls) == out.metrics["rollout/generate_calls"] == len(set(calls))
    assert len(calls) >= args.rollout_batch_size * args.n_samples_per_prompt


async def test_an_engine_error_in_a_batched_group_names_the_samples() -> None:
    args = config(rollout_batch_size=1, over_sampling_batch_size=1)
    model, tok = tiny_policy("unit", seed=1)
    engine = EmbeddedEngine(model, tok)
    ctx = RolloutContext(engine=engine, tokenizer=tok, reward_fn=parity_reward)
    source = RolloutDataSourceWithBuffer(args, dataset=make_addition_dataset(0)[:4])
    group = source.get_samples(1)[0]
    for sample in group:
        sample.tokens = [10**6]  # outside the vocabulary: the engine refuses the request
    source.add_samples([group])
    with use_rollout_context(ctx), pytest.raises(ValueError, match="outside the vocabulary") as info:
        await train_rollout(args, 0, source)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "request 0 of a generate_batch of 4" in notes
    assert "generate_with_engine on the samples of group" in notes
    assert f"index={[s.index for s in group]}" in notes


class FirstGroupShort(EmbeddedEngine):
    """Answers the first batch in one token; records each batch's size and the cancelled ones."""

    calls: list[int]
    cancelled: list[int]

    async def generate_batch(
        self,
        input_ids: Sequence[Sequence[int]],
        sampling_params: Sequence[SamplingParams],
        *,
        on_done: Callable[[int, EngineOutput], None] | None = None,
    ) -> list[EngineOutput]:
        self.calls.append(len(input_ids))
        if len(self.calls) == 1:
            short = []
            for p in sampling_params:
                q = SamplingParams(**p)
                q["max_new_tokens"] = 1
                short.append(q)
            sampling_params = short
        try:
            return await super().generate_batch(input_ids, sampling_params, on_done=on_done)
        except asyncio.CancelledError:
            self.cancelled.append(len(input_ids))
            raise


async def test_an_error_mid_rollout_cancels_the_batched_groups_in_flight() -> None:
    args = config(rollout_max_response_len=40, rollout_stop_token_ids=[], over_sampling_batch_size=6)
    model, tok = tiny_policy("unit", seed=1)
    engine = FirstGroupShort(model, tok)
    engine.calls, engine.cancelled = [], []

    class BrokenFilter(Exception):
        pass

    def broken(args: Config, samples: list[Sample]) -> bool:
        raise BrokenFilter("filter bug")

    ctx = RolloutContext(
        engine=engine, tokenizer=tok, reward_fn=parity_reward, dynamic_sampling_filter=broken
    )
    source = RolloutDataSourceWithBuffer(args, dataset=make_addition_dataset(0)[:40])
    # The first group answers in one token and reaches the broken filter while the other groups
    # (40 tokens each) are still decoding: the rollout cancels them on its way out.
    with use_rollout_context(ctx), pytest.raises(BrokenFilter):
        await train_rollout(args, 0, source)
    assert engine.calls == [args.n_samples_per_prompt] * args.effective_over_sampling_batch_size
    assert engine.cancelled == [args.n_samples_per_prompt] * (args.effective_over_sampling_batch_size - 1)
    for _ in range(100):  # the scheduler drops the cancelled requests on its next tick
        if not engine._active and not engine._waiting:
            break
        await asyncio.sleep(0.01)
    assert not engine._active and not engine._waiting
    # The engine serves the next rollout, on the batched path again.
    ctx.dynamic_sampling_filter = None
    with use_rollout_context(ctx):
        out = await train_rollout(args, 1, source)
    assert len(out.samples) == args.rollout_batch_size
    assert (
        engine.calls[args.effective_over_sampling_batch_size :]
        == [args.n_samples_per_prompt] * args.effective_over_sampling_batch_size
    )


@attrs.define
class EvalSet:
    name: str
    prompts: list[str]
    n: int
    max_response_len: int | None = None

    def groups(self) -> list[list[Sample]]:
        return [[Sample(prompt=p, label=p[-1]) for _ in range(self.n)] for p in self.prompts]


async def evaluate(args: Config, *, batched: bool) -> tuple[dict[str, list[object]], dict[str, float], int]:
    model, tok = tiny_policy("unit", seed=1)
    engine = EmbeddedEngine(model, tok, max_batch_size=16, seed=args.rollout_seed)
    wrapped = PerSample(engine)
    datasets = {
        "a": EvalSet("a", ["1+2=", "3+4=", "5+5="], n=3),
        "b": EvalSet("b", ["7+1=", "2+2="], n=2, max_response_len=3),
    }
    ctx = RolloutContext(
        engine=engine if batched else wrapped, tokenizer=tok, reward_fn=parity_reward, eval_datasets=datasets
    )
    with use_rollout_context(ctx):
        out = await eval_rollout(args, 7)
    data = {
        name: [result["rewards"], result["truncated"], [snapshot(s) for s in result["samples"]]]
        for name, result in out.data.items()
    }
    return data, {k: v for k, v in out.metrics.items() if not k.endswith("time_s")}, wrapped.calls


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sglang_enable_deterministic_inference": True}, {"sglang_server_concurrency": 4}],
    ids=["default", "deterministic", "concurrency"],
)
async def test_batched_eval_groups_equal_per_sample_generation(overrides: dict[str, Any]) -> None:
    args = config(**overrides)
    batched, batched_metrics, none = await evaluate(args, batched=True)
    per_sample, per_sample_metrics, calls = await evaluate(args, batched=False)
    assert none == 0 and calls == 3 * 3 + 2 * 2
    assert batched == per_sample
    assert batched_metrics == per_sample_metrics
