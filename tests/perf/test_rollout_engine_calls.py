"""The default rollout's host work per sample (issue 21): the demo's rollout (16 groups of 16
kept, dynamic sampling, over-sampling) on the embedded engine sends one engine call per group and
wakes once per group, not once per sample. The per-sample path cost ~55 us a sample on the CPU
(a task, a generate call, a request parse and a future wake-up each); 512 samples a step made it
the floor of the tiny step's rollout on a GPU."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from miles_sdk.config import Config
from miles_sdk.data import RolloutDataSource
from miles_sdk.demo.run import demo_config
from miles_sdk.demo.task import make_addition_dataset
from miles_sdk.engines.base import EngineOutput, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.rollout import RolloutContext, check_reward_nonzero_std, train_rollout, use_rollout_context
from miles_sdk.testing import tiny_policy
from miles_sdk.types import Sample


async def parity_reward(args: Config, sample: Sample) -> float:
    """0 or 1 from the response tokens (the untrained policy rarely answers right): groups vary."""
    return float(sum(sample.tokens[len(sample.tokens) - sample.response_length :]) % 2)


class CountingEngine(EmbeddedEngine):
    """Records the size of every call the rollout makes (``generate``: 1, ``generate_batch``: its requests)."""

    submissions: list[int]

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        self.submissions.append(1)
        return await super().generate(input_ids, sampling_params)

    async def generate_batch(
        self,
        input_ids: Sequence[Sequence[int]],
        sampling_params: Sequence[SamplingParams],
        *,
        on_done: Callable[[int, EngineOutput], None] | None = None,
    ) -> list[EngineOutput]:
        self.submissions.append(len(input_ids))
        return await super().generate_batch(input_ids, sampling_params, on_done=on_done)


async def test_the_demo_rollout_calls_the_engine_once_per_group(tmp_path: object) -> None:
    args = demo_config(str(tmp_path), 10, 0, progress_bar=False)
    model, tok = tiny_policy("arithmetic", seed=0)
    engine = CountingEngine(model, tok, max_batch_size=args.max_engine_batch_size, seed=args.rollout_seed)
    engine.submissions = []
    ctx = RolloutContext(
        engine=engine,
        tokenizer=tok,
        reward_fn=parity_reward,
        dynamic_sampling_filter=check_reward_nonzero_std,
    )
    source = RolloutDataSource(args, dataset=make_addition_dataset(0))
    with use_rollout_context(ctx):
        for rollout_id in range(2):
            engine.submissions.clear()
            out = await train_rollout(args, rollout_id, source)
            drawn = out.metrics["rollout/groups_drawn"]
            assert drawn >= args.rollout_batch_size
            # One submission of a whole group per group drawn; none per sample.
            assert engine.submissions == [args.n_samples_per_prompt] * int(drawn)
            assert out.metrics["rollout/generate_calls"] == drawn * args.n_samples_per_prompt


async def test_an_engine_step_turns_dropout_off_without_module_setattr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each engine step sets ``training`` off and on again on every module of a policy in train
    mode; through nn.Module.__setattr__ that was 120 us a step for the demo's 33 modules (its
    parameter, buffer and child lookups), about 1 ms for a 0.5B model's."""
    model, tok = tiny_policy("unit", seed=0)
    model.train()
    engine = EmbeddedEngine(model, tok)
    seen: list[bool] = []
    setattr_ = torch.nn.Module.__setattr__

    def counting(self: torch.nn.Module, name: str, value: Any) -> None:
        if name == "training":
            seen.append(bool(value))
        setattr_(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", counting)
    dropout_during_step: list[bool] = []
    step = engine._runner.step

    def checked(max_tokens: int = 1) -> Any:
        dropout_during_step.append(any(m.training for m in model.modules()))
        return step(max_tokens)

    monkeypatch.setattr(engine._runner, "step", checked)
    out = await engine.generate(tok.encode("1+2="), {"max_new_tokens": 3, "ignore_eos": True})
    assert len(out.token_ids) == 3
    assert dropout_during_step and not any(dropout_during_step)  # eval mode inside every step
    assert all(m.training for m in model.modules())  # and train mode again after
    assert seen == []
