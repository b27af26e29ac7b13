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


@pytest.mark.parametrize("splits", [1, 2, 4])
def test_decode_attention_splits_match_the_reference(splits: int) -> None:
    g = torch.Generator().manual_seed(splits)
    n_q, n_kv, d, length = 14, 2, 64, 200
    kc, vc = (torch.randn(6, n_kv, 256, d, generator=g) for _ in range(2))
    q = torch.randn(5, n_q, d, generator=g)
    # Contexts of 1 token (later splits empty), a block boundary, and uneven shares.
    pos = torch.tensor([0, 63, 64, 130, 199])
    out = _triton_kernels.decode_attention(q, kc, vc, pos, 0.125, splits=splits)
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
