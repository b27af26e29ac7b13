"""Where the GPU idles during one end-to-end W1 generation through the embedded engine (GPU):
the GPU-busy time, and the largest gaps between kernels with the host ops that ran meanwhile.

    python -m bench.profile_engine
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from bench.w1 import PROMPTS, SAMPLES, prompts_and_params, run_engine, w1_model, w1_tokenizer
from miles_sdk.engines.embedded import EmbeddedEngine


def main() -> None:
    model = w1_model(torch.device("cuda"))
    engine = EmbeddedEngine(model, w1_tokenizer(), max_batch_size=PROMPTS * SAMPLES, max_seq_len=512)
    prompts, params = prompts_and_params(PROMPTS, SAMPLES)
    run_engine(engine, prompts, params)  # warm-up: kernels compiled, graphs captured
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tps = run_engine(engine, prompts, params)
    events = prof.events()
    gpu = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type.name == "CUDA")
    cpu = [e for e in events if e.device_type.name == "CPU"]
    t0 = min(e.time_range.start for e in cpu)
    t1 = max(e.time_range.end for e in cpu)
    busy, gaps, cursor = 0.0, [], gpu[0][0]
    for start, end in gpu:
        if start > cursor:
            gaps.append((start - cursor, cursor, start))
        busy += max(0.0, end - max(start, cursor))
        cursor = max(cursor, end)
    print(
        f"end to end {tps / 1e3:.1f}k tok/s; profiled span {(t1 - t0) / 1e3:.1f} ms; GPU busy {busy / 1e3:.1f} ms"
    )
    print(
        f"before the first kernel {(gpu[0][0] - t0) / 1e3:.2f} ms; after the last {(t1 - cursor) / 1e3:.2f} ms"
    )
    print(
        f"gaps over 0.2 ms: {sum(g for g, _, _ in gaps if g > 200) / 1e3:.2f} ms in {sum(g > 200 for g, _, _ in gaps)}"
    )
    for gap, start, end in sorted(gaps, reverse=True)[:12]:
        during = sorted(
            {
                e.name
                for e in cpu
                if e.time_range.start < end and e.time_range.end > start and e.cpu_parent is None
            }
        )
        print(f"  {gap / 1e3:6.2f} ms at +{(start - t0) / 1e3:7.1f} ms: {', '.join(during)[:150]}")


if __name__ == "__main__":
    main()
