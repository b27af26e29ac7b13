"""bf16 parameters with fp32 masters accumulate their micro-batch gradients in fp32 (issue 13,
item 8): 128 micro-batches summed in bf16 were off by ~1% from an fp64 reference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from miles_sdk import Config
from miles_sdk.backends.optim import PolicyOptimizer

MICRO_BATCHES = 128


def _micro_batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    # A shared mean makes the micro-batch gradients add up coherently, as real ones largely do.
    return [(torch.randn(16, 64, generator=gen) + 1.0).to(torch.bfloat16) for _ in range(MICRO_BATCHES)]


def _accumulate(layer: nn.Linear, batches: list[torch.Tensor]) -> None:
    for x in batches:
        loss = layer(x).float().square().mean()
        (loss / len(batches)).backward()


def _fp64_reference(layer: nn.Linear, batches: list[torch.Tensor]) -> torch.Tensor:
    ref = nn.Linear(64, 32, bias=False, dtype=torch.float64, device=layer.weight.device)
    with torch.no_grad():
        ref.weight.copy_(layer.weight.double())
    _accumulate(ref, [x.double() for x in batches])
    assert ref.weight.grad is not None
    return ref.weight.grad


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


def _bf16_layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(64, 32, bias=False).to(torch.bfloat16)


def test_micro_batch_gradients_accumulate_in_fp32() -> None:
    batches = _micro_batches()
    layer = _bf16_layer()
    reference = _fp64_reference(layer, batches)

    optim = PolicyOptimizer(Config(), list(layer.parameters()), lr=1e-3, master_weights=True)
    _accumulate(layer, batches)
    assert layer.weight.grad is None  # folded into the fp32 master after each backward
    optim.clip(max_norm=0.0)
    assert optim.masters is not None
    master_grad = optim.masters[0].grad
    assert master_grad is not None and master_grad.dtype == torch.float32
    fp32_error = _relative_error(master_grad, reference)

    # What the old code did: autograd summing into the bf16 .grad.
    plain = _bf16_layer()
    _accumulate(plain, batches)
    assert plain.weight.grad is not None and plain.weight.grad.dtype == torch.bfloat16
    bf16_error = _relative_error(plain.weight.grad, reference)

    # Each micro-batch's own bf16 gradient still rounds (~2^-9 per element, independently); what
    # must go is the rounding of the running sum, which grows with the number of micro-batches.
    assert fp32_error < 1e-3, fp32_error
    assert bf16_error > 5 * fp32_error, (bf16_error, fp32_error)


def test_a_deep_copy_of_the_module_does_not_feed_the_masters() -> None:
    layer = _bf16_layer()
    optim = PolicyOptimizer(Config(), list(layer.parameters()), lr=1e-3, master_weights=True)
    clone = copy.deepcopy(layer)  # as the PPO critic copies the policy's body
    clone(torch.ones(2, 64, dtype=torch.bfloat16)).float().sum().backward()
    assert optim.masters is not None and optim.masters[0].grad is None


def test_zero_grad_clears_the_accumulated_fp32_gradient() -> None:
    layer = _bf16_layer()
    optim = PolicyOptimizer(Config(), list(layer.parameters()), lr=1e-3, master_weights=True)
    layer(torch.ones(2, 64, dtype=torch.bfloat16)).float().sum().backward()
    assert optim.masters is not None and optim.masters[0].grad is not None
    optim.zero_grad()
    assert layer.weight.grad is None
    assert all(m.grad is None for m in optim.masters)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 GEMMs on CUDA (issue 13 item 8)")
def test_cuda_micro_batch_gradients_accumulate_in_fp32() -> None:
    cuda = torch.device("cuda")
    batches = [x.to(cuda) for x in _micro_batches()]
    layer = _bf16_layer().to(cuda)
    reference = _fp64_reference(layer, batches)
    optim = PolicyOptimizer(Config(), list(layer.parameters()), lr=1e-3, master_weights=True)
    _accumulate(layer, batches)
    optim.clip(max_norm=0.0)
    assert optim.masters is not None and optim.masters[0].grad is not None
    fp32_error = _relative_error(optim.masters[0].grad, reference)
    plain = _bf16_layer().to(cuda)
    _accumulate(plain, batches)
    assert plain.weight.grad is not None
    bf16_error = _relative_error(plain.weight.grad, reference)
    assert fp32_error < 1e-3, fp32_error
    assert bf16_error > 5 * fp32_error, (bf16_error, fp32_error)
