"""Decode attention variants (GPU), 14 q / 2 kv heads, head_dim 64, bf16: W1's decode (128 rows at
contexts 256 and 384) and long contexts with few rows; 24 calls captured in one CUDA graph as in
the engine's step.

    python -m bench.attn_splits
"""

from __future__ import annotations

import itertools

import torch

from bench.gemm_decode import graph_us
from miles_sdk.engines import _triton_kernels as tk


def main() -> None:
    dev = torch.device("cuda")
    n_q, n_kv, d = 14, 2, 64
    print("| rows | context | splits | BLOCK_L | warps | us/call (graph of 24) | max abs diff vs baseline |")
    print("|---|---|---|---|---|---|---|")
    # W1's decode (128 rows, contexts 129..384) and long-response rollouts with few rows left.
    for rows, ctx in ((128, 256), (128, 384), (16, 4096), (8, 16384)):
        kc, vc = (torch.randn(rows, n_kv, ctx, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
        q = torch.randn(rows, n_q, d, device=dev, dtype=torch.bfloat16)
        pos = torch.full((rows,), ctx - 1, device=dev)
        base = tk.decode_attention(q, kc, vc, pos, 0.125, 1, 64, 4)
        for splits, block, warps in itertools.product((1, 2, 4, 8, 16), (64, 128), (2, 4)):
            if rows == 128 and splits > 4:
                continue
            try:
                out = tk.decode_attention(q, kc, vc, pos, 0.125, splits, block, warps)
                call = (q, kc, vc, pos, 0.125, splits, block, warps)
                us = graph_us(lambda call=call: tk.decode_attention(*call))
            except Exception as exc:  # noqa: BLE001 -- a config the compiler rejects (shared memory, registers)
                print(f"| {rows} | {ctx} | {splits} | {block} | {warps} | failed: {type(exc).__name__} | |")
                continue
            diff = float((out.float() - base.float()).abs().max())
            print(f"| {rows} | {ctx} | {splits} | {block} | {warps} | {us:.2f} | {diff:.1e} |")
        del kc, vc


if __name__ == "__main__":
    main()
