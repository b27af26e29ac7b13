"""What FSDP2's machinery costs one rank (world size 1) per micro-batch, on W1's model.

    python -m bench.fsdp_ws1 [--device cuda] [--tokens 24576] [--repeat 5]

``train_backend="fsdp"`` keeps fp32 shards and casts them to bf16 for every forward (its
mixed-precision policy), again in the backward (each layer group is resharded after its forward),
and casts the bf16 gradients to fp32 for the reduce-scatter before adding them to the sharded
gradients. The torch backend keeps a bf16 working copy, casts the fp32 masters into it once per
optimizer step and adds each micro-batch's bf16 gradients into fp32 accumulators. This times:

* ``unshard``: all-gathering (at world size 1: casting and copying out) every group once;
* ``cast``: the bare fp32 -> bf16 cast of the same parameters (``torch._foreach_copy_``);
* a micro-batch's forward and backward of the decoder through the sharded model, with each layer
  resharded after its forward (as trained) and kept gathered (``reshard_after_forward=False``);
* the same forward and backward on a plain bf16 copy plus the fp32 gradient accumulation
  (the torch backend's work).

On the CPU it runs over gloo with a few layers and tokens (a smoke run and the memory-traffic
shares; the CPU's compute makes the FSDP share look smaller than on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bench.w1 import w1_config
from miles_sdk.distributed.launch import _free_port
from miles_sdk.distributed.sharding import shard_causal_lm
from miles_sdk.distributed.world import process_group_backend


def _time(device: torch.device, fn: Callable[[], object], repeat: int) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def _fsdp_groups(model: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (W1: 24; CPU default 4)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per micro-batch (W1 at 64: 24576)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    layers = args.layers or (24 if device.type == "cuda" else 4)
    tokens = args.tokens or (24576 if device.type == "cuda" else 256)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        process_group_backend(device.type),
        init_method=f"tcp://127.0.0.1:{_free_port()}",
        rank=0,
        world_size=1,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import Qwen2ForCausalLM

    mesh = init_device_mesh(device.type, (1,))
    torch.manual_seed(0)
    with torch.device(device):
        lm = Qwen2ForCausalLM(w1_config(layers))
    plain = copy.deepcopy(lm)
    nn.Module.to(plain, torch.bfloat16)  # the torch backend's working copy
    model = shard_causal_lm(lm, mesh, param_dtype=torch.bfloat16, cpu_offload=False)
    params = [p.to_local() for p in lm.parameters()]  # type: ignore[attr-defined]
    numel = sum(p.numel() for p in params)
    groups = _fsdp_groups(model)

    def unshard_all() -> None:
        for g in groups:
            g.unshard()
        for g in groups:
            g.reshard()

    bf16 = [torch.empty_like(p, dtype=torch.bfloat16) for p in params]
    ids = torch.randint(0, 1000, (1, tokens), device=device)

    def fsdp_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            hidden = model(input_ids=ids).last_hidden_state
        hidden.float().square().mean().backward()

    masters = [torch.zeros_like(p, dtype=torch.float32) for p in plain.parameters()]

    def plain_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            hidden = plain.model(input_ids=ids).last_hidden_state
        hidden.float().square().mean().backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in plain.parameters()]
        torch._foreach_add_(masters, grads)
        plain.zero_grad(set_to_none=True)

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "layers": layers,
        "tokens": tokens,
        "params": numel,
        "unshard_s": _time(device, unshard_all, args.repeat),
        "cast_s": _time(device, lambda: torch._foreach_copy_(bf16, params), args.repeat),
        "fsdp_fwd_bwd_s": _time(device, fsdp_step, args.repeat),
    }
    for g in groups:
        g.set_reshard_after_forward(False, recurse=False)
    out["fsdp_fwd_bwd_no_reshard_s"] = _time(device, fsdp_step, args.repeat)
    out["plain_fwd_bwd_s"] = _time(device, plain_step, args.repeat)
    out["fsdp_overhead_s"] = out["fsdp_fwd_bwd_s"] - out["plain_fwd_bwd_s"]
    out["no_reshard_saves_s"] = out["fsdp_fwd_bwd_s"] - out["fsdp_fwd_bwd_no_reshard_s"]
    # The cast reads 4 bytes and writes 2 per parameter.
    out["cast_GBps"] = 6 * numel / out["cast_s"] / 1e9
    for key, value in out.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
