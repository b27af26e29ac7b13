"""`Config`: every setting the loop reads, under Miles's argument names.

A Config is frozen and keyword-only. ``Config.from_args(argv)`` parses Miles-style flags
(``--rollout-batch-size 8 --custom-rm-path my.mod.rm``), so an existing Miles launch script's
flags work unchanged. Hooks receive the Config as ``args``, so ``args.n_samples_per_prompt`` and
friends read exactly as in Miles.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import attrs

__all__ = ["HOOK_PATH_FIELDS", "AdvantageEstimator", "Config", "ConfigError", "KLLossType", "LossType"]

AdvantageEstimator: TypeAlias = Literal[
    "grpo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "ppo"
]
KLLossType: TypeAlias = Literal["k1", "k2", "k3", "low_var_kl"]
LossType: TypeAlias = Literal["policy_loss", "sft_loss", "custom_loss", "value_loss"]
ISLevel: TypeAlias = Literal["token", "sequence", "geometric"]
ISMode: TypeAlias = Literal["truncate", "clip", "mask"]


class ConfigError(ValueError):
    """A bad or contradictory setting. The message names the setting(s) involved."""


def _flag(name: str) -> dict[str, str]:
    """Metadata for a field whose CLI flag differs from ``--field-name`` (Miles's store_false flags)."""
    return {"flag": name}


# Hook path fields, in the order of Miles's hook table. Value: the hook Protocol name in hooks.py.
HOOK_PATH_FIELDS: dict[str, str] = {
    "rollout_function_path": "RolloutFn",
    "custom_generate_function_path": "GenerateFn",
    "data_source_path": "DataSourceFactory",
    "eval_function_path": "RolloutFn",
    "custom_rm_path": "RewardFn",
    "custom_reward_post_process_path": "RewardPostProcessFn",
    "dynamic_sampling_filter_path": "DynamicSamplingFilterFn",
    "buffer_filter_path": "BufferFilterFn",
    "rollout_sample_filter_path": "RolloutSampleFilterFn",
    "rollout_all_samples_process_path": "RolloutAllSamplesProcessFn",
    "rollout_data_postprocess_path": "RolloutDataPostprocessFn",
    "custom_loss_function_path": "LossFn",
    "custom_tis_function_path": "TISFn",
    "custom_pg_loss_reducer_function_path": "PGLossReducer",
    "custom_convert_samples_to_train_data_path": "ConvertSamplesToTrainDataFn",
    "custom_megatron_init_path": "BackendInitFn",
    "custom_megatron_before_log_prob_hook_path": "BeforeLogProbHookFn",
    "custom_megatron_before_train_step_hook_path": "BeforeTrainStepHookFn",
    "custom_megatron_post_save_hook_path": "PostSaveHookFn",
    "custom_rollout_log_function_path": "RolloutLogFn",
    "custom_eval_rollout_log_function_path": "EvalRolloutLogFn",
    "miles_router_middleware_paths": "RouterMiddleware",
    "custom_model_provider_path": "ModelProviderFn",
}


@attrs.frozen(kw_only=True)
class Config:
    """All settings of a run. Field names are Miles's argument names (dashes become underscores)."""

    # ---- model and checkpoints -----------------------------------------------------------------
    hf_checkpoint: str | None = None
    """Local HF model directory (model + tokenizer) for the policy, loaded with from_pretrained."""
    ref_load: str | None = None
    """Reference model directory; defaults to hf_checkpoint (or a frozen copy of the policy)."""
    load: str | None = None
    """Checkpoint directory to resume from (its latest step)."""
    save: str | None = None
    """Checkpoint directory to write to."""
    save_interval: int | None = None
    """Save a checkpoint every this many rollout steps (and after the last)."""
    save_hf: str | None = None
    """Also export the policy as an HF directory; ``{rollout_id}`` in the path is filled in."""
    no_save_optim: bool = False
    """Leave the optimizer state out of checkpoints."""
    seed: int = 1234
    """Seed for torch/python RNGs of the trainer."""
    device: str = "auto"
    """Torch device for policy and engine: "cpu", "cuda", "cuda:1" or "auto" (cuda when present)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype: auto = bfloat16 on CUDA, float32 on CPU."""
    train_backend: Literal["torch", "megatron"] = "torch"
    """Training backend. megatron needs the `megatron` extra and a GPU."""
    rollout_engine: Literal["embedded", "sglang", "http"] = "embedded"
    """Inference engine: in-process torch, sglang's offline Engine, or an sglang-compatible server."""

    # ---- data ----------------------------------------------------------------------------------
    prompt_data: str | None = None
    """Training prompts: .jsonl or .parquet, optionally ``path@[start:end]``."""
    input_key: str = "input"
    label_key: str | None = None
    metadata_key: str = "metadata"
    tool_key: str | None = None
    multimodal_keys: dict[str, str] | None = None
    """JSON mapping of multimodal type -> dataset key, e.g. {"image": "images"}."""
    apply_chat_template: bool = False
    """Render prompts (chat messages) through the tokenizer's chat template."""
    apply_chat_template_kwargs: dict[str, Any] = attrs.field(factory=dict)
    """Extra kwargs for apply_chat_template, as JSON on the CLI."""
    rollout_shuffle: bool = False
    rollout_global_dataset: bool = attrs.field(default=True, metadata=_flag("--disable-rollout-global-dataset"))
    rollout_max_prompt_len: int | None = None
    """Prompts longer than this many tokens are dropped (and counted)."""
    num_rollout: int | None = None
    """Number of rollout steps; derived from num_epoch when unset."""
    num_epoch: int | None = None
    start_rollout_id: int | None = None
    rollout_seed: int = 42

    # ---- rollout -------------------------------------------------------------------------------
    rollout_batch_size: int = 8
    """Prompt groups per rollout step."""
    n_samples_per_prompt: int = 1
    over_sampling_batch_size: int | None = None
    """Groups requested per refill while over-sampling; defaults to rollout_batch_size."""
    rollout_temperature: float = 1.0
    rollout_top_p: float = 1.0
    rollout_top_k: int = -1
    rollout_max_response_len: int = 1024
    rollout_max_context_len: int | None = None
    rollout_stop: list[str] | None = None
    rollout_stop_token_ids: list[int] | None = None
    rollout_skip_special_tokens: bool = False
    sglang_server_concurrency: int = 512
    """Most samples generated at once (per engine)."""
    sglang_enable_deterministic_inference: bool = False
    """Deterministic mode: sample i of each group is seeded with rollout_seed + i."""
    sglang_router_ip: str | None = None
    sglang_router_port: int | None = None
    partial_rollout: bool = False
    """Unfinished groups go back to the buffer and resume from their tokens next step."""
    mask_offpolicy_in_partial_rollout: bool = False
    """Zero the loss mask of resumed tokens that older weights generated."""
    update_weights_interval: int = 1
    use_miles_router: bool = False
    serve_http: bool = False
    """Serve an SGLang-compatible HTTP API around the engine and point sglang_router_ip/port at it,
    so unchanged Miles generate functions that POST to /generate work."""
    rollout_num_gpus: int | None = None
    rollout_num_gpus_per_engine: int = 1
    max_engine_batch_size: int = 64
    """Embedded engine: most sequences decoded in one batch."""

    # ---- eval ----------------------------------------------------------------------------------
    eval_interval: int | None = None
    eval_prompt_data: list[str] | None = None
    """Pairs ``name path [name path ...]``."""
    eval_config: str | None = None
    """YAML/JSON file with per-dataset eval settings (n_samples, rm_type, metadata overrides)."""
    n_samples_per_eval_prompt: int = 1
    eval_temperature: float | None = None
    eval_top_p: float | None = None
    eval_top_k: int | None = None
    eval_max_response_len: int | None = None
    eval_input_key: str | None = None
    eval_label_key: str | None = None
    eval_tool_key: str | None = None
    eval_reward_key: str | None = None
    skip_eval_before_train: bool = True

    # ---- reward --------------------------------------------------------------------------------
    rm_type: str | None = None
    """Built-in reward: math, deepscaler, dapo, f1, gpqa, ifbench, remote_rm, random,
    deterministic_random, optionally prefixed with ``boxed_``."""
    reward_key: str | None = None
    """Key read from dict rewards (dapo: "score")."""
    rm_url: str | None = None
    group_rm: bool = False
    """Score each group with one batched reward call."""
    reward_timeout: float | None = None
    """Seconds before a reward call is cancelled and its sample marked FAILED."""
    reward_concurrency: int = 64
    """Most reward calls in flight (remote_rm connection pool size too)."""
    reward_num_workers: int = 2
    """Worker processes for CPU-heavy graders (math); 0 grades on a thread."""
    rewards_normalization: bool = attrs.field(default=True, metadata=_flag("--disable-rewards-normalization"))
    grpo_std_normalization: bool = attrs.field(default=True, metadata=_flag("--disable-grpo-std-normalization"))

    # ---- training math -------------------------------------------------------------------------
    advantage_estimator: AdvantageEstimator = "grpo"
    gamma: float = 1.0
    lambd: float = 1.0
    normalize_advantages: bool = False
    compute_advantages_and_returns: bool = attrs.field(
        default=True, metadata=_flag("--disable-compute-advantages-and-returns")
    )
    loss_type: LossType = "policy_loss"
    eps_clip: float = 0.2
    eps_clip_high: float | None = None
    eps_clip_c: float | None = None
    value_clip: float = 0.2
    kl_coef: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: KLLossType = "k1"
    use_unbiased_kl: bool = False
    entropy_coef: float = 0.0
    calculate_per_token_loss: bool = False
    use_rollout_logprobs: bool = False
    use_tis: bool = False
    tis_clip: float = 2.0
    tis_clip_low: float = 0.0
    get_mismatch_metrics: bool = False
    use_rs: bool = False
    """Masked importance sampling (rejection): drop tokens/sequences whose IS weight is out of bounds."""
    tis_level: ISLevel = "token"
    rs_level: ISLevel = "token"
    tis_mode: ISMode = "truncate"
    tis_lower_bound: float | None = None
    tis_upper_bound: float = 2.0
    rs_lower_bound: float | None = None
    rs_upper_bound: float | None = None
    rs_veto_threshold: float | None = None
    tis_batch_normalize: bool = False
    log_probs_chunk_size: int = 1024
    """Tokens per chunk when computing log-probs/entropy over the vocabulary."""

    # ---- optimisation --------------------------------------------------------------------------
    lr: float = 1e-6
    critic_lr: float | None = None
    lr_warmup_iters: int = 0
    min_lr: float = 0.0
    lr_decay_style: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    global_batch_size: int | None = None
    """Samples per optimizer step; defaults to rollout_batch_size * n_samples_per_prompt."""
    micro_batch_size: int = 1
    num_steps_per_rollout: int | None = None
    use_dynamic_batch_size: bool = False
    """Form micro-batches by token count (max_tokens_per_gpu) instead of micro_batch_size."""
    max_tokens_per_gpu: int | None = None
    gradient_checkpointing: bool = False
    rollout_trim_samples: bool = attrs.field(default=True, metadata=_flag("--disable-rollout-trim-samples"))
    num_critic_only_steps: int = 0

    # ---- debug ---------------------------------------------------------------------------------
    debug_rollout_only: bool = False
    debug_train_only: bool = False
    save_debug_rollout_data: str | None = None
    """Path template with ``{rollout_id}``: each rollout's samples are written there."""
    load_debug_rollout_data: str | None = None
    """Path template with ``{rollout_id}``: train on saved rollouts instead of generating."""

    # ---- placement -----------------------------------------------------------------------------
    colocate: bool = False
    offload_train: bool = False
    offload_rollout: bool = False
    actor_num_nodes: int = 1
    actor_num_gpus_per_node: int = 1

    # ---- logging -------------------------------------------------------------------------------
    output_dir: str | None = None
    """Where metrics.jsonl, plots and TensorBoard files go."""
    use_tensorboard: bool = False
    tb_project_name: str | None = None
    use_wandb: bool = False
    wandb_project: str | None = None
    wandb_group: str | None = None
    progress_bar: bool = True

    # ---- hook paths (Miles's hook table) ------------------------------------------------------
    rollout_function_path: str | None = None
    custom_generate_function_path: str | None = None
    data_source_path: str | None = None
    eval_function_path: str | None = None
    custom_rm_path: str | None = None
    custom_reward_post_process_path: str | None = None
    dynamic_sampling_filter_path: str | None = None
    buffer_filter_path: str | None = None
    rollout_sample_filter_path: str | None = None
    rollout_all_samples_process_path: str | None = None
    rollout_data_postprocess_path: str | None = None
    custom_loss_function_path: str | None = None
    custom_tis_function_path: str | None = None
    custom_pg_loss_reducer_function_path: str | None = None
    custom_convert_samples_to_train_data_path: str | None = None
    custom_megatron_init_path: str | None = None
    custom_megatron_before_log_prob_hook_path: str | None = None
    custom_megatron_before_train_step_hook_path: str | None = None
    custom_megatron_post_save_hook_path: str | None = None
    custom_rollout_log_function_path: str | None = None
    custom_eval_rollout_log_function_path: str | None = None
    miles_router_middleware_paths: list[str] | None = None
    custom_model_provider_path: str | None = None

    extra: dict[str, Any] = attrs.field(factory=dict)
    """Flags this SDK does not interpret (e.g. Megatron parallelism), kept so hooks can read them
    as ``args.<name>``."""

    # ---- derived values ------------------------------------------------------------------------

    @property
    def effective_over_sampling_batch_size(self) -> int:
        return self.over_sampling_batch_size or self.rollout_batch_size

    @property
    def effective_global_batch_size(self) -> int:
        return self.global_batch_size or self.rollout_batch_size * self.n_samples_per_prompt

    @property
    def effective_eps_clip_high(self) -> float:
        return self.eps_clip if self.eps_clip_high is None else self.eps_clip_high

    @property
    def needs_reference_model(self) -> bool:
        return self.kl_coef != 0.0 or self.use_kl_loss

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: Miles hooks may read flags we only carry along.
        extra = object.__getattribute__(self, "extra")
        if name in extra:
            return extra[name]
        raise AttributeError(f"Config has no setting {name!r}")

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated again)."""
        return attrs.evolve(self, **changes)

    def __attrs_post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, *, allow_unknown: bool = False) -> Config:
        """Parse Miles-style flags. Unknown flags are an error naming the flag (and a close match),
        unless ``allow_unknown``, which keeps them in ``extra`` for hooks to read."""
        from miles_sdk._cli_args import parse_config_args

        return parse_config_args(cls, argv, allow_unknown=allow_unknown)

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Resolved type of every field, for the CLI parser."""
        return typing.get_type_hints(cls)


def _validate(c: Config) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(c.rollout_batch_size >= 1, f"rollout_batch_size must be >= 1, got {c.rollout_batch_size}")
    need(c.n_samples_per_prompt >= 1, f"n_samples_per_prompt must be >= 1, got {c.n_samples_per_prompt}")
    need(
        c.effective_over_sampling_batch_size >= c.rollout_batch_size,
        f"over_sampling_batch_size ({c.over_sampling_batch_size}) must be >= rollout_batch_size "
        f"({c.rollout_batch_size})",
    )
    need(c.micro_batch_size >= 1, "micro_batch_size must be >= 1")
    gbs = c.effective_global_batch_size
    per_rollout = c.rollout_batch_size * c.n_samples_per_prompt
    need(gbs >= 1, "global_batch_size must be >= 1")
    if c.num_steps_per_rollout is not None:
        need(c.num_steps_per_rollout >= 1, "num_steps_per_rollout must be >= 1")
        need(
            per_rollout % c.num_steps_per_rollout == 0,
            f"rollout_batch_size * n_samples_per_prompt ({per_rollout}) is not divisible by "
            f"num_steps_per_rollout ({c.num_steps_per_rollout})",
        )
    need(
        gbs % c.micro_batch_size == 0,
        f"global_batch_size ({gbs}) is not divisible by micro_batch_size ({c.micro_batch_size})",
    )
    need(c.eps_clip >= 0, f"eps_clip must be >= 0, got {c.eps_clip}")
    need(c.eps_clip_c is None or c.eps_clip_c > 1.0, f"eps_clip_c must be > 1 (dual clip), got {c.eps_clip_c}")
    need(
        c.advantage_estimator != "ppo" or c.kl_coef == 0.0,
        "advantage_estimator=ppo needs kl_coef == 0 (use use_kl_loss for a KL penalty)",
    )
    need(c.rm_type != "remote_rm" or c.rm_url is not None, "rm_type=remote_rm needs rm_url")
    need(not (c.debug_rollout_only and c.debug_train_only), "debug_rollout_only and debug_train_only exclude each other")
    need(
        not c.debug_train_only or c.load_debug_rollout_data is not None,
        "debug_train_only needs load_debug_rollout_data (there is no engine to generate with)",
    )
    need(c.eval_prompt_data is None or len(c.eval_prompt_data) % 2 == 0,
         "eval_prompt_data takes pairs: name path [name path ...]")
    need(not c.use_dynamic_batch_size or (c.max_tokens_per_gpu or 0) > 0,
         "use_dynamic_batch_size needs max_tokens_per_gpu > 0")
    need(c.rollout_max_response_len >= 1, "rollout_max_response_len must be >= 1")
    need(0.0 < c.rollout_top_p <= 1.0, f"rollout_top_p must be in (0, 1], got {c.rollout_top_p}")
    need(c.rollout_temperature >= 0.0, "rollout_temperature must be >= 0")
    need(c.update_weights_interval >= 1, "update_weights_interval must be >= 1")
    need(c.sglang_server_concurrency >= 1, "sglang_server_concurrency must be >= 1")
    if c.num_rollout is None and c.num_epoch is None:
        return
    need(c.num_rollout is None or c.num_rollout >= 0, "num_rollout must be >= 0")
