# mypy: ignore-errors
# Triton kernels are untyped by nature (tl.* is dynamic, and triton is absent on the CPU dev
# machines where mypy runs); the typed dispatch and the torch reference live in entropy.py.
"""One-pass Triton kernels over a chunk of LM-head logits (CUDA, or ``TRITON_INTERPRET=1``).

The torch path makes ~8 passes over fp32 ``[chunk, vocab]`` tensors per chunk (cast, logsumexp,
gather, exp, dot, and as many again in backward). These kernels read the logits once in their
own dtype and keep everything else in registers:

- ``row_stats``: per row, online over vocabulary tiles, ``lse``, the target's log-prob and the
  entropy ``lse - E_p[z]``.
- ``grad_logits_``: overwrites the logits with ``d(loss)/d(logits)`` in place, so backward needs no
  second ``[chunk, vocab]`` buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_V = 4096


@triton.jit
def _row_stats_kernel(z_ptr, tgt_ptr, lse_ptr, logp_ptr, ent_ptr, V, stride, inv_t, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * stride
    offs = tl.arange(0, BLOCK)
    # Running max, sum of exp(z - max) and sum of exp(z - max) * z, rescaled when the max grows.
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        valid = idx < V
        z = tl.load(base + idx, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # -inf logits (masked vocabulary) contribute nothing, and must not turn into NaN.
        scale = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))
        finite = z != float("-inf")
        e = tl.where(finite, tl.exp(z - m_new), 0.0)
        s = s * scale + tl.sum(e, axis=0)
        t = t * scale + tl.sum(e * tl.where(finite, z, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(tgt_ptr + row)
    z_t = tl.load(base + target).to(tl.float32) * inv_t
    tl.store(lse_ptr + row, lse)
    tl.store(logp_ptr + row, z_t - lse)
    tl.store(ent_ptr + row, lse - t / s)


@triton.jit
def _grad_logits_kernel(
    z_ptr, tgt_ptr, lse_ptr, ent_ptr, g_lp_ptr, g_ent_ptr, V, stride, inv_t,
    HAS_LP: tl.constexpr, HAS_ENT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < V
    ptrs = z_ptr + row * stride + idx
    z = tl.load(ptrs, mask=valid, other=0.0).to(tl.float32) * inv_t
    lse = tl.load(lse_ptr + row)
    p = tl.exp(z - lse)
    # d logp_target / dz = onehot - p;  dH / dz = -p (z - E_p[z]) with E_p[z] = lse - H.
    coef = tl.zeros_like(z)
    g_lp = 0.0
    if HAS_LP:
        g_lp = tl.load(g_lp_ptr + row)
        coef = coef - g_lp
    if HAS_ENT:
        g_ent = tl.load(g_ent_ptr + row)
        mean_z = lse - tl.load(ent_ptr + row)
        coef = coef - g_ent * (z - mean_z)
    grad = p * coef
    if HAS_LP:
        target = tl.load(tgt_ptr + row)
        grad = tl.where(idx == target, grad + g_lp, grad)
    tl.store(ptrs, (grad * inv_t).to(z_ptr.dtype.element_ty), mask=valid)


def row_stats(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lse, target log-prob, entropy) in fp32 for each row of ``logits / temperature``."""
    rows, vocab = logits.shape
    out = torch.empty(3, rows, dtype=torch.float32, device=logits.device)
    _row_stats_kernel[(rows,)](
        logits, targets, out[0], out[1], out[2], vocab, logits.stride(0), 1.0 / temperature,
        BLOCK=_BLOCK_V, num_warps=8,
    )  # fmt: skip
    return out[0], out[1], out[2]


def grad_logits_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    grad_log_probs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Overwrite ``logits`` with the gradient of ``sum(g_lp * logp + g_ent * H)`` w.r.t. them."""
    rows, vocab = logits.shape
    dummy = lse
    _grad_logits_kernel[(rows, triton.cdiv(vocab, _BLOCK_V))](
        logits, targets, lse, entropy,
        grad_log_probs if grad_log_probs is not None else dummy,
        grad_entropy if grad_entropy is not None else dummy,
        vocab, logits.stride(0), 1.0 / temperature,
        HAS_LP=grad_log_probs is not None, HAS_ENT=grad_entropy is not None,
        BLOCK=_BLOCK_V, num_warps=8,
    )  # fmt: skip
    return logits
