"""The fast path's Triton kernels against their torch references on the CPU, through Triton's
interpreter (tests/conftest.py selects it on machines without CUDA). The same comparisons run
compiled on the GPU in test_fast_cuda.py."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("compiled Triton (CUDA machine): see test_fast_cuda.py", allow_module_level=True)

from miles_sdk.engines import _kernels, _triton_kernels

# The interpreter evaluates both sides of tl.where in numpy (exp(-inf - -inf) on masked lanes).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.mark.parametrize("block_l", [_triton_kernels._ATTN_BLOCK_L, 32])
@pytest.mark.parametrize("splits", [1, 2, 4])
def test_decode_attention_splits_match_the_reference(splits: int, block_l: int) -> None:
    g = torch.Generator().manual_seed(splits)
    n_q, n_kv, d, length = 14, 2, 64, 200
    kc, vc = (torch.randn(6, n_kv, 256, d, generator=g) for _ in range(2))
    q = torch.randn(6, n_q, d, generator=g)
    # Contexts of 1 token (later splits empty), block boundaries, and uneven shares; block_l 32
    # gives every split several blocks.
    pos = torch.tensor([0, 63, 64, 127, 130, 199])
    out = _triton_kernels.decode_attention(q, kc, vc, pos, 0.125, splits=splits, block_l=block_l)
    ref = _kernels.decode_attention(q, kc, vc, pos, length, 0.125)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_add_rmsnorm_and_silu_mul_match_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(5, 96, generator=g) for _ in range(2))
    w = torch.randn(96, generator=g)
    out, s = _triton_kernels.add_rmsnorm(x, r, w, 1e-6)
    ref_out, ref_s = _kernels.add_rmsnorm(x, r, w, 1e-6)
    torch.testing.assert_close(s, ref_s)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    gate_up = torch.randn(5, 2 * 80, generator=g)
    torch.testing.assert_close(_triton_kernels.silu_mul(gate_up), _kernels.silu_mul(gate_up))


def test_attention_splits_only_for_long_contexts_with_few_rows() -> None:
    assert _kernels.attention_splits(128, 2, 512) == 1  # W1
    assert _kernels.attention_splits(128, 2, 8192) == 1  # enough programs already
    assert _kernels.attention_splits(16, 2, 4096) == 8
    assert _kernels.attention_splits(8, 2, 16384) == 16
    assert _kernels.attention_splits(1, 2, 32768) == 16


# No bf16: the interpreter's bf16 tl.dot is wrong (the unchanged decode-attention kernel, which
# matches SDPA in bf16 on the GPU, returns garbage there); test_fast_cuda.py covers bf16 compiled.
# float16 runs the half-precision casts of p before p @ V.
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_rope_attend_matches_rope_store_then_attention(dtype: torch.dtype, shared: bool) -> None:
    g = torch.Generator().manual_seed(7)
    n_q, n_kv, d, length = 14, 2, 64, 160
    rows = 5
    qkv = torch.randn(rows, (n_q + 2 * n_kv) * d, generator=g).to(dtype)
    ang = torch.randn(length, d // 2, generator=g)
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
    # The first key only; cached keys filling one block exactly; one block boundary crossed.
    pos = torch.tensor([0, 1, 128, 129, 150])
    caches = [torch.randn(rows + 1, n_kv, length, d, generator=g).to(dtype) for _ in range(2)]
    # Shared: the first plen keys come from another slot (a GRPO group's lead), including the
    # extra slot 5, a whole block, and a share that ends mid-block.
    src = torch.tensor([1, 0, 5, 2, 3]) if shared else torch.arange(rows)
    plen = torch.tensor([0, 1, 128, 100, 64]) if shared else torch.zeros(rows, dtype=torch.long)
    ref_k, ref_v = (c.clone() for c in caches)
    ref = _kernels.rope_attend(qkv, cos, sin, pos, src, plen, ref_k, ref_v, n_q, length, 0.125)
    if not shared:  # the torch reference itself: rope_store, then attention over the row's keys
        alone_k, alone_v = (c.clone() for c in caches)
        q = _kernels.rope_store(qkv, cos, sin, pos, torch.arange(rows), alone_k, alone_v, n_q)
        torch.testing.assert_close(_kernels.decode_attention(q, alone_k, alone_v, pos, length, 0.125), ref)
    k, v = (c.clone() for c in caches)
    out = _triton_kernels.rope_attend(qkv, cos, sin, pos, src, plen, k, v, n_q, 0.125)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(k, ref_k)  # the new keys/values stored exactly as rope_store does
    torch.testing.assert_close(v, ref_v)


def test_fused_sampler_matches_the_reference_tokens_and_log_probs() -> None:
    g = torch.Generator().manual_seed(3)
    rows, vocab = 12, 5000  # several 2048-wide tiles per split, the last one partial
    logits = torch.randn(rows, vocab, generator=g) * 3
    logits[0, [17, 4000]] = 50.0  # a greedy tie: the lowest index wins
    temps = torch.rand(rows, generator=g) + 0.5
    greedy = torch.arange(rows) % 3 == 0
    temps = torch.where(greedy, torch.ones_like(temps), temps)
    seeds = torch.arange(rows) * 7919 + (1 << 40)
    steps = torch.full((rows,), 5)
    tok, lp = _triton_kernels.sample_plain(logits, temps, greedy, seeds, steps)
    ref_tok, ref_lp = _kernels.sample_plain(logits, temps, greedy, seeds, steps)
    assert tok.tolist() == ref_tok.tolist() and int(tok[0]) == 17
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)


def test_fused_sampler_never_picks_a_token_for_its_hash_alone() -> None:
    """The seed whose hash for token 3 is all ones (see test_sampling.py): the kernel's uniform
    stays below 1, so a token with a logit of -1e4 is not sampled."""
    from .test_sampling import ALL_ONES_SEED, ALL_ONES_TOKEN

    logits = torch.zeros(2, 4096)
    logits[:, ALL_ONES_TOKEN] = -1e4
    seeds = torch.tensor([ALL_ONES_SEED, ALL_ONES_SEED])
    temps, greedy, steps = torch.ones(2), torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.long)
    tok, lp = _triton_kernels.sample_plain(logits, temps, greedy, seeds, steps)
    ref_tok, ref_lp = _kernels.sample_plain(logits, temps, greedy, seeds, steps)
    assert tok.tolist() == ref_tok.tolist() and ALL_ONES_TOKEN not in tok.tolist()
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
