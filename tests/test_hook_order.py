"""Every hook of the table is called, in the documented order, with the documented arguments,
during ``fit()`` with eval and save on. Each recording hook is typed as its Protocol."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from miles_sdk import (
    BackendInitFn,
    BeforeLogProbHookFn,
    BeforeTrainStepHookFn,
    BufferFilterFn,
    Config,
    ConvertSamplesToTrainDataFn,
    DataSource,
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
    RolloutFnEvalOutput,
    RolloutFnTrainOutput,
    RolloutLogFn,
    RolloutSampleFilterFn,
    RouterMiddleware,
    Sample,
    SamplingParams,
    TISFn,
    TrainData,
    Trainer,
    algo,
)
from miles_sdk.data import RolloutDataSourceWithBuffer, pop_first
from miles_sdk.rollout import generate_with_engine, sampling_params_from_args
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]

# Phase of each event within one step; events of a step must come in non-decreasing phase order.
# (tis and the reducer repeat per micro-batch, so they share a phase.)
PHASES = {
    "get_samples": 0,
    "buffer_filter": 0,
    "generate": 1,
    "reward": 1,
    "dynamic_filter": 1,
    "sample_filter": 2,
    "all_samples_process": 3,
    "reward_post_process": 4,
    "before_log_prob:": 5,
    "before_log_prob:ref_": 6,
    "rollout_data_postprocess": 7,
    "before_train_step": 8,
    "tis": 9,
    "pg_loss_reducer": 9,
    "rollout_log": 11,
    "eval:generate": 12,
    "eval:reward": 12,
    "eval_rollout_log": 13,
    "post_save": 14,
}


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.evaluating = False

    def __call__(self, name: str) -> None:
        self.events.append(f"eval:{name}" if self.evaluating and name in ("generate", "reward") else name)


def _eval_file(tmp_path: Path) -> str:
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n")
    return str(path)


def test_default_rollout_calls_every_hook_in_order(tmp_path: Path) -> None:
    rec = Recorder()
    model, tok = tiny_policy("unit", seed=0)
    cfg = small_config(
        output_dir=str(tmp_path / "out"),
        num_rollout=2,
        use_tis=True,
        use_kl_loss=True,
        kl_loss_coef=0.01,
        eval_interval=1,
        skip_eval_before_train=True,
        eval_prompt_data=["tiny", _eval_file(tmp_path)],
        save=str(tmp_path / "ckpt"),
        save_interval=1,
    )

    async def generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
        rec("generate")
        assert sampling_params["max_new_tokens"] == args.rollout_max_response_len
        return await generate_with_engine(args, sample, sampling_params)

    async def reward(args: Config, sample: Sample) -> float:
        rec("reward")
        assert sample.response_length > 0 or sample.status is Sample.Status.TRUNCATED
        return float((sample.index or 0) % 2)

    def dynamic_filter(args: Config, samples: list[Sample]) -> DynamicFilterOutput:
        rec("dynamic_filter")
        assert len(samples) == args.n_samples_per_prompt and all(s.reward is not None for s in samples)
        return DynamicFilterOutput(keep=True)

    def buffer_filter(
        args: Config, rollout_id: int | None, buffer: list[list[Sample]], num_samples: int
    ) -> list[list[Sample]]:
        rec("buffer_filter")
        return pop_first(args, rollout_id, buffer, num_samples)

    def sample_filter(args: Config, data: list[list[Sample]]) -> None:
        rec("sample_filter")
        data[0][0].remove_sample = True

    def all_samples_process(args: Config, all_samples: list[list[Sample]], data_source: DataSource) -> None:
        rec("all_samples_process")
        assert data_source is source

    def reward_post(args: Config, samples: list[Sample]) -> tuple[list[float], list[float]]:
        rec("reward_post_process")
        assert any(s.remove_sample for s in samples)  # removed samples still count in normalisation
        return algo.grpo_reward_post_process(args, samples)

    def data_postprocess(args: Config, rollout_data: dict[str, Any]) -> None:
        rec("rollout_data_postprocess")
        assert len(rollout_data["log_probs"]) == len(rollout_data["tokens"])
        assert rollout_data["ref_log_probs"] is not None
        assert len(rollout_data["advantages"]) == len(rollout_data["tokens"])  # after advantages, as Miles

    def tis(
        *,
        args: Config,
        pg_loss: torch.Tensor,
        train_log_probs: list[torch.Tensor],
        rollout_log_probs: list[torch.Tensor],
        loss_masks: list[torch.Tensor],
        total_lengths: list[int],
        response_lengths: list[int],
        **kwargs: Any,
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        rec("tis")
        assert pg_loss.numel() == sum(response_lengths)
        return algo.vanilla_tis_function(
            args=args,
            pg_loss=pg_loss,
            train_log_probs=train_log_probs,
            rollout_log_probs=rollout_log_probs,
            loss_masks=loss_masks,
            total_lengths=total_lengths,
            response_lengths=response_lengths,
        )

    def reducer(
        total_lengths: list[int],
        response_lengths: list[int],
        loss_masks: list[torch.Tensor],
        calculate_per_token_loss: bool = False,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        rec("pg_loss_reducer")
        return algo.get_sum_of_sample_mean(  # Miles's convention for reducer hooks: sums
            total_lengths, response_lengths, loss_masks, calculate_per_token_loss, reduction="sum"
        )

    def backend_init(args: Config) -> None:
        rec("backend_init")

    def before_log_prob(args: Config, model: torch.nn.Module, store_prefix: str) -> None:
        rec(f"before_log_prob:{store_prefix}")

    def before_train_step(
        args: Config,
        rollout_id: int,
        step_id: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        opt_param_scheduler: Any,
    ) -> None:
        rec("before_train_step")
        assert step_id == rollout_id  # one optimizer step per rollout here

    def post_save(args: Config, rollout_id: int, checkpoint_dir: str, hf_dir: str | None) -> None:
        rec("post_save")
        assert Path(checkpoint_dir).is_dir() and hf_dir is None

    def rollout_log(
        rollout_id: int,
        args: Config,
        samples: list[Sample],
        rollout_extra_metrics: Metrics | None,
        rollout_time: float,
    ) -> bool:
        rec("rollout_log")
        assert rollout_extra_metrics is not None and "train/loss" in rollout_extra_metrics
        rec.evaluating = True  # what follows in this step is the eval rollout
        return False

    def eval_log(rollout_id: int, args: Config, data: dict[str, Any], extra_metrics: Metrics | None) -> bool:
        rec("eval_rollout_log")
        assert set(data) == {"tiny"} and len(data["tiny"]["rewards"]) == 2
        rec.evaluating = False
        return False

    typed_hooks: dict[str, Any] = {}
    generate_fn: GenerateFn = generate
    reward_model: RewardModel = reward
    dyn: DynamicSamplingFilterFn = dynamic_filter
    buf: BufferFilterFn = buffer_filter
    sample_f: RolloutSampleFilterFn = sample_filter
    all_p: RolloutAllSamplesProcessFn = all_samples_process
    post: RewardPostProcessFn = reward_post
    data_pp: RolloutDataPostprocessFn = data_postprocess
    tis_fn: TISFn = tis
    red: PGLossReducer = reducer
    init: BackendInitFn = backend_init
    blp: BeforeLogProbHookFn = before_log_prob
    bts: BeforeTrainStepHookFn = before_train_step
    ps: PostSaveHookFn = post_save
    rl: RolloutLogFn = rollout_log
    el: EvalRolloutLogFn = eval_log
    typed_hooks.update(
        generate_fn=generate_fn,
        reward_model=reward_model,
        dynamic_sampling_filter=dyn,
        rollout_sample_filter=sample_f,
        rollout_all_samples_process=all_p,
        reward_post_process=post,
        rollout_data_postprocess=data_pp,
        tis_fn=tis_fn,
        pg_loss_reducer=red,
        backend_init=init,
        before_log_prob_hook=blp,
        before_train_step_hook=bts,
        post_save_hook=ps,
        rollout_log_fn=rl,
        eval_rollout_log_fn=el,
    )

    class RecordingSource(RolloutDataSourceWithBuffer):
        def get_samples(self, num_samples: int) -> list[list[Sample]]:
            rec("get_samples")
            return super().get_samples(num_samples)

    source = RecordingSource(cfg, tokenizer=tok, dataset=ROWS, buffer_filter=buf)
    source.add_samples(source.get_samples(1))  # something in the buffer, so the buffer filter runs
    rec.events.clear()

    trainer = Trainer(cfg, model=model, tokenizer=tok, data_source=source, **typed_hooks)
    assert rec.events == ["backend_init"]
    rec.events.clear()
    boundaries: list[int] = []
    with_steps = trainer.fit()
    trainer.close()
    assert len(with_steps) == 2

    events = rec.events
    assert "buffer_filter" in events[:3]
    for name in PHASES:
        assert name in events, f"hook {name} was never called"
    # Split into steps at each get_samples that follows a post_save, then check phase order.
    step_start = 0
    for i, name in enumerate(events):
        if name == "post_save":
            boundaries.append(i + 1)
    assert len(boundaries) == 2
    for end in boundaries:
        phases = [PHASES[e] for e in events[step_start:end]]
        assert phases == sorted(phases), events[step_start:end]
        step_start = end


def test_replacement_hooks_called(tmp_path: Path) -> None:
    """The hooks that replace a whole stage: rollout, eval, convert, loss, model provider, middleware."""
    events: list[str] = []
    _, tok = tiny_policy("unit", seed=0)
    cfg = small_config(
        output_dir=str(tmp_path / "out"),
        num_rollout=2,
        loss_type="custom_loss",
        eval_interval=2,
        skip_eval_before_train=True,
        eval_prompt_data=["tiny", _eval_file(tmp_path)],
    )

    async def rollout(
        args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False
    ) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
        events.append("eval_fn" if evaluation else "rollout_fn")
        groups = data_source.get_samples(args.rollout_batch_size)
        params = sampling_params_from_args(args)
        for group in groups:
            for i, sample in enumerate(group):
                await generate_with_engine(args, sample, params)
                sample.reward = float(i % 2)
        if evaluation:
            flat = [s for g in groups for s in g]
            return RolloutFnEvalOutput(
                data={
                    "tiny": {
                        "rewards": [float(s.reward or 0.0) for s in flat],  # type: ignore[arg-type]
                        "truncated": [False] * len(flat),
                        "samples": flat,
                    }
                }
            )
        return RolloutFnTrainOutput(samples=groups)

    def convert(args: Config, samples: list[Sample]) -> TrainData:
        events.append("convert")
        return algo.convert_samples_to_train_data(args, samples)

    def loss(
        args: Config,
        batch: dict[str, Any],
        logits: torch.Tensor,
        sum_of_sample_mean: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        events.append("loss_fn")
        assert logits.dim() == 3 and logits.shape[1] == sum(batch["total_lengths"])
        value = logits.float().logsumexp(-1).mean()
        return value, {"custom": value.detach()}

    def provider(pre_process: bool, post_process: bool, vp_stage: int | None = None) -> torch.nn.Module:
        events.append("model_provider")
        assert pre_process and post_process
        return tiny_policy("unit", seed=0)[0]

    async def middleware(
        request: dict[str, Any], call_next: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        events.append("middleware")
        return await call_next(request)

    rollout_fn: RolloutFn = rollout
    convert_fn: ConvertSamplesToTrainDataFn = convert
    loss_fn: LossFn = loss
    provider_fn: ModelProviderFn = provider
    mw: RouterMiddleware = middleware
    trainer = Trainer(
        cfg,
        tokenizer=tok,
        dataset=ROWS,
        rollout_fn=rollout_fn,
        eval_fn=rollout_fn,
        convert_samples_to_train_data=convert_fn,
        loss_fn=loss_fn,
        model_provider=provider_fn,
        router_middlewares=[mw],
    )
    history = trainer.fit()
    trainer.close()
    assert events[0] == "model_provider"
    assert "custom" in " ".join(history[-1])
    order = [e for e in events if e != "middleware"]
    order = [e for i, e in enumerate(order) if i == 0 or order[i - 1] != e]  # loss_fn runs per micro-batch
    assert order[1:] == ["rollout_fn", "convert", "loss_fn", "rollout_fn", "convert", "loss_fn", "eval_fn"]
    assert events.count("middleware") >= 4
