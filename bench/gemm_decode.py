"""The decode step's GEMM shapes on W1 (GPU): cuBLAS (what the engine runs) against the best kernel
inductor's max-autotune finds (its Triton templates and cuBLAS), each timed as 24 calls captured in
one CUDA graph, next to the time to read the weight once.

    python -m bench.gemm_decode
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

SHAPES = {
    "qkv": (1152, 896),
    "o": (896, 896),
    "gate_up": (9728, 896),
    "down": (896, 4864),
    "lm_head": (151936, 896),
}


def graph_us(fn: Callable[[], object], calls: int = 24) -> float:
    """Microseconds per call of ``fn``, ``calls`` of them captured in one CUDA graph (after one
    warm-up call outside it), replayed 20 times."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 20 / calls * 1e6


def main() -> None:
    dev = torch.device("cuda")
    src = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: the first copy also pays first-touch costs (run 13 forgot it)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    torch.cuda.synchronize()
    bw = 2 * src.numel() * 20 / (time.perf_counter() - t0)  # bytes read + written per second
    print("| GEMM (M = 128) | weight MB | read time at copy bw, us | cuBLAS us | max-autotune us |")
    print("|---|---|---|---|---|")
    total = [0.0, 0.0, 0.0]
    for name, (n, k) in SHAPES.items():
        x = torch.randn(128, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        ideal = n * k * 2 / (bw / 2) * 1e6
        eager = graph_us(lambda x=x, w=w: F.linear(x, w))
        tuned_fn = torch.compile(F.linear, mode="max-autotune-no-cudagraphs", dynamic=False)
        tuned = graph_us(lambda x=x, w=w, f=tuned_fn: f(x, w))
        calls = 1 if name == "lm_head" else 24
        for i, v in enumerate((ideal, eager, tuned)):
            total[i] += v * calls
        print(f"| {name} {n}x{k} | {n * k * 2 / 1e6:.1f} | {ideal:.2f} | {eager:.2f} | {tuned:.2f} |")
    print(f"| per decode step (24 layers + head) | | {total[0]:.0f} | {total[1]:.0f} | {total[2]:.0f} |")


if __name__ == "__main__":
    main()
