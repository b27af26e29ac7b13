"""The fused per-layer operations of the fast decode path, each with a torch reference.

Every function reproduces the rounding of the transformers modules it replaces (bf16 products
rounded where transformers rounds them), so the fast path stays token-identical to the generic
one in float32 and within bf16 noise otherwise. On CUDA with Triton present the fused kernels of
``_triton_kernels`` run; elsewhere (CPU tests) the torch references do.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
import torch.nn.functional as F

from miles_sdk.engines._sampling import gumbel_from_keys, row_keys

__all__ = [
    "add_rmsnorm",
    "advance",
    "decode_attention",
    "rope_attend",
    "rope_store",
    "sample_advance",
    "sample_plain",
    "silu_mul",
    "triton_available",
]


@functools.cache
def _triton() -> ModuleType | None:
    try:
        from miles_sdk.engines import _triton_kernels
    except ImportError:  # no triton (CPU-only torch): the torch references run instead
        return None
    return _triton_kernels


def triton_available() -> bool:
    """Whether the fused Triton kernels can be used (Triton importable)."""
    return _triton() is not None


def _use_triton(x: torch.Tensor) -> ModuleType | None:
    return _triton() if x.is_cuda else None


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = residual + x`` (or ``x`` alone), then ``(rmsnorm(s) * weight, s)``, rows of [R, H]."""
    tk = _use_triton(x)
    if tk is not None:
        out: tuple[torch.Tensor, torch.Tensor] = tk.add_rmsnorm(x, residual, weight, eps)
        return out
    s = x if residual is None else residual + x
    sf = s.float()
    normed = (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype)
    return weight * normed, s


def rope_store(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    slot: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_q: int,
) -> torch.Tensor:
    """Rotate q and k of each row, store k and v at ``cache[slot, :, pos]``, return q [R, Hq, D].

    ``qkv`` is [R, (Hq + 2 Hkv) * D]; ``cos``/``sin`` are [L, D] tables; caches [S, Hkv, L, D].
    """
    tk = _use_triton(qkv)
    if tk is not None:
        q_out: torch.Tensor = tk.rope_store(qkv, cos, sin, pos, slot, k_cache, v_cache, n_q)
        return q_out
    rows = qkv.shape[0]
    d = k_cache.shape[-1]
    heads = qkv.view(rows, -1, d)
    n_kv = k_cache.shape[1]
    c = cos[pos][:, None, :]
    s = sin[pos][:, None, :]
    qk = heads[:, : n_q + n_kv]
    half = d // 2
    rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
    qk = (qk * c) + (rotated * s)
    k_cache[slot, :, pos] = qk[:, n_q:]
    v_cache[slot, :, pos] = heads[:, n_q + n_kv :]
    return qk[:, :n_q]


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    length: int,
    scale: float,
) -> torch.Tensor:
    """One decode step of GQA attention: row ``i`` (= cache slot ``i``) attends to its keys
    ``0..pos[i]``. ``q`` is [B, Hq, D]; returns [B, Hq * D]. ``length`` bounds every ``pos + 1``
    (the torch reference reads the cache up to it; the kernel reads only what each row needs).
    """
    tk = _use_triton(q)
    if tk is not None:
        splits = attention_splits(q.shape[0], k_cache.shape[1], length)
        out: torch.Tensor = tk.decode_attention(q, k_cache, v_cache, pos, scale, splits)
        return out
    batch, n_q, d = q.shape
    n_kv = k_cache.shape[1]
    valid = (torch.arange(length, device=q.device)[None, :] <= pos[:, None])[:, None, None, :]
    # GQA as a short "query sequence" per kv head: [B, Hkv, G, D] against [B, Hkv, L, D].
    att = F.scaled_dot_product_attention(
        q.view(batch, n_kv, n_q // n_kv, d),
        k_cache[:batch, :, :length],
        v_cache[:batch, :, :length],
        attn_mask=valid,
        scale=scale,
    )
    return att.reshape(batch, n_q * d)


def rope_attend(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    src: torch.Tensor,
    plen: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_q: int,
    length: int,
    scale: float,
) -> torch.Tensor:
    """One decode step's :func:`rope_store` then :func:`decode_attention`, row ``i`` being slot
    ``i``: one kernel on CUDA (the rotated q never leaves registers). Returns [B, Hq * D].

    Keys ``0..plen[i]-1`` are read from slot ``src[i]`` (the lead slot of the row's GRPO group,
    whose prompt keys equal the row's own copy): the group reads one copy of its prompt.
    """
    tk = _use_triton(qkv)
    # tl.dot needs 16-wide operands: the fused kernel splits each head into two halves.
    fits = k_cache.shape[-1] >= 32 and attention_splits(qkv.shape[0], k_cache.shape[1], length) == 1
    if tk is not None and fits:
        out: torch.Tensor = tk.rope_attend(qkv, cos, sin, pos, src, plen, k_cache, v_cache, n_q, scale)
        return out
    rows = torch.arange(qkv.shape[0], device=qkv.device)
    q = rope_store(qkv, cos, sin, pos, rows, k_cache, v_cache, n_q)
    if tk is not None:  # the other CUDA kernels read each row's own copy
        return decode_attention(q, k_cache, v_cache, pos, length, scale)
    shared = (torch.arange(length, device=qkv.device)[None, :] < plen[:, None])[:, None, :, None]
    keys = torch.where(shared, k_cache[src, :, :length], k_cache[rows, :, :length])
    values = torch.where(shared, v_cache[src, :, :length], v_cache[rows, :, :length])
    return decode_attention(q, keys, values, pos, length, scale)


def attention_splits(rows: int, kv_heads: int, length: int) -> int:
    """Key splits per (row, kv head) for the decode attention (flash-decoding).

    One program per (row, kv head) walks its keys in sequence; with few rows and long contexts
    most of the GPU idles. Measured on an H200 (bench.attn_splits): 16 rows at 4,096 keys 47 ->
    11 us with 8 splits, 8 rows at 16,384 keys 182 -> 22 us with 16; 128 rows at 256-384 keys were
    fastest unsplit. So: split long contexts until there are about 256 programs.
    """
    if length < 1024:
        return 1
    splits = 1
    while splits < 16 and rows * kv_heads * splits * 2 <= 256:
        splits *= 2
    return splits


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` of shape [R, 2 I]."""
    tk = _use_triton(gate_up)
    if tk is not None:
        out: torch.Tensor = tk.silu_mul(gate_up)
        return out
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def sample_plain(
    logits: torch.Tensor, temps: torch.Tensor, greedy: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max sampling without top-k/top-p: (tokens [B] int64, log-probs [B] float32).

    ``temps`` is 1 on greedy rows; the log-prob is ``log_softmax(logits / temp)`` at the token.
    The noise of each row is :func:`~miles_sdk.engines._sampling.row_keys` of (seed, step).
    """
    tk = _use_triton(logits)
    if tk is not None:
        out: tuple[torch.Tensor, torch.Tensor] = tk.sample_plain(logits, temps, greedy, seeds, steps)
        return out
    scaled = logits.float() / temps[:, None]
    noise = gumbel_from_keys(row_keys(seeds, steps), logits.shape[-1])
    score = torch.where(greedy[:, None], scaled, scaled + noise)
    tokens = score.argmax(dim=-1)
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, logp


def sample_advance(
    logits: torch.Tensor,
    temps: torch.Tensor,
    greedy: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """:func:`sample_plain`, then advance the decode state in place:
    ``state = (tok, pos, hist_tok, hist_lp, counter)``: ``hist_*[counter] = sampled``,
    ``tok = sampled``, ``pos += 1``, ``steps += 1``, ``counter += 1`` (one fused pass on CUDA)."""
    tok, pos, hist_tok, hist_lp, counter = state
    tk = _use_triton(logits)
    if tk is not None:
        tk.sample_advance(logits, temps, greedy, seeds, steps, tok, pos, hist_tok, hist_lp, counter)
        return
    tokens, logp = sample_plain(logits, temps, greedy, seeds, steps)
    advance(tokens, logp, steps, state)


def advance(
    tokens: torch.Tensor,
    logp: torch.Tensor,
    steps: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """The state update of :func:`sample_advance` for tokens sampled elsewhere."""
    tok, pos, hist_tok, hist_lp, counter = state
    hist_tok.index_copy_(0, counter, tokens[None])
    hist_lp.index_copy_(0, counter, logp[None])
    counter.add_(1)
    tok.copy_(tokens)
    pos.add_(1)
    steps.add_(1)
