"""Split-K Triton GEMMs for the decode step's narrow GEMMs against cuBLAS (GPU).

    python -m bench.splitk_decode

W1's decode step at 128 rows, per layer, 24 layers with their own weights in one CUDA graph (so
weights come from HBM, as in the engine, not from L2):
- MLP tail: ``silu_mul`` + cuBLAS down-projection + ``add_rmsnorm`` (what the engine ran) against
  one split-K kernel with the SwiGLU in its prologue + ``add_rmsnorm`` summing the partials;
- attention output: cuBLAS o-projection + ``add_rmsnorm`` against split-K + ``add_rmsnorm``.
Every split-K configuration is checked against the cuBLAS result before it is timed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from triton.runtime.errors import OutOfResources

from miles_sdk.engines import _triton_kernels as tk

LAYERS, HIDDEN, INTER = 24, 896, 4864


def graph_us(fn: Callable[[], object]) -> float:
    """Microseconds per layer of ``fn`` (which runs all layers), replayed from one CUDA graph."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 50 / LAYERS * 1e6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


CONFIGS = [
    {"splits": sp, "block_n": bn, "block_k": bk, "num_warps": w}
    for sp, bn, bk, w in itertools.product((4, 8, 16), (32, 64, 128), (64, 128), (4, 8))
]


def compare(
    rows: int, name: str, swiglu: bool, n: int, k: int, configs: list[dict[str, int]]
) -> list[dict[str, int]]:
    """Print cuBLAS against each split-K config at ``rows``; return the configs, fastest first."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    res = torch.randn(rows, n, device=dev, dtype=dt)
    norm_w = torch.rand(n, device=dev, dtype=dt) + 0.5
    xs = [torch.randn(rows, 2 * k if swiglu else k, device=dev, dtype=dt) for _ in range(LAYERS)]
    ws = [torch.randn(n, k, device=dev, dtype=dt) * 0.02 for _ in range(LAYERS)]

    def cublas() -> None:
        for x, w in zip(xs, ws, strict=True):
            tk.add_rmsnorm(F.linear(tk.silu_mul(x) if swiglu else x, w), res, norm_w, 1e-6)

    ref_h, ref_s = tk.add_rmsnorm(F.linear(tk.silu_mul(xs[0]) if swiglu else xs[0], ws[0]), res, norm_w, 1e-6)
    base = graph_us(cublas)
    print(f"\nrows {rows}, {name}: cuBLAS path {base:.2f} us/layer")
    results = []
    for cfg in configs:
        if k // cfg["splits"] < cfg["block_k"]:
            continue
        try:
            h, s = tk.add_rmsnorm(tk.linear_splitk(xs[0], ws[0], swiglu, **cfg), res, norm_w, 1e-6)
        except OutOfResources as exc:  # a config too large for shared memory or registers
            print(f"  {cfg}: {type(exc).__name__}")
            continue
        err = max(rel_err(h, ref_h), rel_err(s, ref_s))
        assert err < 2e-2, (cfg, err)

        def fused(cfg: dict[str, int] = cfg) -> None:
            for x, w in zip(xs, ws, strict=True):
                tk.add_rmsnorm(tk.linear_splitk(x, w, swiglu, **cfg), res, norm_w, 1e-6)

        results.append((graph_us(fused), cfg, err))
    results.sort(key=lambda r: r[0])
    for us, cfg, err in results[:4]:
        print(f"  split-K {us:6.2f} us/layer ({base / us:.2f}x)  {cfg}  rel err {err:.1e}")
    return [cfg for _, cfg, _ in results]


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}; per layer, 24 layers with their own weights")
    for name, swiglu, n, k in (("down (SwiGLU prologue)", True, HIDDEN, INTER), ("o", False, HIDDEN, HIDDEN)):
        best = compare(128, name, swiglu, n, k, CONFIGS)
        for rows in (64, 16):  # smaller decode batches: the best few configs at 128 rows
            compare(rows, name, swiglu, n, k, best[:3])
        if swiglu:
            down_best = best[0]
    # For bench.engine_timeline --splitk.
    print("BEST", ",".join(str(down_best[key]) for key in ("splits", "block_n", "block_k", "num_warps")))


if __name__ == "__main__":
    main()
