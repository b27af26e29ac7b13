"""Where a fast-path prefill of W1 (16 prompts x 8 samples x 128 tokens) spends its time (GPU).

python -m bench.profile_prefill
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.w1 import PROMPT_LEN, VOCAB, w1_model
from miles_sdk.engines._fast import FastRunner
from miles_sdk.engines._sampling import RowParams


def main() -> None:
    model = w1_model(torch.device("cuda"))
    r = FastRunner(model, torch.device("cuda"), max_batch_size=128, max_seq_len=512)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randint(0, VOCAB - 2, (PROMPT_LEN,), generator=gen).tolist() for _ in range(16)]

    def prefill() -> float:
        r.reset()
        for s in range(128):
            r.admit(s, base[s // 8], RowParams(1.0, 1.0, -1, s))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            r.step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    print("prefill s:", [round(prefill(), 4) for _ in range(3)])
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prefill()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=60))


if __name__ == "__main__":
    main()
