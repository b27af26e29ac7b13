"""The one-pass Triton LM-head kernels against the torch path, on the CPU via Triton's interpreter.

The same kernels run compiled on CUDA (tests/engines/test_fast_cuda.py re-runs this comparison on
the device). Without Triton installed these tests are skipped; the dev extra installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("triton")

from miles_sdk.algo import entropy as entropy_mod
from miles_sdk.algo import log_probs_and_entropy

# The interpreter evaluates both sides of tl.where in numpy (exp(-inf - -inf) on masked lanes).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

VOCAB = 5000  # two 4096-wide vocabulary tiles, the second one partial


@pytest.fixture
def interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # tests/conftest.py selects the interpreter before triton is imported (CPU machines only).
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("compiled Triton (CUDA machine): see tests/engines/test_fast_cuda.py")
    monkeypatch.setattr(entropy_mod, "FUSED_ON_CPU", True)
    yield


def _case(
    seed: int, n: int = 7, hidden: int = 16, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, hidden, generator=g) * 2).to(dtype)
    w = torch.randn(VOCAB, hidden, generator=g).to(dtype)
    targets = torch.randint(0, VOCAB, (n,), generator=g)
    targets[0] = VOCAB - 1  # the last column of the partial tile
    return h, w, targets


def _run(
    h: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    with_entropy: bool,
    entropy_weight: float,
    fused: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(entropy_mod, "_fused_kernels", lambda _h: None)
        logp, ent = log_probs_and_entropy(
            h, w, targets, temperature=temperature, chunk_size=3, with_entropy=with_entropy
        )
        g = torch.linspace(-1.0, 2.0, logp.numel())
        loss = (g * logp).sum()
        if ent is not None:
            loss = loss + entropy_weight * (g.flip(0) * ent).sum()
        loss.backward()
    assert h.grad is not None and w.grad is not None
    return logp.detach(), (ent.detach() if ent is not None else None), h.grad, w.grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(("with_entropy", "entropy_weight"), [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_fused_matches_torch_values_and_gradients(
    interpreter: None,
    monkeypatch: pytest.MonkeyPatch,
    temperature: float,
    with_entropy: bool,
    entropy_weight: float,
) -> None:
    h, w, targets = _case(seed=int(temperature * 10) + int(with_entropy))
    kw = {"temperature": temperature, "with_entropy": with_entropy, "entropy_weight": entropy_weight}
    # The reference is the torch path in float64: the fused fp32 kernel is compared with the truth
    # (its one-pass entropy is in fact closer to it than the fp32 torch path: 8e-6 vs 6.5e-5).
    ref = _run(h.double(), w.double(), targets, fused=False, monkeypatch=monkeypatch, **kw)  # type: ignore[arg-type]
    assert entropy_mod._fused_kernels(h) is not None
    got = _run(h, w, targets, fused=True, monkeypatch=monkeypatch, **kw)  # type: ignore[arg-type]
    for name, a, b in zip(("logp", "entropy", "grad hidden", "grad weight"), got, ref, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a is not None and a.dtype == torch.float32
        torch.testing.assert_close(
            a, b.float(), rtol=1e-4, atol=3e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_fused_bf16_matches_torch_within_rounding(interpreter: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both paths take the same bf16 logits; only the summation order differs.
    h, w, targets = _case(seed=3, n=9, dtype=torch.bfloat16)
    kw = {"temperature": 1.0, "with_entropy": True, "entropy_weight": 0.5}
    ref = _run(h, w, targets, fused=False, monkeypatch=monkeypatch, **kw)  # type: ignore[arg-type]
    got = _run(h, w, targets, fused=True, monkeypatch=monkeypatch, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert got[1] is not None and ref[1] is not None
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-4)
    # Gradients leave the kernel rounded to bf16 in both paths.
    torch.testing.assert_close(got[2].float(), ref[2].float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[3].float(), ref[3].float(), rtol=2e-2, atol=2e-2)


def test_row_stats_hand_computed_and_masked_vocabulary(interpreter: None) -> None:
    from miles_sdk.algo import _triton_logprobs

    logits = torch.full((2, VOCAB), float("-inf"))
    logits[0, :2] = torch.tensor([0.0, 0.0])  # two equal choices: log(1/2) each, entropy log 2
    logits[1, VOCAB - 3 :] = torch.tensor([1.0, 2.0, 3.0])  # only the partial tile is finite
    lse, logp, ent = _triton_logprobs.row_stats(logits, torch.tensor([1, VOCAB - 1]), 1.0)
    z = torch.tensor([1.0, 2.0, 3.0])
    p = torch.softmax(z, 0)
    torch.testing.assert_close(
        lse, torch.tensor([torch.log(torch.tensor(2.0)).item(), torch.logsumexp(z, 0).item()])
    )
    torch.testing.assert_close(logp, torch.tensor([-0.6931472, torch.log(p[2]).item()]))
    torch.testing.assert_close(ent, torch.tensor([0.6931472, -(p * p.log()).sum().item()]))
    assert torch.isfinite(torch.stack([lse, logp, ent])).all()
