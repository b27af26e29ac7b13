"""custom_agent_function_path alone runs the agent (it was silently never called)."""

from __future__ import annotations

import pytest

from miles_sdk._hookset import resolve_hooks
from miles_sdk.agents import generate_with_agent
from miles_sdk.config import Config
from miles_sdk.loading import HookLoadError
from miles_sdk.rollout import generate_with_engine


def test_the_agent_path_alone_selects_the_agent_generate_function() -> None:
    """Regression: with only --custom-agent-function-path set, the single-turn default generated
    and the agent never ran (Miles needs agentic_tool_call.generate as well)."""
    hooks = resolve_hooks(Config(custom_agent_function_path="miles_files.agent_fn.run"), {})
    assert hooks.generate_fn is generate_with_agent


def test_a_generate_or_rollout_function_of_the_user_is_kept() -> None:
    args = Config(custom_agent_function_path="miles_files.agent_fn.run")
    assert resolve_hooks(args, {"generate_fn": generate_with_engine}).generate_fn is generate_with_engine

    def rollout(args: Config, rollout_id: int, data_source: object, evaluation: bool = False) -> object:
        raise AssertionError("not called")

    assert resolve_hooks(args, {"rollout_fn": rollout}).generate_fn is None


def test_a_wrong_agent_path_fails_at_construction_naming_the_flag() -> None:
    with pytest.raises(HookLoadError, match="--custom-agent-function-path"):
        resolve_hooks(Config(custom_agent_function_path="miles_files.agent_fn.nope"), {})
