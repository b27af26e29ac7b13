"""`Config`: every setting the loop reads, under Miles's argument names.

A Config is frozen and keyword-only. ``Config.from_args(argv)`` parses Miles-style flags
(``--rollout-batch-size 8 --custom-rm-path my.mod.rm``), so an existing Miles launch script's
flags work unchanged. Hooks receive the Config as ``args``, so ``args.n_samples_per_prompt`` and
friends read exactly as in Miles.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import types
import typing
import urllib.parse
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import attrs

from miles_sdk._errors import ConfigError

__all__ = ["HOOK_PATH_FIELDS", "AdvantageEstimator", "Config", "ConfigError", "KLLossType", "LossType"]

AdvantageEstimator: TypeAlias = Literal[
    "grpo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "ppo"
]
KLLossType: TypeAlias = Literal["k1", "k2", "k3", "low_var_kl"]
LossType: TypeAlias = Literal["policy_loss", "sft_loss", "custom_loss", "value_loss"]
ISLevel: TypeAlias = Literal["token", "sequence", "geometric"]
ISMode: TypeAlias = Literal["truncate", "clip", "mask"]


BUILTIN_RM_TYPES = (
    "math",
    "deepscaler",
    "dapo",
    "f1",
    "gpqa",
    "ifbench",
    "remote_rm",
    "random",
    "deterministic_random",
)
"""The built-in ``rm_type`` values (miles_sdk/rewards); ``boxed_`` may prefix any of them."""


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

    # ---- data: prompts, their keys and templates, epochs (data/) ---------------------------------
    prompt_data: str | None = None
    """Training prompts: .jsonl or .parquet, optionally ``path@[start:end]``."""
    input_key: str = "input"
    """Dataset key of the prompt (text or chat messages)."""
    label_key: str | None = None
    """Dataset key of the label (ground truth) read by the reward; None: the `label` column when a row has one, else no label."""
    metadata_key: str = "metadata"
    """Dataset key of per-row metadata (e.g. rm_type, instruction ids), copied to sample.metadata."""
    tool_key: str | None = None
    """Dataset key of the tool specs passed to the chat template."""
    multimodal_keys: dict[str, str] | None = None
    """JSON mapping of multimodal type -> dataset key, e.g. {"image": "images"}."""
    apply_chat_template: bool = False
    """Render prompts (chat messages) through the tokenizer's chat template."""
    apply_chat_template_kwargs: dict[str, Any] = attrs.field(factory=dict)
    """Extra kwargs for apply_chat_template, as JSON on the CLI."""
    chat_template_path: str | None = None
    """A Jinja chat template file used instead of the tokenizer's (Miles's --chat-template-path), by miles.utils.processing_utils.load_tokenizer in hooks; the SDK's own tokenizer keeps its template."""
    rollout_shuffle: bool = False
    """Reshuffle the prompts each epoch with seed rollout_seed + epoch."""
    rollout_global_dataset: bool = attrs.field(
        default=True, metadata=_flag("--disable-rollout-global-dataset")
    )
    """Serve prompts from the global dataset (Miles); --disable-rollout-global-dataset turns it off."""
    rollout_max_prompt_len: int | None = None
    """Prompts longer than this many tokens are dropped (and counted)."""
    num_rollout: int | None = None
    """Number of rollout steps; derived from num_epoch when unset."""
    num_epoch: int | None = None
    """Passes over the dataset; converted to num_rollout when num_rollout is unset."""
    start_rollout_id: int | None = None
    """Rollout id to start counting from (a checkpoint's own id wins)."""
    rollout_seed: int = 42
    """Seed of data shuffling and of deterministic sampling seeds."""

    # ---- rollout: batch, group size, sampling, over-sampling, partial rollouts (rollout/) --------
    rollout_batch_size: int = 8
    """Prompt groups per rollout step."""
    n_samples_per_prompt: int = 1
    """Samples per prompt (the GRPO group size)."""
    over_sampling_batch_size: int | None = None
    """Groups requested per refill while over-sampling; defaults to rollout_batch_size."""
    over_sampling_max_groups: int | None = None
    """Most prompt groups one training rollout draws (SDK-only; Miles has no cap). Once reached and
    at least one group is kept, the rollout stops drawing, and fills the batch's empty slots with
    the groups the dynamic_sampling_filter dropped most recently (counted as
    rollout/over_sampling_refilled_groups). With check_reward_nonzero_std those carry zero
    advantage: the step trains on what it kept. None: draw until the batch is full, as Miles,
    which draws ever more once most groups score alike (a policy that solved most prompts)."""
    rollout_temperature: float = 1.0
    """Sampling temperature; training log-probs use the same temperature."""
    rollout_top_p: float = 1.0
    """Nucleus sampling threshold."""
    rollout_top_k: int = -1
    """Top-k sampling; -1 disables it."""
    rollout_max_response_len: int = 1024
    """Most new tokens per response."""
    rollout_max_context_len: int | None = None
    """Most prompt + response tokens; caps the response budget."""
    rollout_stop: list[str] | None = None
    """Stop strings (kept in the response)."""
    rollout_stop_token_ids: list[int] | None = None
    """Extra stop token ids besides EOS."""
    rollout_skip_special_tokens: bool = False
    """Drop special tokens from the decoded response text."""
    partial_rollout: bool = False
    """Unfinished groups go back to the buffer and resume from their tokens next step."""
    mask_offpolicy_in_partial_rollout: bool = False
    """Zero the loss mask of resumed tokens that older weights generated."""
    rollout_trim_samples: bool = attrs.field(default=True, metadata=_flag("--disable-rollout-trim-samples"))
    """Trim samples to a multiple of global_batch_size; --disable-rollout-trim-samples keeps all."""

    # ---- rollout: agents and multi-turn generation (agents/, docs/agents.md) ---------------------
    custom_agent_function_path: str | None = None
    """Hook path for `AgentFn` (`pkg.module.attr`): the agent that `miles_sdk.agents.generate_with_agent`
    (Miles's `miles.rollout.generate_hub.agentic_tool_call.generate`) runs for each sample. Set alone
    (no generate or rollout function given), it selects generate_with_agent; Miles needs both flags."""
    use_session_server: bool = False
    """Miles's flag for its session server. Accepted for launch scripts; the agent endpoint runs in-process
    on loopback whenever an agent generate function is used, so it changes nothing."""
    max_seq_len: int | None = None
    """Agent sessions: most tokens (prompt + completion, tool output included) per turn and per trained
    sample; longer samples are truncated (TRUNCATED). None: rollout_max_context_len."""
    agent_timeout: float | None = 3600.0
    """Seconds an agent function may run for one sample; past it the sample is FAILED with the reason."""
    agent_sample_mode: Literal["trajectory", "turn"] = "trajectory"
    """Samples from an agent session: one per linear trajectory (turns merged, tool output masked) or one
    per model call."""
    generate_max_turns: int = 16
    """Most model turns of Miles's `generate_hub.multi_turn.generate`."""
    generate_tool_specs_path: str | None = None
    """Path (`pkg.module.attr`) of the OpenAI tool specs list for `generate_hub.multi_turn.generate`."""
    generate_tool_call_parser: str | None = None
    """Tool-call format for `generate_hub.multi_turn.generate`; `qwen25`, `qwen`, `hermes` (all the
    `<tool_call>` JSON format) or None (the same)."""
    generate_execute_tool_function_path: str | None = None
    """Path of `async (name, arguments) -> str` running one tool, for `generate_hub.multi_turn.generate`."""

    # ---- eval: the rollout with evaluation=True (rollout/eval.py, data/eval.py) ------------------
    eval_interval: int | None = None
    """Run the eval function every this many rollout steps."""
    eval_prompt_data: list[str] | None = None
    """Pairs ``name path [name path ...]``."""
    eval_config: str | None = None
    """YAML/JSON file with per-dataset eval settings (n_samples, rm_type, metadata overrides)."""
    n_samples_per_eval_prompt: int = 1
    """Samples per eval prompt."""
    eval_temperature: float | None = None
    """Eval sampling temperature (default: rollout_temperature)."""
    eval_top_p: float | None = None
    """Eval top-p (default: rollout_top_p)."""
    eval_top_k: int | None = None
    """Eval top-k (default: rollout_top_k)."""
    eval_max_response_len: int | None = None
    """Eval response budget (default: rollout_max_response_len)."""
    eval_input_key: str | None = None
    """Prompt key of the eval datasets (default: input_key)."""
    eval_label_key: str | None = None
    """Label key of the eval datasets (default: label_key)."""
    eval_tool_key: str | None = None
    """Tool key of the eval datasets (default: tool_key)."""
    eval_reward_key: str | None = None
    """Reward key for eval dict rewards (default: reward_key)."""
    skip_eval_before_train: bool = False
    """Skip the eval before the first training step."""

    # ---- engine: inference engine, served API, weight sync (engines/, router/, _sync.py) ---------
    rollout_engine: Literal["embedded", "sglang", "http"] = "embedded"
    """Inference engine: in-process torch, sglang's offline Engine, or an sglang-compatible server."""
    sglang_server_concurrency: int = 512
    """Most samples generated at once (per engine)."""
    sglang_enable_deterministic_inference: bool = False
    """Deterministic mode: sample i of each group is seeded with rollout_seed + i."""
    sglang_router_ip: str | None = None
    """Host of the SGLang(-compatible) server or router; filled in when this SDK serves one."""
    sglang_router_port: int | None = None
    """Port of the SGLang(-compatible) server or router."""
    rollout_external: bool = False
    """Miles flag: generate with SGLang servers started outside this run, at
    rollout_external_engine_addrs (sets rollout_engine="http")."""
    rollout_external_engine_addrs: list[str] | None = None
    """Miles flag: host:port of each external SGLang(-compatible) server (--rollout-external-engine-addrs
    h1:30000 h2:30000). Requests go to the least busy one and every weight sync reaches each (with
    weight_sync_method="distributed" each joins the group; an address that is a router is joined
    through its workers). sglang_router_ip/port, when set, name a router in front of them for
    custom generate functions; unset, this SDK serves one over them."""
    rollout_external_wait_timeout: float = 60.0
    """Seconds the Trainer waits when it starts, before any weights load, for each server that
    rollout_engine="http" uses (every rollout_external_engine_addrs entry; the server or router at
    sglang_router_ip/port) to answer GET /health (SGLang's, or /get_model_info where there is no
    /health). A server still loading (connection refused, or 503 while it warms up) is asked again
    until then; one that has not answered fails the start, named with the flag that listed it. 0:
    ask once. Not a Miles flag (Miles waits for its external engines without a bound)."""
    update_weights_interval: int = 1
    """Sync weights to the engine every this many rollout steps."""
    use_miles_router: bool = False
    """Route engine requests through the router (least-active choice, health checks, middlewares)."""
    serve_http: bool = False
    """Serve an SGLang-compatible HTTP API around the engine and point sglang_router_ip/port at it,
    so unchanged Miles generate functions that POST to /generate work."""
    sglang_api_key: str | None = None
    """Token for the control endpoints (aborts, workers, weight updates) of the HTTP API this SDK
    serves, and sent as Authorization: Bearer to a remote SGLang server (its --api-key). None: a
    random token per run, handed to in-process hooks. Required to serve on a non-loopback address."""
    serve_max_body_bytes: int | None = None
    """Largest request body the served HTTP API accepts. None: room for a prompt of
    rollout_max_context_len tokens (32 bytes per token, 128k tokens when unset) plus 1 MiB."""
    serve_max_concurrent_requests: int = 4096
    """Requests the served HTTP API handles at once; more are answered 503 (clients retry)."""
    weight_sync_dir: str | None = None
    """Directory the trainer writes its weights to for an engine in another process
    (rollout_engine=http: /update_weights_from_disk); it must be readable by the server. None: a
    temporary directory, removed at close."""
    weight_sync_method: Literal["disk", "distributed", "tensor"] = "disk"
    """How trained weights reach engine replicas in other processes (rollout_num_gpus replicas):
    "disk" writes a save_pretrained directory each replica loads (/update_weights_from_disk);
    "distributed" broadcasts them from the trainer through a torch.distributed group
    (/init_weights_update_group, /update_weights_from_distributed; NCCL on GPUs, gloo on CPU),
    as Miles does when not colocated; "tensor" hands replicas on the trainer's own device
    handles to its memory (/update_weights_from_tensor: CUDA IPC, or shared memory on the CPU),
    as Miles does when colocated, and is what colocate picks over "disk" when every replica is
    on that device. rollout_engine=http servers join the group too (each with its tp_size
    ranks); servers that cannot join, and engines that cannot map the trainer's memory, use
    disk, with a warning naming them."""
    weight_sync_master_address: str | None = None
    """weight_sync_method="distributed" with rollout_engine="http" servers: the address they reach
    this process at for the weight update group (the master_address of SGLang's
    /init_weights_update_group; the group's store listens there, so it must be an address of this
    machine). None: the MILES_HOST_IP environment variable (Miles's override of this host's
    address), else loopback when every server is local, else the local address of the route to the
    first remote server. Checked when the Trainer starts. Not a Miles flag (Miles uses Ray's node
    address); MASTER_ADDR is not read (a cluster launcher sets it to its own rendezvous host)."""
    update_weight_buffer_size: int = 512 * 1024**2
    """Miles flag: bytes of weights per broadcast bucket (weight_sync_method="distributed") or per
    shared staging buffer ("tensor")."""
    check_weight_sync: bool = False
    """After every weight sync, check that the engine reports the new version and the trainer's
    weights (the first rows of a few tensors); a mismatch raises. On in tests (the pytest plugin)."""
    logprob_gap_warn_threshold: float | None = None
    """On steps that are on-policy by construction, warn when train_rollout_logprob_abs_diff is above
    this. None: 0.05 when training or generation runs in bf16/fp16 (a bf16 logit carries about
    0.4 percent rounding), 0.005 in fp32. 0 turns the warning off."""
    max_engine_batch_size: int = 64
    """Embedded engine: most sequences decoded in one batch."""

    # ---- reward: rm types, remote rewards, failures, post-processing (rewards/) ------------------
    rm_type: str | None = None
    """Built-in reward: math, deepscaler, dapo, f1, gpqa, ifbench, remote_rm, random,
    deterministic_random, optionally prefixed with ``boxed_``."""
    reward_key: str | None = None
    """Key read from dict rewards (dapo: "score")."""
    rm_url: str | None = None
    """URL of the remote reward model (rm_type=remote_rm)."""
    group_rm: bool = False
    """Score each group with one batched reward call."""
    reward_timeout: float | None = None
    """Seconds before a reward call is cancelled and its sample marked FAILED."""
    reward_concurrency: int = 64
    """Most reward calls in flight (remote_rm connection pool size too)."""
    reward_request_timeout: float = 10.0
    """remote_rm: seconds one HTTP attempt may take; a timeout, connection error or 5xx is retried
    with backoff and jitter."""
    reward_retry_budget: float = 60.0
    """remote_rm: seconds one sample may spend on all its attempts and backoff before it is FAILED
    (reward_timeout, when lower, still cancels sooner)."""
    reward_leave_out_failed: bool = False
    """Keep a group whose reward failed on some samples, without them, where the estimator allows
    (grpo, gspo, reinforce_plus_plus_baseline: 2 or more left; reinforce_plus_plus, ppo: 1 or more);
    off: drop the whole group (as before). The step then has fewer samples: needs
    --disable-rollout-trim-samples or a global_batch_size below the rollout's sample count, and a
    reward_post_process that accepts groups of unequal size (the built-in one does)."""
    reward_max_failed_frac: float = 0.5
    """Stop the run when more than this fraction of a step's finished samples failed reward
    scoring for reward_failed_patience steps in a row (1.0 never stops)."""
    reward_failed_patience: int = 3
    """Consecutive steps above reward_max_failed_frac before the run stops."""
    reward_num_workers: int = 2
    """Worker processes for CPU-heavy graders (math); 0 grades on a thread."""
    reward_pool_timeout: float | None = 300.0
    """Seconds a math/deepscaler grade may wait in the reward worker pool before its sample fails and the pool restarts; guards against workers that never start. None: no limit."""
    math_float_rounding: int | None = None
    """math/deepscaler: None grades decimals exactly, as Miles does (0.3333 is not 1/3); N accepts a decimal that equals the truth when both are rounded to N places (math-verify's tolerance, whose own default is 6)."""
    rewards_normalization: bool = attrs.field(default=True, metadata=_flag("--disable-rewards-normalization"))
    """GRPO group normalisation of rewards; --disable-rewards-normalization turns it off."""
    grpo_std_normalization: bool = attrs.field(
        default=True, metadata=_flag("--disable-grpo-std-normalization")
    )
    """Divide by the group std (grpo/gspo); --disable-grpo-std-normalization turns it off (Dr.GRPO)."""

    # ---- algorithm: advantages, losses, KL, TIS/MIS, OPD (algo/) ---------------------------------
    advantage_estimator: AdvantageEstimator = "grpo"
    """grpo, gspo, reinforce_plus_plus, reinforce_plus_plus_baseline or ppo (docs/algorithms.md)."""
    gamma: float = 1.0
    """Discount for reinforce_plus_plus and PPO's GAE."""
    lambd: float = 1.0
    """GAE lambda (ppo)."""
    normalize_advantages: bool = False
    """Whiten advantages over the batch's loss-masked tokens."""
    compute_advantages_and_returns: bool = attrs.field(
        default=True, metadata=_flag("--disable-compute-advantages-and-returns")
    )
    """Compute advantages (Miles flag); --disable-compute-advantages-and-returns skips it."""
    loss_type: LossType = "policy_loss"
    """policy_loss, sft_loss, value_loss or custom_loss (needs a LossFn)."""
    eps_clip: float = 0.2
    """PPO clip range below 1 (1 - eps_clip)."""
    eps_clip_high: float | None = None
    """PPO clip range above 1 (clip-higher); default eps_clip."""
    eps_clip_c: float | None = None
    """Dual-clip constant (> 1) for negative advantages; None disables it."""
    value_clip: float = 0.2
    """Clip range of the PPO value loss."""
    kl_coef: float = 0.0
    """KL penalty folded into the reward (reinforce_plus_plus*); needs the reference model."""
    use_kl_loss: bool = False
    """Add kl_loss_coef * KL(pi || ref) to the loss."""
    kl_loss_coef: float = 0.0
    """Weight of the KL loss."""
    kl_loss_type: KLLossType = "k1"
    """KL estimator: k1, k2, k3 or low_var_kl."""
    use_unbiased_kl: bool = False
    """Weight the KL estimate by the importance ratio pi / pi_old."""
    entropy_coef: float = 0.0
    """Entropy bonus: loss = pg - entropy_coef * entropy."""
    calculate_per_token_loss: bool = False
    """Reduce the loss over all tokens of the batch instead of per sample."""
    use_rollout_logprobs: bool = False
    """Use the engine's log-probs as the old log-probs instead of recomputing them."""
    skip_on_policy_old_log_probs: bool = True
    """With one optimizer step per rollout, the old log-probs equal the train pass's own, detached:
    skip their separate forward (as TRL and verl do). Off: recompute them, as Miles always does.
    Never skipped with use_rollout_logprobs, kl_coef != 0, or a before-log-prob or
    rollout-data-postprocess hook (they see the old log-probs before training)."""
    use_opd: bool = False
    """On-policy distillation (Miles's --use-opd): each token's advantage gets -opd_kl_coef * (old student log-prob - teacher log-prob), from sample.teacher_log_probs (or a precomputed sample.opd_reverse_kl). Needs opd_type."""
    opd_type: Literal["sglang", "megatron"] | None = None
    """Where teacher log-probs come from. sglang: a teacher server scored during the rollout (the reward and its post-process fill sample.teacher_log_probs, e.g. miles.rollout.on_policy_distillation). megatron (a teacher forwarded by the trainer) is not available in the SDK."""
    opd_kl_coef: float = 1.0
    """Weight of the OPD reverse-KL term in the advantages."""
    opd_log_prob_top_k: int = 0
    """0: sampled-token OPD (teacher_log_probs). N > 0: Miles's top-k OPD, whose post-process precomputes sample.opd_reverse_kl."""
    use_tis: bool = False
    """Truncated importance sampling against the engine's log-probs (train/inference mismatch)."""
    tis_clip: float = 2.0
    """Upper clamp of the TIS weight."""
    tis_clip_low: float = 0.0
    """Lower clamp of the TIS weight."""
    get_mismatch_metrics: bool = False
    """Log train/inference mismatch metrics without reweighting."""
    use_rs: bool = False
    """Masked importance sampling (rejection): drop tokens/sequences whose IS weight is out of bounds."""
    tis_level: ISLevel = "token"
    """MIS weight level: token, sequence or geometric."""
    rs_level: ISLevel = "token"
    """Rejection-sampling level: token, sequence or geometric."""
    tis_mode: ISMode = "truncate"
    """MIS mode: truncate, clip or mask."""
    tis_lower_bound: float | None = None
    """Lower bound of the MIS weights (clip/mask); default 1 / tis_upper_bound."""
    tis_upper_bound: float = 2.0
    """Upper bound of the MIS weights."""
    rs_lower_bound: float | None = None
    """Lower bound for rejection sampling (default tis_lower_bound)."""
    rs_upper_bound: float | None = None
    """Upper bound for rejection sampling (default tis_upper_bound)."""
    rs_veto_threshold: float | None = None
    """A token ratio below this zeroes its whole sequence."""
    tis_batch_normalize: bool = False
    """Rescale the IS weights to mean 1 over the batch."""

    # ---- optimizer and train backend: learning rate, batches, memory (backends/) -----------------
    optimizer_cpu_offload: bool = False
    """torch backend: keep the fp32 master weights and the AdamW state in host memory and step
    there (Miles's --optimizer-cpu-offload); the device keeps the weights and fp32 gradient
    accumulators, and the copies overlap the host step. For a policy whose optimizer does not fit
    (7B: 91 GB of masters and moments); costs host time per step. fsdp: use fsdp_cpu_offload."""
    qkv_format: Literal["thd", "bshd"] = "thd"
    """Miles's attention input layout (packed thd or padded bshd), read by TIS hooks such as mis.py's compute_mis_weights_with_cp. The SDK runs without context parallelism, where both give the same weights."""
    log_probs_chunk_size: int = 1024
    """Tokens per chunk when computing log-probs/entropy over the vocabulary."""
    lr: float = 1e-6
    """Learning rate of the policy (AdamW)."""
    critic_lr: float | None = None
    """Learning rate of the PPO critic (default lr)."""
    lr_warmup_iters: int = 0
    """Linear warm-up optimizer steps of the learning rate (from lr_warmup_init to lr, as Megatron)."""
    lr_warmup_init: float = 0.0
    """Learning rate at the start of the warm-up (Megatron's --lr-warmup-init)."""
    min_lr: float = 0.0
    """Floor of the decayed learning rate."""
    lr_decay_style: Literal["constant", "linear", "cosine"] = "constant"
    """constant, linear or cosine decay from lr to min_lr, after the warm-up, over lr_decay_iters
    (Megatron's OptimizerParamScheduler)."""
    lr_decay_iters: int | None = None
    """Optimizer steps the decay ends at (counting the warm-up); default every optimizer step of
    the run (num_rollout, or num_epoch over the dataset, or fit(num_rollout=N), times the steps per
    rollout)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.98
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Gradient-norm clip per optimizer step."""
    global_batch_size: int | None = None
    """Samples per optimizer step; defaults to rollout_batch_size * n_samples_per_prompt."""
    micro_batch_size: int = 1
    """Samples per forward/backward (gradient accumulation within a step)."""
    num_steps_per_rollout: int | None = None
    """Optimizer steps per rollout; overrides global_batch_size."""
    use_dynamic_batch_size: bool = False
    """Form micro-batches by token count (max_tokens_per_gpu) instead of micro_batch_size."""
    max_tokens_per_gpu: int | None = None
    """Token budget of a micro-batch with use_dynamic_batch_size."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute activations in backward (less memory, more time: +18-22% step time on W1, 0.5B).
    auto: off on the CPU; on CUDA, on only when the estimate made as the backend is built says one
    micro-batch's activations (max_tokens_per_gpu, else micro_batch_size x the longest sample:
    rollout_max_context_len, or rollout_max_prompt_len + rollout_max_response_len) plus the
    gradients and optimizer state still to come exceed the device's free memory (logged once with
    its numbers). --gradient-checkpointing: on; --no-gradient-checkpointing: off."""
    compile_model: Literal["auto", "on", "off"] = "auto"
    """torch.compile the policy's decoder layers for the log-prob and train passes; the engine is
    unaffected. auto: on for CUDA, off on CPU. Pays off in long runs: the first steps pay the
    compile (W1, 0.5B: ~9 s at fixed lengths, ~36 s when lengths vary) for a 16-28% faster train
    phase; use off for short or interactive runs. A model the compiler rejects runs eagerly."""
    pack_sequences: Literal["auto", "on", "off"] = "auto"
    """Train and score without padding: each micro-batch runs as one packed row with per-sequence
    causal attention (flash varlen on CUDA; a loop over sequences on CPU), as verl's
    use_remove_padding and Miles's THD format. auto: on for CUDA when the model is a transformers
    model whose layers dispatch attention through config._attn_implementation (Qwen2, Llama, ...)
    and whose packed test forward of two short sequences matches the padded one, else padding
    (logged); on: pack (an error naming the model if it cannot); off: right-pad.
    A micro-batch whose sequences are all one length runs padded: there is nothing to remove."""
    num_critic_only_steps: int = 0
    """First rollouts that train only the PPO critic."""

    # ---- model: policy, reference, dtype, device, seed (_policy.py) ------------------------------
    hf_checkpoint: str | None = None
    """The policy's model + tokenizer, loaded with from_pretrained: a local HF model folder, or a hub id
    such as Qwen/Qwen2.5-0.5B (found in the hub cache, or downloaded; HF_HUB_OFFLINE=1 keeps to the cache)."""
    ref_load: str | None = None
    """Reference model folder or hub id (as hf_checkpoint); defaults to hf_checkpoint (or a frozen copy of the policy)."""
    seed: int = 1234
    """Seed for torch/python RNGs of the trainer."""
    device: str = "auto"
    """Torch device for policy and engine: "cpu", "cuda", "cuda:1" or "auto" (cuda when present)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype. auto: bf16 parameters with fp32 master weights in the optimizer on CUDA, float32 on CPU."""

    # ---- model: LoRA (lora/, docs/lora.md; Miles's flags, through peft) --------------------------
    lora_rank: int = 0
    """LoRA rank; 0 trains every parameter. With a rank the policy is wrapped by peft: only the
    adapter weights train (the optimizer holds nothing else), the engine samples from base +
    adapter merged at each weight sync, the reference model is the base (adapters off), checkpoints
    hold the adapter alone, and save_hf writes the merged model plus a peft folder in adapter/."""
    lora_alpha: int = 16
    """LoRA scaling numerator: the update is (lora_alpha / lora_rank) * B @ A (Miles's default 16)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input while training. RL keeps every dropout at 0 (the trainer's
    log-probs must equal the engine's); a value here is written to adapter_config.json but trains as
    0, with a warning."""
    target_modules: str | None = None
    """Modules that get adapters, required with lora_rank: all-linear (q/k/v/o_proj and
    gate/up/down_proj, as Miles expands it) or a comma-separated list of module names."""
    exclude_modules: str | None = None
    """Comma-separated module names removed from target_modules."""
    lora_adapter_path: str | None = None
    """A peft adapter folder (adapter_config.json + adapter_model.safetensors) to start from; its
    rank, alpha and target modules must equal lora_rank, lora_alpha and target_modules."""
    lora_base_cpu_backup: bool = False
    """Miles's colocated-SGLang option (a host copy of the base so that only the adapter is synced).
    Accepted for Miles scripts and changes nothing: the in-process engine shares the base's
    tensors with the trainer, and engines in other processes get the merged model (docs/lora.md)."""

    # ---- placement: train backend, ranks, GPUs, Ray (distributed/) -------------------------------
    train_backend: Literal["torch", "fsdp", "megatron"] = "torch"
    """Training backend. torch: one process, the policy trained in place. fsdp: FSDP2-sharded
    training ranks, actor_num_nodes * actor_num_gpus_per_node of them (CPU ranks over gloo without
    GPUs), started in this process for one rank, else as Ray actors (or local processes without
    Ray); see docs/scale-out.md. megatron is parsed and rejected with a clear error."""
    fsdp_cpu_offload: bool = False
    """fsdp: keep the sharded parameters, gradients and optimizer state in host memory
    (FSDP2's CPUOffloadPolicy); the optimizer steps on the CPU."""
    ray_address: str | None = None
    """The Ray cluster that FSDP ranks and engine replicas join ("host:port", or "auto" for one
    started on this node with `ray start`); unset: RAY_ADDRESS, else a new local cluster."""
    distributed_launcher: Literal["auto", "ray", "processes"] = "auto"
    """fsdp with several ranks: how they start. auto: Ray actors when ray is installed, else local
    processes (one node); ray: Ray actors (a local cluster, or ray_address); processes: spawned
    local processes driven over pipes (no Ray)."""
    rollout_num_gpus: int | None = None
    """Embedded engine: 2 or more runs that many engine replicas (rollout_num_gpus /
    rollout_num_gpus_per_engine), each in its own process (a CPU process without GPUs; a Ray actor
    when Ray is used) behind the router; unset or 1: one engine in this process. See
    docs/scale-out.md, "Engine replicas"."""
    rollout_num_gpus_per_engine: int = 1
    """Devices per engine replica; the embedded engine needs 1 (no tensor parallelism)."""
    colocate: bool = False
    """Engines and training share devices (Miles's --colocate): rollout_num_gpus replicas go on the
    training GPUs, take weight syncs as tensor handles when on the trainer's device, and release
    their memory during training (offload_rollout's default). The in-process Trainer is always
    colocated."""
    offload_train: bool = False
    """Miles placement flag; accepted, and warned about, in the in-process Trainer."""
    offload_rollout: bool | None = None
    """After each rollout the engine frees its KV cache, fused weight copies and CUDA graphs for
    training (engine replicas: their weights too, into a host copy), and takes them back after the
    weight sync or at its next request (Miles's --offload-rollout; SGLang's
    /release_memory_occupation). Unset: on for rollout_num_gpus replicas with colocate (Miles's
    --colocate default), else off; --no-offload-rollout turns it off. Costs the graph captures
    again each rollout; the embedded engine, its replicas and rollout_engine='http' servers
    release (a replica that cannot is an error naming it), other engines are warned about."""
    actor_num_nodes: int = 1
    """Miles placement flag; accepted, and warned about, in the in-process Trainer."""
    actor_num_gpus_per_node: int = 1
    """Miles placement flag; accepted, and warned about, in the in-process Trainer."""

    # ---- checkpoint: save, load, resume (checkpoint.py) ------------------------------------------
    load: str | None = None
    """Checkpoint directory to resume from (its latest step)."""
    save: str | None = None
    """Checkpoint directory to write to."""
    save_interval: int | None = None
    """Save a checkpoint every this many rollout steps (and after the last)."""
    save_keep_last: int | None = None
    """Keep only the newest this many checkpoints in save (older ones are deleted after a new one is
    complete); None keeps all. Not a Miles flag (Miles keeps every checkpoint)."""
    save_retain_interval: int | None = None
    """Also keep every checkpoint whose rollout id is a multiple of this (Megatron's, hence Miles's,
    --save-retain-interval); set alone, the newest checkpoint is kept besides them."""
    ckpt_step: int | None = None
    """Resume --load from this rollout id instead of the latest (Megatron's --ckpt-step); an error
    when that checkpoint is missing or broken, where the latest falls back or starts fresh."""
    save_hf: str | None = None
    """Also export the policy as an HF directory; ``{rollout_id}`` in the path is filled in."""
    no_save_optim: bool = False
    """Leave the optimizer state out of checkpoints."""

    # ---- logging (logging/) ----------------------------------------------------------------------
    output_dir: str | None = None
    """Where metrics.jsonl, plots and TensorBoard files go."""
    use_tensorboard: bool = False
    """Also write metrics to TensorBoard (extra `tensorboard`)."""
    tb_project_name: str | None = None
    """TensorBoard run folder name."""
    use_wandb: bool = False
    """Also log metrics to Weights & Biases (extra `wandb`)."""
    wandb_project: str | None = None
    """W&B project."""
    wandb_group: str | None = None
    """W&B group."""
    progress_bar: bool = True
    """Show a progress bar during fit() (--no-progress-bar hides it)."""

    # ---- debug: rollout-only / train-only runs, saved rollouts -----------------------------------
    debug_rollout_only: bool = False
    """Generate and score, never train (check a rollout setup)."""
    debug_train_only: bool = False
    """Train on load_debug_rollout_data, no generation."""
    save_debug_rollout_data: str | None = None
    """Path template with ``{rollout_id}``: each rollout's samples are written there."""
    load_debug_rollout_data: str | None = None
    """Path template with ``{rollout_id}``: train on saved rollouts instead of generating."""

    # ---- hook paths (Miles's hook table, docs/hooks.md) ------------------------------------------
    rollout_function_path: str | None = None
    """Hook path for `RolloutFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_generate_function_path: str | None = None
    """Hook path for `GenerateFn` (`pkg.module.attr`); see docs/hooks.md."""
    data_source_path: str | None = None
    """Hook path for `DataSourceFactory` (`pkg.module.attr`); see docs/hooks.md."""
    eval_function_path: str | None = None
    """Hook path for `RolloutFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_rm_path: str | None = None
    """Hook path for `RewardFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_reward_post_process_path: str | None = None
    """Hook path for `RewardPostProcessFn` (`pkg.module.attr`); see docs/hooks.md."""
    dynamic_sampling_filter_path: str | None = None
    """Hook path for `DynamicSamplingFilterFn` (`pkg.module.attr`); see docs/hooks.md."""
    buffer_filter_path: str | None = None
    """Hook path for `BufferFilterFn` (`pkg.module.attr`); see docs/hooks.md."""
    rollout_sample_filter_path: str | None = None
    """Hook path for `RolloutSampleFilterFn` (`pkg.module.attr`); see docs/hooks.md."""
    rollout_all_samples_process_path: str | None = None
    """Hook path for `RolloutAllSamplesProcessFn` (`pkg.module.attr`); see docs/hooks.md."""
    rollout_data_postprocess_path: str | None = None
    """Hook path for `RolloutDataPostprocessFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_loss_function_path: str | None = None
    """Hook path for `LossFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_tis_function_path: str | None = None
    """Hook path for `TISFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_pg_loss_reducer_function_path: str | None = None
    """Hook path for `PGLossReducer` (`pkg.module.attr`); see docs/hooks.md."""
    custom_convert_samples_to_train_data_path: str | None = None
    """Hook path for `ConvertSamplesToTrainDataFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_megatron_init_path: str | None = None
    """Hook path for `BackendInitFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_megatron_before_log_prob_hook_path: str | None = None
    """Hook path for `BeforeLogProbHookFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_megatron_before_train_step_hook_path: str | None = None
    """Hook path for `BeforeTrainStepHookFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_megatron_post_save_hook_path: str | None = None
    """Hook path for `PostSaveHookFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_rollout_log_function_path: str | None = None
    """Hook path for `RolloutLogFn` (`pkg.module.attr`); see docs/hooks.md."""
    custom_eval_rollout_log_function_path: str | None = None
    """Hook path for `EvalRolloutLogFn` (`pkg.module.attr`); see docs/hooks.md."""
    miles_router_middleware_paths: list[str] | None = None
    """Hook paths for `RouterMiddleware` (several, in order); see docs/hooks.md."""
    custom_model_provider_path: str | None = None
    """Hook path for `ModelProviderFn` (`pkg.module.attr`); see docs/hooks.md."""

    # ---- config file and flags this SDK does not interpret ---------------------------------------
    custom_config_path: str | None = None
    """YAML file whose keys override these settings (Miles's --custom-config-path, e.g. mis.yaml);
    keys that are not settings are kept in ``extra`` for hooks."""
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

    def __new__(cls, *args: Any, **kwargs: Any) -> typing.Self:
        # attrs would say "unexpected keyword argument"; name the closest setting instead.
        unknown = sorted(set(kwargs) - {f.name for f in attrs.fields(cls)})
        if unknown:
            hints = "".join(
                f" (did you mean {m[0]}?)"
                if (m := difflib.get_close_matches(u, [f.name for f in attrs.fields(cls)], 1))
                else ""
                for u in unknown[:1]
            )
            raise TypeError(f"Config got unknown setting(s) {unknown}{hints}; see docs/config.md")
        return super().__new__(cls)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated again). The custom config file was applied
        when this Config was built, so it is not applied again over the changes."""
        changes.setdefault("custom_config_path", None)
        changes.setdefault("extra", dict(self.extra))
        return attrs.evolve(self, **changes)

    def __attrs_post_init__(self) -> None:
        if self.custom_config_path is not None:
            _apply_custom_config(self, self.custom_config_path)
        if self.rollout_external and self.rollout_engine == "embedded":
            # Miles's --rollout-external: no engine of ours; frozen, so set during construction
            object.__setattr__(self, "rollout_engine", "http")
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


def _apply_custom_config(c: Config, path: str) -> None:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"custom_config_path {path!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"custom_config_path {path!r}: expected a mapping of setting: value, got {type(data).__name__}"
        )
    names = {f.name for f in attrs.fields(Config)} - {"extra", "custom_config_path"}
    hints = typing.get_type_hints(Config)
    object.__setattr__(c, "extra", dict(c.extra))  # never write into a dict another Config shares
    for key, value in data.items():
        if key in names:
            # frozen: this runs once, during construction
            object.__setattr__(c, key, _coerce(key, value, hints[key], path))
        else:
            c.extra[key] = value


def _coerce(name: str, value: Any, tp: Any, path: str) -> Any:
    """A YAML value as the setting's type: ``1e-5`` (a string to PyYAML) becomes a float, a bad
    choice or type is an error naming the file and the setting."""
    where = f"custom_config_path {path!r}: {name}={value!r}"
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: this setting cannot be null")
    base = (
        next((a for a in args if a is not type(None)), tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType)
        else tp
    )
    origin = typing.get_origin(base)
    try:
        if base is bool:
            # bool | Literal["auto"] (gradient_checkpointing) also takes the literal's values
            choices = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
            if isinstance(value, bool) or (isinstance(value, str) and value in choices):
                return value
            raise ValueError("expected true or false" + "".join(f" or {c!r}" for c in choices))
        if base in (int, float, str):
            return base(value)
        if origin is typing.Literal:
            if value not in typing.get_args(base):
                raise ValueError(f"expected one of {list(typing.get_args(base))}")
            return value
        if origin is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _validate(c: Config) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    _validate_external_engines(c)
    _validate_master_address(c)
    need(c.rollout_batch_size >= 1, f"rollout_batch_size must be >= 1, got {c.rollout_batch_size}")
    need(c.n_samples_per_prompt >= 1, f"n_samples_per_prompt must be >= 1, got {c.n_samples_per_prompt}")
    _validate_ranges(c)
    need(
        c.effective_over_sampling_batch_size >= c.rollout_batch_size,
        f"over_sampling_batch_size ({c.over_sampling_batch_size}) must be >= rollout_batch_size "
        f"({c.rollout_batch_size})",
    )
    need(
        c.over_sampling_max_groups is None or c.over_sampling_max_groups >= c.rollout_batch_size,
        f"over_sampling_max_groups ({c.over_sampling_max_groups}) must be >= rollout_batch_size "
        f"({c.rollout_batch_size}) or unset",
    )
    need(c.micro_batch_size >= 1, "micro_batch_size must be >= 1")
    need(
        isinstance(c.gradient_checkpointing, bool) or c.gradient_checkpointing == "auto",
        f"gradient_checkpointing must be True, False or 'auto', got {c.gradient_checkpointing!r}",
    )
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
    need(
        c.eps_clip_c is None or c.eps_clip_c > 1.0, f"eps_clip_c must be > 1 (dual clip), got {c.eps_clip_c}"
    )
    need(
        c.advantage_estimator != "ppo" or c.kl_coef == 0.0,
        "advantage_estimator=ppo needs kl_coef == 0 (use use_kl_loss for a KL penalty)",
    )
    need(c.rm_type != "remote_rm" or c.rm_url is not None, "rm_type=remote_rm needs rm_url")
    need(c.reward_request_timeout > 0, "reward_request_timeout must be > 0")
    need(c.reward_retry_budget > 0, "reward_retry_budget must be > 0")
    need(0.0 <= c.reward_max_failed_frac <= 1.0, "reward_max_failed_frac must be in [0, 1]")
    need(c.reward_failed_patience >= 1, "reward_failed_patience must be >= 1")
    need(
        not c.reward_leave_out_failed or not c.rollout_trim_samples or c.global_batch_size is not None,
        "reward_leave_out_failed leaves steps with fewer samples than rollout_batch_size * "
        "n_samples_per_prompt, which trimming to that global batch would cut to none: set "
        "--disable-rollout-trim-samples or a smaller global_batch_size",
    )
    need(
        not (c.debug_rollout_only and c.debug_train_only),
        "debug_rollout_only and debug_train_only exclude each other",
    )
    need(
        not c.debug_train_only or c.load_debug_rollout_data is not None,
        "debug_train_only needs load_debug_rollout_data (there is no engine to generate with)",
    )
    need(
        c.eval_prompt_data is None or len(c.eval_prompt_data) % 2 == 0 or len(c.eval_prompt_data) == 1,
        "eval_prompt_data takes pairs: name path [name path ...] (or Miles's legacy single path)",
    )
    need(
        not (c.optimizer_cpu_offload and c.train_backend != "torch"),
        f"optimizer_cpu_offload is for the torch backend; with train_backend={c.train_backend!r} "
        "use fsdp_cpu_offload",
    )
    need(
        not c.use_dynamic_batch_size or (c.max_tokens_per_gpu or 0) > 0,
        "use_dynamic_batch_size needs max_tokens_per_gpu > 0",
    )
    need(not c.use_opd or c.opd_type is not None, "use_opd needs opd_type ('sglang'), as in Miles (--opd-type)")
    need(
        not c.use_opd or c.opd_type != "megatron",
        "opd_type='megatron' (a teacher model forwarded by the trainer) is not available in miles_sdk; use "
        "opd_type='sglang' with a reward that scores the teacher (miles.rollout.on_policy_distillation)",
    )
    need(c.opd_log_prob_top_k >= 0, "opd_log_prob_top_k must be >= 0")
    need(
        not (c.opd_log_prob_top_k > 0 and c.opd_type not in (None, "sglang")),
        "opd_log_prob_top_k > 0 needs opd_type='sglang'",
    )
    need(
        not (c.use_tis and c.use_rollout_logprobs),
        "use_tis and use_rollout_logprobs cannot be set together (as in Miles): with the engine's "
        "log-probs as the old ones there is no mismatch left to correct",
    )
    need(
        not c.save_interval or c.save is not None,
        "save_interval is set but save (the checkpoint directory) is not",
    )
    need(c.save_keep_last is None or c.save_keep_last >= 1, "save_keep_last must be >= 1 (or unset)")
    need(
        c.save_retain_interval is None or c.save_retain_interval >= 1,
        "save_retain_interval must be >= 1 (or unset)",
    )
    need(c.ckpt_step is None or c.load is not None, "ckpt_step is set but load (the checkpoint directory) is not")
    need(
        c.rm_type is None or c.rm_type.removeprefix("boxed_") in BUILTIN_RM_TYPES,
        f"unknown rm_type {c.rm_type!r}"
        + "".join(
            f" (did you mean {m}?)" for m in difflib.get_close_matches(str(c.rm_type), BUILTIN_RM_TYPES, 1)
        )
        + f"; built-in: {', '.join(BUILTIN_RM_TYPES)}, each optionally prefixed with boxed_",
    )
    need(c.rollout_max_response_len >= 1, "rollout_max_response_len must be >= 1")
    need(0.0 < c.rollout_top_p <= 1.0, f"rollout_top_p must be in (0, 1], got {c.rollout_top_p}")
    need(c.rollout_temperature >= 0.0, "rollout_temperature must be >= 0")
    need(c.update_weights_interval >= 1, "update_weights_interval must be >= 1")
    need(c.update_weight_buffer_size >= 1, "update_weight_buffer_size must be >= 1 (bytes)")
    need(c.lr_decay_iters is None or c.lr_decay_iters >= 1, "lr_decay_iters must be >= 1")
    need(c.sglang_server_concurrency >= 1, "sglang_server_concurrency must be >= 1")
    need(c.serve_max_body_bytes is None or c.serve_max_body_bytes >= 1024, "serve_max_body_bytes must be >= 1024")
    need(c.serve_max_concurrent_requests >= 1, "serve_max_concurrent_requests must be >= 1")
    _validate_lora(c)
    need(
        c.logprob_gap_warn_threshold is None or c.logprob_gap_warn_threshold >= 0,
        "logprob_gap_warn_threshold must be >= 0 (0: off)",
    )
    if c.num_rollout is None and c.num_epoch is None:
        return
    need(c.num_rollout is None or c.num_rollout >= 0, "num_rollout must be >= 0")


# Numeric settings and the range each must lie in, checked at Config() time so a bad value is a
# ConfigError naming the flag, not a torch traceback from the optimizer after the weights load.
# (name, low, high, low inclusive, high inclusive); None leaves a side open.
_RANGES: tuple[tuple[str, float | None, float | None, bool, bool], ...] = (
    ("lr", 0.0, None, True, True),
    ("min_lr", 0.0, None, True, True),
    ("lr_warmup_init", 0.0, None, True, True),
    ("lr_warmup_iters", 0.0, None, True, True),
    ("weight_decay", 0.0, None, True, True),
    ("adam_beta1", 0.0, 1.0, True, False),
    ("adam_beta2", 0.0, 1.0, True, False),
    ("adam_eps", 0.0, None, True, True),
    ("clip_grad", 0.0, None, True, True),
    ("kl_coef", 0.0, None, True, True),
    ("kl_loss_coef", 0.0, None, True, True),
    ("gamma", 0.0, 1.0, True, True),
    ("lambd", 0.0, 1.0, True, True),
    ("value_clip", 0.0, None, True, True),
    ("eps_clip_high", 0.0, None, True, True),
    ("tis_clip", 0.0, None, True, True),
    ("tis_clip_low", 0.0, None, True, True),
    ("reward_timeout", 0.0, None, False, True),
    ("rollout_external_wait_timeout", 0.0, None, True, True),
    ("reward_concurrency", 1.0, None, True, True),
    ("max_engine_batch_size", 1.0, None, True, True),
    ("rollout_max_prompt_len", 1.0, None, True, True),
    ("rollout_max_context_len", 1.0, None, True, True),
    ("save_interval", 0.0, None, True, True),
    ("eval_interval", 0.0, None, True, True),
    ("num_epoch", 1.0, None, True, True),
)


def _validate_external_engines(c: Config) -> None:
    """--rollout-external and its addresses: each ``host:port`` (an ``http://`` prefix is
    accepted), none twice, before anything loads."""
    flag = "rollout_external_engine_addrs (--rollout-external-engine-addrs)"
    addrs = c.rollout_external_engine_addrs
    if c.rollout_external and not addrs:
        raise ConfigError(f"rollout_external (--rollout-external) needs {flag}: host:port of each SGLang server")
    if addrs is None:
        return
    if c.rollout_engine != "http":
        raise ConfigError(
            f"{flag} is set but rollout_engine is {c.rollout_engine!r}: pass --rollout-external (Miles) or "
            "--rollout-engine http to generate with those servers"
        )
    if not addrs:
        raise ConfigError(f"{flag} is empty: name host:port of each SGLang server")
    seen: dict[str, str] = {}
    for addr in addrs:
        url = addr.strip().rstrip("/")
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path:
            raise ConfigError(f"{flag}: {addr!r} is not host:port (e.g. 10.0.0.2:30000)")
        key = f"{parts.hostname}:{port}"
        if key in seen:
            raise ConfigError(
                f"{flag}: {addr!r} names the server of {seen[key]!r} again (it would join the weight update "
                "group twice)"
            )
        seen[key] = addr


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _validate_master_address(c: Config) -> None:
    """weight_sync_master_address: a bare IP address or host name another machine can connect to
    (no scheme, no port: the port is picked per group), and only where it is used. Whether it is
    an address of this machine is checked when the Trainer starts (it may be built elsewhere)."""
    address = c.weight_sync_master_address
    if address is None:
        return
    flag = "weight_sync_master_address (--weight-sync-master-address)"
    if c.weight_sync_method != "distributed":
        raise ConfigError(
            f"{flag} is set but weight_sync_method is {c.weight_sync_method!r}: the address is used only by "
            "--weight-sync-method distributed"
        )
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is None and not _HOSTNAME.fullmatch(address):
        raise ConfigError(
            f"{flag}: {address!r} is not an IP address or host name (no scheme and no port: e.g. 10.0.0.1)"
        )
    if ip is not None and (ip.is_unspecified or ip.is_multicast):
        raise ConfigError(
            f"{flag}: {address!r} is not an address the servers can connect to; name this machine's address "
            "on their network"
        )


def _validate_lora(c: Config) -> None:
    """Miles's LoRA flags (miles/utils/arguments.py) and what this SDK runs them with."""
    if c.lora_rank < 0:
        raise ConfigError(f"lora_rank (--lora-rank) must be >= 0 (0: no LoRA), got {c.lora_rank}")
    if not 0.0 <= c.lora_dropout < 1.0:
        raise ConfigError(f"lora_dropout (--lora-dropout) must be in [0, 1), got {c.lora_dropout}")
    if c.lora_rank == 0:
        # (target_modules alone is ignored, as in Miles; an adapter that would not load is an error.)
        if c.lora_adapter_path is not None:
            raise ConfigError(
                f"lora_adapter_path (--lora-adapter-path) {c.lora_adapter_path!r} is set but lora_rank "
                "(--lora-rank) is 0: set --lora-rank (the adapter's rank) to train from it"
            )
        return
    if c.lora_alpha <= 0:
        raise ConfigError(f"lora_alpha (--lora-alpha) must be > 0, got {c.lora_alpha}")
    if not c.target_modules:
        raise ConfigError(
            "target_modules (--target-modules) is required with lora_rank (--lora-rank), as in Miles: "
            "all-linear, or a comma-separated list such as q_proj,k_proj,v_proj,o_proj"
        )
    if c.train_backend != "torch":
        raise ConfigError(
            f"lora_rank (--lora-rank) with train_backend={c.train_backend!r} is not supported; "
            "LoRA runs with train_backend='torch'"
        )
    if c.advantage_estimator == "ppo":
        raise ConfigError(
            "lora_rank (--lora-rank) with advantage_estimator='ppo' (a critic) is not supported; "
            "use grpo, gspo or reinforce_plus_plus with LoRA"
        )


def _validate_ranges(c: Config) -> None:
    for name, low, high, low_in, high_in in _RANGES:
        value = getattr(c, name, None)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value):
            raise ConfigError(f"{name} ({flag}) must be a finite number, got {value}")
        too_low = low is not None and (value < low if low_in else value <= low)
        too_high = high is not None and (value > high if high_in else value >= high)
        if too_low or too_high:
            raise ConfigError(
                f"{name} ({flag}) must be {_range_text(low, high, low_in, high_in)}, got {value}"
            )
    for name in ("entropy_coef", "eps_clip", "rollout_temperature", "rollout_top_p"):
        value = getattr(c, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} (--{name.replace('_', '-')}) must be a finite number, got {value}")
    top_k = getattr(c, "rollout_top_k", -1)
    if not (top_k == -1 or top_k >= 1):
        raise ConfigError(f"rollout_top_k (--rollout-top-k) must be -1 (off) or >= 1, got {top_k}")


def _range_text(low: float | None, high: float | None, low_in: bool, high_in: bool) -> str:
    if low is not None and high is not None:
        return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
    if low is not None:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"{'<=' if high_in else '<'} {high:g}"
