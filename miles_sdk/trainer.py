"""`Trainer`: the generate -> score -> filter -> train -> sync loop, in-process.

``Trainer.step()`` is the loop of design.md, one line per stage::

    1-2  rollout        data_source + rollout_fn (generate, reward, dynamic filter, sample filters)
    3-4  train data     reward_post_process + convert_samples_to_train_data
    5    log-probs      old (and ref) log-probs
    6    advantages     grpo / gspo / reinforce++ (baseline) / ppo; then rollout_data_postprocess
                        (Miles calls it after the advantages; design.md lists it under 5)
    7    train          optimizer steps (loss_fn or policy loss with tis_fn and pg_loss_reducer)
    8    sync           weights -> inference engine
    9    log            rollout_log_fn, metrics, eval every eval_interval, save every save_interval
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

import torch

from miles_sdk import algo
from miles_sdk._external import check_engine_servers, check_external_servers
from miles_sdk._gc import GcFreeze
from miles_sdk._hookset import check_group_size, resolve_hooks
from miles_sdk._loop import LoopThread, call_off_loop
from miles_sdk._policy import Policy, build_policy, load_policy_tokenizer
from miles_sdk._sync import WeightSync, logprob_gap_threshold, warn_on_logprob_gap
from miles_sdk.backends._memory import oom_report, owner_bytes
from miles_sdk.backends.base import TrainBackend
from miles_sdk.checkpoint import (
    NoCheckpointError,
    capture_rng_state,
    check_save_dir,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from miles_sdk.config import Config, ConfigError
from miles_sdk.engines._serving_guard import GenerationGate
from miles_sdk.engines.base import InferenceEngine, SamplingParams
from miles_sdk.engines.memory import MemoryReleasingEngine
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
    RolloutOutput,
    RolloutSampleFilterFn,
    RouterMiddleware,
    TISFn,
    TrainBatchPostprocessFn,
)
from miles_sdk.logging import MetricsWriter, PhaseTimer, eval_metrics, rollout_metrics
from miles_sdk.logging.health import LearningSignalMonitor
from miles_sdk.logging.metrics import reward_stats
from miles_sdk.logging.progress import Progress
from miles_sdk.rollout.shapes import (
    HookResultError,
    check_groups,
    check_reward_post_process_result,
    check_train_data,
    describe_hook,
)
from miles_sdk.stages import PolicyOutputs, Rollout, TrainBatch
from miles_sdk.types import Metrics, RolloutFnEvalOutput, RolloutFnTrainOutput, Sample, TrainData

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from miles_sdk.data.dataset import DataInput
    from miles_sdk.router import RolloutServing

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


class Trainer:
    """Runs RL post-training with Miles semantics. Every hook is optional; None keeps the Miles default.

    Hooks may also come from the Config's ``--*-path`` settings; an object passed here wins.
    """

    def __init__(
        self,
        config: Config,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        engine: InferenceEngine | None = None,
        dataset: DataInput | None = None,
        rollout_fn: RolloutFn = None,  # type: ignore[assignment]
        generate_fn: GenerateFn = None,  # type: ignore[assignment]
        data_source: DataSource | DataSourceFactory | None = None,
        eval_fn: RolloutFn = None,  # type: ignore[assignment]
        reward_model: RewardFn = None,  # type: ignore[assignment]
        batched_reward_model: BatchedRewardFn = None,  # type: ignore[assignment]
        reward_post_process: RewardPostProcessFn = None,  # type: ignore[assignment]
        dynamic_sampling_filter: DynamicSamplingFilterFn = None,  # type: ignore[assignment]
        buffer_filter: BufferFilterFn = None,  # type: ignore[assignment]
        rollout_sample_filter: RolloutSampleFilterFn = None,  # type: ignore[assignment]
        rollout_all_samples_process: RolloutAllSamplesProcessFn = None,  # type: ignore[assignment]
        rollout_data_postprocess: RolloutDataPostprocessFn | TrainBatchPostprocessFn = None,  # type: ignore[assignment]
        loss_fn: LossFn = None,  # type: ignore[assignment]
        tis_fn: TISFn = None,  # type: ignore[assignment]
        pg_loss_reducer: PGLossReducer = None,  # type: ignore[assignment]
        convert_samples_to_train_data: ConvertSamplesToTrainDataFn = None,  # type: ignore[assignment]
        backend_init: BackendInitFn = None,  # type: ignore[assignment]
        before_log_prob_hook: BeforeLogProbHookFn = None,  # type: ignore[assignment]
        before_train_step_hook: BeforeTrainStepHookFn = None,  # type: ignore[assignment]
        post_save_hook: PostSaveHookFn = None,  # type: ignore[assignment]
        rollout_log_fn: RolloutLogFn = None,  # type: ignore[assignment]
        eval_rollout_log_fn: EvalRolloutLogFn = None,  # type: ignore[assignment]
        router_middlewares: Sequence[RouterMiddleware] | None = None,
        model_provider: ModelProviderFn = None,  # type: ignore[assignment]
    ) -> None:
        """Every hook is optional: leave it out to keep the Miles default, or the Config's ``--*-path`` hook.

        Each hook keyword is typed by its Protocol alone, not ``Protocol | None``: against a bare
        Protocol mypy prints the expected call signature next to the function it got (``note:
        "RewardFn.__call__" has type "Callable[[Config, Sample], ...]"``), which it omits for a
        union, so a wrong hook reads as which parameter or return type is wrong. None is still
        accepted at run time (it means "not given", e.g. from a ``**kwargs`` dict).

        ``reward_model`` is the per-sample ``RewardFn``; ``batched_reward_model`` is the batched
        form (``BatchedRewardFn``): with ``group_rm`` it scores each group, and it also scores lists
        returned by a generate function. (At run time, with ``group_rm``, ``reward_model=`` also
        takes the batched form, as ``--custom-rm-path`` does; typed code passes it as
        ``batched_reward_model=``.)
        """
        self.args = config
        given: dict[str, object] = {  # every hook keyword (tests/test_api_pins.py checks none is left out)
            "rollout_fn": rollout_fn,
            "generate_fn": generate_fn,
            "data_source": data_source,
            "eval_fn": eval_fn,
            "reward_model": reward_model,
            "batched_reward_model": batched_reward_model,
            "reward_post_process": reward_post_process,
            "dynamic_sampling_filter": dynamic_sampling_filter,
            "buffer_filter": buffer_filter,
            "rollout_sample_filter": rollout_sample_filter,
            "rollout_all_samples_process": rollout_all_samples_process,
            "rollout_data_postprocess": rollout_data_postprocess,
            "loss_fn": loss_fn,
            "tis_fn": tis_fn,
            "pg_loss_reducer": pg_loss_reducer,
            "convert_samples_to_train_data": convert_samples_to_train_data,
            "backend_init": backend_init,
            "before_log_prob_hook": before_log_prob_hook,
            "before_train_step_hook": before_train_step_hook,
            "post_save_hook": post_save_hook,
            "rollout_log_fn": rollout_log_fn,
            "eval_rollout_log_fn": eval_rollout_log_fn,
            "router_middlewares": router_middlewares,
            "model_provider": model_provider,
        }
        self.hooks = resolve_hooks(config, given)
        check_group_size(config, self.hooks)  # before any weight loads: a run that cannot learn
        seed_everything(config.seed)  # python, numpy and torch: all three are checkpointed
        if tokenizer is None and model is None and config.hf_checkpoint is not None:
            tokenizer = load_policy_tokenizer(config)  # seconds; the data below needs only it
        if tokenizer is not None:
            # The data before the weights: a malformed line or a missing label fails in seconds,
            # not after a model of many GB has loaded.
            self.tokenizer = tokenizer
            self.data_source = self._build_data_source(dataset)
            self._check_labels()
        check_external_servers(config)  # rollout_engine="http": each server up, before the weights load
        check_engine_servers(config, engine)  # an HttpEngine passed in: the same, for its servers
        self.policy = build_policy(
            config, model=model, tokenizer=tokenizer, model_provider=self.hooks.model_provider
        )
        self.tokenizer = self.policy.tokenizer  # (without a tokenizer build_policy said what to pass)
        self._gc = GcFreeze()  # full collections skip the setup's objects once training runs (_gc.py)
        self._loop = LoopThread()
        self._offload_rollout_warned = False
        self._engine_released: MemoryReleasingEngine | None = None  # its replicas released their memory
        self._serving: RolloutServing | None = None
        self._owned_engine: InferenceEngine | None = None
        # Served /generate requests wait while a train step holds the shared module.
        self._gate = GenerationGate()
        try:
            self.engine = self._build_engine(engine)
            self._weight_sync = WeightSync(
                self.args, self.policy.engine_model, self.engine, self._loop, before_sync=self.policy.merge_adapter
            )
            self._gap_threshold = logprob_gap_threshold(self.args, self.policy.model)
            self.backend: TrainBackend = self._build_backend()
            if self.hooks.backend_init is not None:
                self.hooks.backend_init(self.args)
            self.eval_datasets = self._load_eval_datasets()
            if self.args.eval_interval and not self._can_evaluate():
                raise ConfigError(
                    "eval_interval is set but there is nothing to evaluate: set eval_prompt_data "
                    "(or eval_config), or pass eval_fn="
                )
            self.rollout_id = config.start_rollout_id or 0
            self.writer = MetricsWriter(config)
            self.history: list[Metrics] = []
            self._health = LearningSignalMonitor(self.args)
            self.last_samples: list[Sample] = []
            """The samples trained on in the latest step (for notebooks and tests)."""
            if config.save is not None:
                check_save_dir(config.save, _checkpoint_size_estimate(self.policy, config))
            if config.load is not None:
                self._resume(config.load)
            if not self.writer.started:  # not resumed: this run gets its own metrics.jsonl
                self.writer.start_new_run()
            self.writer.write_run_config(self._resolved_settings())  # config.json beside the metrics
        except BaseException:
            self.close()  # a bad setting must not leave a loop thread (and a server) behind in a notebook
            raise

    def _resolved_settings(self) -> dict[str, Any]:
        """What this Trainer decided from its Config, for config.json (None: decided elsewhere,
        e.g. on each FSDP rank)."""
        return {
            "device": str(self.policy.device),
            "train_backend": type(self.backend).__name__,
            "gradient_checkpointing": getattr(self.backend, "gradient_checkpointing", None),
            "engine": type(self.engine).__name__,
            "first_rollout_id": self.rollout_id,
        }

    # ==== the loop ==============================================================================

    def step(self) -> Metrics:
        """One rollout step; returns its metrics. An out-of-memory is raised as a
        StepOutOfMemoryError naming the phase, the memory table and the flags that would help."""
        timer = PhaseTimer()
        with oom_report(self.policy.device, self.args, lambda: timer.current, self._memory_owners):
            return self._step(timer)

    def _memory_owners(self) -> dict[str, int]:
        backend: Any = self.backend
        return owner_bytes(
            self.policy.device,
            model=getattr(backend, "model", None),
            optim=getattr(backend, "optim", None),
            ref_model=getattr(backend, "ref_model", None),
            engine=self.engine,
        )

    def _step(self, timer: PhaseTimer) -> Metrics:
        self._check_open()
        self._gc.step()
        args, rollout_id = self.args, self.rollout_id
        on_policy = self._rollout_is_on_policy(rollout_id)
        self._resume_engine_memory()  # a step that failed after the release left the replicas released
        with timer("rollout"):
            rollout = self._rollout(rollout_id)  # 1-2
        if self._offloads_rollout():
            with timer("offload_rollout"):
                self._release_engine_memory()  # Miles's loop: "offload rollout" right after generating
        samples = algo.flatten_and_trim(args, rollout.groups)
        self.last_samples = samples
        metrics = rollout_metrics(args, samples) | rollout.metrics  # the rollout's own counts (drops, failures) win
        metrics["rollout/id"] = float(rollout_id)
        self._health.observe(rollout_id, samples, metrics)  # warns when this step cannot teach anything
        self._check_reward_failures(rollout_id, metrics)
        if not args.debug_rollout_only:
            with self._served_generation_paused():
                with timer("train_data"):
                    train_data = self._convert(samples)  # 3-4
                if "rollout/reward_mean" not in metrics:  # dict rewards: scalars only after post-process
                    metrics |= reward_stats(train_data["raw_reward"])
                with timer("log_prob"):
                    policy_outputs = self._log_probs(train_data)  # 5
                with timer("advantages"):
                    batch = self._advantages(train_data, policy_outputs)  # 6
                batch = self._postprocess(batch)
                with timer("train"):
                    metrics |= self.backend.train(rollout_id, batch)  # 7
                with timer("sync"):
                    self._sync_weights(rollout_id)  # 8
        self._resume_engine_memory(timer)  # replicas take their memory back (--offload-rollout)
        metrics |= timer.metrics() | _throughput(samples, timer.times)
        warn_on_logprob_gap(
            metrics,
            rollout_id=rollout_id,
            threshold=self._gap_threshold,
            on_policy=on_policy,
            remote=self._weight_sync.remote,
        )
        replaced = self._log_rollout(rollout_id, samples, metrics, sum(timer.times.values()))  # 9
        if not replaced:
            self.writer.write(rollout_id, metrics)
        self.rollout_id += 1
        if args.eval_interval and self._can_evaluate() and self.rollout_id % args.eval_interval == 0:
            metrics |= self.evaluate()
        if args.save and args.save_interval and self.rollout_id % args.save_interval == 0:
            self.save(args.save)
        self.history.append(metrics)
        return metrics

    def fit(self, num_rollout: int | None = None) -> list[Metrics]:
        """Train until ``num_rollout`` rollouts have run in total, counting any already run or
        resumed (Miles's ``--num-rollout``; default: the Config's num_rollout / num_epoch).
        Evaluates first unless ``skip_eval_before_train``. Returns every step's metrics so far."""
        self._check_open()
        total = num_rollout if num_rollout is not None else self._num_rollout()
        set_num_rollout = getattr(self.backend, "set_num_rollout", None)
        if callable(set_num_rollout):  # the learning-rate decay spans the run fit decided
            set_num_rollout(total)
        if (
            self.args.eval_interval
            and self._can_evaluate()
            and not self.args.skip_eval_before_train
            and self.rollout_id == 0
        ):
            self.evaluate()  # it writes its own metrics, unless eval_rollout_log_fn takes them over
        with Progress(self.args, total=total, initial=self.rollout_id) as progress:
            while self.rollout_id < total:
                progress.update(self.step())
        saved_by_step = (
            bool(self.args.save_interval) and self.rollout_id % (self.args.save_interval or 1) == 0
        )
        if self.args.save and self.rollout_id > 0 and not saved_by_step:
            self.save(self.args.save)
        return self.history

    def evaluate(self) -> Metrics:
        """Run the eval function over the eval datasets; returns ``eval/<name>`` metrics."""
        self._check_open()
        eval_fn = self.hooks.eval_fn or self.hooks.rollout_fn or _default_rollout_fn()
        completed = self._last_completed_rollout()
        output = self._run_rollout_fn(eval_fn, completed, evaluation=True)
        if not isinstance(output, RolloutFnEvalOutput):
            flag, path = (
                ("--eval-function-path", self.args.eval_function_path)
                if self.hooks.eval_fn is not None
                else ("--rollout-function-path", self.args.rollout_function_path)
            )
            raise HookResultError(
                f"eval function {describe_hook(eval_fn, flag=flag, path=path)} returned "
                f"{type(output).__name__} with evaluation=True; expected RolloutFnEvalOutput(data=...)"
            )
        data = dict(output.data)
        metrics = eval_metrics(self.args, data) | output.metrics
        log_fn = self.hooks.eval_rollout_log_fn
        if log_fn is None or not log_fn(completed, self.args, data, output.metrics):
            self.writer.write(completed, metrics)
        return metrics

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        sampling_params: SamplingParams | None = None,
    ) -> list[Sample]:
        """One response per prompt from the engine, with the weights it samples rollouts from now
        (for notebooks and tests: what does the policy answer after these steps?).

        A prompt is text, tokenised as the rollout tokenises it (the chat template with
        ``apply_chat_template``), or token ids. ``sampling_params`` override the rollout's
        (``{"temperature": 0.0}`` for greedy). The samples carry ``tokens``, ``response``,
        ``rollout_log_probs``, ``weight_versions`` and ``status``; they are not scored, not
        drawn from the data source and not trained on.
        """
        from miles_sdk.rollout import generate_with_engine, sampling_params_from_args, use_rollout_context

        self._check_open()
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [cast("str | Sequence[int]", prompts)]
        samples = [
            Sample(index=i, prompt=p) if isinstance(p, str) else Sample(index=i, tokens=[int(t) for t in p])
            for i, p in enumerate(cast("Sequence[str | Sequence[int]]", prompts))
        ]
        params = SamplingParams(**sampling_params_from_args(self.args))
        params.update(sampling_params or {})

        async def run() -> list[Sample]:
            with use_rollout_context(self._rollout_context()):
                return list(await asyncio.gather(*(generate_with_engine(self.args, s, params) for s in samples)))

        return self._loop.run(run())

    # ==== stages ================================================================================

    def _release_engine_memory(self) -> None:
        """--offload-rollout: the engine frees its KV cache, weight copies and CUDA graphs while
        the trainer works (SGLang's release_memory_occupation); its next request builds them again.
        Engine replicas and SGLang servers are each asked (miles_sdk.engines.memory), and resumed
        by :meth:`_resume_engine_memory`; an error names the replica."""
        engine = self._memory_engine()
        if isinstance(engine, MemoryReleasingEngine):
            self._loop.run(engine.release_memory_occupation())
            self._engine_released = engine
        elif engine is not None:
            engine.release_memory_occupation()
        elif not self._offload_rollout_warned:
            self._offload_rollout_warned = True
            logger.warning(
                "offload_rollout: engine %s cannot release its memory (no release_memory_occupation); "
                "it keeps it during training",
                type(self.engine).__name__,
            )

    def _offloads_rollout(self) -> bool:
        """offload_rollout, or unset: on for engine replicas with colocate (Miles's default)."""
        if self.args.offload_rollout is not None:
            return self.args.offload_rollout
        from miles_sdk.distributed.replicas import EngineReplicas

        return self.args.colocate and isinstance(self._owned_engine, EngineReplicas)

    def _resume_engine_memory(self, timer: PhaseTimer | None = None) -> None:
        """Replicas released by :meth:`_release_engine_memory` take their memory back (after the
        weight sync, as Miles's loop onloads; the in-process engine rebuilds at its next request)."""
        released, self._engine_released = self._engine_released, None
        if released is not None:
            with timer("onload_rollout") if timer is not None else contextlib.nullcontext():
                self._loop.run(released.resume_memory_occupation())

    def _memory_engine(self) -> Any:
        """What --offload-rollout releases: the engine, or the one our router or server wraps."""
        http = self._serving.http_engine if self._serving is not None else None
        for engine in (self.engine, self._owned_engine, http):
            if engine is not None and callable(getattr(engine, "release_memory_occupation", None)):
                return engine
        return None

    def _rollout(self, rollout_id: int) -> Rollout:
        from miles_sdk.rollout import load_rollout_data, save_rollout_data

        if self.args.load_debug_rollout_data is not None:
            return Rollout(load_rollout_data(self.args.load_debug_rollout_data, rollout_id))
        rollout_fn = self.hooks.rollout_fn or _default_rollout_fn()
        output = self._run_rollout_fn(rollout_fn, rollout_id, evaluation=False)
        where = "rollout function " + describe_hook(
            rollout_fn, flag="--rollout-function-path", path=self.args.rollout_function_path
        )
        if not isinstance(output, RolloutFnTrainOutput):
            raise HookResultError(
                f"{where} returned {type(output).__name__}, expected RolloutFnTrainOutput(samples=list[list[Sample]])"
            )
        check_groups(output.samples, f"{where} (RolloutFnTrainOutput.samples)")
        if self.args.save_debug_rollout_data is not None:
            save_rollout_data(self.args.save_debug_rollout_data, rollout_id, output.samples)
        return Rollout(output.samples, dict(output.metrics))

    def _run_rollout_fn(self, fn: Any, rollout_id: int, *, evaluation: bool) -> RolloutOutput:
        from miles_sdk.rollout import use_rollout_context

        async def run() -> RolloutOutput:
            with use_rollout_context(self._rollout_context()):
                if _is_async_callable(fn):
                    result = fn(self.args, rollout_id, self.data_source, evaluation)
                else:
                    # Sync rollout functions (Miles's are) may block on async work (miles.utils.async_utils.run,
                    # the sync generate_rollout): run them off this loop, which keeps serving the engine.
                    result = await call_off_loop(fn, self.args, rollout_id, self.data_source, evaluation)
                if inspect.isawaitable(result):
                    result = await result
                return cast(RolloutOutput, result)

        return self._loop.run(run())

    def _convert(self, samples: list[Sample]) -> TrainData:
        args = self.args
        convert = self.hooks.convert_samples_to_train_data
        if convert is not None:
            where = "convert_samples_to_train_data " + describe_hook(
                convert,
                flag="--custom-convert-samples-to-train-data-path",
                path=args.custom_convert_samples_to_train_data_path,
            )
            return cast(TrainData, check_train_data(convert(args, samples), where))
        post = self.hooks.reward_post_process
        if post is None:
            return algo.convert_samples_to_train_data(
                args, samples, reward_post_process=algo.grpo_reward_post_process
            )
        where = "reward_post_process " + describe_hook(
            post, flag="--custom-reward-post-process-path", path=args.custom_reward_post_process_path
        )

        def checked_post(a: Config, s: list[Sample]) -> tuple[list[float], list[float]]:
            return check_reward_post_process_result(post(a, s), len(s), where)

        return algo.convert_samples_to_train_data(args, samples, reward_post_process=checked_post)

    def _log_probs(self, train_data: TrainData) -> PolicyOutputs:
        log_probs: list[torch.Tensor] | None
        if self.args.use_rollout_logprobs:
            if "rollout_log_probs" not in train_data:
                raise ValueError("use_rollout_logprobs is set but the samples carry no rollout_log_probs")
            log_probs = [torch.tensor(x, dtype=torch.float32) for x in train_data["rollout_log_probs"]]
        elif self._old_log_probs_are_current(len(train_data["tokens"])):
            log_probs = None  # the train pass's own, detached, are exactly them
        else:
            log_probs = self.backend.compute_log_probs(train_data, which="actor")
        ref_needed = self.args.needs_reference_model
        return PolicyOutputs(
            log_probs=log_probs,
            ref_log_probs=self.backend.compute_log_probs(train_data, which="ref") if ref_needed else None,
            values=self.backend.compute_values(train_data),
        )

    def _old_log_probs_are_current(self, n_samples: int) -> bool:
        hooks_read_them = (
            self.hooks.before_log_prob_hook is not None
            or self.hooks.rollout_data_postprocess is not None
            or self.args.use_opd  # OPD's reverse KL uses the old student log-probs before training
        )
        return not hooks_read_them and algo.old_log_probs_are_current(self.args, n_samples)

    def _advantages(self, data: TrainData, policy: PolicyOutputs) -> TrainBatch:
        params = algo.advantage_params(self.args)
        masks = [torch.as_tensor(m, dtype=torch.float32) for m in data["loss_masks"]]
        advantages, returns = algo.compute_advantages_and_returns(
            params=params,
            rewards=list(data["rewards"]),
            log_probs=policy.log_probs,
            ref_log_probs=policy.ref_log_probs,
            loss_masks=masks,
            values=policy.values,
        )
        opd_reverse_kl = None
        if self.args.use_opd:  # Miles: the teacher term goes on after the estimator, before normalising
            from miles_sdk.algo.opd import apply_opd_kl

            advantages, reverse_kl = apply_opd_kl(
                advantages,
                policy.log_probs,
                kl_coef=self.args.opd_kl_coef,
                teacher_log_probs=data.get("teacher_log_probs"),
                reverse_kl=data.get("opd_reverse_kl"),
            )
            opd_reverse_kl = [k.tolist() for k in reverse_kl]
        if params.normalize:
            advantages = algo.normalize_advantages(advantages, masks)
        return TrainBatch.build(
            data, policy, advantages=advantages, returns=returns, opd_reverse_kl=opd_reverse_kl
        )

    def _postprocess(self, batch: TrainBatch) -> TrainBatch:
        """``rollout_data_postprocess``: a typed hook (``TrainBatchPostprocessFn``) returns the batch
        to train on; Miles's hook edits the rollout-data dict in place, and what it leaves there
        (new keys included) is what trains."""
        hook = self.hooks.rollout_data_postprocess
        if hook is None:
            return batch
        where = "rollout_data_postprocess " + describe_hook(
            hook, flag="--rollout-data-postprocess-path", path=self.args.rollout_data_postprocess_path
        )
        if _takes_train_batch(hook):
            out = cast(TrainBatchPostprocessFn, hook)(self.args, batch)
            if not isinstance(out, TrainBatch):
                raise HookResultError(
                    f"{where} takes a TrainBatch, so it returns the batch to train on "
                    f"(attrs.evolve(batch, ...)); it returned {type(out).__name__}"
                )
            return out
        view = batch.as_dict()
        cast(RolloutDataPostprocessFn, hook)(self.args, view)
        return TrainBatch.from_dict(view, where=where)

    def _sync_weights(self, rollout_id: int) -> None:
        """Every ``update_weights_interval`` steps the engine gets the trained weights (pushed
        through the disk when it holds its own copy) and, with ``check_weight_sync``, proves it."""
        if (rollout_id + 1) % self.args.update_weights_interval == 0:
            self._weight_sync.sync()
        else:
            self._weight_sync.in_sync = False

    def _rollout_is_on_policy(self, rollout_id: int) -> bool:
        """True when this rollout samples from exactly the weights the train step starts from."""
        args = self.args
        return (
            self._weight_sync.in_sync
            and rollout_id % args.update_weights_interval == 0
            and not args.partial_rollout
            and args.load_debug_rollout_data is None
        )

    @contextlib.contextmanager
    def _served_generation_paused(self) -> Iterator[None]:
        """Served /generate requests (Miles-style hooks, other clients) wait while the trainer
        uses the module the engine generates from (13.10 of the trust issue)."""
        if self._serving is None:
            yield
            return
        self._loop.run(self._gate.close())
        try:
            yield
        finally:
            self._loop.run(self._gate.open())

    def _check_reward_failures(self, rollout_id: int, metrics: Metrics) -> None:
        """Stop a run whose reward keeps failing (issue 16.9): more than reward_max_failed_frac of a
        step's finished samples failed, reward_failed_patience steps in a row."""
        frac = float(metrics.get("rollout/reward_failed_frac", 0.0))
        limit, patience = self.args.reward_max_failed_frac, self.args.reward_failed_patience
        streak = getattr(self, "_reward_failed_streak", 0) + 1 if frac > limit else 0
        self._reward_failed_streak = streak
        if streak >= patience:
            from miles_sdk.rollout.default import RolloutError

            raise RolloutError(
                f"rollout {rollout_id}: the reward failed on more than reward_max_failed_frac={limit} of the "
                f"samples for {streak} steps in a row ({frac:.0%} this step); stopping rather than burning "
                "compute. Check the reward (server) and sample.metadata['reward_error']; raise "
                "reward_max_failed_frac or reward_failed_patience to go on regardless"
            )

    def _log_rollout(self, rollout_id: int, samples: list[Sample], metrics: Metrics, seconds: float) -> bool:
        """Run the rollout-log hook; True when it replaces the default logging (the metrics are
        still returned by ``step()``, but not written)."""
        log_fn = self.hooks.rollout_log_fn
        return log_fn is not None and bool(log_fn(rollout_id, self.args, samples, metrics, seconds))

    # ==== checkpoints ===========================================================================

    def save(self, path: str | Path) -> Path:
        """Write an atomic checkpoint (model, optimizer, data source with buffer, RNG, rollout id)."""
        state = {
            "rollout_id": self.rollout_id,
            "backend": self.backend.state_dict(),
            "data_source": _data_source_state(self.data_source, self.rollout_id),
            "rng": capture_rng_state(),
            "engine_weight_version": self.engine.weight_version,
            "engine": _engine_state(self.engine),
        }
        out = save_checkpoint(
            path,
            self.rollout_id,
            state,
            keep_last=self.args.save_keep_last,
            retain_interval=self.args.save_retain_interval,
        )
        if self.args.save_hf is not None:
            hf_dir = self.args.save_hf.format(rollout_id=self._last_completed_rollout())
            self.policy.save_hf(hf_dir)
        else:
            hf_dir = None
        if self.hooks.post_save_hook is not None:
            self.hooks.post_save_hook(self.args, self._last_completed_rollout(), str(out), hf_dir)
        return out

    def _resume(self, path: str) -> None:
        """``--load``: resume from the newest complete checkpoint there (``ckpt_step``: that one).

        As in Miles, a folder with nothing to load starts from scratch (``--load`` often equals
        ``--save``; a kill during the first save leaves only a partial folder), never silently.
        A broken latest checkpoint falls back to the one before, with a warning naming it. A
        ``ckpt_step`` that cannot be loaded is an error.
        """
        step = self.args.ckpt_step
        if Path(path).exists() and not Path(path).is_dir():
            raise NoCheckpointError(f"--load {path} is a file; pass the checkpoint directory given to --save")
        if step is None and not Path(path).is_dir():
            logger.warning("--load %s does not exist yet: starting from scratch", path)
            return
        if step is None and latest_checkpoint(path) is None:
            logger.warning(
                "--load %s holds no complete checkpoint (expected %s/rollout_<id>/state.pt): starting from "
                "scratch", path, path
            )
            return
        try:
            self.load(path, step)
        except NoCheckpointError:
            if step is not None:
                raise
            logger.warning("--load %s: no checkpoint there reads back whole: starting from scratch", path)
            return
        logger.info("resumed from %s at rollout %d", path, self.rollout_id)

    def load(self, path: str | Path, rollout_id: int | None = None) -> None:
        """Restore a checkpoint written by :meth:`save` (the latest when ``rollout_id`` is None)."""
        state = load_checkpoint(path, rollout_id)
        self.backend.load_state_dict(state["backend"])
        _load_data_source_state(self.data_source, state["data_source"], state["rollout_id"])
        restore_rng_state(state["rng"])
        self.rollout_id = int(state["rollout_id"])
        # Steps after the checkpoint were rolled back: drop them from the history too.
        self.history = [m for m in self.history if m.get("rollout/id", -1.0) < self.rollout_id]
        # The engine samples from the loaded weights, under the saved version and sampling seeds,
        # so a resumed run draws exactly what the uninterrupted one would. An engine with its own
        # copy (update_weights_interval > 1) then restores the copy it held at save time, which
        # lags the trained weights exactly as in the uninterrupted run.
        saved_version = int(state.get("engine_weight_version", 0))
        version = max(saved_version, self.engine.weight_version)
        if self._weight_sync.remote:
            # Replicas in other processes (rollout_num_gpus, rollout_engine="http") hold their own
            # copy: a version bump alone would leave them sampling from the weights they started with.
            self._weight_sync.sync(version)
        else:
            self.engine.update_weights(version)
        _load_engine_state(self.engine, state.get("engine"))
        self.writer.resume_at(self.rollout_id)  # the steps after the checkpoint will be logged again

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _can_evaluate(self) -> bool:
        return bool(self.eval_datasets) or self.hooks.eval_fn is not None

    def _last_completed_rollout(self) -> int:
        """The id Miles passes to eval, save and their hooks: the rollout that just finished."""
        return max(self.rollout_id - 1, 0)

    def close(self) -> None:
        """Stop servers and the loop thread; the Trainer cannot step afterwards. Idempotent."""
        if self._loop.loop.is_closed():
            return
        self._gc.release()  # the last Trainer of the process unfreezes (no cycles kept past close)
        from miles_sdk.rewards import close_reward_resources

        if self._serving is not None:
            self._loop.run(self._serving.close())
            self._serving = None
        weight_sync = getattr(self, "_weight_sync", None)
        if weight_sync is not None:
            weight_sync.close()
        self._loop.run(close_reward_resources())
        from miles_sdk.agents import close_agent_endpoints  # the agent chat endpoint, when one was started

        self._loop.run(close_agent_endpoints())
        backend_close = getattr(getattr(self, "backend", None), "close", None)
        if callable(backend_close):  # training ranks in other processes (train_backend="fsdp")
            backend_close()
        writer = getattr(self, "writer", None)  # absent when construction failed
        if writer is not None:
            writer.close()
        engine_close = getattr(self._owned_engine, "close", None)
        self._owned_engine = None
        if callable(engine_close) and _is_async_callable(engine_close):
            self._loop.run(engine_close())  # an engine with connections closes on the loop
            engine_close = None
        self._loop.close()  # cancels the engine's scheduler task, then joins the loop thread
        if callable(engine_close):
            # After the loop: a model step in flight on the engine's worker thread finishes and the
            # thread is joined, so no thread of this Trainer outlives close().
            engine_close()

    def _check_open(self) -> None:
        if self._loop.loop.is_closed():
            raise RuntimeError(
                "Trainer is closed: close() (or the end of its `with` block) stopped its engine, servers "
                "and loop thread. Build a new Trainer (with load= to continue from a checkpoint)"
            )

    # ==== construction helpers ==================================================================

    def _build_engine(self, given: InferenceEngine | None) -> InferenceEngine:
        """The engine the rollout calls: given, else embedded / sglang / http per the Config; wrapped in
        our router and HTTP server when middlewares, use_miles_router or serve_http ask for it."""
        args = self.args
        engine = given
        from miles_sdk.distributed.replicas import replica_count

        if engine is None and args.rollout_engine == "embedded" and replica_count(args) > 1:
            engine = self._engine_replicas()  # rollout_num_gpus replica processes behind the router
        elif engine is None and args.rollout_engine == "embedded":
            engine = self._embedded_engine()
        elif engine is None and args.rollout_engine == "sglang":
            from miles_sdk.engines.sglang_engine import SGLangEngine

            model = self.policy.engine_model
            engine = SGLangEngine(model_path=args.hf_checkpoint, weights=lambda: model.state_dict().items())
        if given is None:
            self._owned_engine = engine  # built here, so close() stops its threads; a given one is the caller's
        # Miles generate/rollout functions POST to args.sglang_router_ip:port, so a configured path
        # gets the HTTP server too (an object passed to the Trainer opts in with serve_http).
        needs_serving = (
            args.rollout_engine == "http"
            or args.use_miles_router
            or args.serve_http
            or bool(self.hooks.router_middlewares)
            or args.custom_generate_function_path is not None
            or args.rollout_function_path is not None
        )
        if not needs_serving:
            assert engine is not None
            return engine
        from miles_sdk.router import serve_rollout

        serving = self._loop.run(
            serve_rollout(
                args, engine, self.tokenizer, middlewares=self.hooks.router_middlewares, gate=self._gate
            )
        )
        self._serving = serving
        self.args = serving.args  # now carries sglang_router_ip/port of our server
        return serving.engine

    def _engine_replicas(self) -> InferenceEngine:
        from miles_sdk.distributed.replicas import start_engine_replicas

        replicas = start_engine_replicas(self.args, self.policy.engine_model, self.tokenizer, self.policy.device)
        self._owned_engine = replicas  # close() stops the replicas even when one fails to start
        self._loop.run(replicas.start())
        return replicas

    def _embedded_engine(self) -> InferenceEngine:
        from transformers import PreTrainedModel

        from miles_sdk.engines.embedded import EmbeddedEngine

        if not isinstance(self.policy.engine_model, PreTrainedModel):
            raise TypeError(
                "the embedded engine needs a transformers PreTrainedModel; pass engine= for other models"
            )
        args = self.args
        # The fast path's initial KV cache per slot: the longest prompt + response the Config
        # plans for, training or eval (it grows if a request needs more, so this only saves
        # re-planning the cache and its CUDA graphs mid-run).
        response = max(args.rollout_max_response_len, args.eval_max_response_len or 0)
        max_seq_len = args.rollout_max_context_len or (args.rollout_max_prompt_len or 2048) + response
        # fp32 master weights train correctly at RL learning rates (1e-6 updates vanish in bf16), but
        # decoding reads every weight per token: on CUDA the engine decodes from a bf16 copy.
        on_cuda = self.policy.device.type == "cuda"
        fp32 = next(self.policy.engine_model.parameters()).dtype == torch.float32
        dtype = torch.bfloat16 if on_cuda and fp32 else None
        return EmbeddedEngine(
            self.policy.engine_model,  # with LoRA: the base with the adapter merged in
            self.tokenizer,
            max_batch_size=args.max_engine_batch_size,
            seed=args.rollout_seed,
            max_seq_len=max_seq_len,
            dtype=dtype,
            # live weights would make every rollout on-policy, whatever the sync interval
            own_weights=args.update_weights_interval > 1,
        )

    def _build_data_source(self, dataset: DataInput | None) -> DataSource:
        given = self.hooks.data_source
        if isinstance(given, DataSource) and not isinstance(given, type):  # a class is a factory
            return given
        if given is not None:
            return given(self.args)
        from miles_sdk.data import RolloutDataSourceWithBuffer

        if dataset is None and self.args.prompt_data is None and not self.args.debug_train_only:
            raise ValueError("no prompts: set prompt_data in the Config, or pass dataset= or data_source=")
        return RolloutDataSourceWithBuffer(
            self.args, tokenizer=self.tokenizer, dataset=dataset, buffer_filter=self.hooks.buffer_filter
        )

    def _check_labels(self) -> None:
        """With a built-in rm type, every prompt must carry what its grader needs: fail before training."""
        hooks = self.hooks
        if (
            hooks.reward_fn
            or hooks.batched_reward_fn
            or hooks.rollout_fn
            or self.args.load_debug_rollout_data
        ):
            return
        dataset = getattr(self.data_source, "dataset", None)
        samples = getattr(dataset, "samples", None)
        if samples and getattr(dataset, "lazy", False):
            # A lazy dataset builds samples when drawn: check its first rows now (a later row that
            # cannot be scored fails as its sample's reward_error).
            samples = samples[:_LAZY_LABEL_CHECK_ROWS]
        if samples:
            from miles_sdk.rewards import validate_labels

            validate_labels(self.args, samples)

    def _build_backend(self) -> TrainBackend:
        from miles_sdk.backends.torch_backend import TorchBackend

        if self.args.train_backend == "megatron":
            raise NotImplementedError(
                "train_backend='megatron' is not available in this release; "
                "use train_backend='torch' (one process) or 'fsdp' (sharded ranks)"
            )
        if self.args.train_backend != "fsdp":
            _warn_placement_flags(self.args)

        # With LoRA and no ref_load the reference is the base: the policy with its adapter off.
        own_reference = self.policy.lora is None or self.args.ref_load is not None
        needs_reference = self.args.needs_reference_model and own_reference
        ref_model = self.policy.load_reference(self.args) if needs_reference else None
        if self.args.train_backend == "fsdp":
            return self._fsdp_backend(ref_model)
        return TorchBackend(
            self.args,
            self.policy.model,
            ref_model=ref_model,
            loss_fn=self.hooks.loss_fn,
            tis_fn=self.hooks.tis_fn,
            pg_loss_reducer=self.hooks.pg_loss_reducer,
            before_log_prob_hook=self.hooks.before_log_prob_hook,
            before_train_step_hook=self.hooks.before_train_step_hook,
            adapter=self.policy.lora,
        )

    def _fsdp_backend(self, ref_model: torch.nn.Module | None) -> TrainBackend:
        from miles_sdk.backends.fsdp_backend import FSDPBackend
        from miles_sdk.distributed import plan_world
        from miles_sdk.distributed.rank import RankHooks

        hooks = self.hooks
        return FSDPBackend(
            self.args,
            self.policy.model,
            plan_world(self.args, self.policy.device.type),
            ref_model=ref_model,
            hooks=RankHooks(
                loss_fn=hooks.loss_fn,
                tis_fn=hooks.tis_fn,
                pg_loss_reducer=hooks.pg_loss_reducer,
                before_log_prob_hook=hooks.before_log_prob_hook,
                before_train_step_hook=hooks.before_train_step_hook,
            ),
        )

    def _load_eval_datasets(self) -> dict[str, Any]:
        if not self.args.eval_prompt_data and not self.args.eval_config:
            return {}
        from miles_sdk.data import load_eval_datasets

        return dict(load_eval_datasets(self.args, self.tokenizer))

    def _rollout_context(self) -> Any:
        from miles_sdk.loading import load_hook
        from miles_sdk.rollout import RolloutContext

        return RolloutContext(
            engine=self.engine,
            tokenizer=self.tokenizer,
            generate_fn=self.hooks.generate_fn,
            reward_fn=self.hooks.reward_fn,
            batched_reward_fn=self.hooks.batched_reward_fn,
            dynamic_sampling_filter=self.hooks.dynamic_sampling_filter,
            rollout_sample_filter=self.hooks.rollout_sample_filter,
            rollout_all_samples_process=self.hooks.rollout_all_samples_process,
            eval_datasets=self.eval_datasets,
            load_generate_fn=functools.partial(
                load_hook, protocol="GenerateFn", flag="sample.generate_function_path"
            ),
        )

    def _num_rollout(self) -> int:
        if self.args.num_rollout is not None:
            return self.args.num_rollout
        if self.args.num_epoch is not None:
            from miles_sdk.data import num_rollout_for_epochs

            return num_rollout_for_epochs(self.args, getattr(self.data_source, "dataset_size", 0))
        raise ValueError("set num_rollout or num_epoch in the Config, or call fit(num_rollout=...)")


_LAZY_LABEL_CHECK_ROWS = 1000
"""Rows of a lazy (large) prompt dataset whose labels are checked before training."""


def _checkpoint_size_estimate(policy: Policy, args: Config) -> int:
    """About what one checkpoint takes on disk: the parameters and buffers, plus Adam's two fp32
    moments (and an fp32 master copy for lower-precision parameters) unless no_save_optim. With
    LoRA only the adapter is saved (and stepped)."""
    model = policy.model
    saved = [p for p in model.parameters() if policy.lora is None or p.requires_grad]
    tensors: list[torch.Tensor] = [*saved, *(model.buffers() if policy.lora is None else ())]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    if args.no_save_optim:
        return weights
    params = sum(p.numel() for p in saved)
    master = sum(p.numel() * 4 for p in saved if p.element_size() < 4)
    return weights + 2 * 4 * params + master


def _throughput(samples: list[Sample], seconds: dict[str, float]) -> Metrics:
    """Tokens per second of the rollout (new tokens) and of the train phase (all tokens); peak GPU memory."""
    out: Metrics = {}
    if seconds.get("rollout"):
        out["perf/rollout_tokens_per_s"] = sum(s.response_length for s in samples) / seconds["rollout"]
    if seconds.get("train"):
        out["perf/train_tokens_per_s"] = sum(len(s.tokens) for s in samples) / seconds["train"]
    if torch.cuda.is_available():
        out["perf/peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _warn_placement_flags(args: Config) -> None:
    """Multi-process placement flags are accepted (Miles launch scripts pass them) but mean nothing
    to the in-process loop, where the engine and the trainer always share one process and device."""
    ignored = [
        name
        for name, value in (
            # with rollout_num_gpus replicas it places them and sets offload_rollout's default
            ("colocate", args.colocate and (args.rollout_num_gpus or 1) <= 1),
            ("offload_train", args.offload_train),
            # the embedded engine honours it: rollout_num_gpus replicas (distributed/replicas.py)
            ("rollout_num_gpus", args.rollout_num_gpus if args.rollout_engine != "embedded" else None),
            ("rollout_num_gpus_per_engine", args.rollout_num_gpus_per_engine != 1),
            ("actor_num_nodes", args.actor_num_nodes != 1),
            ("actor_num_gpus_per_node", args.actor_num_gpus_per_node != 1),
        )
        if value
    ]
    if ignored:
        logger.warning("in-process Trainer: %s have no effect (one process, one device)", ", ".join(ignored))


def _takes_train_batch(fn: object) -> bool:
    """Whether a rollout_data_postprocess hook is the typed form: its second positional parameter
    is annotated ``TrainBatch`` (Miles's form takes the rollout-data dict)."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    if not callable(target):
        return False
    try:
        params = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    if len(params) < 2:
        return False
    try:
        hint: object = typing.get_type_hints(target).get(params[1].name)
    except Exception:  # noqa: BLE001 - unresolvable annotations: read the text
        hint = params[1].annotation
    if isinstance(hint, str):
        return hint.rsplit(".", 1)[-1] == "TrainBatch"
    return hint is TrainBatch


def _is_async_callable(fn: Any) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - instances with an async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _engine_state(engine: InferenceEngine) -> Any:
    state_dict = getattr(engine, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def _load_engine_state(engine: InferenceEngine, state: Any) -> None:
    load_state_dict = getattr(engine, "load_state_dict", None)
    if state is not None and callable(load_state_dict):
        load_state_dict(state)


def _default_rollout_fn() -> Any:
    from miles_sdk.rollout import generate_rollout

    return generate_rollout


def _data_source_state(source: DataSource, rollout_id: int) -> Any:
    state_dict = getattr(source, "state_dict", None)
    if callable(state_dict):
        return state_dict()
    source.save(rollout_id)  # a user data source without state_dict persists itself
    return None


def _load_data_source_state(source: DataSource, state: Any, rollout_id: int) -> None:
    load_state_dict = getattr(source, "load_state_dict", None)
    if state is not None and callable(load_state_dict):
        load_state_dict(state)
    else:
        source.load(rollout_id)
