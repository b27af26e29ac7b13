"""Eval rollout output, stock dynamic filters, and debug save/load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rollout_helpers import CharTokenizer, make_config

from miles_sdk.config import Config, ConfigError
from miles_sdk.rollout import (
    RolloutContext,
    call_dynamic_filter,
    check_no_aborted,
    check_reward_nonzero_std,
    generate_rollout,
    load_rollout_data,
    save_rollout_data,
    use_rollout_context,
)
from miles_sdk.testing.engine import ScriptedEngine
from miles_sdk.types import DynamicFilterOutput, RolloutFnEvalOutput, Sample, SampleStatus

TOK = CharTokenizer()


@attrs.define
class EvalSet:
    name: str
    prompts: list[str]
    n: int
    max_response_len: int | None = None

    def groups(self) -> list[list[Sample]]:
        return [[Sample(prompt=p, label=p[-1]) for _ in range(self.n)] for p in self.prompts]


async def test_eval_output_shape_and_settings() -> None:
    async def rm(args: Config, sample: Sample) -> float:
        if sample.prompt == "crash":
            raise RuntimeError("no grader")
        return 1.0 if sample.response.startswith(sample.label or "?") else 0.0

    engine = ScriptedEngine({"q1": "1 ok", "q2": "x long answer", "crash": "?"}, tokenizer=TOK)
    datasets = {"a": EvalSet("a", ["q1", "q2"], n=2), "b": EvalSet("b", ["crash"], n=1, max_response_len=4)}
    args = make_config(eval_temperature=0.0, n_samples_per_eval_prompt=2)
    ctx = RolloutContext(engine=engine, tokenizer=TOK, reward_fn=rm, eval_datasets=datasets)
    with use_rollout_context(ctx):
        out = await generate_rollout(args, 5, None, True)  # type: ignore[arg-type]
    assert isinstance(out, RolloutFnEvalOutput) and set(out.data) == {"a", "b"}
    a, b = out.data["a"], out.data["b"]
    assert a["rewards"] == [1.0, 1.0, 0.0, 0.0] and a["truncated"] == [False] * 4
    assert [s.index for s in a["samples"]] == [0, 1, 2, 3] and all(s.rollout_id == 5 for s in a["samples"])
    assert math.isnan(b["rewards"][0]) and out.metrics["eval/b/reward_failed"] == 1
    temps = {r.sampling_params["temperature"] for r in engine.requests}
    assert temps == {0.0}
    crash_req = next(r for r in engine.requests if r.text == "crash")
    assert crash_req.sampling_params["max_new_tokens"] == 4


async def test_eval_rejects_group_rm_and_missing_datasets() -> None:
    ctx = RolloutContext(engine=ScriptedEngine("x", tokenizer=TOK), tokenizer=TOK)
    with use_rollout_context(ctx):
        with pytest.raises(ConfigError, match="group_rm"):
            await generate_rollout(make_config(group_rm=True), 0, None, True)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="eval_datasets is empty"):
            await generate_rollout(make_config(), 0, None, True)  # type: ignore[arg-type]


def scored(*rewards: float | None, status: SampleStatus = Sample.Status.COMPLETED) -> list[Sample]:
    return [Sample(index=i, reward=r, status=status) for i, r in enumerate(rewards)]


def test_check_reward_nonzero_std() -> None:
    args = make_config()
    assert check_reward_nonzero_std(args, scored(1.0, 0.0)) == DynamicFilterOutput(keep=True)
    assert check_reward_nonzero_std(args, scored(0.04, 0.04)) == DynamicFilterOutput(False, "zero_std_0.0")
    assert check_reward_nonzero_std(args, scored(1.0)).reason == "zero_std_1.0"
    assert check_reward_nonzero_std(args, scored(None, 1.0, 0.0)).keep
    assert check_reward_nonzero_std(args, scored(None)).reason == "no_reward"
    dict_rewards = [Sample(reward={"score": v}) for v in (1, -1)]
    assert check_reward_nonzero_std(make_config(reward_key="score"), dict_rewards).keep


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=8))
def test_nonzero_std_agrees_with_torch(rewards: list[float]) -> None:
    expected = bool(torch.tensor(rewards, dtype=torch.float64).std() > 1e-8)
    assert check_reward_nonzero_std(make_config(), scored(*rewards)).keep is expected


def test_check_no_aborted() -> None:
    args = make_config()
    assert check_no_aborted(args, scored(1.0, 0.0)).keep
    group = scored(1.0, 0.0)
    group[1].status = Sample.Status.ABORTED
    assert check_no_aborted(args, group) == DynamicFilterOutput(False, "group_has_aborted")


async def test_call_dynamic_filter_normalises_results() -> None:
    args, group = make_config(), scored(1.0)

    class Legacy:
        keep = torch.tensor(False)
        reason = "legacy"

    assert await call_dynamic_filter(None, args, group) == DynamicFilterOutput(True)
    assert await call_dynamic_filter(lambda a, g: False, args, group) == DynamicFilterOutput(False)
    assert await call_dynamic_filter(lambda a, g: torch.tensor(True), args, group) == DynamicFilterOutput(
        True
    )
    assert await call_dynamic_filter(lambda a, g: Legacy(), args, group) == DynamicFilterOutput(
        False, "legacy"
    )

    async def async_filter(a: Config, g: list[Sample], **kw: Any) -> bool:
        return True

    assert (await call_dynamic_filter(async_filter, args, group)).keep
    with pytest.raises(TypeError, match="expected DynamicFilterOutput or bool"):
        await call_dynamic_filter(lambda a, g: torch.tensor([True, False]), args, group)


def rich_groups() -> list[list[Sample]]:
    a = Sample(
        group_index=0,
        index=0,
        rollout_id=3,
        prompt=[{"role": "user", "content": "hi"}],
        tokens=[1, 2, 3],
        response="ab",
        response_length=2,
        label="x",
        reward={"score": 1.0, "pred": "b"},
        loss_mask=[1, 0],
        weight_versions=[0, 1],
        rollout_log_probs=[-0.1, -0.2],
        status=Sample.Status.TRUNCATED,
        metadata={"rm_type": "math", "nested": {"k": [1, 2]}},
        remove_sample=True,
    )
    b = Sample(group_index=0, index=1, prompt="p", tokens=[4], reward=0.5, status=Sample.Status.COMPLETED)
    c = Sample(group_index=1, index=2, prompt="q", tokens=[5], reward=None, status=Sample.Status.FAILED)
    return [[a, b], [c]]


def test_debug_save_then_load_is_identical(tmp_path: Path) -> None:
    template = str(tmp_path / "dump" / "rollout_{rollout_id}.pt")
    groups = rich_groups()
    path = save_rollout_data(template, 3, groups)
    assert path == tmp_path / "dump" / "rollout_3.pt"
    assert load_rollout_data(template, 3) == groups


def test_debug_load_missing_file_names_path(tmp_path: Path) -> None:
    template = str(tmp_path / "rollout_{rollout_id}.pt")
    save_rollout_data(template, 0, rich_groups())
    with pytest.raises(
        FileNotFoundError, match=r"rollout_id=7: .*rollout_7\.pt does not exist.*rollout_0\.pt"
    ):
        load_rollout_data(template, 7)


def test_debug_loads_miles_flat_layout_and_keeps_unknown_fields(tmp_path: Path) -> None:
    flat = [s.to_dict() for g in rich_groups() for s in g]
    flat[2]["routing_key"] = "abc"  # a field only Miles's Sample has
    torch.save({"rollout_id": 4, "metadata": {}, "samples": flat}, tmp_path / "r4.pt")
    groups = load_rollout_data(str(tmp_path / "r{rollout_id}.pt"), 4)
    assert [[s.index for s in g] for g in groups] == [[0, 1], [2]]
    assert groups[1][0].metadata["miles_extra_fields"] == {"routing_key": "abc"}


async def test_eval_with_data_eval_datasets(tmp_path: Path) -> None:
    from miles_sdk.data import load_eval_datasets

    path = tmp_path / "eval.jsonl"
    path.write_text('{"input": "q1", "label": "1"}\n{"input": "q2", "label": "2"}\n')
    args = make_config(eval_prompt_data=["toy", str(path)], label_key="label", n_samples_per_eval_prompt=3)
    datasets = load_eval_datasets(args)

    async def rm(args: Config, sample: Sample) -> float:
        return 1.0 if sample.response == sample.label else 0.0

    engine = ScriptedEngine({"q1": "1", "q2": "3"}, tokenizer=TOK)
    ctx = RolloutContext(engine=engine, tokenizer=TOK, reward_fn=rm, eval_datasets=datasets)
    with use_rollout_context(ctx):
        out = await generate_rollout(args, 0, None, True)  # type: ignore[arg-type]
    assert isinstance(out, RolloutFnEvalOutput)
    assert out.data["toy"]["rewards"] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert len(engine.requests) == 6
