"""An out-of-memory during a step is reported with the phase, the memory table at that moment and
the flags that would help (issue 21), not as a bare CUDA OOM trace. On the CPU the OOM is injected
at each phase; the report is the same code on CUDA, where the allocator rows are filled in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from miles_sdk import Config, Sample, SamplingParams, Trainer
from miles_sdk.backends._memory import StepOutOfMemoryError, helpful_flags
from miles_sdk.demo.task import addition_reward
from miles_sdk.testing import small_config
from miles_sdk.testing.tiny import tiny_policy

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.8 GiB"


def _oom(*_: Any, **__: Any) -> Any:
    raise torch.OutOfMemoryError(OOM)


async def _oom_generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    raise torch.OutOfMemoryError(OOM)


def _dataset() -> list[dict[str, Any]]:
    return [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


@pytest.fixture
def make_trainer() -> Iterator[Callable[..., Trainer]]:
    made: list[Trainer] = []

    def make(config: Config | None = None, **kwargs: Any) -> Trainer:
        model, tokenizer = tiny_policy("unit", seed=0)
        trainer = Trainer(
            config or small_config(),
            model=model,
            tokenizer=tokenizer,
            dataset=_dataset(),
            reward_model=addition_reward,
            **kwargs,
        )
        made.append(trainer)
        return trainer

    yield make
    for trainer in made:
        trainer.close()


def _simple_loss(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any loss with gradients will do where a test is about what happens after the backward."""
    model = trainer.backend.model

    def loss(batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.stack([p.float().square().sum() for p in model.parameters()]).sum() * 1e-6, {}

    monkeypatch.setattr(trainer.backend, "_micro_batch_loss", loss)


def _report(trainer: Trainer) -> StepOutOfMemoryError:
    with pytest.raises(StepOutOfMemoryError) as info:
        trainer.step()
    err = info.value
    assert isinstance(err, torch.OutOfMemoryError)  # except clauses written for a CUDA OOM still catch it
    assert isinstance(err.__cause__, torch.OutOfMemoryError) and OOM in str(err.__cause__)
    message = str(err)
    assert "Tried to allocate 2.00 GiB" in message  # the allocator's own line is kept
    assert "weights (policy)" in message and err.table.owners["weights (policy)"] > 0
    return err


def test_oom_in_generate_names_the_rollout_and_the_engine_flags(make_trainer: Callable[..., Trainer]) -> None:
    err = _report(make_trainer(generate_fn=_oom_generate))
    assert err.phase == "rollout"
    assert "out of memory during generate" in str(err)
    assert any("--max-engine-batch-size (now 8)" in f for f in err.flags)


def test_oom_in_old_log_probs_names_the_forward_and_the_token_budget(
    make_trainer: Callable[..., Trainer],
) -> None:
    trainer = make_trainer(small_config(skip_on_policy_old_log_probs=False))
    trainer.backend.compute_log_probs = _oom  # type: ignore[method-assign]
    err = _report(trainer)
    assert err.phase == "log_prob"
    assert "old/ref log-probs" in str(err)
    assert any("--max-tokens-per-gpu" in f for f in err.flags)


def test_oom_in_train_forward_backward_names_micro_batch_and_checkpointing(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer()
    monkeypatch.setattr(trainer.backend, "_micro_batch_loss", _oom)
    err = _report(trainer)
    assert err.phase == "train_forward_backward"
    assert "train forward/backward" in str(err)
    assert any("--micro-batch-size (now 2)" in f for f in err.flags)
    assert any("--gradient-checkpointing" in f for f in err.flags)
    # The optimizer state does not exist yet (AdamW allocates it at its first step): not a row.
    assert "optimizer state" not in err.table.owners


def test_oom_in_the_optimizer_step_names_cpu_offload(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer()
    _simple_loss(trainer, monkeypatch)
    trainer.step()  # AdamW's state exists from here on
    monkeypatch.setattr(trainer.backend.optim, "step", _oom)  # type: ignore[attr-defined]
    err = _report(trainer)
    assert err.phase == "optimizer"
    assert "optimizer step" in str(err)
    assert any("--optimizer-cpu-offload" in f for f in err.flags)
    assert err.table.owners["optimizer state"] > 0
    assert err.table.owners["gradients"] > 0  # the step's gradients are still held


def test_oom_in_weight_sync_is_named(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer()
    _simple_loss(trainer, monkeypatch)
    monkeypatch.setattr(trainer._weight_sync, "sync", _oom)
    err = _report(trainer)
    assert err.phase == "sync"
    assert "weight sync" in str(err)


def test_other_errors_pass_through_unchanged(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer()
    _simple_loss(trainer, monkeypatch)

    def boom(*_: Any, **__: Any) -> Any:
        raise ValueError("not memory")

    monkeypatch.setattr(trainer._weight_sync, "sync", boom)
    with pytest.raises(ValueError, match="not memory"):
        trainer.step()


def test_flags_follow_the_settings() -> None:
    dynamic = small_config(use_dynamic_batch_size=True, max_tokens_per_gpu=4096, gradient_checkpointing=True)
    flags = helpful_flags("train_forward_backward", dynamic)
    assert any("--max-tokens-per-gpu (now 4096) lower" in f for f in flags)
    assert not any("--gradient-checkpointing" in f for f in flags)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real allocator OOM needs CUDA")
def test_a_real_cuda_oom_in_train_is_reported_with_the_allocator_rows(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(small_config(device="cuda"))
    original = trainer.backend._micro_batch_loss  # type: ignore[attr-defined]

    def too_big(batch: Any) -> Any:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # 1 PiB: the allocator refuses
        return original(batch)

    monkeypatch.setattr(trainer.backend, "_micro_batch_loss", too_big)
    with pytest.raises(StepOutOfMemoryError) as info:
        trainer.step()
    err = info.value
    assert err.phase == "train_forward_backward"
    assert err.table.allocated is not None and err.table.total is not None
    assert "allocated (PyTorch)" in str(err) and "weights (policy)" in str(err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real allocator OOM needs CUDA")
def test_a_real_cuda_oom_in_generate_is_reported(make_trainer: Callable[..., Trainer]) -> None:
    async def too_big(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
        return sample

    trainer = make_trainer(small_config(device="cuda"), generate_fn=too_big)
    with pytest.raises(StepOutOfMemoryError) as info:
        trainer.step()
    assert info.value.phase == "rollout" and info.value.table.peak is not None
