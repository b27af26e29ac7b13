"""W1's GRPO step with train_backend="fsdp" over N ranks and M engine replicas: step time by phase
and each process's peak GPU memory, beside docs/scale-out.md's formula.

    python -m bench.scale_out --ranks 2 --replicas 2 [--steps 3] [--micro-batch-size 8]
    python -m bench.scale_out --ranks 4 --replicas 4 --gradient-checkpointing
    python -m bench.scale_out --device cpu --layers 1 --prompts 2 --response-len 4 --micro-batch-size 4 \
        --launcher processes --steps 2   # a smoke run of the script (CPU)

The W1 workload (bench.w1: Qwen2.5-0.5B-shaped, 16 prompts x 8 samples, prompt 128, response exactly
256, one optimizer step per rollout). GPU memory is read with ``nvidia-smi`` per process (what each
process's CUDA caching allocator reserved, plus its context: an upper bound of what it allocated),
sampled every 0.25 s; the formula (scripts/scale_out_memory.py) estimates allocated memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bench.w1 import PROMPT_LEN, PROMPTS, RESPONSE_LEN, SAMPLES, w1_config, w1_model, w1_tokenizer
from bench.w1_step import RandomPromptSource, exact_length, random_reward
from miles_sdk import Config, Trainer

GIB = 2**30


def _formula() -> Any:
    path = Path(__file__).parents[1] / "scripts" / "scale_out_memory.py"
    spec = importlib.util.spec_from_file_location("scale_out_memory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GpuMemorySampler:
    """Peak used GPU memory per process id, from ``nvidia-smi --query-compute-apps`` (no CUDA
    context of its own, unlike torch.cuda.mem_get_info on every device)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for line in out.splitlines():
                pid, used = (int(x) for x in line.split(","))
                self.peak[pid] = max(self.peak.get(pid, 0), used * 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=2, help="0 or 1: the engine in the driver's process")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--launcher", choices=["auto", "ray", "processes"], default="auto")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run of the script itself")
    ap.add_argument("--layers", type=int, default=24, help="fewer for a CPU smoke run")
    ap.add_argument("--prompts", type=int, default=PROMPTS, help="fewer for a CPU smoke run")
    ap.add_argument("--response-len", type=int, default=RESPONSE_LEN, help="shorter for a CPU smoke run")
    ns = ap.parse_args()

    device = torch.device(ns.device)
    on_cuda = device.type == "cuda"
    model = w1_model(device, layers=ns.layers)
    config = Config(
        device=ns.device,
        rollout_batch_size=ns.prompts,
        n_samples_per_prompt=SAMPLES,
        rollout_max_response_len=ns.response_len,
        rollout_max_context_len=PROMPT_LEN + ns.response_len,
        micro_batch_size=ns.micro_batch_size,
        num_steps_per_rollout=1,
        lr=1e-6,
        max_engine_batch_size=ns.prompts * SAMPLES,
        progress_bar=False,
        gradient_checkpointing=ns.gradient_checkpointing,
        train_backend="fsdp",
        actor_num_gpus_per_node=ns.ranks,
        rollout_num_gpus=ns.replicas if ns.replicas > 1 else None,
        distributed_launcher=ns.launcher,
        sglang_enable_deterministic_inference=True,
    )
    sampler = GpuMemorySampler() if on_cuda else None
    trainer = Trainer(
        config,
        model=model,
        tokenizer=w1_tokenizer(),
        data_source=RandomPromptSource(SAMPLES),
        generate_fn=exact_length,
        reward_model=random_reward,
    )
    ranks: list[int] = trainer.backend.ranks.pids()  # type: ignore[attr-defined]
    engine_pids = getattr(trainer.engine, "pids", None)
    replicas: list[int] = [p for p in engine_pids() if p is not None] if callable(engine_pids) else []
    print(f"scale-out step: {ns.ranks} ranks, {ns.replicas} replicas, micro-batch {ns.micro_batch_size}, "
          f"gradient checkpointing {ns.gradient_checkpointing}, launcher {ns.launcher}, {ns.layers} layers")
    rows = []
    for step in range(ns.steps):
        start = time.perf_counter()
        metrics = trainer.step()
        metrics["perf/step_time"] = time.perf_counter() - start
        rows.append(metrics)
        print(f"step {step}: {metrics['perf/step_time']:.2f} s " + " ".join(
            f"{k[5:-5]}={v:.3f}" for k, v in metrics.items() if k.startswith("perf/") and k.endswith("_time")
        ))  # fmt: skip
    trainer.close()
    if sampler is not None:
        sampler.stop()

    steady = rows[1:] or rows
    print()
    print("| phase | seconds (mean of steady steps) |")
    print("|---|---|")
    for key in ("step_time", "rollout_time", "log_prob_time", "train_time", "sync_time"):
        values = [r[f"perf/{key}"] for r in steady if f"perf/{key}" in r]
        if values:
            print(f"| {key[:-5]} | {statistics.mean(values):.3f} |")

    formula = _formula()
    cfg = w1_config(ns.layers)
    shape = formula.Shape(
        "W1", cfg.hidden_size, ns.layers, cfg.intermediate_size, cfg.num_attention_heads,
        cfg.num_key_value_heads, cfg.vocab_size, tied=True,
    )  # fmt: skip
    tokens = ns.micro_batch_size * (PROMPT_LEN + ns.response_len)
    estimate = formula.training_gib(shape, ns.ranks, tokens=tokens) if ns.gradient_checkpointing else float("nan")
    print()
    print(f"formula, per training GPU ({tokens} tokens per micro-batch, with gradient checkpointing): "
          f"{estimate:.2f} GiB; start-up peak {4 * shape.params / GIB:.2f} GiB; "
          f"engine weights {2 * shape.params / GIB:.2f} GiB")  # fmt: skip
    if sampler is None:
        print("GPU memory: not measured (CPU run)")
        return
    print()
    print("| process | pid | peak GPU memory (nvidia-smi) |")
    print("|---|---|---|")
    named = [("driver", os.getpid())] + [(f"rank {i}", p) for i, p in enumerate(ranks)]
    named += [(f"replica {i}", p) for i, p in enumerate(replicas)]
    for name, pid in named:
        peak = sampler.peak.get(pid)
        print(f"| {name} | {pid} | {'-' if peak is None else f'{peak / GIB:.2f} GiB'} |")


if __name__ == "__main__":
    main()
