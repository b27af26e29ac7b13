"""Where one fast-path decode step spends its time on W1 (GPU): graph replay ms/step per batch,
kernel time by category from an eager profile, and the host cost of a chunk.

    python -m bench.profile_decode
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench.w1 import PROMPT_LEN, VOCAB, w1_model
from miles_sdk.engines._fast import FastRunner
from miles_sdk.engines._sampling import RowParams


def runner_with(batch: int, model: torch.nn.Module) -> FastRunner:
    r = FastRunner(model, torch.device("cuda"), max_batch_size=batch, max_seq_len=512)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    for s in range(batch):
        r.admit(
            s, torch.randint(0, VOCAB - 2, (PROMPT_LEN,), generator=gen).tolist(), RowParams(1.0, 1.0, -1, s)
        )
    while r._pending:
        r.step()
    return r


def category(name: str) -> str:
    n = name.lower()
    for key, cat in (
        ("gemm", "gemm"), ("gemv", "gemm"), ("cutlass", "gemm"), ("sm90", "gemm"), ("nvjet", "gemm"),
        ("fmha", "attention"), ("attention", "attention"), ("flash", "attention"), ("efficient", "attention"),
        ("_add_rmsnorm", "rmsnorm"), ("_rope_store", "rope"), ("_silu_mul", "silu"), ("_sample", "sample"),
    ):  # fmt: skip
        if key in n:
            return cat
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--blas", choices=["cublas", "cublaslt"], default=None, help="torch's preferred BLAS library"
    )
    ns = ap.parse_args()
    if ns.blas:
        torch.backends.cuda.preferred_blas_library(ns.blas)
    model = w1_model(torch.device("cuda"))
    for batch in (128, 1024):
        r = runner_with(batch, model)
        r.step(16)  # captures the graph
        graph = next(iter(r._graphs.values()))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(48):
            if i % 16 == 0:
                r._counter.zero_()  # the token history holds one chunk
            graph.replay()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / 48 * 1e3
        r._synced = False  # the hand replays moved the device state past the host mirrors
        t0 = time.perf_counter()
        for _ in range(4):
            r.step(16)
        chunk_ms = (time.perf_counter() - t0) / 4 * 1e3
        r._counter.zero_()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            r._decode_body(batch, 256, False)
            torch.cuda.synchronize()
        by_cat: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for ev in prof.key_averages():
            if ev.device_type.name == "CUDA" or getattr(ev, "self_device_time_total", 0) > 0:
                t = getattr(ev, "self_device_time_total", 0.0)
                by_cat[category(ev.key)] += t / 1e3
                count[category(ev.key)] += ev.count
        print(f"\nbatch {batch}: graph replay {ms:.3f} ms/step ({batch / ms * 1e3:,.0f} tok/s); "
              f"runner.step(16) {chunk_ms:.2f} ms/chunk = {chunk_ms / 16:.3f} ms/step incl. host")  # fmt: skip
        for cat, t in sorted(by_cat.items(), key=lambda kv: -kv[1]):
            print(f"  {cat:<10} {t:8.3f} ms  ({count[cat]} kernels)")
        top = sorted(prof.key_averages(), key=lambda e: -getattr(e, "self_device_time_total", 0))[:12]
        for ev in top:
            print(
                f"    {getattr(ev, 'self_device_time_total', 0) / 1e3:8.3f} ms x{ev.count:<4} {ev.key[:90]}"
            )
        del r, graph
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
