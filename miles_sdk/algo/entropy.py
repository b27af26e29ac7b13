"""Chunked token log-probs and entropy over a large vocabulary.

``log_probs_and_entropy`` goes straight from the last hidden states and the LM-head weight to the
target log-probs: fp32 logits exist for one chunk of tokens at a time, in the forward *and* the
backward pass (a custom autograd Function recomputes each chunk's logits in backward). For a
151k-token vocabulary and 8k response tokens that is ~5 GB of fp32 logits never held at once.

``log_probs_and_entropy_from_logits`` is for a model that already returns logits: it checkpoints
each chunk so only one chunk's fp32 ``log_softmax`` is alive at a time.

Entropy is ``H = logsumexp(z) - sum(softmax(z) * z)`` with ``z = logits / temperature``.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["log_probs_and_entropy", "log_probs_and_entropy_from_logits"]


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _check(t: int, targets: torch.Tensor, chunk_size: int, temperature: float, where: str) -> None:
    if targets.dim() != 1 or targets.numel() != t:
        raise ValueError(f"{where}: targets has shape {tuple(targets.shape)}, expected ({t},)")
    if chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be >= 1, got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"{where}: temperature must be > 0, got {temperature}")


@functools.cache
def _triton_module() -> ModuleType | None:
    try:
        from miles_sdk.algo import _triton_logprobs
    except ImportError:  # CPU-only torch has no triton: the torch path runs
        return None
    return _triton_logprobs


FUSED_ON_CPU = False
"""Tests set this (with ``TRITON_INTERPRET=1``) to run the Triton kernels on CPU tensors."""


def _fused_kernels(hidden: torch.Tensor) -> ModuleType | None:
    """The one-pass Triton kernels where they can run: CUDA, or Triton's CPU interpreter (tests)."""
    if hidden.dtype == torch.float64:
        return None
    if not (hidden.is_cuda or (FUSED_ON_CPU and os.environ.get("TRITON_INTERPRET") == "1")):
        return None
    return _triton_module()


class _ChunkedLinearLogProbs(torch.autograd.Function):
    """hidden [T,H], weight [V,H], targets [T] -> (log_probs [T], entropy [T])."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        chunk_size: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(hidden, weight)
        n = hidden.shape[0]
        log_probs = torch.empty(n, dtype=dtype, device=hidden.device)
        entropy = torch.zeros(n, dtype=dtype, device=hidden.device)
        lse_all = torch.empty(n, dtype=dtype, device=hidden.device)
        fused = _fused_kernels(hidden)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            if fused is not None:
                lse, logp, ent = fused.row_stats(hidden[s:e] @ weight.t(), targets[s:e], temperature)
                lse_all[s:e], log_probs[s:e] = lse, logp
                if with_entropy:
                    entropy[s:e] = ent
                continue
            z = _chunk_logits(hidden[s:e], weight, dtype, temperature)
            lse = torch.logsumexp(z, dim=-1)
            lse_all[s:e] = lse
            log_probs[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lse
            if with_entropy:
                p = torch.exp(z - lse[:, None])
                entropy[s:e] = lse - torch.linalg.vecdot(p, z)
        ctx.save_for_backward(hidden, weight, targets, lse_all, entropy)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.with_entropy = with_entropy
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return log_probs, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_log_probs: torch.Tensor | None, grad_entropy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, lse_all, entropy = ctx.saved_tensors
        dtype = lse_all.dtype
        n = hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        # Accumulate the weight gradient in at least fp32 across chunks (bf16 sums drift); each
        # chunk's product itself runs in the input dtype (a bf16 GEMM is ~10x an fp32 one).
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        use_entropy = ctx.with_entropy and grad_entropy is not None
        fused = _fused_kernels(hidden)
        for s in range(0, n, ctx.chunk_size):
            e = min(s + ctx.chunk_size, n)
            h = hidden[s:e]
            if fused is not None:
                grad_logits = fused.grad_logits_(
                    h @ weight.t(),
                    targets[s:e],
                    lse_all[s:e],
                    entropy[s:e],
                    _rows(grad_log_probs, s, e, dtype),
                    _rows(grad_entropy, s, e, dtype) if use_entropy else None,
                    ctx.temperature,
                ).to(weight.dtype)
            else:
                grad_logits = _torch_grad_logits(
                    h, weight, targets[s:e], lse_all[s:e], entropy[s:e],
                    _rows(grad_log_probs, s, e, dtype),
                    _rows(grad_entropy, s, e, dtype) if use_entropy else None,
                    ctx.temperature,
                )  # fmt: skip
            if grad_h is not None:
                grad_h[s:e] = (grad_logits @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += grad_logits.t() @ h.to(weight.dtype)
        grad_weight = grad_w.to(weight.dtype) if grad_w is not None else None
        return grad_h, grad_weight, None, None, None, None


def _rows(grad: torch.Tensor | None, s: int, e: int, dtype: torch.dtype) -> torch.Tensor | None:
    return grad[s:e].to(dtype).contiguous() if grad is not None else None


def _torch_grad_logits(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    g_lp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """d(sum(g_lp * logp + g_ent * H))/d(logits) for one chunk, in the weight's dtype."""
    dtype = lse.dtype
    z = _chunk_logits(h, weight, dtype, temperature)
    p = (z - lse[:, None]).exp_()
    lp_col = g_lp[:, None] if g_lp is not None else None
    # In place on the chunk buffers: d logp_target/dz = onehot - p; dH/dz = -p (z - E_p[z]).
    if g_ent is not None:
        mean_z = (lse - entropy)[:, None]  # E_p[z] = lse - H
        grad_z = z.sub_(mean_z).mul_(-g_ent[:, None])
        if lp_col is not None:
            grad_z.sub_(lp_col)
        grad_z.mul_(p)
    elif lp_col is not None:
        grad_z = p.mul_(-lp_col)
    else:
        grad_z = z.zero_()
    if lp_col is not None:
        grad_z.scatter_add_(-1, targets[:, None], lp_col)
    if temperature != 1.0:
        grad_z.div_(temperature)
    return grad_z.to(weight.dtype)


def _chunk_logits(
    h: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype, temperature: float
) -> torch.Tensor:
    z = (h @ weight.t()).to(dtype)
    return z.div_(temperature) if temperature != 1.0 else z


def log_probs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target token and (optionally) the entropy, from hidden states.

    ``hidden [T, H]`` are the states that predict ``targets [T]``; ``weight [V, H]`` is the LM head.
    Results are fp32 (fp64 for fp64 inputs), differentiable w.r.t. ``hidden`` and ``weight``.
    At most one ``[chunk_size, V]`` block of logits (and its softmax) is alive at a time.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"log_probs_and_entropy: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} "
            "must be [T, H] and [V, H]"
        )
    _check(hidden.shape[0], targets, chunk_size, temperature, "log_probs_and_entropy")
    if hidden.shape[0] == 0:
        empty = torch.zeros(0, dtype=_compute_dtype(hidden, weight), device=hidden.device)
        # Keep the graph connected so backward still reaches the parameters.
        empty = empty + 0.0 * (hidden.sum() + weight.sum())
        return empty, (empty.clone() if with_entropy else None)
    log_probs, entropy = _ChunkedLinearLogProbs.apply(  # type: ignore[no-untyped-call]
        hidden, weight, targets.long(), float(temperature), int(chunk_size), bool(with_entropy)
    )
    return log_probs, (entropy if with_entropy else None)


def _chunk_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.to(_compute_dtype(logits)) / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    if with_entropy:
        ent = -(logp_all.exp() * logp_all).sum(-1)
    else:
        ent = torch.zeros_like(logp)
    return logp, ent


def log_probs_and_entropy_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same results as :func:`log_probs_and_entropy`, from already computed ``logits [T, V]``.

    Each chunk's fp32 work is checkpointed when gradients are needed, so its ``[chunk, V]``
    intermediates are recomputed in backward rather than kept for every chunk.
    """
    if logits.dim() != 2:
        raise ValueError(
            f"log_probs_and_entropy_from_logits: logits must be [T, V], got {tuple(logits.shape)}"
        )
    _check(logits.shape[0], targets, chunk_size, temperature, "log_probs_and_entropy_from_logits")
    targets = targets.long()
    grad = torch.is_grad_enabled() and logits.requires_grad
    lps: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    for s in range(0, logits.shape[0], chunk_size):
        e = min(s + chunk_size, logits.shape[0])
        if grad:
            out = checkpoint(
                _chunk_from_logits, logits[s:e], targets[s:e], temperature, with_entropy, use_reentrant=False
            )
            lp, ent = out[0], out[1]
        else:
            lp, ent = _chunk_from_logits(logits[s:e], targets[s:e], temperature, with_entropy)
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = torch.zeros(0, dtype=_compute_dtype(logits), device=logits.device) + 0.0 * logits.sum()
        return empty, (empty.clone() if with_entropy else None)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)
