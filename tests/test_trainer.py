"""The Trainer end to end on the tiny policy: engine/weight sharing, reward failures, resume, CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from miles_sdk import Config, Sample, SamplingParams, Trainer
from miles_sdk.demo.task import addition_reward
from miles_sdk.testing import run_steps, small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
# The same prompts with their answers under a column the Trainer does not pick up by default.
UNLABELLED_ROWS = [{"input": row["input"], "answer": row["label"]} for row in ROWS]


def test_run_steps_reports_every_phase() -> None:
    result = run_steps(steps=2)
    assert len(result.metrics) == 2
    last = result.metrics[-1]
    for key in (
        "rollout/reward_mean",
        "rollout/reward_std",
        "rollout/response_len_mean",
        "rollout/truncated_ratio",
        "train/loss",
        "train/grad_norm",
        "perf/rollout_time",
        "perf/train_time",
        "perf/log_prob_time",
        "perf/sync_time",
        "perf/generate_time_sum",
        "perf/reward_time_sum",
        "perf/rollout_tokens_per_s",
        "perf/train_tokens_per_s",
    ):
        assert key in last, key
    assert len(result.samples[0]) == 4
    assert all(s.reward in (0.0, 1.0) for s in result.samples[0])


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)  # differs within each group, so GRPO has a signal


def test_engine_samples_from_trained_weights(tmp_path: Path) -> None:
    model, tok = tiny_policy("unit", seed=1)
    cfg = small_config(lr=5e-2, output_dir=str(tmp_path))
    trainer = Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward)
    try:
        prompt = tok.encode("1+1=", add_special_tokens=False)
        greedy: SamplingParams = {"temperature": 0.0, "max_new_tokens": 3}
        before = trainer.generate([prompt], greedy)[0]
        version = trainer.engine.weight_version
        trainer.step()
        assert trainer.engine.weight_version > version
        after = trainer.generate([prompt], greedy)[0]
        assert after.weight_versions == [trainer.engine.weight_version]
        assert after.rollout_log_probs != pytest.approx(before.rollout_log_probs, abs=1e-6)
        # The engine's log-probs are the trained model's: recompute them with the backend.
        data = {"tokens": [after.tokens], "response_lengths": [after.response_length]}
        recomputed = trainer.backend.compute_log_probs(data, which="actor")  # type: ignore[arg-type]
        assert recomputed[0].tolist() == pytest.approx(after.rollout_log_probs, abs=1e-4)
    finally:
        trainer.close()


def test_generate_answers_prompts_with_the_current_weights(tmp_path: Path) -> None:
    model, tok = tiny_policy("unit", seed=1)
    cfg = small_config(output_dir=str(tmp_path))
    with Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=addition_reward) as trainer:
        greedy: SamplingParams = {"temperature": 0.0, "max_new_tokens": 3}
        ids = tok.encode("2+2=", add_special_tokens=False)
        by_text, by_ids = trainer.generate(["2+2=", ids], greedy)
        assert trainer.generate("2+2=", greedy)[0].tokens == by_text.tokens  # one prompt alone
        assert by_text.tokens[: len(ids)] == ids and by_text.tokens == by_ids.tokens
        assert 0 < by_text.response_length <= 3 and by_text.response
        assert len(by_text.rollout_log_probs or []) == by_text.response_length
        assert by_text.weight_versions == [trainer.engine.weight_version] and by_text.reward is None


async def _flaky_reward(args: Config, sample: Sample) -> float:
    if sample.prompt == "1+1=":
        raise RuntimeError("grader exploded")
    return await addition_reward(args, sample)


def test_reward_error_marks_sample_failed_and_run_goes_on(tmp_path: Path) -> None:
    cfg = small_config(output_dir=str(tmp_path), rollout_batch_size=2, over_sampling_batch_size=3)
    rows = [{"input": "1+1=", "label": "2"}] + ROWS[:4]
    result = run_steps({"reward_model": _flaky_reward}, steps=3, config=cfg, dataset=rows)
    failed = sum(m.get("rollout/reward_failed", 0.0) for m in result.metrics)
    assert failed > 0
    for step_samples in result.samples:
        assert all(s.prompt != "1+1=" for s in step_samples)  # failed groups are not trained on
        assert all(s.status is not Sample.Status.FAILED for s in step_samples)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(line).get("rollout/reward_failed", 0) > 0 for line in lines)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.policy.model.state_dict().items()}


def _resume_trainer(tmp_path: Path, name: str, deterministic: bool = True) -> Trainer:
    model, tok = tiny_policy("unit", seed=3)
    cfg = small_config(
        output_dir=str(tmp_path / name),
        sglang_enable_deterministic_inference=deterministic,
        rollout_shuffle=True,
        lr=1e-2,
        num_rollout=4,
    )
    return Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=addition_reward)


@pytest.mark.parametrize("deterministic", [True, False])
def test_resume_is_exact(tmp_path: Path, deterministic: bool) -> None:
    straight = _resume_trainer(tmp_path, "straight", deterministic)
    for _ in range(4):
        straight.step()
    expected = _weights(straight)
    straight.close()

    first = _resume_trainer(tmp_path, "first", deterministic)
    first.step()
    first.step()
    first.save(tmp_path / "ckpt")
    first.close()
    assert (tmp_path / "ckpt" / "rollout_2").is_dir() and not list((tmp_path / "ckpt").glob(".tmp-*"))

    resumed = _resume_trainer(tmp_path, "resumed", deterministic)
    resumed.load(tmp_path / "ckpt")
    assert resumed.rollout_id == 2
    resumed.step()
    resumed.step()
    got = _weights(resumed)
    resumed.close()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    async def notebook_cell() -> float:
        result = run_steps(steps=1)  # sync API called from inside a running loop, as in Jupyter
        return result.metrics[0]["rollout/reward_mean"]

    assert 0.0 <= asyncio.run(notebook_cell()) <= 1.0


def test_cli_train_from_hf_checkpoint(tmp_path: Path) -> None:
    from miles_sdk.cli import main
    from miles_sdk.testing import save_tiny_policy

    ckpt = save_tiny_policy(tmp_path / "policy", "unit", seed=0)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    rc = main(
        [
            "train",
            "--hf-checkpoint",
            str(ckpt),
            "--prompt-data",
            str(data),
            "--label-key",
            "label",
            "--rollout-batch-size",
            "2",
            "--n-samples-per-prompt",
            "2",
            "--rollout-max-response-len",
            "3",
            "--num-rollout",
            "2",
            "--device",
            "cpu",
            "--rm-type",
            "f1",
            "--output-dir",
            str(tmp_path / "out"),
            "--micro-batch-size",
            "2",
            "--save",
            str(tmp_path / "ckpt"),
            "--no-progress-bar",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert (tmp_path / "ckpt" / "rollout_2").is_dir()


def test_ppo_trains_a_critic_with_gae(tmp_path: Path) -> None:
    cfg = small_config(
        output_dir=str(tmp_path),
        advantage_estimator="ppo",
        gamma=1.0,
        lambd=0.95,
        critic_lr=1e-2,
        num_critic_only_steps=1,
    )
    result = run_steps({"reward_model": _alternating_reward}, steps=2, config=cfg)
    first, second = result.metrics
    assert "train/critic_value_loss" in first and "train/critic_value_loss" in second
    assert "train/pg_loss" not in first  # critic-only warm-up step
    assert "train/pg_loss" in second
    assert second["train/critic_grad_norm"] > 0.0


@pytest.mark.parametrize("estimator", ["gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"])
def test_every_estimator_runs_in_the_loop(tmp_path: Path, estimator: str) -> None:
    cfg = small_config(
        output_dir=str(tmp_path),
        advantage_estimator=estimator,
        kl_coef=0.01,
        use_kl_loss=estimator == "gspo",
        kl_loss_coef=0.01,
        normalize_advantages=True,
    )
    result = run_steps({"reward_model": _alternating_reward}, steps=1, config=cfg)
    assert result.metrics[0]["train/grad_norm"] > 0.0


def test_missing_label_for_builtin_rm_fails_before_training(tmp_path: Path) -> None:
    from miles_sdk.rewards import RewardLabelError

    model, tok = tiny_policy("unit", seed=0)
    cfg = small_config(output_dir=str(tmp_path), rm_type="math", label_key=None)
    with pytest.raises(RewardLabelError, match="label"):
        Trainer(cfg, model=model, tokenizer=tok, dataset=UNLABELLED_ROWS)


def test_debug_save_then_train_only_on_the_saved_rollouts(tmp_path: Path) -> None:
    from miles_sdk import algo

    template = str(tmp_path / "dump" / "rollout_{rollout_id}.pt")
    saved = run_steps(
        {"reward_model": _alternating_reward},
        steps=2,
        config=small_config(output_dir=str(tmp_path / "a"), save_debug_rollout_data=template),
    )
    cfg = small_config(
        output_dir=str(tmp_path / "b"), debug_train_only=True, load_debug_rollout_data=template
    )
    replayed = run_steps({"reward_model": _alternating_reward}, steps=2, config=cfg)
    for before, after in zip(saved.samples, replayed.samples):
        assert algo.convert_samples_to_train_data(cfg, after) == algo.convert_samples_to_train_data(
            cfg, before
        )
    assert "train/loss" in replayed.metrics[-1]


def test_debug_rollout_only_does_not_train(tmp_path: Path) -> None:
    model, tok = tiny_policy("unit", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_steps(
        {"reward_model": _alternating_reward, "model": model, "tokenizer": tok},
        steps=1,
        config=small_config(output_dir=str(tmp_path), debug_rollout_only=True),
    )
    assert "rollout/reward_mean" in result.metrics[0] and "train/loss" not in result.metrics[0]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_list_from_generate_goes_to_the_batched_reward_in_one_call(tmp_path: Path) -> None:
    from miles_sdk.rollout import generate_with_engine

    batch_sizes: list[int] = []

    async def two_agents(args: Config, sample: Sample, sampling_params: SamplingParams) -> list[Sample]:
        first = await generate_with_engine(args, sample, sampling_params)
        second = Sample.from_dict(first.to_dict())
        return [first, second]

    async def batched(args: Config, samples: list[Sample]) -> list[float]:
        batch_sizes.append(len(samples))
        return [float(i % 2) for i in range(len(samples))]

    cfg = small_config(output_dir=str(tmp_path))
    result = run_steps(
        {"generate_fn": two_agents, "reward_model": _alternating_reward, "batched_reward_model": batched},
        steps=1,
        config=cfg,
    )
    assert batch_sizes and set(batch_sizes) == {2}
    assert len(result.samples[0]) == 8


def test_dynamic_batch_size_gives_the_same_update_as_fixed_micro_batches(tmp_path: Path) -> None:
    def final_weights(**overrides: object) -> dict[str, torch.Tensor]:
        model, tok = tiny_policy("unit", seed=5)
        cfg = small_config(
            output_dir=str(tmp_path), sglang_enable_deterministic_inference=True, lr=1e-2, **overrides
        )  # type: ignore[arg-type]
        run_steps(
            {"reward_model": _alternating_reward, "model": model, "tokenizer": tok}, steps=1, config=cfg
        )
        return {k: v.clone() for k, v in model.state_dict().items()}

    fixed = final_weights(micro_batch_size=1)
    dynamic = final_weights(use_dynamic_batch_size=True, max_tokens_per_gpu=20)
    for key, value in fixed.items():
        torch.testing.assert_close(dynamic[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_rollout_log_hook_returning_true_replaces_default_logging(tmp_path: Path) -> None:
    seen: list[int] = []

    def my_log(
        rollout_id: int,
        args: Config,
        samples: list[Sample],
        extra: dict[str, float] | None,
        rollout_time: float,
    ) -> bool:
        seen.append(rollout_id)
        return rollout_id == 0  # replace the default for step 0 only

    result = run_steps({"rollout_log_fn": my_log}, steps=2, config=small_config(output_dir=str(tmp_path)))
    assert seen == [0, 1]
    assert "rollout/reward_mean" in result.metrics[0]  # still returned by step()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]


def test_trainer_is_a_context_manager_and_close_is_idempotent(tmp_path: Path) -> None:
    model, tok = tiny_policy("unit", seed=0)
    with Trainer(
        small_config(output_dir=str(tmp_path)),
        model=model,
        tokenizer=tok,
        dataset=ROWS,
        reward_model=addition_reward,
    ) as trainer:
        trainer.step()
    trainer.close()  # a second close is harmless
    assert trainer._loop.loop.is_closed()


def test_update_weights_interval_keeps_the_engine_on_older_weights(tmp_path: Path) -> None:
    model, tok = tiny_policy("unit", seed=1)
    cfg = small_config(lr=5e-2, output_dir=str(tmp_path), update_weights_interval=2)
    with Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward) as trainer:
        prompt = tok.encode("1+1=", add_special_tokens=False)

        def greedy_log_probs() -> list[float] | None:
            return trainer.generate([prompt], {"temperature": 0.0, "max_new_tokens": 3})[0].rollout_log_probs

        before = greedy_log_probs()
        trainer.step()  # rollout 0: trains, but no sync (interval 2)
        assert greedy_log_probs() == before
        trainer.step()  # rollout 1: trains and syncs
        assert greedy_log_probs() != pytest.approx(before, abs=1e-6)


def test_failed_construction_leaves_no_loop_thread(tmp_path: Path) -> None:
    import threading

    from miles_sdk.rewards import RewardLabelError

    before = sum(t.name == "miles-sdk-loop" for t in threading.enumerate())
    model, tok = tiny_policy("unit", seed=0)
    with pytest.raises(RewardLabelError):
        Trainer(
            small_config(output_dir=str(tmp_path), rm_type="math", label_key=None),
            model=model,
            tokenizer=tok,
            dataset=UNLABELLED_ROWS,
        )
    assert sum(t.name == "miles-sdk-loop" for t in threading.enumerate()) == before


def test_miles_convention_reducer_hook_gives_the_default_update(tmp_path: Path) -> None:
    """A PGLossReducer hook written the Miles way (sum over samples of sample means) must train
    exactly like the built-in reducer: the Trainer divides, as Miles's backend does."""
    from miles_sdk import algo

    def miles_reducer(
        total_lengths: list[int],
        response_lengths: list[int],
        loss_masks: list[torch.Tensor],
        calculate_per_token_loss: bool = False,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        return algo.get_sum_of_sample_mean(
            total_lengths, response_lengths, loss_masks, calculate_per_token_loss, reduction="sum"
        )

    def final_weights(**hooks: object) -> dict[str, torch.Tensor]:
        model, tok = tiny_policy("unit", seed=6)
        cfg = small_config(output_dir=str(tmp_path), sglang_enable_deterministic_inference=True, lr=1e-2)
        run_steps(
            {"reward_model": _alternating_reward, "model": model, "tokenizer": tok, **hooks},
            steps=1,
            config=cfg,
        )
        return {k: v.clone() for k, v in model.state_dict().items()}

    default = final_weights()
    hooked = final_weights(pg_loss_reducer=miles_reducer)
    for key, value in default.items():
        torch.testing.assert_close(hooked[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_lr_schedule_spans_every_optimizer_step_and_trim_off_keeps_the_remainder(tmp_path: Path) -> None:
    from miles_sdk.backends.lr_schedule import LRSchedule

    cfg = small_config(num_rollout=4, global_batch_size=2, lr_decay_style="linear", min_lr=0.0, lr=1e-3)
    factor = LRSchedule(cfg)  # 2 prompts x 2 samples / global batch 2 = 2 optimizer steps per rollout
    assert [round(factor(s), 3) for s in range(0, 9, 2)] == [1.0, 0.75, 0.5, 0.25, 0.0]

    trained: list[int] = []

    def count(
        args: Config,
        rollout_id: int,
        step_id: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        opt_param_scheduler: object,
    ) -> None:
        trained.append(step_id)

    cfg = small_config(
        output_dir=str(tmp_path), global_batch_size=3, micro_batch_size=1, rollout_trim_samples=False
    )
    run_steps({"reward_model": _alternating_reward, "before_train_step_hook": count}, steps=1, config=cfg)
    assert trained == [0, 1]  # 4 samples with a global batch of 3: a full step, then the remainder


def test_two_argument_miles_model_provider(tmp_path: Path) -> None:
    _, tok = tiny_policy("unit", seed=0)
    built: list[bool] = []

    def provider(
        pre_process: bool, post_process: bool
    ) -> torch.nn.Module:  # no vp_stage, as many Miles files
        built.append(pre_process and post_process)
        return tiny_policy("unit", seed=0)[0]

    result = run_steps(
        {"model_provider": provider, "tokenizer": tok}, steps=1, config=small_config(output_dir=str(tmp_path))
    )
    assert built == [True] and result.metrics
