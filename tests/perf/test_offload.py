"""optimizer_cpu_offload: fp32 masters and AdamW state in host memory give the same step as the
on-device optimizer (issue 21). On the CPU the chunked host step runs in place; the pipelined copy
path (side streams, pinned staging) is the CUDA test at the end."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from miles_sdk import Config
from miles_sdk.backends.offload import OffloadedOptimizer, _chunks
from miles_sdk.backends.optim import PolicyOptimizer
from miles_sdk.testing import small_config


def _model(dtype: torch.dtype, device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 50))
    return model.to(device=device, dtype=dtype)


def _train(
    model: nn.Module, optim: PolicyOptimizer, steps: int, clip: float, device: str = "cpu"
) -> list[float]:
    """``steps`` optimizer steps of two accumulated micro-batches each; the gradient norms."""
    gen = torch.Generator().manual_seed(1)
    norms = []
    for _ in range(steps):
        optim.zero_grad()
        for _ in range(2):
            tokens = torch.randint(0, 50, (4, 6), generator=gen).to(device)
            logits = model(tokens).float()
            loss = nn.functional.cross_entropy(logits.reshape(-1, 50), tokens.roll(1, 1).reshape(-1)) * 0.5
            loss.backward()
        norm = float(optim.clip(clip))
        optim.step(norm)
        norms.append(norm)
    return norms


def _args() -> Config:
    return small_config(weight_decay=0.1, lr=1e-3)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    a, b = a.double().cpu(), b.double().cpu()
    assert (a - b).norm() <= rel * b.norm(), f"relative difference {(a - b).norm() / b.norm():.3g} > {rel}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [1.0, 0.05, 0.0])
def test_offloaded_step_equals_the_device_step(dtype: torch.dtype, clip: float) -> None:
    args = _args()
    ref_model, off_model = _model(dtype), _model(dtype)
    ref = PolicyOptimizer(
        args, list(ref_model.parameters()), lr=args.lr, master_weights=dtype != torch.float32
    )
    # A budget of 600 elements: several chunks, the embedding and the head chunks of their own.
    off = OffloadedOptimizer(args, list(off_model.parameters()), lr=args.lr, chunk_bytes=600 * 4)
    assert len(off._chunks) > 2
    ref_norms = _train(ref_model, ref, 3, clip)
    off_norms = _train(off_model, off, 3, clip)
    assert off_norms == pytest.approx(ref_norms, rel=1e-6)
    for p_ref, p_off in zip(ref_model.parameters(), off_model.parameters(), strict=True):
        _close(p_off, p_ref, 1e-6 if dtype == torch.float32 else 1e-2)  # bf16: one rounding apart at most
    ref_masters = ref.masters or list(ref_model.parameters())
    for m_ref, m_off in zip(ref_masters, off.host_masters, strict=True):
        _close(m_off, m_ref, 1e-6)
    assert all(m.device.type == "cpu" for m in off.host_masters)
    assert all(g is None for g in off.grad_buffers)  # the device's gradients are freed after the step


def test_a_non_finite_gradient_skips_the_step() -> None:
    args = _args()
    model = _model(torch.float32)
    off = OffloadedOptimizer(args, list(model.parameters()), lr=args.lr)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    norm = float(off.clip(1.0))
    off.step(norm)
    assert math.isnan(norm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not off.optimizer.state  # AdamW never stepped


def test_checkpoints_move_between_offloaded_and_device_optimizers() -> None:
    args = _args()
    model = _model(torch.bfloat16)
    off = OffloadedOptimizer(args, list(model.parameters()), lr=args.lr)
    _train(model, off, 2, 1.0)
    state = copy.deepcopy(off.state_dict())  # as through a file: load_state_dict may alias tensors
    # Into the on-device optimizer of a fresh model: same masters, same moments, same next step.
    fresh = _model(torch.bfloat16)
    dev = PolicyOptimizer(args, list(fresh.parameters()), lr=args.lr, master_weights=True)
    dev.load_state_dict(state)
    assert dev.masters is not None
    for m_dev, m_off in zip(dev.masters, off.host_masters, strict=True):
        assert torch.equal(m_dev, m_off)
    _train(model, off, 1, 1.0)
    _train(fresh, dev, 1, 1.0)
    for m_dev, m_off in zip(dev.masters, off.host_masters, strict=True):
        _close(m_off, m_dev, 1e-6)
    # And back.
    again = OffloadedOptimizer(args, list(_model(torch.bfloat16).parameters()), lr=args.lr)
    again.load_state_dict(copy.deepcopy(dev.state_dict()))
    assert (
        again.optimizer.param_groups[0]["fused"] is True
    )  # the device optimizer's setting is not taken over
    for m_dev, m_again in zip(dev.masters, again.host_masters, strict=True):
        assert torch.equal(m_dev.cpu(), m_again)


def test_chunks_keep_order_and_budget() -> None:
    assert _chunks([5, 5, 5, 20, 1], 10) == [[0, 1], [2], [3], [4]]
    assert _chunks([], 10) == []


def test_trainer_with_optimizer_cpu_offload_trains_like_without() -> None:
    from miles_sdk.testing import run_steps

    plain = run_steps(steps=2, config=small_config(seed=3))
    offloaded = run_steps(steps=2, config=small_config(seed=3, optimizer_cpu_offload=True))
    for key in ("train/grad_norm", "train/pg_loss", "rollout/reward_mean"):
        assert [m[key] for m in offloaded.metrics] == pytest.approx([m[key] for m in plain.metrics], rel=1e-5)
    assert [s.response for s in offloaded.samples[1]] == [s.response for s in plain.samples[1]]


def test_optimizer_cpu_offload_is_refused_with_fsdp() -> None:
    from miles_sdk.config import ConfigError

    with pytest.raises(ConfigError, match="fsdp_cpu_offload"):
        small_config(optimizer_cpu_offload=True, train_backend="fsdp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pipelined copies need CUDA")
def test_pipelined_offload_on_cuda_equals_the_device_step() -> None:
    args = _args()
    ref_model, off_model = _model(torch.bfloat16, "cuda"), _model(torch.bfloat16, "cuda")
    ref = PolicyOptimizer(args, list(ref_model.parameters()), lr=args.lr, master_weights=True)
    off = OffloadedOptimizer(args, list(off_model.parameters()), lr=args.lr, chunk_bytes=600 * 4)
    ref_norms = _train(ref_model, ref, 3, 1.0, "cuda")
    off_norms = _train(off_model, off, 3, 1.0, "cuda")
    assert off_norms == pytest.approx(ref_norms, rel=1e-5)
    assert ref.masters is not None
    for m_ref, m_off in zip(ref.masters, off.host_masters, strict=True):
        _close(m_off, m_ref, 1e-5)  # CUDA and host AdamW kernels: same math, other rounding order
    for p_ref, p_off in zip(ref_model.parameters(), off_model.parameters(), strict=True):
        _close(p_off, p_ref, 1e-2)
