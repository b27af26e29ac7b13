"""The default train rollout: over-sampling, filters, abort, partial rollout, determinism, failures."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_helpers import CharTokenizer, ListSource, make_config

from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.hooks import DataSource
from miles_sdk.rollout import (
    RolloutContext,
    RolloutError,
    check_reward_nonzero_std,
    generate_rollout,
    generate_with_engine,
    train_rollout,
    use_rollout_context,
)
from miles_sdk.testing.engine import ScriptedEngine, ScriptedRequest
from miles_sdk.types import DynamicFilterOutput, RolloutFnTrainOutput, Sample

TOK = CharTokenizer()


async def yes_rm(args: Config, sample: Sample) -> float:
    return 1.0 if "yes" in sample.response else 0.0


def seeded_answers(prompt: str | list[int], req: ScriptedRequest) -> str:
    """'good' prompts answer yes/no by seed (so their group has reward std > 0), others always no."""
    assert isinstance(prompt, str)
    if prompt.startswith("good"):
        return "yes" if req.sampling_params["sampling_seed"] % 2 == 0 else "no"
    return "no"


async def run(
    args: Config, source: DataSource, engine: ScriptedEngine, rollout_id: int = 0, **ctx_kwargs: Any
) -> RolloutFnTrainOutput:
    ctx = RolloutContext(engine=engine, tokenizer=TOK, **ctx_kwargs)
    with use_rollout_context(ctx):
        out = await generate_rollout(args, rollout_id, source)
    assert isinstance(out, RolloutFnTrainOutput)
    return out


async def test_over_sampling_requests_rounds_times_batch_when_filter_drops() -> None:
    args = make_config(over_sampling_batch_size=3, sglang_enable_deterministic_inference=True)
    source = ListSource(["bad0", "bad1", "good0", "bad2", "good1", "good2"], n=2)
    engine = ScriptedEngine(seeded_answers, tokenizer=TOK)
    out = await run(args, source, engine, reward_fn=yes_rm, dynamic_sampling_filter=check_reward_nonzero_std)
    # Round 1 keeps good0 only (kept 1 + 0 in flight < 2), so round 2 draws 3 more groups.
    assert source.get_calls == [3, 3]
    assert len(engine.requests) == 2 * 3 * 2
    assert [g[0].prompt for g in out.samples] == ["good0", "good1"]
    assert out.metrics["rollout/dynamic_filter/drop_zero_std_0.0"] == 3
    assert out.metrics["rollout/over_sampling_rounds"] == 2 and out.metrics["rollout/groups_kept"] == 2
    assert out.metrics["rollout/extra_groups_discarded"] + out.metrics["rollout/aborted_groups"] == 1
    for group in out.samples:
        assert sorted(s.reward for s in group) == [0.0, 1.0]  # type: ignore[type-var]
        assert [s.index for s in group] == sorted(s.index for s in group if s.index is not None)


async def test_abort_leaves_no_request_running_and_drops_unfinished_groups() -> None:
    args = make_config(rollout_batch_size=1, over_sampling_batch_size=3)
    source = ListSource(["fast", "slow1", "slow2"], n=2)
    engine = ScriptedEngine("yes" * 5, tokenizer=TOK, delays=lambda r: 0.0 if r.text == "fast" else 0.02)
    out = await run(args, source, engine, reward_fn=yes_rm)
    assert [g[0].prompt for g in out.samples] == ["fast"]
    assert engine.in_flight == 0 and engine.abort_calls == 1
    slow = [r for r in engine.requests if r.text != "fast"]
    assert len(slow) == 4 and all(
        r.output is not None and r.output.finish_reason.value == "abort" for r in slow
    )
    assert out.metrics["rollout/aborted_groups"] == 2 and source.added == []


async def test_partial_rollout_resumes_with_budget_and_masks_old_tokens() -> None:
    args = make_config(
        rollout_batch_size=1,
        over_sampling_batch_size=2,
        partial_rollout=True,
        mask_offpolicy_in_partial_rollout=True,
        rollout_max_response_len=60,
    )
    source = ListSource(["fast", "slow"], n=1)
    delays = {"fast": 0.01, "slow": 0.005}  # per token: fast ends after 3 tokens, slow needs 20
    engine = ScriptedEngine(
        {"fast": "yes", "slow": "y" * 20}, tokenizer=TOK, delays=lambda r: delays[(r.text or "")[:4]]
    )
    first = await run(args, source, engine, rollout_id=0, reward_fn=yes_rm)
    assert [g[0].prompt for g in first.samples] == ["fast"]
    (back,) = source.added
    (partial,) = back
    done = partial.response_length
    assert 0 < done < 20 and partial.status is Sample.Status.ABORTED
    assert partial.weight_versions == [0] and partial.metadata["start_rollout_id"] == 0
    assert first.metrics["rollout/partial_groups_returned"] == 1

    n_first = len(engine.requests)
    engine.update_weights()
    delays["slow"] = 0.0
    second = await run(args, source, engine, rollout_id=1, reward_fn=yes_rm)
    (resumed,) = next(g for g in second.samples if g[0].prompt == "slow")
    assert resumed is partial
    (req,) = [r for r in engine.requests[n_first:] if (r.text or "").startswith("slow")]
    assert req.input_ids == TOK.encode("slow") + [ord("y")] * done
    assert req.sampling_params["max_new_tokens"] == 60 - done
    assert resumed.response == "y" * (done + 20) and resumed.response_length == 20 + done
    assert resumed.tokens == TOK.encode("slow" + "y" * (20 + done))
    assert resumed.weight_versions == [0, 1]
    assert resumed.loss_mask == [0] * done + [1] * 20  # older weights' tokens masked
    resumed.validate()


async def test_deterministic_reruns_are_identical_and_seeds_recorded() -> None:
    args = make_config(
        rollout_batch_size=2,
        n_samples_per_prompt=3,
        sglang_enable_deterministic_inference=True,
        rollout_seed=7,
    )

    async def once() -> tuple[list[dict[str, Any]], list[int]]:
        engine = ScriptedEngine(
            lambda p, r: "a" * (1 + r.sampling_params["sampling_seed"] % 4), tokenizer=TOK
        )
        out = await run(args, ListSource(["p0", "p1"], n=3), engine, reward_fn=yes_rm)
        return [s.to_dict() for g in out.samples for s in g], [
            r.sampling_params["sampling_seed"] for r in engine.requests
        ]

    (a, seeds_a), (b, seeds_b) = await once(), await once()
    assert a == b
    assert sorted(seeds_a) == [7, 7, 8, 8, 9, 9] and seeds_a == seeds_b
    assert [d["response"] for d in a] == ["aaaa", "a", "aa"] * 2


async def test_reward_failure_drops_group_and_records_error() -> None:
    async def rm(args: Config, sample: Sample) -> float:
        if sample.prompt == "boom":
            raise RuntimeError("grader exploded")
        return 1.0

    seen: list[list[list[Sample]]] = []
    args = make_config(rollout_batch_size=1, over_sampling_batch_size=2)
    engine = ScriptedEngine("ok", tokenizer=TOK)
    out = await run(
        args,
        ListSource(["boom", "fine"], n=2),
        engine,
        reward_fn=rm,
        rollout_all_samples_process=lambda a, groups, ds: seen.append(groups),
    )
    assert [g[0].prompt for g in out.samples] == ["fine"]
    assert (
        out.metrics["rollout/reward_failed"] == 2 and out.metrics["rollout/dropped_groups/reward_failed"] == 1
    )
    failed = seen[0][0]
    assert all(s.status is Sample.Status.FAILED and s.reward is None for s in failed)
    assert "grader exploded" in failed[0].metadata["reward_error"]

    with pytest.raises(RolloutError, match="grader exploded"):
        await run(args, ListSource(["boom"], n=2), ScriptedEngine("ok", tokenizer=TOK), reward_fn=rm)


async def test_group_rm_scores_each_group_in_one_call() -> None:
    calls: list[list[str]] = []

    async def batched(args: Config, samples: list[Sample]) -> list[float]:
        calls.append([s.response for s in samples])
        return [float(i) for i in range(len(samples))]

    args = make_config(rollout_batch_size=2, n_samples_per_prompt=3, group_rm=True)
    out = await run(
        args, ListSource(["a", "b"], n=3), ScriptedEngine("r", tokenizer=TOK), batched_reward_fn=batched
    )
    assert len(calls) == 2 and all(len(c) == 3 for c in calls)
    assert [[s.reward for s in g] for g in out.samples] == [[0.0, 1.0, 2.0]] * 2


async def test_generate_fn_precedence_list_returns_and_concurrency_limit() -> None:
    loaded: list[str] = []

    async def custom(args: Config, sample: Sample, params: SamplingParams) -> Sample:
        sample.metadata["by"] = "custom"
        return await generate_with_engine(args, sample, params)

    async def multi(args: Config, sample: Sample, params: SamplingParams) -> list[Sample]:
        other = Sample(group_index=sample.group_index, index=1000 + (sample.index or 0), prompt=sample.prompt)
        return [await generate_with_engine(args, s, params) for s in (sample, other)]

    def loader(path: str) -> Any:
        loaded.append(path)
        return multi

    class OverrideFirst(ListSource):
        def get_samples(self, num_samples: int) -> list[list[Sample]]:
            groups = super().get_samples(num_samples)
            groups[0][0].generate_function_path = "pkg.multi"
            return groups

    args = make_config(rollout_batch_size=2, n_samples_per_prompt=2, sglang_server_concurrency=2)
    engine = ScriptedEngine("yes", tokenizer=TOK, delays=0.001)
    out = await run(
        args,
        OverrideFirst(["a", "b"], n=2),
        engine,
        generate_fn=custom,
        reward_fn=yes_rm,
        load_generate_fn=loader,
    )
    first, second = out.samples
    assert loaded == ["pkg.multi"] and len(first) == 3 and len(second) == 2
    assert all(s.reward == 1.0 for g in out.samples for s in g)
    assert [s.metadata.get("by") for s in second] == ["custom", "custom"]
    assert engine.max_in_flight <= 2


async def test_sample_filter_and_all_samples_hook_order() -> None:
    order: list[str] = []

    def sample_filter(args: Config, data: list[list[Sample]]) -> None:
        order.append("filter")
        data[0][0].remove_sample = True

    def process(args: Config, groups: list[list[Sample]], ds: DataSource) -> None:
        order.append("process")
        assert len(groups) == 3  # the dropped group too

    def drop_b(args: Config, samples: list[Sample], **kw: Any) -> DynamicFilterOutput | bool:
        return samples[0].prompt != "b"

    args = make_config(over_sampling_batch_size=3)
    out = await run(
        args,
        ListSource(["a", "b", "c"], n=2),
        ScriptedEngine("x", tokenizer=TOK),
        reward_fn=yes_rm,
        dynamic_sampling_filter=drop_b,
        rollout_sample_filter=sample_filter,
        rollout_all_samples_process=process,
    )
    assert order == ["filter", "process"] and out.samples[0][0].remove_sample
    assert out.metrics["rollout/dynamic_filter/drop_unspecified"] == 1


async def test_generate_error_propagates_with_note_and_stops_requests() -> None:
    async def broken(args: Config, sample: Sample, params: SamplingParams) -> Sample:
        if sample.prompt == "bad":
            raise ValueError("tool crashed")
        return await generate_with_engine(args, sample, params)

    args = make_config(over_sampling_batch_size=3)
    engine = ScriptedEngine("x" * 10, tokenizer=TOK, delays=lambda r: 0.0 if r.text == "bad" else 0.01)
    with pytest.raises(ValueError, match="tool crashed") as info:
        await run(args, ListSource(["slow", "bad", "slow2"], n=2), engine, generate_fn=broken)
    assert any("test_default" in note and "index=2" in note for note in info.value.__notes__)
    assert engine.in_flight == 0


async def test_empty_data_source_is_an_error() -> None:
    class Empty(ListSource):
        def get_samples(self, num_samples: int) -> list[list[Sample]]:
            return []

    ctx = RolloutContext(engine=ScriptedEngine("x", tokenizer=TOK), tokenizer=TOK)
    with use_rollout_context(ctx), pytest.raises(RolloutError, match="returned no groups"):
        await train_rollout(make_config(), 0, Empty(["a"], n=2))


async def test_a_filter_that_drops_everything_stops_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import miles_sdk.rollout.default as default_module
    from miles_sdk.rollout import RolloutError

    monkeypatch.setattr(default_module, "_MAX_ROUNDS_WITHOUT_A_KEPT_GROUP", 5)
    args = make_config(over_sampling_batch_size=2)
    source = ListSource(["bad0", "bad1", "bad2"], n=2)
    engine = ScriptedEngine(seeded_answers, tokenizer=TOK)
    with pytest.raises(RolloutError, match="kept no group.*zero_std"):
        await run(args, source, engine, reward_fn=yes_rm, dynamic_sampling_filter=check_reward_nonzero_std)
