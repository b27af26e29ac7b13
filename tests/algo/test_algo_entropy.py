"""Chunked log-probs/entropy against the plain full-logits computation (values and grads)."""

from __future__ import annotations

import pytest
import torch

from miles_sdk.algo import log_probs_and_entropy, log_probs_and_entropy_from_logits


def _plain(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def _data(
    t: int = 11, h: int = 6, v: int = 13, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(t, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    targets = torch.randint(0, v, (t,), generator=g)
    return hidden, weight, targets


@pytest.mark.parametrize("chunk", [1, 4, 11, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hidden_variant_matches_plain_values_and_grads(chunk: int, temperature: float) -> None:
    hidden, weight, targets = _data()
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, ent = log_probs_and_entropy(
        h1, w1, targets, temperature=temperature, chunk_size=chunk, with_entropy=True
    )
    assert ent is not None
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp_ref, ent_ref = _plain(h2 @ w2.t(), targets, temperature)
    assert torch.allclose(lp, lp_ref) and torch.allclose(ent, ent_ref)
    coef = torch.linspace(-1, 1, lp.numel(), dtype=torch.float64)
    torch.autograd.backward([(lp * coef + 0.3 * ent * coef.flip(0)).sum()])
    torch.autograd.backward([(lp_ref * coef + 0.3 * ent_ref * coef.flip(0)).sum()])
    assert h1.grad is not None and h2.grad is not None and w1.grad is not None and w2.grad is not None
    assert torch.allclose(h1.grad, h2.grad) and torch.allclose(w1.grad, w2.grad)


def test_gradcheck_float64() -> None:
    hidden, weight, targets = _data(t=5, h=3, v=7)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)

    def f(h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lp, ent = log_probs_and_entropy(h, w, targets, temperature=0.9, chunk_size=2, with_entropy=True)
        assert ent is not None
        return lp, ent

    assert torch.autograd.gradcheck(f, (hidden, weight))


def test_without_entropy_and_fp32_output_for_bf16() -> None:
    hidden, weight, targets = _data()
    lp, ent = log_probs_and_entropy(
        hidden.bfloat16(), weight.bfloat16(), targets, chunk_size=4, with_entropy=False
    )
    assert ent is None and lp.dtype == torch.float32
    ref, _ = _plain(hidden @ weight.t(), targets, 1.0)
    assert torch.allclose(lp.double(), ref, atol=0.3)  # bf16 inputs, fp32 softmax


def test_only_hidden_needs_grad() -> None:
    hidden, weight, targets = _data()
    h = hidden.clone().requires_grad_(True)
    lp, _ = log_probs_and_entropy(h, weight, targets, chunk_size=3, with_entropy=False)
    torch.autograd.backward([lp.sum()])
    h2 = hidden.clone().requires_grad_(True)
    torch.autograd.backward([_plain(h2 @ weight.t(), targets, 1.0)[0].sum()])
    assert h.grad is not None and h2.grad is not None and torch.allclose(h.grad, h2.grad)


@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_from_logits_matches_plain(chunk: int) -> None:
    hidden, weight, targets = _data()
    logits = (hidden @ weight.t()).requires_grad_(True)
    lp, ent = log_probs_and_entropy_from_logits(
        logits, targets, temperature=1.3, chunk_size=chunk, with_entropy=True
    )
    assert ent is not None
    ref_logits = logits.detach().clone().requires_grad_(True)
    lp_ref, ent_ref = _plain(ref_logits, targets, 1.3)
    assert torch.allclose(lp, lp_ref) and torch.allclose(ent, ent_ref)
    torch.autograd.backward([(lp.sum() + ent.sum())])
    torch.autograd.backward([(lp_ref.sum() + ent_ref.sum())])
    assert logits.grad is not None and ref_logits.grad is not None
    assert torch.allclose(logits.grad, ref_logits.grad)


def test_empty_and_bad_inputs() -> None:
    w = torch.randn(5, 3, requires_grad=True)
    lp, ent = log_probs_and_entropy(torch.zeros(0, 3), w, torch.zeros(0, dtype=torch.long), with_entropy=True)
    assert lp.shape == (0,) and ent is not None and ent.shape == (0,)
    with pytest.raises(ValueError, match="targets has shape"):
        log_probs_and_entropy(torch.zeros(2, 3), w, torch.zeros(3, dtype=torch.long), with_entropy=False)
    with pytest.raises(ValueError, match=r"\[T, H\] and \[V, H\]"):
        log_probs_and_entropy(torch.zeros(2, 4), w, torch.zeros(2, dtype=torch.long), with_entropy=False)
    with pytest.raises(ValueError, match="chunk_size"):
        log_probs_and_entropy_from_logits(
            torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), chunk_size=0, with_entropy=False
        )
