"""Weight sync to engine replicas: disk (save_pretrained + /update_weights_from_disk on each replica)
vs a torch.distributed group (/update_weights_from_distributed, bucketed broadcast from the trainer).

    python -m bench.weight_sync                       # CPU: tiny and 0.5B-shaped (bf16), 2 replicas
    python -m bench.weight_sync --models tiny --repeat 5
    python -m bench.weight_sync --device cuda --replicas 2   # GPUs: NCCL (replicas on cuda:1..)

Each row: the median of ``--repeat`` syncs after one warm-up (the group's first sync also opens the
group: its time is printed apart). Disk times include writing the directory, as the Trainer's sync
does. Replica processes are spawned locally (distributed_launcher="processes").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.w1 import w1_model, w1_tokenizer
from miles_sdk.distributed.replicas import start_engine_replicas
from miles_sdk.engines.weight_group import WeightGroupSender
from miles_sdk.engines.weight_sync import save_for_sync
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy


def _model(name: str, device: torch.device) -> tuple[torch.nn.Module, Any]:
    if name == "tiny":
        model, tok = tiny_policy("unit", seed=0)
        return torch.nn.Module.to(model, device), tok
    return w1_model(device), w1_tokenizer()  # Qwen2.5-0.5B-shaped, bf16


async def _bench(name: str, device: torch.device, replicas: int, repeat: int, bucket: int) -> list[str]:
    model, tok = _model(name, device)
    args = small_config(rollout_num_gpus=replicas, distributed_launcher="processes", device=device.type)
    engine = start_engine_replicas(args, model, tok, device)
    await engine.start()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows: list[str] = []
    try:
        version = 0
        with tempfile.TemporaryDirectory(prefix="bench_weight_sync_") as tmp:
            disk: list[float] = []
            for _ in range(repeat + 1):
                version += 1
                t0 = time.perf_counter()
                path = save_for_sync(model, Path(tmp) / "weights")
                await engine.load_weights_from_disk(str(path), version)
                disk.append(time.perf_counter() - t0)
        sender = WeightGroupSender(backend="nccl" if device.type == "cuda" else "gloo", bucket_bytes=bucket)
        group: list[float] = []
        for _ in range(repeat + 1):
            version += 1
            t0 = time.perf_counter()
            await sender.send(engine, model, version)
            group.append(time.perf_counter() - t0)
        sender.close()
        mb = nbytes / 2**20
        rows.append(f"| {name} | {mb:.2f} | disk | {statistics.median(disk[1:]):.3f} | {disk[0]:.3f} |")
        rows.append(f"| {name} | {mb:.2f} | group ({sender.backend}) | {statistics.median(group[1:]):.3f} | {group[0]:.3f} |")
    finally:
        await engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "0.5b"], choices=["tiny", "0.5b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=512, help="update_weight_buffer_size in MiB")
    ns = parser.parse_args()
    device = torch.device(ns.device)
    print(f"weight sync to {ns.replicas} replicas on {device.type}; median of {ns.repeat} (first sync apart), seconds")
    print("| model | weights MiB | method | sync s | first sync s |")
    print("|---|---|---|---|---|")
    for name in ns.models:
        for row in asyncio.run(_bench(name, device, ns.replicas, ns.repeat, ns.bucket_mb * 2**20)):
            print(row, flush=True)


if __name__ == "__main__":
    main()
