"""miles_sdk: typed RL post-training of LLMs (GRPO, PPO and variants) on Miles semantics.

Implement the hook Protocols (``RewardModel``, ``GenerateFn``, ``DataSource``, ``LossFn``, ...) as
plain functions or classes, pass them to a :class:`Trainer`, and call ``fit()``.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from miles_sdk.config import Config, ConfigError
from miles_sdk.engines.base import EngineOutput, FinishReason, InferenceEngine, SamplingParams
from miles_sdk.hooks import (
    BackendInitFn,
    BatchedRewardFn,
    BatchedRewardModel,
    BeforeLogProbHookFn,
    BeforeTrainStepHookFn,
    BufferFilterFn,
    ConvertSamplesToTrainDataFn,
    DataSource,
    DataSourceFactory,
    DynamicSamplingFilterFn,
    EvalFn,
    EvalRolloutLogFn,
    GenerateFn,
    LossFn,
    LossReducer,
    ModelProviderFn,
    PGLossReducer,
    PostSaveHookFn,
    RewardFn,
    RewardModel,
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
from miles_sdk.loading import HookLoadError, HookSignatureError, load_hook
from miles_sdk.stages import MicroBatch, PolicyOutputs, Rollout, StageDataError, TrainBatch
from miles_sdk.types import (
    DynamicFilterOutput,
    Metrics,
    RolloutFnEvalOutput,
    RolloutFnTrainOutput,
    Sample,
    TrainData,
)

if _TYPE_CHECKING:
    from miles_sdk.trainer import Trainer

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The Trainer (engines, backends, the loop) loads on first use, so ``import miles_sdk.algo``
    # or ``miles_sdk.stages`` stays pure math and types.
    if name == "Trainer":
        from miles_sdk.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'miles_sdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Trainer"})


__all__ = [
    "BackendInitFn",
    "BatchedRewardFn",
    "BatchedRewardModel",
    "BeforeLogProbHookFn",
    "BeforeTrainStepHookFn",
    "BufferFilterFn",
    "Config",
    "ConfigError",
    "ConvertSamplesToTrainDataFn",
    "DataSource",
    "DataSourceFactory",
    "DynamicFilterOutput",
    "DynamicSamplingFilterFn",
    "EngineOutput",
    "EvalFn",
    "EvalRolloutLogFn",
    "FinishReason",
    "GenerateFn",
    "HookLoadError",
    "HookSignatureError",
    "InferenceEngine",
    "LossFn",
    "LossReducer",
    "Metrics",
    "MicroBatch",
    "ModelProviderFn",
    "PGLossReducer",
    "PolicyOutputs",
    "PostSaveHookFn",
    "RewardFn",
    "RewardModel",
    "RewardPostProcessFn",
    "Rollout",
    "RolloutAllSamplesProcessFn",
    "RolloutDataPostprocessFn",
    "RolloutFn",
    "RolloutFnEvalOutput",
    "RolloutFnTrainOutput",
    "RolloutLogFn",
    "RolloutSampleFilterFn",
    "RouterMiddleware",
    "Sample",
    "SamplingParams",
    "StageDataError",
    "TISFn",
    "TrainBatch",
    "TrainBatchPostprocessFn",
    "TrainData",
    "Trainer",
    "load_hook",
]
