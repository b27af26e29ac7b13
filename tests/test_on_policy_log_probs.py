"""On-policy steps (one optimizer step per rollout) skip the old-log-prob forward: the train
pass's own log-probs, detached, are exactly the old ones. Same update as recomputing them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from miles_sdk import Config, Sample, Trainer, algo
from miles_sdk.stages import MicroBatch
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def _train(monkeypatch: pytest.MonkeyPatch, steps: int = 2, **overrides: Any) -> tuple[int, torch.Tensor]:
    """(actor old-log-prob passes, the trained weights) after ``steps`` steps."""
    model, tok = tiny_policy("unit", seed=3)
    cfg = small_config(sglang_enable_deterministic_inference=True, lr=1e-3, **overrides)
    passes = 0
    with Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward) as t:
        real = t.backend.compute_log_probs

        def counting(data: Any, *, which: Any) -> list[torch.Tensor]:
            nonlocal passes
            passes += which == "actor"
            return real(data, which=which)

        monkeypatch.setattr(t.backend, "compute_log_probs", counting)
        for _ in range(steps):
            t.step()
    return passes, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_skipping_the_old_log_prob_pass_gives_the_same_update(monkeypatch: pytest.MonkeyPatch) -> None:
    skipped, w_skip = _train(monkeypatch)
    recomputed, w_full = _train(monkeypatch, skip_on_policy_old_log_probs=False)
    assert (skipped, recomputed) == (0, 2)
    initial = torch.cat([p.detach().flatten() for p in tiny_policy("unit", seed=3)[0].parameters()])
    assert (w_skip - initial).abs().max() > 1e-4  # it trained
    torch.testing.assert_close(w_skip, w_full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_steps_per_rollout": 2},  # the second step's gradient is off-policy
        {"global_batch_size": 2},  # two optimizer steps over the 4 samples
        {"kl_coef": 0.1},  # the KL-shaped reward needs them before the advantages
        {"use_rollout_logprobs": True},  # the engine's are the old ones
    ],
)
def test_not_skipped_when_old_log_probs_differ_or_are_needed_early(
    overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(**overrides)
    assert not algo.old_log_probs_are_current(cfg, 4)
    if "use_rollout_logprobs" not in overrides:
        passes, _ = _train(monkeypatch, steps=1, **overrides)
        assert passes == 1


def test_a_hook_that_reads_old_log_probs_keeps_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def postprocess(args: Config, rollout_data: dict[str, Any]) -> None:
        seen.append(rollout_data["log_probs"] is not None)

    model, tok = tiny_policy("unit", seed=3)
    cfg = small_config()
    with Trainer(
        cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward,
        rollout_data_postprocess=postprocess,
    ) as t:  # fmt: skip
        t.step()
    assert seen == [True]


def test_compute_loss_with_none_old_log_probs_uses_the_current_ones_detached() -> None:
    cfg = Config(advantage_estimator="grpo", entropy_coef=0.0)
    cur = [
        torch.tensor([-1.0, -2.0, -0.5], requires_grad=True),
        torch.tensor([-0.3, -0.7], requires_grad=True),
    ]
    batch: dict[str, Any] = {
        "response_lengths": [3, 2],
        "total_lengths": [5, 4],
        "loss_masks": [torch.ones(3), torch.tensor([1.0, 0.0])],
        "advantages": [torch.full((3,), 0.5), torch.full((2,), -1.0)],
    }
    params = algo.loss_params(cfg)
    loss_none, _ = algo.compute_loss(MicroBatch.from_dict({**batch, "log_probs": None}), cur, None, params=params)
    loss_none.backward()
    grads = [t.grad.clone() for t in cur if t.grad is not None]
    for t in cur:
        t.grad = None
    detached = [t.detach().clone() for t in cur]
    loss_old, _ = algo.compute_loss(MicroBatch.from_dict({**batch, "log_probs": detached}), cur, None, params=params)
    loss_old.backward()
    torch.testing.assert_close(loss_none, loss_old)
    for g, t in zip(grads, cur, strict=True):
        torch.testing.assert_close(g, t.grad)
    # Per sample, the on-policy GRPO gradient is -A / n_tokens on each kept token.
    torch.testing.assert_close(grads[0], torch.full((3,), -0.5 / 3 / 2))
    torch.testing.assert_close(grads[1], torch.tensor([1.0 / 2, 0.0]))
    with pytest.raises(KeyError, match="no 'log_probs'"):
        MicroBatch.from_dict(batch)  # the key missing altogether is a bug (None means on-policy)


def test_old_log_probs_and_values_are_computed_without_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny_policy("unit", seed=3)
    grad_enabled: list[bool] = []
    model.get_decoder().register_forward_pre_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    cfg = small_config(skip_on_policy_old_log_probs=False, advantage_estimator="ppo")
    outputs: list[torch.Tensor] = []
    with Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward) as t:
        backend = t.backend
        for name in ("compute_log_probs", "compute_values"):
            real = getattr(backend, name)

            def recording(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                out = _real(*args, **kwargs)
                outputs.extend(out or [])
                return out

            monkeypatch.setattr(backend, name, recording)
        t.step()
    # Old log-probs (policy) and old values (critic) keep no graph; the train pass has one.
    assert outputs and not any(x.requires_grad for x in outputs)
    assert False in grad_enabled and True in grad_enabled
