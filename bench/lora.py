"""LoRA against full-parameter training on the W1 workload: step time by phase, peak memory,
what trains, the checkpoint, and the engine/trainer log-prob gap on on-policy steps.

    python -m bench.lora                         # Qwen2.5-0.5B shape, rank 64, on the GPU
    python -m bench.lora --model 3b --rank 16
    python -m bench.lora --model tiny --device cpu --steps 2   # smoke run of the script

Each mode builds its own random-init policy (bench.memory's shapes, bf16 on CUDA), runs ``--steps``
GRPO steps of W1 (16 prompts x 8 samples, prompt 128, response exactly 256, one optimizer step per
rollout), and reports the steady steps (after the first). LoRA: all-linear, alpha = 2 x rank. The
learning rates differ (full 1e-6, LoRA 1e-4) so that each moves its weights; the gap column is the
on-policy ``train_rollout_logprob_abs_diff``: the engine samples from base + adapter merged at each
sync (bf16), the trainer runs base + adapter unmerged (bf16 base, fp32 adapter under autocast).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

import torch

from bench.memory import SHAPES, W1, Settings, Workload, make_trainer

GiB = float(2**30)
PHASES = ("rollout", "log_prob", "train", "sync")


def run_mode(model: str, work: Workload, device: torch.device, steps: int, rank: int) -> dict[str, Any]:
    """Build a trainer (``rank`` 0: full parameters), run ``steps`` steps, return the figures."""
    extra: dict[str, Any] = {}
    if rank:
        extra = {"lora_rank": rank, "lora_alpha": 2 * rank, "target_modules": "all-linear"}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    settings = Settings(engine_slots=work.sequences)
    t0 = time.perf_counter()
    trainer = make_trainer(SHAPES[model], work, settings, device, **extra)
    build_s = time.perf_counter() - t0
    if rank:  # bench.memory builds at W1's 1e-6; an adapter needs more to move
        backend: Any = trainer.backend  # the torch backend
        for group in backend.optimizer.param_groups:
            group["lr"] = 1e-4
        backend.scheduler.base_lrs = [1e-4 for _ in backend.optimizer.param_groups]
    try:
        trained = sum(p.numel() for p in trainer.policy.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.policy.model.parameters())
        step_s: list[float] = []
        metrics: list[dict[str, float]] = []
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            metrics.append(trainer.step())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_s.append(time.perf_counter() - t0)
        state = trainer.backend.state_dict()["model"]
        checkpoint_model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    finally:
        trainer.close()
    steady = metrics[1:] or metrics

    def mean(key: str) -> float:
        return statistics.mean(m.get(key, float("nan")) for m in steady)

    out: dict[str, Any] = {
        "mode": f"LoRA r{rank}" if rank else "full",
        "build_s": build_s,
        "step_s": statistics.mean(step_s[1:] or step_s),
        "first_step_s": step_s[0],
        "trained_params": trained,
        "total_params": total,
        "checkpoint_model_gib": checkpoint_model_bytes / GiB,
        "gap_max": max(m.get("train/train_rollout_logprob_abs_diff", float("nan")) for m in metrics),
        "peak_gib": torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else float("nan"),
    }
    for phase in PHASES:
        out[f"{phase}_s"] = mean(f"perf/{phase}_time")
    del trainer
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument(
        "--steps", type=int, default=4, help="steps per mode; the ones after the first are steady"
    )
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run with --model tiny")
    ap.add_argument("--json", default=None)
    ns = ap.parse_args(argv)
    device = torch.device(ns.device)
    work = W1 if ns.model != "tiny" else Workload(2, 2, 8, 8, 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [run_mode(ns.model, work, device, ns.steps, rank) for rank in (0, ns.rank)]
    print(
        f"LoRA vs full: {ns.model}, {work.prompts}x{work.samples}, prompt {work.prompt_len} + response "
        f"{work.response_len}, micro-batch {work.micro_batch_size}, {ns.steps} steps, on {name}\n"
    )
    print(
        "| mode | trained params | step s (steady) | rollout | log-prob | train | sync | first step s "
        "| peak GiB | checkpoint model GiB | on-policy gap (max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['trained_params'] / 1e6:.2f}M of {r['total_params'] / 1e6:.1f}M "
            f"| {r['step_s']:.3f} | {r['rollout_s']:.3f} | {r['log_prob_s']:.3f} | {r['train_s']:.3f} "
            f"| {r['sync_s'] * 1e3:.1f} ms | {r['first_step_s']:.2f} | {r['peak_gib']:.1f} "
            f"| {r['checkpoint_model_gib']:.3f} | {r['gap_max']:.2e} |"
        )
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"device": name, "model": ns.model, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
