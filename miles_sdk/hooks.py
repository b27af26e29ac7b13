"""Every user hook of Miles's hook table, as a typed Protocol.

Grouped as the table is: Rollout, Reward, Filtering, Training, Backend hooks, Logging, Routing,
Model. Callback parameters are positional-only (``/``) where Miles passes them positionally, so a
user may name theirs freely; ``args`` is always the :class:`~miles_sdk.config.Config`.

A plain function matches a Protocol structurally; so a Miles hook file type-checks unchanged. At
``Trainer(...)`` construction each hook is also checked at run time (callable, sync/async,
arity): see :mod:`miles_sdk.loading`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import torch

from miles_sdk.types import (
    DynamicFilterOutput,
    EvalDatasetResult,
    Metrics,
    Prompt,
    RewardValue,
    RolloutFnEvalOutput,
    RolloutFnTrainOutput,
    Sample,
    TrainData,
)

if TYPE_CHECKING:
    from miles_sdk.config import Config
    from miles_sdk.engines.base import SamplingParams
    from miles_sdk.stages import TrainBatch

__all__ = [
    "AgentFn",
    "BackendInitFn",
    "BatchedRewardFn",
    "BatchedRewardModel",
    "BeforeLogProbHookFn",
    "BeforeTrainStepHookFn",
    "BufferFilterFn",
    "ConvertSamplesToTrainDataFn",
    "DataSource",
    "DataSourceFactory",
    "DynamicSamplingFilterFn",
    "EvalFn",
    "EvalRolloutLogFn",
    "GenerateFn",
    "LossFn",
    "LossReducer",
    "ModelProviderFn",
    "PGLossReducer",
    "PostSaveHookFn",
    "RewardFn",
    "RewardModel",
    "RewardPostProcessFn",
    "RolloutAllSamplesProcessFn",
    "RolloutDataPostprocessFn",
    "RolloutFn",
    "RolloutLogFn",
    "RolloutOutput",
    "RolloutSampleFilterFn",
    "RouterMiddleware",
    "RouterRequest",
    "RouterResponse",
    "TISFn",
    "TISResult",
    "TrainBatchPostprocessFn",
]

# =============================================================================================
# Rollout
# =============================================================================================

RolloutOutput: TypeAlias = RolloutFnTrainOutput | RolloutFnEvalOutput


class RolloutFn(Protocol):
    """``--rollout-function-path``: the whole rollout of one step.

    Runs once per rollout step (and, as the eval function, every ``eval_interval`` steps with
    ``evaluation=True``). It may pull any number of groups from ``data_source`` and return
    unfinished ones to it. The result is trained on (``RolloutFnTrainOutput``) or logged as eval
    results (``RolloutFnEvalOutput``). Sync or async.
    """

    def __call__(
        self, args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False, /
    ) -> RolloutOutput | Awaitable[RolloutOutput]: ...


EvalFn: TypeAlias = RolloutFn
"""``--eval-function-path``: same signature as the rollout function, called with ``evaluation=True``."""


class GenerateFn(Protocol):
    """``--custom-generate-function-path``: one sample's generation inside the default rollout.

    Runs once per sample, concurrently with the others, under ``sglang_server_concurrency``. It
    fills ``tokens``, ``response``, ``response_length``, ``loss_mask``, ``rollout_log_probs`` and
    ``status`` (use :func:`miles_sdk.rollout.generate_with_engine` to call the engine). It may
    return several samples (multi-agent); a list is scored in one batched reward call. Samples
    returned without a reward are scored afterwards.
    """

    def __call__(
        self, args: Config, sample: Sample, sampling_params: SamplingParams, /
    ) -> Awaitable[Sample | list[Sample]]: ...


class AgentFn(Protocol):
    """``--custom-agent-function-path``: an agent that talks to the policy through the OpenAI chat API.

    Runs once per sample inside :func:`miles_sdk.agents.generate_with_agent`, called with keywords
    (Miles's contract). ``base_url`` is a session of the loopback chat endpoint: an ``openai``
    client uses ``AsyncOpenAI(base_url=base_url + "/v1", api_key="-")``; every call on it is recorded
    token for token and trained on. ``request_kwargs`` are the rollout's sampling settings as
    ``chat.completions.create`` keywords; ``metadata`` is the sample's. The returned dict (or None)
    is merged into the sample's metadata for the reward function. Must be async and must not
    block the event loop (use ``AsyncOpenAI``, not ``OpenAI``).
    """

    def __call__(
        self, *, base_url: str, prompt: Prompt, request_kwargs: dict[str, Any], metadata: dict[str, Any]
    ) -> Awaitable[dict[str, Any] | None]: ...


@runtime_checkable
class DataSource(Protocol):
    """``--data-source-path``: where prompt groups come from, with a buffer for returned groups.

    ``get_samples`` runs at the start of each rollout (and on every over-sampling refill);
    ``add_samples`` takes groups back (partial rollout); ``save``/``load`` run with checkpoints.
    """

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        """``num_samples`` groups of ``n_samples_per_prompt`` fresh samples each."""
        ...

    def add_samples(self, samples: list[list[Sample]]) -> None:
        """Return groups to the buffer; they are served before new prompts."""
        ...

    def save(self, rollout_id: int) -> None:
        """Persist position, epoch and buffer for ``rollout_id``."""
        ...

    def load(self, rollout_id: int | None = None) -> None:
        """Restore the state saved for ``rollout_id`` (latest when None)."""
        ...


class DataSourceFactory(Protocol):
    """What ``--data-source-path`` names: a class (or factory) built from ``args``."""

    def __call__(self, args: Config, /) -> DataSource: ...


# =============================================================================================
# Reward
# =============================================================================================


class RewardFn(Protocol):
    """``--custom-rm-path``: score one sample.

    Runs once per generated sample that has no reward yet and was not aborted. It must not edit
    the sample. The result becomes ``sample.reward``: a float, or a dict read through
    ``reward_key``. Raising, timing out (``reward_timeout``), NaN or a wrong type marks the sample
    FAILED with the reason; it is never turned into 0.

    ``async def`` (Miles's form) runs on the rollout's event loop: it must not block (a
    ``time.sleep`` or ``requests.get`` there stalls every other sample; the loop warns). A plain
    ``def`` runs in a thread pool, with ``reward_timeout`` applied.
    """

    def __call__(self, args: Config, sample: Sample, /) -> Awaitable[RewardValue] | RewardValue: ...


class BatchedRewardFn(Protocol):
    """``--custom-rm-path`` with ``--group-rm``: score a whole group (or a generate function's
    list) in one call. Returns one reward per sample, in order. ``async def`` or plain ``def``,
    as for :class:`RewardFn`."""

    def __call__(
        self, args: Config, samples: list[Sample], /
    ) -> Awaitable[Sequence[RewardValue]] | Sequence[RewardValue]: ...


RewardModel: TypeAlias = RewardFn
"""The reward hook a ``Trainer`` takes as ``reward_model=``."""
BatchedRewardModel: TypeAlias = BatchedRewardFn


class RewardPostProcessFn(Protocol):
    """``--custom-reward-post-process-path``: turn rewards into the values trained on.

    Runs once per step on all kept samples (flattened, ``remove_sample`` ones included). Returns
    ``(raw_rewards, rewards)``: the raw ones are logged, the second are trained on. Default: GRPO
    group normalisation.
    """

    def __call__(self, args: Config, samples: list[Sample], /) -> tuple[list[float], list[float]]: ...


# =============================================================================================
# Filtering
# =============================================================================================


class DynamicSamplingFilterFn(Protocol):
    """``--dynamic-sampling-filter-path``: keep or drop one finished, scored group (DAPO).

    Runs once per finished group during over-sampling. Dropped groups are counted under
    ``rollout/dynamic_filter/drop_{reason}`` and more prompts are drawn until
    ``rollout_batch_size`` groups are kept. A bare bool is accepted as the result.
    """

    def __call__(self, args: Config, samples: list[Sample], /) -> DynamicFilterOutput | bool: ...


class BufferFilterFn(Protocol):
    """``--buffer-filter-path``: choose which buffered groups to serve.

    Runs in ``get_samples`` when the buffer is non-empty. Returns up to ``num_samples`` groups;
    it must remove what it returns from ``buffer`` (default: ``pop_first``).
    """

    def __call__(
        self, args: Config, rollout_id: int | None, buffer: list[list[Sample]], num_samples: int, /
    ) -> list[list[Sample]]: ...


class RolloutSampleFilterFn(Protocol):
    """``--rollout-sample-filter-path``: per-sample loss filter, in place.

    Runs once per step after the rollout. Set ``sample.remove_sample = True`` to zero a sample's
    loss mask; such samples still count in reward normalisation.
    """

    def __call__(self, args: Config, data: list[list[Sample]], /) -> None: ...


class RolloutAllSamplesProcessFn(Protocol):
    """``--rollout-all-samples-process-path``: see every group of the rollout, dropped ones too.

    Runs once per step after the per-sample filter. For logging and analysis; its result is
    ignored.
    """

    def __call__(self, args: Config, all_samples: list[list[Sample]], data_source: DataSource, /) -> None: ...


class RolloutDataPostprocessFn(Protocol):
    """``--rollout-data-postprocess-path``: edit the batch after log-probs and advantages.

    Runs once per step, after the advantages and before the optimizer steps (where Miles runs
    it). ``rollout_data`` holds TrainData plus ``log_probs``, ``ref_log_probs``, ``advantages``,
    ``returns`` (per-sample tensors); it may edit ``loss_masks`` or any tensor in place. Miles's
    own form, ``postprocess(args)``, is accepted too.
    """

    def __call__(self, args: Config, rollout_data: dict[str, Any], /) -> None: ...


class TrainBatchPostprocessFn(Protocol):
    """The typed form of ``rollout_data_postprocess`` (same keyword, flag and place in the loop).

    It gets the frozen :class:`~miles_sdk.stages.TrainBatch` and returns the batch to train on
    (``attrs.evolve(batch, advantages=...)``). The Trainer tells it from Miles's dict form by the
    annotation of its second parameter: ``TrainBatch``.
    """

    def __call__(self, args: Config, batch: TrainBatch, /) -> TrainBatch: ...


# =============================================================================================
# Training
# =============================================================================================

LossReducer: TypeAlias = Callable[[torch.Tensor], torch.Tensor]
"""Reduces a flat per-token tensor (all response tokens of a micro-batch) to a scalar."""

TISResult: TypeAlias = tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]
"""``(pg_loss, loss_masks, metrics)`` from a TIS function."""


class LossFn(Protocol):
    """``--custom-loss-function-path`` (with ``loss_type=custom_loss``): the whole loss.

    Runs once per micro-batch. ``batch`` holds ``tokens``, ``unconcat_tokens``,
    ``response_lengths``, ``total_lengths``, ``loss_masks``, ``advantages``, ``log_probs``
    (old), ``ref_log_probs``, ``rollout_log_probs`` (lists of per-sample tensors). ``logits`` is
    ``[1, sum(total_lengths), V]`` float32 (packed sequences). Returns ``(loss, metrics)``; the
    loss is backpropagated, the metrics are logged under ``train/``.
    """

    def __call__(
        self,
        args: Config,
        batch: dict[str, Any],
        logits: torch.Tensor,
        sum_of_sample_mean: LossReducer,
        /,
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]: ...


class TISFn(Protocol):
    """``--custom-tis-function-path``: importance-sampling correction for train/inference mismatch.

    Called with keyword arguments once per micro-batch when ``use_tis`` or
    ``get_mismatch_metrics`` is set. ``pg_loss`` is the flat per-token policy loss; the log-probs
    and masks are per-sample lists. Returns ``(pg_loss, masks, metrics)``; the masks change the
    reducer's numerator only.
    """

    def __call__(
        self,
        *,
        args: Config,
        pg_loss: torch.Tensor,
        train_log_probs: list[torch.Tensor],
        rollout_log_probs: list[torch.Tensor],
        loss_masks: list[torch.Tensor],
        total_lengths: list[int],
        response_lengths: list[int],
        **kwargs: Any,
    ) -> TISResult: ...


class PGLossReducer(Protocol):
    """``--custom-pg-loss-reducer-function-path``: build the reducer for the policy-gradient loss.

    Called once per micro-batch; the returned callable reduces the flat per-token pg loss to the
    scalar that is backpropagated (Dr.GRPO: divide by a constant). Other metrics keep the default
    reducer.
    """

    def __call__(
        self,
        total_lengths: list[int],
        response_lengths: list[int],
        loss_masks: list[torch.Tensor],
        calculate_per_token_loss: bool = False,
        /,
    ) -> LossReducer: ...


class ConvertSamplesToTrainDataFn(Protocol):
    """``--custom-convert-samples-to-train-data-path``: samples -> TrainData.

    Runs once per step on the flattened kept samples. It replaces the default conversion,
    reward post-processing included, so it must fill ``rewards`` itself.
    """

    def __call__(self, args: Config, samples: list[Sample], /) -> TrainData: ...


# =============================================================================================
# Backend hooks (Miles's "Megatron hooks"; the torch backend calls them too)
# =============================================================================================


class BackendInitFn(Protocol):
    """``--custom-megatron-init-path``: runs once after the training backend is built."""

    def __call__(self, args: Config, /) -> None: ...


class BeforeLogProbHookFn(Protocol):
    """``--custom-megatron-before-log-prob-hook-path``: runs before each log-prob pass.

    ``store_prefix`` is "" (old policy), "ref_" (reference) or "teacher_". ``model`` is the
    module about to be evaluated; it may be probed or modified.
    """

    def __call__(self, args: Config, model: torch.nn.Module, store_prefix: str, /) -> None: ...


class BeforeTrainStepHookFn(Protocol):
    """``--custom-megatron-before-train-step-hook-path``: runs before each optimizer step."""

    def __call__(
        self,
        args: Config,
        rollout_id: int,
        step_id: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        opt_param_scheduler: torch.optim.lr_scheduler.LRScheduler,
        /,
    ) -> None: ...


class PostSaveHookFn(Protocol):
    """``--custom-megatron-post-save-hook-path``: runs after each checkpoint is written."""

    def __call__(self, args: Config, rollout_id: int, checkpoint_dir: str, hf_dir: str | None, /) -> None: ...


# =============================================================================================
# Logging
# =============================================================================================


class RolloutLogFn(Protocol):
    """``--custom-rollout-log-function-path``: log one training rollout.

    Runs once per step after training. Return True to replace the default rollout logging,
    False to add to it.
    """

    def __call__(
        self,
        rollout_id: int,
        args: Config,
        samples: list[Sample],
        rollout_extra_metrics: Metrics | None,
        rollout_time: float,
        /,
    ) -> bool: ...


class EvalRolloutLogFn(Protocol):
    """``--custom-eval-rollout-log-function-path``: log one eval rollout. True replaces the
    default eval logging."""

    def __call__(
        self,
        rollout_id: int,
        args: Config,
        data: dict[str, EvalDatasetResult],
        extra_metrics: Metrics | None,
        /,
    ) -> bool: ...


# =============================================================================================
# Routing
# =============================================================================================

RouterRequest: TypeAlias = dict[str, Any]
"""An SGLang /generate payload: ``{"input_ids": [...], "sampling_params": {...}, ...}``."""
RouterResponse: TypeAlias = dict[str, Any]
"""An SGLang /generate reply: ``{"text", "output_ids", "meta_info": {...}}``."""


class RouterMiddleware(Protocol):
    """``--miles-router-middleware-paths``: wraps each generate request on its way to an engine.

    Called once per request with the request and ``call_next``; it may transform the request,
    answer from a cache without calling ``call_next``, or transform the response.
    """

    def __call__(
        self, request: RouterRequest, call_next: Callable[[RouterRequest], Awaitable[RouterResponse]], /
    ) -> Awaitable[RouterResponse]: ...


# =============================================================================================
# Model
# =============================================================================================


class ModelProviderFn(Protocol):
    """``--custom-model-provider-path``: build the (Megatron) model.

    Called once per pipeline stage when the backend is built; the torch backend calls it with
    ``pre_process=post_process=True`` and expects a ``torch.nn.Module`` causal LM.
    """

    def __call__(
        self, pre_process: bool, post_process: bool, vp_stage: int | None = None, /
    ) -> torch.nn.Module: ...
