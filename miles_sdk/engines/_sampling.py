"""Batched token sampling shared by every embedded-engine path.

Randomness is counter-based: the Gumbel noise of row ``i`` at generation step ``s`` is a hash of
``(seed_i, s, token_id)``. A request's tokens therefore depend only on its own seed and logits,
never on which other requests share the batch or in what order they arrived, and no per-request
``torch.Generator`` (one kernel launch per row, hostile to CUDA graphs) is needed.
"""

from __future__ import annotations

import attrs
import torch

__all__ = [
    "RowParams",
    "gumbel_from_keys",
    "gumbel_noise",
    "row_keys",
    "sample_rows",
    "top_k_top_p_filter",
    "uniform_from_bits",
]

_MASK32 = 0xFFFFFFFF


@attrs.frozen
class RowParams:
    """The per-request sampling settings the model runner needs (the rest is host-side)."""

    temperature: float
    top_p: float
    top_k: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def needs_filter(self) -> bool:
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # "lowbias32" integer finaliser (C. Wellons). Values are kept in [0, 2**32) inside int64, so
    # every product fits the 64-bit wrap-around and the mask recovers the exact 32-bit result.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from its seed and step (both int64 tensors of shape [n])."""
    lo = seeds & _MASK32
    hi = (seeds >> 32) & _MASK32
    return _mix32(lo ^ _mix32((steps * 0x9E3779B9 + hi) & _MASK32))


def gumbel_from_keys(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise [n, vocab] from one 32-bit key per row (see :func:`row_keys`).

    The fused Triton sampler computes bit-identical uniforms from the same keys.
    """
    idx = _mix32(torch.arange(vocab, device=keys.device, dtype=torch.int64))
    bits = _mix32((idx[None, :] + keys[:, None]) & _MASK32)
    return -torch.log(-torch.log(uniform_from_bits(bits)))


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """u in [2**-24, 1 - 2**-24] (float32) from 32-bit hash values, so both logs of the Gumbel
    noise stay finite. 23 bits: (k + 0.5) is exact in float32 for k < 2**23; with 24 bits the
    largest k rounded up to exactly 1.0, and the noise of that token was +inf (it won whatever
    its logit: ~0.9% of the samples at a 152k vocabulary). The Triton sampler does the same."""
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise of shape [n, vocab], a pure function of (seed, step, token id)."""
    return gumbel_from_keys(row_keys(seeds, steps), vocab)


def top_k_top_p_filter(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set logits outside each row's top-k, then outside its top-p nucleus, to -inf.

    As in SGLang, top-k applies first and top-p is taken over the renormalised top-k mass. A token
    is kept when the mass strictly before it is below ``top_p``, so the best token always stays.
    ``top_k <= 0`` disables top-k for that row; ``top_p >= 1`` disables top-p.
    """
    vocab = scaled.shape[-1]
    vals, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k <= 0, torch.full_like(top_k, vocab), top_k)
    vals = vals.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = torch.softmax(vals, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    vals = vals.masked_fill(mass_before >= top_p[:, None], float("-inf"))
    return torch.empty_like(scaled).scatter_(-1, order, vals)


def sample_rows(
    logits: torch.Tensor,
    params: list[RowParams],
    steps: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return (token ids [n] int64, log-probs [n] float32).

    The log-prob is ``log_softmax(logits / temperature)`` at the chosen token (plain
    ``log_softmax`` for greedy rows), computed before top-k/top-p truncation, as Miles expects
    of the rollout log-probs.
    """
    dev = logits.device
    logits = logits.float()
    temps = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=dev)
    scaled = logits / temps[:, None]
    logp = torch.log_softmax(scaled, dim=-1)
    if all(p.greedy for p in params):
        tokens = logits.argmax(dim=-1)
    else:
        cand = scaled
        if any(p.needs_filter for p in params):
            top_k = torch.tensor([p.top_k for p in params], device=dev, dtype=torch.int64)
            top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=torch.float32)
            cand = top_k_top_p_filter(scaled, top_k, top_p)
        seeds = torch.tensor([p.seed for p in params], device=dev, dtype=torch.int64)
        steps_t = torch.tensor(steps, device=dev, dtype=torch.int64)
        sampled = (cand + gumbel_noise(seeds, steps_t, logits.shape[-1])).argmax(dim=-1)
        greedy = torch.tensor([p.greedy for p in params], device=dev)
        tokens = torch.where(greedy, logits.argmax(dim=-1), sampled)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
