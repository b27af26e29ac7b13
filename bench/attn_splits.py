"""Decode attention variants on W1's shape (GPU): 128 rows, 14 q / 2 kv heads, head_dim 64, contexts
129..384 (a decode step's spread), 24 calls captured in one CUDA graph as in the engine's step.

    python -m bench.attn_splits
"""

from __future__ import annotations

import itertools
import time

import torch

from miles_sdk.engines import _triton_kernels as tk


def main() -> None:
    dev = torch.device("cuda")
    rows, n_q, n_kv, d, cap = 128, 14, 2, 64, 512
    kc, vc = (torch.randn(rows, n_kv, cap, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
    q = torch.randn(rows, n_q, d, device=dev, dtype=torch.bfloat16)
    print("| context | splits | BLOCK_L | warps | us/call (graph of 24) | max abs diff vs baseline |")
    print("|---|---|---|---|---|---|")
    for ctx in (256, 384):
        pos = torch.full((rows,), ctx - 1, device=dev)
        base = tk.decode_attention(q, kc, vc, pos, 0.125)
        for splits, block, warps in itertools.product((1, 2, 4, 8), (32, 64, 128), (2, 4, 8)):
            try:
                out = tk.decode_attention(q, kc, vc, pos, 0.125, splits, block, warps)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(24):
                        tk.decode_attention(q, kc, vc, pos, 0.125, splits, block, warps)
                graph.replay()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(50):
                    graph.replay()
                torch.cuda.synchronize()
                us = (time.perf_counter() - t0) / 50 / 24 * 1e6
            except Exception as exc:  # noqa: BLE001 -- a config the compiler rejects (shared memory, registers)
                print(f"| {ctx} | {splits} | {block} | {warps} | failed: {type(exc).__name__} | |")
                continue
            diff = float((out.float() - base.float()).abs().max())
            print(f"| {ctx} | {splits} | {block} | {warps} | {us:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
