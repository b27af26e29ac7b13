"""Unchanged Miles-style hook files (tests/compat/miles_style_hooks) run through Trainer steps,
loaded from ``--*-path`` settings as a Miles launch script would give them."""

from __future__ import annotations

import math

from miles_sdk.compat import install
from miles_sdk.testing import run_steps, small_config

install()  # the hook modules import miles.*; load_hook does this for --*-path values

from miles_style_hooks import filters, reducer, rewards
from miles_style_hooks.multi_turn import OBSERVATION, TURN_TOKENS

HOOKS = "miles_style_hooks"


def test_http_generate_custom_rm_filter_and_reducer_from_paths() -> None:
    filters.SEEN.clear()
    reducer.CALLS.clear()
    rewards.CALLS.clear()
    cfg = small_config(
        custom_generate_function_path=f"{HOOKS}.generate_http.generate",
        custom_rm_path=f"{HOOKS}.rewards.custom_rm",
        dynamic_sampling_filter_path=f"{HOOKS}.filters.record_reward_spread",
        custom_pg_loss_reducer_function_path=f"{HOOKS}.reducer.get_pg_loss_reducer",
    )
    result = run_steps(config=cfg, steps=2)

    for step_samples in result.samples:
        assert len(step_samples) == 4
        for s in step_samples:
            # The generate fn POSTed to the server the Trainer started on its own (no serve_http).
            assert s.metadata["served_by"].startswith("http://127.0.0.1:")
            assert s.metadata["served_by"].endswith("/generate")
            assert 1 <= s.response_length <= 4
            assert s.rollout_log_probs is not None and len(s.rollout_log_probs) == s.response_length
            assert all(lp < 0 for lp in s.rollout_log_probs)
            assert s.reward == float(len(s.response) % 2 == 0)
    # The filter saw each kept group's rewards through get_reward_value(args).
    assert len(filters.SEEN) == 4 and all(len(r) == 2 for r in filters.SEEN)
    assert sorted(r for group in filters.SEEN for r in group) == sorted(
        s.reward for step in result.samples for s in step
    )
    assert len(rewards.CALLS) == 8
    # The Dr.GRPO reducer built the pg-loss reducer for every micro-batch with its response lengths.
    assert reducer.CALLS and all(len(lengths) == 2 for lengths in reducer.CALLS)
    assert all(math.isfinite(m["train/loss"]) for m in result.metrics)
    # The engine's log-probs and the trainer's agree: what came over HTTP is the policy's.
    assert all(m["train/train_rollout_logprob_abs_diff"] < 1e-3 for m in result.metrics)


def test_multi_turn_generate_keeps_the_tool_observation_out_of_the_loss() -> None:
    cfg = small_config(
        custom_generate_function_path=f"{HOOKS}.multi_turn.generate",
        custom_rm_path=f"{HOOKS}.rewards.custom_rm",
    )
    result = run_steps(config=cfg, steps=1)
    for s in result.samples[0]:
        assert s.loss_mask is not None
        obs_len = len(s.loss_mask) - 2 * TURN_TOKENS
        assert obs_len > 0
        assert s.loss_mask == [1] * TURN_TOKENS + [0] * obs_len + [1] * TURN_TOKENS
        assert s.response_length == len(s.loss_mask)
        assert OBSERVATION in s.response
        assert s.rollout_log_probs is not None
        assert s.rollout_log_probs[TURN_TOKENS : TURN_TOKENS + obs_len] == [0.0] * obs_len


def test_group_rm_path_scores_each_group_in_one_call() -> None:
    rewards.CALLS.clear()
    cfg = small_config(custom_rm_path=f"{HOOKS}.rewards.group_rm", group_rm=True)
    result = run_steps(config=cfg, steps=1)
    groups: dict[int | None, list[float]] = {}
    for s in result.samples[0]:
        assert isinstance(s.reward, float)
        groups.setdefault(s.group_index, []).append(s.reward)
    assert sorted(sorted(g) for g in groups.values()) == [[0.0, 1.0], [0.0, 1.0]]
    assert [len(c) for c in rewards.CALLS] == [2, 2]


def test_sync_rollout_wrapping_the_default_generate_rollout() -> None:
    cfg = small_config(
        rollout_function_path=f"{HOOKS}.rollouts.wrapped_rollout",
        custom_generate_function_path=f"{HOOKS}.generate_http.generate",
    )
    result = run_steps(config=cfg, steps=2)
    assert all(m["custom/wrapped_rollout"] == 1.0 for m in result.metrics)
    for step in result.samples:
        assert len(step) == 4
        assert all("served_by" in s.metadata and s.reward in (0.0, 1.0) for s in step)


def test_hand_rolled_rollout_with_generate_state_run_and_batched_rm() -> None:
    result = run_steps(
        config=small_config(rollout_function_path=f"{HOOKS}.rollouts.hand_rolled_rollout"), steps=1
    )
    assert result.metrics[0]["custom/hand_rolled"] == 2.0
    samples = result.samples[0]
    assert len(samples) == 4
    for s in samples:
        assert s.reward in (0.0, 1.0)  # run_steps's addition reward, reached through batched_async_rm
        assert s.rollout_log_probs is not None and len(s.rollout_log_probs) == s.response_length > 0


def test_data_source_subclassing_miles_data_source() -> None:
    result = run_steps(config=small_config(data_source_path=f"{HOOKS}.data_source.FixedPrompts"), steps=1)
    prompts = {s.prompt for s in result.samples[0]}
    assert prompts == {"0+0=", "0+1="}
    assert {s.label for s in result.samples[0]} == {"0", "1"}


def test_miles_own_hook_paths_from_a_launch_script() -> None:
    """Paths into Miles itself (its defaults and stock filters) resolve to the shims and run."""
    cfg = small_config(
        rollout_function_path="miles.rollout.sglang_rollout.generate_rollout",
        custom_generate_function_path="miles.rollout.sglang_rollout.generate",
        dynamic_sampling_filter_path="miles.rollout.filter_hub.dynamic_sampling_filters.check_no_aborted",
    )
    result = run_steps(config=cfg, steps=1)
    samples = result.samples[0]
    assert len(samples) == 4
    for s in samples:
        assert s.status in (s.Status.COMPLETED, s.Status.TRUNCATED)
        assert s.rollout_log_probs is not None and len(s.rollout_log_probs) == s.response_length > 0


def test_generate_wrapping_miles_default_generate() -> None:
    cfg = small_config(custom_generate_function_path=f"{HOOKS}.generate_wrapping_default.generate")
    result = run_steps(config=cfg, steps=1)
    for s in result.samples[0]:
        assert s.metadata["wrapped_default"] == len(s.tokens)
        assert s.response_length > 0 and s.weight_versions == [0]
