"""The reward stage: built-in rm types (Miles's rm_hub) and the runner the rollout calls.

``await score_samples(args, samples)`` scores every unscored sample with its rm type
(``metadata["rm_type"]``, else ``Config.rm_type``) or with a given reward function; failures mark
the sample FAILED with ``metadata["reward_error"]``. See docs/rewards.md for each rm type.
"""

from __future__ import annotations

from miles_sdk.rewards._pool import shutdown_reward_workers
from miles_sdk.rewards.dapo import dapo_reward, minerva_normalize
from miles_sdk.rewards.deepscaler import deepscaler_reward
from miles_sdk.rewards.f1 import f1_reward, f1_score, squad_normalize
from miles_sdk.rewards.gpqa import extract_choice_letter, gpqa_reward
from miles_sdk.rewards.ifbench import SUPPORTED_INSTRUCTIONS, IFBenchError, ifbench_reward
from miles_sdk.rewards.math import grade_math_answer, math_reward, normalize_math_answer
from miles_sdk.rewards.random_rm import deterministic_random_reward, random_reward
from miles_sdk.rewards.registry import (
    RM_TYPES,
    RewardConfigError,
    compute_builtin_reward,
    resolve_rm_type,
    score_builtin_sync,
)
from miles_sdk.rewards.remote import RemoteRewardClient, RemoteRewardError, close_remote_clients, remote_rm
from miles_sdk.rewards.runner import RewardLabelError, score_samples, shutdown_reward_threads, validate_labels

__all__ = [
    "RM_TYPES",
    "SUPPORTED_INSTRUCTIONS",
    "IFBenchError",
    "RemoteRewardClient",
    "RemoteRewardError",
    "RewardConfigError",
    "RewardLabelError",
    "close_remote_clients",
    "close_reward_resources",
    "compute_builtin_reward",
    "dapo_reward",
    "deepscaler_reward",
    "deterministic_random_reward",
    "extract_choice_letter",
    "f1_reward",
    "f1_score",
    "gpqa_reward",
    "grade_math_answer",
    "ifbench_reward",
    "math_reward",
    "minerva_normalize",
    "normalize_math_answer",
    "random_reward",
    "remote_rm",
    "resolve_rm_type",
    "score_builtin_sync",
    "score_samples",
    "shutdown_reward_workers",
    "squad_normalize",
    "validate_labels",
]


async def close_reward_resources() -> None:
    """Release what scoring holds: this loop's HTTP sessions and the grader worker processes.
    Call it once at the end of a run (the Trainer's close)."""
    await close_remote_clients()
    shutdown_reward_workers()
    shutdown_reward_threads()
