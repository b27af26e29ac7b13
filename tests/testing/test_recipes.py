"""The three recipes of docs/testing.md, verbatim, as real tests (keep both in sync)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from miles_sdk.algo import get_sum_of_sample_mean
from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.hooks import GenerateFn, RewardFn
from miles_sdk.rollout import (
    RolloutContext,
    append_tokens,
    extract_tool_call,
    generate_with_engine,
    get_rollout_context,
    stop_at_markers,
    use_rollout_context,
)
from miles_sdk.testing import ScriptedEngine, call_hook, check_hook, make_sample, tiny_tokenizer
from miles_sdk.testing.strategies import MaskedTokenBatch, masked_token_tensors
from miles_sdk.types import DynamicFilterOutput, Sample

# ---------------------------------------------------------------------------------------------
# Recipe 1: a reward function
# ---------------------------------------------------------------------------------------------


async def exact_match(args: Config, sample: Sample) -> float:
    return float(sample.response.strip() == sample.label)


def test_exact_match(miles_config: Config) -> None:
    check_hook(exact_match, RewardFn)
    assert call_hook(exact_match, miles_config, make_sample("2+2=", " 4", label="4")) == 1.0
    assert call_hook(exact_match, miles_config, make_sample("2+2=", "5", label="4")) == 0.0


# ---------------------------------------------------------------------------------------------
# Recipe 2: a multi-turn (tool-calling) generate function against ScriptedEngine
# ---------------------------------------------------------------------------------------------

TOOL_TURN = (
    "<|im_end|>\n<|im_start|>user\n<tool_response>\n{}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
)


async def calculator_generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    """Lets the model call an adder: ``<tool_call>2+3</tool_call>`` -> ``5``; at most 3 calls."""
    tok = get_rollout_context().tokenizer
    assert tok is not None
    params = stop_at_markers(sampling_params, "</tool_call>")
    for _ in range(3):
        sample = await generate_with_engine(args, sample, params)
        call = extract_tool_call(sample.response)
        if call is None or sample.status is not Sample.Status.COMPLETED:
            break
        result = sum(int(x) for x in call.split("+"))
        tool_text = TOOL_TURN.format(result)
        append_tokens(
            sample, tok.encode(tool_text, add_special_tokens=False), loss_mask_value=0, text=tool_text
        )
    return sample


@pytest.mark.asyncio
async def test_calculator_generate_masks_tool_output(miles_config: Config) -> None:
    check_hook(calculator_generate, GenerateFn)
    tok = tiny_tokenizer()
    engine = ScriptedEngine(
        {"What is 2+3?": "<tool_call>2+3</tool_call>", "</tool_response>": "It is 5<|im_end|>"},
        tokenizer=tok,
    )
    sample = Sample(prompt="What is 2+3?", label="5")
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        sample = await calculator_generate(miles_config, sample, {"max_new_tokens": 64})

    model_1 = tok.encode("<tool_call>2+3</tool_call>")
    tool = tok.encode(TOOL_TURN.format(5))
    model_2 = tok.encode("It is 5<|im_end|>")
    assert sample.response == "<tool_call>2+3</tool_call>" + TOOL_TURN.format(5) + "It is 5<|im_end|>"
    assert sample.loss_mask == [1] * len(model_1) + [0] * len(tool) + [1] * len(model_2)
    assert sample.status is Sample.Status.COMPLETED
    sample.validate()
    # The second turn saw the whole conversation so far, and its budget shrank by what was used.
    assert len(engine.requests) == 2
    assert engine.requests[1].input_ids == tok.encode("What is 2+3?") + model_1 + tool
    assert engine.requests[1].sampling_params["max_new_tokens"] == 64 - len(model_1) - len(tool)


# ---------------------------------------------------------------------------------------------
# Recipe 3: a property of a pg-loss reducer, with hypothesis
# ---------------------------------------------------------------------------------------------


def reduce(b: MaskedTokenBatch) -> torch.Tensor:
    reducer = get_sum_of_sample_mean(b.total_lengths, b.response_lengths, b.loss_masks)
    return reducer(b.flat_values)


def pad(b: MaskedTokenBatch, k: int) -> MaskedTokenBatch:
    """Each sample gets ``k`` extra tokens with mask 0 and a huge value: padding."""
    return MaskedTokenBatch(
        values=[torch.cat([v, torch.full((k,), 1e6)]) for v in b.values],
        loss_masks=[torch.cat([m, torch.zeros(k)]) for m in b.loss_masks],
        response_lengths=[n + k for n in b.response_lengths],
        total_lengths=[t + k for t in b.total_lengths],
    )


@settings(max_examples=50, deadline=None)
@given(masked_token_tensors())
def test_sum_of_sample_mean_ignores_padding(b: MaskedTokenBatch) -> None:
    torch.testing.assert_close(reduce(pad(b, 3)), reduce(b))
    # And it is the *sum* over samples of each sample's masked mean (0 for an all-masked sample):
    # Miles's convention, the one a PGLossReducer hook returns (docs/hooks.md).
    per_sample = [(v * m).sum() / m.sum().clamp_min(1) for v, m in zip(b.values, b.loss_masks, strict=True)]
    torch.testing.assert_close(reduce(b), torch.stack(per_sample).sum())


# ---------------------------------------------------------------------------------------------
# Recipe 4: a hook composes with the whole loop (run_steps)
# ---------------------------------------------------------------------------------------------


def keep_mixed_groups(args: Config, samples: list[Sample]) -> DynamicFilterOutput:
    rewards = {s.reward for s in samples}
    return DynamicFilterOutput(keep=len(rewards) > 1, reason="all_same")


async def alternating(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)  # both rewards in every group, so some groups are kept


def test_filter_composes_with_the_loop() -> None:
    from miles_sdk.testing import run_steps

    result = run_steps({"dynamic_sampling_filter": keep_mixed_groups, "reward_model": alternating}, steps=2)
    assert len(result.metrics) == 2
    for step_samples in result.samples:
        assert all(s.reward is not None for s in step_samples)
