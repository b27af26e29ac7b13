"""miles_sdk: typed RL post-training of LLMs (GRPO, PPO and variants) on Miles semantics.

Implement the hook Protocols (``RewardModel``, ``GenerateFn``, ``DataSource``, ``LossFn``, ...) as
plain functions or classes, pass them to a :class:`Trainer`, and call ``fit()``.
"""

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
)
from miles_sdk.loading import HookLoadError, HookSignatureError, load_hook
from miles_sdk.trainer import Trainer
from miles_sdk.types import (
    DynamicFilterOutput,
    Metrics,
    RolloutFnEvalOutput,
    RolloutFnTrainOutput,
    Sample,
    TrainData,
)

__version__ = "0.1.0"

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
    "ModelProviderFn",
    "PGLossReducer",
    "PostSaveHookFn",
    "RewardFn",
    "RewardModel",
    "RewardPostProcessFn",
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
    "TISFn",
    "TrainData",
    "Trainer",
    "load_hook",
]
