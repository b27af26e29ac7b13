"""Type-level tests of the hook Protocols (checked by mypy --strict, never run).

Positive cases: Miles-style hook functions assign to their Protocol. Negative cases carry
``# type: ignore[code]``; with warn_unused_ignores, a negative case that stops failing breaks CI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, assert_type

import torch

from miles_sdk import (
    BackendInitFn,
    BatchedRewardModel,
    BeforeLogProbHookFn,
    BeforeTrainStepHookFn,
    BufferFilterFn,
    Config,
    ConvertSamplesToTrainDataFn,
    DataSource,
    DataSourceFactory,
    DynamicFilterOutput,
    DynamicSamplingFilterFn,
    EvalRolloutLogFn,
    GenerateFn,
    LossFn,
    Metrics,
    ModelProviderFn,
    PGLossReducer,
    PostSaveHookFn,
    RewardModel,
    RewardPostProcessFn,
    RolloutAllSamplesProcessFn,
    RolloutDataPostprocessFn,
    RolloutFn,
    RolloutFnTrainOutput,
    RolloutLogFn,
    RolloutSampleFilterFn,
    RouterMiddleware,
    Sample,
    SamplingParams,
    TISFn,
    TrainData,
)

# ---- Rollout --------------------------------------------------------------------------------


def generate_rollout(
    args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False
) -> RolloutFnTrainOutput:
    return RolloutFnTrainOutput(samples=data_source.get_samples(args.rollout_batch_size))


async def async_rollout(
    args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False
) -> RolloutFnTrainOutput:
    return RolloutFnTrainOutput(samples=[])


rollout_ok: RolloutFn = generate_rollout
rollout_async_ok: RolloutFn = async_rollout


def rollout_missing_source(args: Config, rollout_id: int) -> RolloutFnTrainOutput:
    return RolloutFnTrainOutput(samples=[])


rollout_bad: RolloutFn = rollout_missing_source  # type: ignore[assignment]


async def custom_generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    return sample


async def multi_agent_generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> list[Sample]:
    return [sample]


generate_ok: GenerateFn = custom_generate
generate_list_ok: GenerateFn = multi_agent_generate


def sync_generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    return sample


generate_bad: GenerateFn = sync_generate  # type: ignore[assignment]


class MySource:
    def __init__(self, args: Config) -> None:
        self.args = args

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        return []

    def add_samples(self, samples: list[list[Sample]]) -> None: ...

    def save(self, rollout_id: int) -> None: ...

    def load(self, rollout_id: int | None = None) -> None: ...


source_ok: DataSource = MySource(Config())
factory_ok: DataSourceFactory = MySource


class BrokenSource:
    def get_samples(self) -> list[list[Sample]]:
        return []


source_bad: DataSource = BrokenSource()  # type: ignore[assignment]

# ---- Reward ---------------------------------------------------------------------------------


async def custom_rm(args: Config, sample: Sample) -> float:
    return 1.0


async def dict_rm(args: Config, sample: Sample) -> dict[str, Any]:
    return {"score": 1.0}


async def batched_rm(args: Config, samples: list[Sample]) -> list[float]:
    return [1.0 for _ in samples]


rm_ok: RewardModel = custom_rm
rm_dict_ok: RewardModel = dict_rm
batched_ok: BatchedRewardModel = batched_rm


async def rm_returns_str(args: Config, sample: Sample) -> str:
    return "1"


rm_bad: RewardModel = rm_returns_str  # type: ignore[assignment]


async def rm_without_args(sample: Sample) -> float:
    return 1.0


rm_no_args_bad: RewardModel = rm_without_args  # type: ignore[assignment]
batched_bad: BatchedRewardModel = custom_rm  # type: ignore[assignment]


# A plain def reward runs in a thread pool (TRL's form); it type-checks like the async one.
def sync_rm(args: Config, sample: Sample) -> float:
    return 1.0


def sync_batched_rm(args: Config, samples: list[Sample]) -> list[float]:
    return [1.0 for _ in samples]


def sync_rm_returns_str(args: Config, sample: Sample) -> str:
    return "1"


sync_rm_ok: RewardModel = sync_rm
sync_batched_ok: BatchedRewardModel = sync_batched_rm
sync_rm_bad: RewardModel = sync_rm_returns_str  # type: ignore[assignment]
sync_batched_bad: BatchedRewardModel = sync_rm  # type: ignore[assignment]
sync_rm_wrong_args: RewardModel = sync_batched_rm  # type: ignore[assignment]


def post_process(args: Config, samples: list[Sample]) -> tuple[list[float], list[float]]:
    return [0.0], [0.0]


post_ok: RewardPostProcessFn = post_process


def post_process_bad(args: Config, samples: list[Sample]) -> list[float]:
    return []


post_bad: RewardPostProcessFn = post_process_bad  # type: ignore[assignment]

# ---- Filtering ------------------------------------------------------------------------------


def check_std(args: Config, samples: list[Sample], **kwargs: Any) -> DynamicFilterOutput:
    return DynamicFilterOutput(keep=True)


def bool_filter(args: Config, samples: list[Sample], **kwargs: Any) -> bool:
    return True


dyn_ok: DynamicSamplingFilterFn = check_std
dyn_bool_ok: DynamicSamplingFilterFn = bool_filter


def dyn_wrong(args: Config, samples: list[Sample], **kwargs: Any) -> str:
    return "keep"


dyn_bad: DynamicSamplingFilterFn = dyn_wrong  # type: ignore[assignment]


def pop_first(
    args: Config, rollout_id: int | None, buffer: list[list[Sample]], num_samples: int
) -> list[list[Sample]]:
    return buffer[:num_samples]


buffer_ok: BufferFilterFn = pop_first
buffer_bad: BufferFilterFn = check_std  # type: ignore[assignment]


def sample_filter(args: Config, data: list[list[Sample]]) -> None: ...


def all_samples(args: Config, all_samples: list[list[Sample]], data_source: DataSource) -> None: ...


def data_postprocess(args: Config, rollout_data: dict[str, Any]) -> None: ...


sample_filter_ok: RolloutSampleFilterFn = sample_filter
all_ok: RolloutAllSamplesProcessFn = all_samples
post_data_ok: RolloutDataPostprocessFn = data_postprocess
all_bad: RolloutAllSamplesProcessFn = sample_filter  # type: ignore[assignment]

# ---- Training -------------------------------------------------------------------------------


def my_loss(
    args: Config,
    batch: dict[str, Any],
    logits: torch.Tensor,
    sum_of_sample_mean: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = sum_of_sample_mean(logits.mean(-1).flatten())
    return loss, {"loss": loss.detach()}


loss_ok: LossFn = my_loss


def loss_without_reducer(args: Config, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
    return logits.sum()


loss_bad: LossFn = loss_without_reducer  # type: ignore[assignment]


def my_tis(
    args: Config,
    pg_loss: torch.Tensor,
    train_log_probs: list[torch.Tensor],
    rollout_log_probs: list[torch.Tensor],
    loss_masks: list[torch.Tensor],
    total_lengths: list[int],
    response_lengths: list[int],
    **kwargs: Any,
) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
    return pg_loss, loss_masks, {}


tis_ok: TISFn = my_tis
tis_bad: TISFn = my_loss  # type: ignore[assignment]


def get_pg_loss_reducer(
    total_lengths: list[int],
    response_lengths: list[int],
    loss_masks: list[torch.Tensor],
    calculate_per_token_loss: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x.sum() / 1000.0


reducer_ok: PGLossReducer = get_pg_loss_reducer
assert_type(reducer_ok([1], [1], [torch.ones(1)], False), Callable[[torch.Tensor], torch.Tensor])


def reducer_returns_tensor(
    total_lengths: list[int],
    response_lengths: list[int],
    loss_masks: list[torch.Tensor],
    calculate_per_token_loss: bool = False,
) -> torch.Tensor:
    return torch.zeros(())


reducer_bad: PGLossReducer = reducer_returns_tensor  # type: ignore[assignment]


def convert(args: Config, samples: list[Sample]) -> TrainData:
    raise NotImplementedError


convert_ok: ConvertSamplesToTrainDataFn = convert
convert_bad: ConvertSamplesToTrainDataFn = post_process  # type: ignore[assignment]

# ---- Backend hooks ----------------------------------------------------------------------------


def init_hook(args: Config) -> None: ...


def before_log_prob(args: Config, model: torch.nn.Module, store_prefix: str) -> None: ...


def before_train_step(
    args: Config,
    rollout_id: int,
    step_id: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    opt_param_scheduler: Any,
) -> None: ...


def post_save(args: Config, rollout_id: int, checkpoint_dir: str, hf_dir: str | None) -> None: ...


init_ok: BackendInitFn = init_hook
before_lp_ok: BeforeLogProbHookFn = before_log_prob
before_step_ok: BeforeTrainStepHookFn = before_train_step
post_save_ok: PostSaveHookFn = post_save
before_step_bad: BeforeTrainStepHookFn = before_log_prob  # type: ignore[assignment]
init_bad: BackendInitFn = post_save  # type: ignore[assignment]

# ---- Logging ----------------------------------------------------------------------------------


def log_rollout(
    rollout_id: int,
    args: Config,
    samples: list[Sample],
    rollout_extra_metrics: Metrics | None,
    rollout_time: float,
) -> bool:
    return False


def log_eval(rollout_id: int, args: Config, data: dict[str, Any], extra_metrics: Metrics | None) -> bool:
    return True


log_ok: RolloutLogFn = log_rollout
eval_log_ok: EvalRolloutLogFn = log_eval
log_bad: RolloutLogFn = log_eval  # type: ignore[assignment]

# ---- Routing and model ------------------------------------------------------------------------


async def cache_middleware(
    request: dict[str, Any], call_next: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    return await call_next(request)


middleware_ok: RouterMiddleware = cache_middleware
middleware_bad: RouterMiddleware = log_eval  # type: ignore[assignment]


def model_provider(pre_process: bool, post_process: bool, vp_stage: int | None = None) -> torch.nn.Module:
    return torch.nn.Linear(1, 1)


provider_ok: ModelProviderFn = model_provider
provider_bad: ModelProviderFn = init_hook  # type: ignore[assignment]

# ---- The Trainer's hook arguments are typed by their Protocols ------------------------------------


def build_trainers() -> None:
    from miles_sdk import Trainer

    Trainer(
        Config(),
        reward_model=custom_rm,
        dynamic_sampling_filter=check_std,
        pg_loss_reducer=get_pg_loss_reducer,
        generate_fn=custom_generate,
        rollout_log_fn=log_rollout,
        data_source=MySource,
    )
    Trainer(Config(group_rm=True), batched_reward_model=batched_rm)
    Trainer(Config(), reward_model=rm_returns_str)  # type: ignore[arg-type]
    Trainer(Config(), reward_model=rm_without_args)  # type: ignore[arg-type]
    # One keyword per form: the batched reward goes to batched_reward_model, even with group_rm.
    Trainer(Config(group_rm=True), reward_model=batched_rm)  # type: ignore[arg-type]
    Trainer(Config(), batched_reward_model=custom_rm)  # type: ignore[arg-type]
    # Each hook keyword is its bare Protocol (so mypy can print the expected signature): leave a
    # hook out rather than pass None.
    Trainer(Config(), reward_model=None)  # type: ignore[arg-type]
    Trainer(Config(), generate_fn=sync_generate)  # type: ignore[arg-type]
    Trainer(Config(), dynamic_sampling_filter=dyn_wrong)  # type: ignore[arg-type]
    Trainer(Config(), pg_loss_reducer=reducer_returns_tensor)  # type: ignore[arg-type]
    Trainer(Config(), rewardmodel=custom_rm)  # type: ignore[call-arg]
