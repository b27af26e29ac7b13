"""Pins of the public API (signatures and field sets): a breaking change fails here first."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import attrs
import pytest

import miles_sdk
from miles_sdk import Config, MicroBatch, PolicyOutputs, Rollout, Sample, TrainBatch, Trainer, algo
from miles_sdk._hookset import HookSet
from miles_sdk.backends.base import TrainBackend

SAMPLE_FIELDS = {
    "group_index",
    "index",
    "rollout_id",
    "prompt",
    "tokens",
    "multimodal_inputs",
    "multimodal_train_inputs",
    "response",
    "response_length",
    "label",
    "reward",
    "loss_mask",
    "weight_versions",
    "rollout_log_probs",
    "rollout_routed_experts",
    "teacher_log_probs",
    "remove_sample",
    "status",
    "metadata",
    "train_metadata",
    "generate_function_path",
    "non_generation_time",
    "reward_spec",
}


def test_sample_fields() -> None:
    assert {f.name for f in dataclasses.fields(Sample)} == SAMPLE_FIELDS
    assert [s.value for s in Sample.Status] == ["pending", "completed", "truncated", "aborted", "failed"]


def test_trainer_takes_every_hook_by_keyword() -> None:
    params = inspect.signature(Trainer.__init__).parameters
    hooks = set(HookSet.__annotations__) | {"reward_model", "batched_reward_model"}
    hooks -= {"reward_fn", "batched_reward_fn"}  # given as reward_model / batched_reward_model
    for name in hooks | {"model", "tokenizer", "engine", "dataset"}:
        assert name in params, name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None, name
    assert list(params)[:2] == ["self", "config"]


def test_trainer_hands_every_hook_keyword_to_resolve_hooks() -> None:
    """Trainer.__init__ names its hook keywords in one dict (not through locals()): none left out,
    each key its own keyword."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Trainer.__init__)))
    given = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "given"
    )
    assert isinstance(given.value, ast.Dict)
    pairs = {
        k.value: v.id
        for k, v in zip(given.value.keys, given.value.values, strict=True)
        if isinstance(k, ast.Constant) and isinstance(v, ast.Name)
    }
    hooks = set(HookSet.__annotations__) - {"reward_fn", "batched_reward_fn"} | {
        "reward_model",
        "batched_reward_model",
    }
    assert set(pairs) == hooks and len(pairs) == len(given.value.keys)
    assert all(key == value for key, value in pairs.items())


def test_trainer_methods() -> None:
    for name in ("fit", "step", "evaluate", "generate", "save", "load", "close"):
        assert callable(getattr(Trainer, name)), name


def test_config_keeps_miles_names() -> None:
    names = {f.name for f in attrs.fields(Config)}
    for miles_name in (
        "rollout_batch_size",
        "n_samples_per_prompt",
        "over_sampling_batch_size",
        "global_batch_size",
        "num_steps_per_rollout",
        "rollout_temperature",
        "rollout_max_response_len",
        "eps_clip",
        "eps_clip_high",
        "kl_loss_coef",
        "use_tis",
        "tis_clip",
        "advantage_estimator",
        "rm_type",
        "reward_key",
        "partial_rollout",
        "sglang_router_ip",
        "hf_checkpoint",
        "prompt_data",
    ):
        assert miles_name in names, miles_name


TRAIN_BATCH_FIELDS = {
    "tokens",
    "response_lengths",
    "rewards",
    "raw_reward",
    "truncated",
    "sample_indices",
    "loss_masks",
    "advantages",
    "returns",
    "log_probs",
    "ref_log_probs",
    "values",
    "round_number",
    "rollout_log_probs",
    "rollout_routed_experts",
    "metadata",
    "multimodal_train_inputs",
    "teacher_log_probs",
    "opd_reverse_kl",
    "extra",
}


def test_stage_values_are_frozen_and_public() -> None:
    empty = {f.name: [] for f in attrs.fields(TrainBatch) if f.default is attrs.NOTHING}
    micro = {f.name: [] for f in attrs.fields(MicroBatch) if f.default is attrs.NOTHING}
    for value in (Rollout([]), PolicyOutputs(None), TrainBatch(**empty), MicroBatch(**micro)):
        assert type(value).__name__ in miles_sdk.__all__
        name = attrs.fields(type(value))[0].name
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(value, name, [])
    assert {f.name for f in attrs.fields(TrainBatch)} == TRAIN_BATCH_FIELDS
    assert {f.name for f in attrs.fields(PolicyOutputs)} == {"log_probs", "ref_log_probs", "values"}
    assert {f.name for f in attrs.fields(Rollout)} == {"groups", "metrics"}


def test_stage_boundaries_take_typed_values_and_parameters() -> None:
    assert list(inspect.signature(TrainBackend.train).parameters) == ["self", "rollout_id", "batch"]
    adv = inspect.signature(algo.compute_advantages_and_returns).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in adv.values())
    assert set(adv) == {"params", "rewards", "log_probs", "ref_log_probs", "loss_masks", "values"}
    loss = inspect.signature(algo.compute_loss).parameters
    assert list(loss) == [
        "batch",
        "log_probs",
        "entropy",
        "values",
        "params",
        "tis_fn",
        "pg_loss_reducer",
        "hook_args",
    ]
    # The Config reaches the math only through these mappings (hook_args is for Miles-signature hooks).
    assert algo.loss_params(Config(eps_clip=0.3)).eps_clip_high == 0.3
    assert algo.advantage_params(Config(gamma=0.5)).gamma == 0.5
