"""Every hook path the examples document loads through the Miles-style loader, as the flag would."""

from __future__ import annotations

import pytest

from miles_sdk.loading import load_hook

PATHS = [
    ("examples.search_r1.hooks.generate", "GenerateFn"),
    ("examples.search_r1.hooks.reward_fn", "RewardFn"),
    ("examples.multi_agent.hooks.generate", "GenerateFn"),
    ("examples.multi_agent.hooks.reward_fn", "BatchedRewardFn"),
    ("examples.dr_grpo.reducer.get_pg_loss_reducer", "PGLossReducer"),
    ("examples.train_infer_mismatch.mis.compute_mis_weights", "TISFn"),
    ("examples.custom_rollout.rollout.best_of_n_rollout", "RolloutFn"),
    ("examples.custom_generate_and_rm.hooks.generate", "GenerateFn"),
    ("examples.custom_generate_and_rm.hooks.reward_fn", "RewardFn"),
]


@pytest.mark.parametrize(("path", "protocol"), PATHS)
def test_documented_path_loads_as_its_protocol(path: str, protocol: str) -> None:
    module, _, name = path.rpartition(".")
    hook = load_hook(path, protocol, flag="--test")
    assert getattr(hook, "__name__", None) == name and hook.__module__ == module
