"""Weight sync to engine replicas: disk (save_pretrained + /update_weights_from_disk on each replica)
vs a torch.distributed group (/update_weights_from_distributed, bucketed broadcast from the trainer)
vs tensor handles to the trainer's memory (/update_weights_from_tensor: shared memory on the CPU,
CUDA IPC on a GPU; replicas on the trainer's device only).

    python -m bench.weight_sync                       # CPU: tiny and 0.5B-shaped (bf16), 2 replicas
    python -m bench.weight_sync --models tiny --repeat 5
    python -m bench.weight_sync --device cuda --replicas 2   # GPUs: NCCL (replicas on cuda:1..)
    python -m bench.weight_sync --device cuda --colocate     # replicas on cuda:0 with the trainer

Each row: the median of ``--repeat`` syncs after one warm-up (the group's first sync also opens the
group: its time is printed apart). Disk times include writing the directory, as the Trainer's sync
does. Replica processes are spawned locally (distributed_launcher="processes"). The tensor method
runs when the replicas share the trainer's device: always on the CPU; on GPUs with ``--colocate``
(then every replica is on cuda:0 beside the trainer's weights, and the group row is left out: NCCL
cannot put two ranks of one group on one GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from bench.w1 import w1_model, w1_tokenizer
from miles_sdk.distributed.replicas import start_engine_replicas
from miles_sdk.engines.weight_group import WeightGroupSender
from miles_sdk.engines.weight_sync import save_for_sync
from miles_sdk.engines.weight_tensor import TensorSender, colocated
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy


def _model(name: str, device: torch.device) -> tuple[torch.nn.Module, Any]:
    if name == "tiny":
        model, tok = tiny_policy("unit", seed=0)
        return torch.nn.Module.to(model, device), tok
    return w1_model(device), w1_tokenizer()  # Qwen2.5-0.5B-shaped, bf16


async def _timed(repeat: int, sync: Callable[[int], Awaitable[None]], version: list[int]) -> list[float]:
    times: list[float] = []
    for _ in range(repeat + 1):
        version[0] += 1
        t0 = time.perf_counter()
        await sync(version[0])
        times.append(time.perf_counter() - t0)
    return times


def _row(name: str, mb: float, method: str, times: list[float]) -> str:
    return f"| {name} | {mb:.2f} | {method} | {statistics.median(times[1:]):.3f} | {times[0]:.3f} |"


async def _bench(name: str, device: torch.device, replicas: int, repeat: int, bucket: int, colocate: bool) -> list[str]:
    model, tok = _model(name, device)
    args = small_config(
        rollout_num_gpus=replicas, distributed_launcher="processes", device=device.type, colocate=colocate
    )
    engine = start_engine_replicas(args, model, tok, device)
    await engine.start()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows: list[str] = []
    mb = nbytes / 2**20
    version = [0]
    try:
        with tempfile.TemporaryDirectory(prefix="bench_weight_sync_") as tmp:

            async def from_disk(v: int) -> None:
                path = save_for_sync(model, Path(tmp) / "weights")
                await engine.load_weights_from_disk(str(path), v)

            rows.append(_row(name, mb, "disk", await _timed(repeat, from_disk, version)))
        if not (colocate and device.type == "cuda"):
            group = WeightGroupSender(backend="nccl" if device.type == "cuda" else "gloo", bucket_bytes=bucket)
            times = await _timed(repeat, lambda v: group.send(engine, model, v), version)
            group.close()
            rows.append(_row(name, mb, f"group ({group.backend})", times))
        off = colocated(engine, next(model.parameters()).device)
        if off:
            print(f"tensor: left out, replicas not on the trainer's device: {', '.join(off)}")
        else:
            tensors = TensorSender(bucket_bytes=bucket)
            kind = "CUDA IPC" if device.type == "cuda" else "shared memory"
            times = await _timed(repeat, lambda v: tensors.send(engine, model, v), version)
            rows.append(_row(name, mb, f"tensor ({kind})", times))
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
    parser.add_argument("--colocate", action="store_true", help="replicas on the trainer's GPU (tensor handles)")
    ns = parser.parse_args()
    device = torch.device(ns.device)
    print(f"weight sync to {ns.replicas} replicas on {device.type}; median of {ns.repeat} (first sync apart), seconds")
    print("| model | weights MiB | method | sync s | first sync s |")
    print("|---|---|---|---|---|")
    for name in ns.models:
        for row in asyncio.run(_bench(name, device, ns.replicas, ns.repeat, ns.bucket_mb * 2**20, ns.colocate)):
            print(row, flush=True)


if __name__ == "__main__":
    main()
