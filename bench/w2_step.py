"""W2: a full GRPO step on a Qwen2.5-7B-shaped policy on one GPU, with the memory flags.

    python -m bench.w2_step                                  # optimizer_cpu_offload on (needed on one H200)
    python -m bench.w2_step --no-offload --model 3b          # where the optimizer fits on the card
    python -m bench.w2_step --lora-rank 64                   # LoRA (only the adapter trains)

W2: hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 KV heads, vocab 152064, bf16, random
init; 8 prompts x 8 samples, prompt 256, response exactly 512 (EOS ignored), one optimizer step
per rollout, AdamW at 1e-6, no KL. Prints the steady step split by phase (the first step captures
CUDA graphs), the optimizer step's own time, train MFU (6 N tokens / time, against the bf16
matmul peak measured in the same run, with and without the optimizer step), decode tokens/s,
and the memory table of ``bench.memory`` for the last step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.memory import SHAPES, W2, Settings, Workload, computed, make_trainer, measure, table
from bench.w1 import ceilings

GiB = float(2**30)


def decode_roofline(shape: Any, work: Any, bandwidth: float) -> float:
    """New tokens/s if every decode step only streamed its bytes at ``bandwidth``: the weights
    (bf16; an untied input embedding is only gathered, so it is not counted) plus the KV cache of
    the whole batch at the mean context (prompt + response / 2)."""
    embedding = 0 if shape.tied else shape.vocab * shape.hidden
    weight_bytes = 2 * (shape.params() - embedding)
    kv_per_token = shape.layers * 2 * shape.kv_dim * 2
    context = work.prompt_len + work.response_len / 2
    step_bytes = weight_bytes + work.sequences * context * kv_per_token
    return float(work.sequences * bandwidth / step_bytes)


def time_optimizer(trainer: Any) -> list[float]:
    """Wrap the policy optimizer's step to time it (synchronised); returns the list it fills."""
    times: list[float] = []
    optim = trainer.backend.optim
    step: Callable[[float], None] = optim.step

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def timed(grad_norm: float) -> None:
        sync()
        t0 = time.perf_counter()
        step(grad_norm)
        sync()
        times.append(time.perf_counter() - t0)

    optim.step = timed
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--steps", type=int, default=2, help="steps run; the ones after the first are steady")
    ap.add_argument("--no-offload", action="store_true", help="optimizer state and masters on the device")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--offload-rollout", action="store_true", help="engine memory released during training")
    ap.add_argument("--micro-batch-size", type=int, default=W2.micro_batch_size)
    ap.add_argument(
        "--compile-model", choices=["auto", "on", "off"], default="off", help="off: no compile wait"
    )
    ap.add_argument(
        "--lora-rank", type=int, default=0, help="> 0: LoRA on all linear layers (alpha = 2 x rank)"
    )
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run with --model tiny")
    ap.add_argument("--json", default=None)
    ns = ap.parse_args(argv)
    device = torch.device(ns.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    shape = SHAPES[ns.model]
    work = Workload(W2.prompts, W2.samples, W2.prompt_len, W2.response_len, ns.micro_batch_size)
    if ns.model == "tiny":  # the CPU smoke run
        work = Workload(2, 2, 8, 8, 2)
    lora = ns.lora_rank > 0
    settings = Settings(
        optimizer_cpu_offload=not ns.no_offload and not lora,  # LoRA's optimizer state is tiny
        gradient_checkpointing=ns.gradient_checkpointing,
        offload_rollout=ns.offload_rollout,
        engine_slots=work.sequences,
        lora_rank=ns.lora_rank,
    )
    extra: dict[str, Any] = {"compile_model": ns.compile_model}
    if lora:
        extra |= {"lora_rank": ns.lora_rank, "lora_alpha": 2 * ns.lora_rank, "target_modules": "all-linear"}
    # Copy bandwidth (read + write) for the decode roofline and the bf16 matmul peak for MFU.
    bandwidth, peak_flops = ceilings(device) if device.type == "cuda" else (float("nan"), float("nan"))
    t0 = time.perf_counter()
    trainer = make_trainer(shape, work, settings, device, **extra)
    build_s = time.perf_counter() - t0
    opt_times = time_optimizer(trainer)
    print(
        f"W2 step: {ns.model} ({shape.params() / 1e9:.2f}B), {work.prompts}x{work.samples}, prompt "
        f"{work.prompt_len} + response {work.response_len}, micro-batch {work.micro_batch_size}, "
        f"optimizer_cpu_offload {settings.optimizer_cpu_offload}, gradient_checkpointing "
        f"{settings.gradient_checkpointing}, offload_rollout {settings.offload_rollout}, lora_rank {ns.lora_rank}, compile {ns.compile_model}, on "
        f"{name}; build {build_s:.1f} s"
    )
    metrics: list[dict[str, float]] = []
    step = trainer.step

    def recorded() -> dict[str, float]:
        m = step()
        metrics.append(m)
        return m

    trainer.step = recorded  # type: ignore[method-assign]
    try:
        mem = measure(trainer, ns.steps)
    finally:
        trainer.close()
    steady = metrics[1:] or metrics
    steady_s = mem["step_s"][1:] or mem["step_s"]
    opt_steady = opt_times[1:] or opt_times

    def mean(key: str) -> float:
        return statistics.mean(m.get(key, float("nan")) for m in steady)

    tokens = work.sequences * work.seq_len
    new_tokens = work.sequences * work.response_len
    train_s, rollout_s = mean("perf/train_time"), mean("perf/rollout_time")
    opt_s = statistics.mean(opt_steady) if opt_steady else 0.0
    flops = 6 * shape.params() * tokens
    print("\n| phase | seconds | rate |\n|---|---|---|")
    print(f"| full GRPO step (steady) | {statistics.mean(steady_s):.2f} | |")
    print(
        f"| first step (graph capture{', compile' if ns.compile_model != 'off' else ''}) | {mem['step_s'][0]:.2f} | |"
    )
    print(
        f"| rollout (generate + reward) | {rollout_s:.2f} | {new_tokens / rollout_s / 1e3:.1f}k new tok/s |"
    )
    roofline = decode_roofline(shape, work, bandwidth)
    print(
        f"| engine vs its decode roofline | | {new_tokens / rollout_s / roofline:.0%} of {roofline / 1e3:.1f}k new "
        f"tok/s at {bandwidth / 1e12:.2f} TB/s (the rollout time includes prefill and rewards) |"
    )
    print(f"| old log-probs | {mean('perf/log_prob_time'):.2f} | |")
    print(f"| train (fwd + bwd + optimizer) | {train_s:.2f} | MFU {flops / train_s / peak_flops:.1%} |")
    print(
        f"| of which optimizer step | {opt_s:.2f} | fwd+bwd MFU {flops / max(train_s - opt_s, 1e-9) / peak_flops:.1%} |"
    )
    print(f"| weight sync | {mean('perf/sync_time') * 1e3:.1f} ms | |")
    print(f"| bf16 matmul peak (measured) | | {peak_flops / 1e12:.0f} TFLOP/s |")
    print()
    print("\n".join(table(computed(shape, work, settings), mem["owners"])))
    if ns.json:
        summary = {
            "model": ns.model, "lora_rank": ns.lora_rank, "offload": settings.optimizer_cpu_offload,
            "gradient_checkpointing": settings.gradient_checkpointing, "step_s": mem["step_s"],
            "rollout_s": rollout_s, "train_s": train_s, "optimizer_s": opt_s,
            "train_mfu": flops / train_s / peak_flops, "memory": mem["owners"], "phases": mem["phases"],
            "device": name, "decode_roofline_tok_s": roofline, "copy_bandwidth": bandwidth,
        }  # fmt: skip
        with open(ns.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
