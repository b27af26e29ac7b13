"""Resolve every hook once: the object passed to ``Trainer(...)``, else the Config's ``--*-path``,
else None (the Miles default). Every hook that enters is checked against its Protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from miles_sdk.config import HOOK_PATH_FIELDS, Config, ConfigError
from miles_sdk.hooks import (
    BackendInitFn,
    BatchedRewardFn,
    BeforeLogProbHookFn,
    BeforeTrainStepHookFn,
    BufferFilterFn,
    ConvertSamplesToTrainDataFn,
    DataSource,
    DataSourceFactory,
    DynamicSamplingFilterFn,
    EvalRolloutLogFn,
    GenerateFn,
    LossFn,
    ModelProviderFn,
    PGLossReducer,
    PostSaveHookFn,
    RewardFn,
    RewardPostProcessFn,
    RolloutAllSamplesProcessFn,
    RolloutDataPostprocessFn,
    RolloutFn,
    RolloutLogFn,
    RolloutSampleFilterFn,
    RouterMiddleware,
    TISFn,
    TrainBatchPostprocessFn,
)
from miles_sdk.loading import accepts_positional, check_hook_signature, load_hook

__all__ = ["HookSet", "check_group_size", "resolve_hooks"]


@attrs.define
class HookSet:
    """The resolved hooks of a run; None means "use the built-in default"."""

    rollout_fn: RolloutFn | None = None
    generate_fn: GenerateFn | None = None
    data_source: DataSource | DataSourceFactory | None = None
    eval_fn: RolloutFn | None = None
    reward_fn: RewardFn | None = None
    batched_reward_fn: BatchedRewardFn | None = None
    reward_post_process: RewardPostProcessFn | None = None
    dynamic_sampling_filter: DynamicSamplingFilterFn | None = None
    buffer_filter: BufferFilterFn | None = None
    rollout_sample_filter: RolloutSampleFilterFn | None = None
    rollout_all_samples_process: RolloutAllSamplesProcessFn | None = None
    rollout_data_postprocess: RolloutDataPostprocessFn | TrainBatchPostprocessFn | None = None
    loss_fn: LossFn | None = None
    tis_fn: TISFn | None = None
    pg_loss_reducer: PGLossReducer | None = None
    convert_samples_to_train_data: ConvertSamplesToTrainDataFn | None = None
    backend_init: BackendInitFn | None = None
    before_log_prob_hook: BeforeLogProbHookFn | None = None
    before_train_step_hook: BeforeTrainStepHookFn | None = None
    post_save_hook: PostSaveHookFn | None = None
    rollout_log_fn: RolloutLogFn | None = None
    eval_rollout_log_fn: EvalRolloutLogFn | None = None
    router_middlewares: list[RouterMiddleware] = attrs.field(factory=list)
    model_provider: ModelProviderFn | None = None


# HookSet attribute -> Config path field. The reward hook maps to one of two attributes by group_rm.
_ATTR_TO_PATH = {
    "rollout_fn": "rollout_function_path",
    "generate_fn": "custom_generate_function_path",
    "data_source": "data_source_path",
    "eval_fn": "eval_function_path",
    "reward_post_process": "custom_reward_post_process_path",
    "dynamic_sampling_filter": "dynamic_sampling_filter_path",
    "buffer_filter": "buffer_filter_path",
    "rollout_sample_filter": "rollout_sample_filter_path",
    "rollout_all_samples_process": "rollout_all_samples_process_path",
    "rollout_data_postprocess": "rollout_data_postprocess_path",
    "loss_fn": "custom_loss_function_path",
    "tis_fn": "custom_tis_function_path",
    "pg_loss_reducer": "custom_pg_loss_reducer_function_path",
    "convert_samples_to_train_data": "custom_convert_samples_to_train_data_path",
    "backend_init": "custom_megatron_init_path",
    "before_log_prob_hook": "custom_megatron_before_log_prob_hook_path",
    "before_train_step_hook": "custom_megatron_before_train_step_hook_path",
    "post_save_hook": "custom_megatron_post_save_hook_path",
    "rollout_log_fn": "custom_rollout_log_function_path",
    "eval_rollout_log_fn": "custom_eval_rollout_log_function_path",
    "model_provider": "custom_model_provider_path",
}


def _flag(path_field: str) -> str:
    return "--" + path_field.replace("_", "-")


def resolve_hooks(args: Config, given: dict[str, Any]) -> HookSet:
    """``given`` holds the Trainer's keyword arguments (None = not given)."""
    resolved: dict[str, Any] = {}
    for attr, path_field in _ATTR_TO_PATH.items():
        protocol = HOOK_PATH_FIELDS[path_field]
        obj = given.get(attr)
        if obj is not None:
            if not (attr == "data_source" and isinstance(obj, DataSource)):
                check_hook_signature(obj, protocol, name=attr)
            resolved[attr] = obj
        elif getattr(args, path_field) is not None:
            resolved[attr] = load_hook(getattr(args, path_field), protocol, flag=_flag(path_field))

    reward = given.get("reward_model")
    reward_protocol = "BatchedRewardFn" if args.group_rm else "RewardFn"
    if reward is not None:
        check_hook_signature(reward, reward_protocol, name="reward_model")
    elif args.custom_rm_path is not None:
        reward = load_hook(args.custom_rm_path, reward_protocol, flag="--custom-rm-path")
    if reward is not None:
        resolved["batched_reward_fn" if args.group_rm else "reward_fn"] = reward
    batched = given.get("batched_reward_model")
    if batched is not None:
        if args.group_rm and reward is not None:
            raise ConfigError(
                "group_rm is set and both reward_model= and batched_reward_model= were given; "
                "with group_rm, reward_model is the batched one: pass only one"
            )
        check_hook_signature(batched, "BatchedRewardFn", name="batched_reward_model")
        resolved["batched_reward_fn"] = batched

    middlewares = list(given.get("router_middlewares") or [])
    for i, mw in enumerate(middlewares):
        check_hook_signature(mw, "RouterMiddleware", name=f"router_middlewares[{i}]")
    for path in args.miles_router_middleware_paths or []:
        middlewares.append(load_hook(path, "RouterMiddleware", flag="--miles-router-middleware-paths"))
    resolved["router_middlewares"] = middlewares
    postprocess = resolved.get("rollout_data_postprocess")
    if postprocess is not None and not accepts_positional(postprocess, 2):
        resolved["rollout_data_postprocess"] = _args_only(postprocess)
    _default_to_the_agent(args, resolved)
    hook_set = HookSet(**resolved)
    _check_consistency(args, hook_set)
    return hook_set


def _default_to_the_agent(args: Config, resolved: dict[str, Any]) -> None:
    """``custom_agent_function_path`` alone runs the agent: with no generate or rollout function
    of the user's, the generate function is :func:`~miles_sdk.agents.generate_with_agent` (Miles
    also needs ``--custom-generate-function-path ...agentic_tool_call.generate``; without it the
    agent was silently never called). The agent is loaded and checked here, not at the first sample."""
    if args.custom_agent_function_path is None or "generate_fn" in resolved or "rollout_fn" in resolved:
        return
    from miles_sdk.agents.generate import generate_with_agent, load_agent_fn

    load_agent_fn(args)
    resolved["generate_fn"] = generate_with_agent


def _args_only(fn: Callable[[Config], None]) -> RolloutDataPostprocessFn:
    """Adapt Miles's ``postprocess(args)`` form to ``(args, rollout_data)``."""

    def call(args: Config, rollout_data: dict[str, Any], /) -> None:
        fn(args)

    return call


def _check_consistency(args: Config, hooks: HookSet) -> None:
    """Contradictions between settings and hooks, caught before any work is done."""
    if args.loss_type == "custom_loss" and hooks.pg_loss_reducer is not None:
        # Miles also ignores the pg-loss reducer here (only its policy loss calls it); a run that
        # sets one clearly expects it to act, so say so rather than train with another reduction.
        raise ConfigError(
            "a pg_loss_reducer (--custom-pg-loss-reducer-function-path) was given with "
            "loss_type=custom_loss, where it is never called: the custom loss function reduces its "
            "own loss with the sum_of_sample_mean reducer it receives. Drop the pg_loss_reducer, or "
            "use loss_type='policy_loss'"
        )
    if args.loss_type == "custom_loss" and hooks.loss_fn is None:
        raise ConfigError(
            "loss_type=custom_loss needs a loss function: pass loss_fn= to the Trainer or set "
            "--custom-loss-function-path"
        )
    if args.loss_type != "custom_loss" and hooks.loss_fn is not None:
        raise ConfigError(
            f"a custom loss function was given but loss_type={args.loss_type!r}; set "
            "loss_type='custom_loss' (Miles's --loss-type custom_loss) to use it"
        )


_GROUP_CENTRED = ("grpo", "gspo", "reinforce_plus_plus_baseline")


def check_group_size(args: Config, hooks: HookSet) -> None:
    """Refuse a run whose every advantage is 0: a group-centring estimator with one sample per prompt.

    The default reward post-processing subtracts each prompt group's mean reward, so with
    ``n_samples_per_prompt=1`` (Miles's default) each reward becomes exactly 0 and the gradient
    is 0 on every step. Miles accepts this setting (it only turns std scaling off) and trains
    nothing; here it is an error. Hooks that may build groups of another size (a data source,
    rollout or generate function) or post-process rewards themselves are trusted; the trainer
    still warns at run time when every group of a step has no reward spread.
    """
    if (
        args.n_samples_per_prompt > 1
        or args.advantage_estimator not in _GROUP_CENTRED
        or not args.rewards_normalization
        or args.loss_type != "policy_loss"
        or args.debug_rollout_only
    ):
        return
    custom = [
        name
        for name in (
            "data_source",
            "rollout_fn",
            "generate_fn",
            "reward_post_process",
            "convert_samples_to_train_data",
        )
        if getattr(hooks, name) is not None
    ]
    if custom:
        return
    raise ConfigError(
        f"advantage_estimator={args.advantage_estimator!r} centres each reward on its prompt group's "
        "mean, and with n_samples_per_prompt=1 every group holds one sample: every advantage is 0 and "
        "nothing trains (grad_norm 0). Set n_samples_per_prompt >= 2 (GRPO usually uses 4-16), or "
        "advantage_estimator='reinforce_plus_plus' (no group baseline), or "
        "rewards_normalization=False (--disable-rewards-normalization) to train on raw rewards"
    )
