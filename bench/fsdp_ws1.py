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
import collections
import copy
import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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


# Ops that move no data: views, allocations, metadata.
_NO_TRAFFIC = {
    "aten.view", "aten._unsafe_view", "aten.as_strided", "aten.empty", "aten.empty_strided",
    "aten.empty_like", "aten.t", "aten.transpose", "aten.detach", "aten.alias", "aten.slice",
    "aten.split", "aten.split_with_sizes", "aten.narrow", "aten.expand", "aten.reshape",
    "aten.unsqueeze", "aten.squeeze", "aten.permute", "aten.select", "aten.resize_",
    "aten.set_", "aten._reshape_alias", "aten.new_empty", "aten.new_empty_strided",
    "aten.unbind", "aten.chunk", "aten.lift_fresh", "aten.is_same_size",
}  # fmt: skip


class _Traffic(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Bytes of the plain tensors each aten op reads and writes, by op (outputs that alias an
    input counted once; an in-place add's read of its destination is not counted): memory
    traffic that does not depend on the CPU's timing. A tensor subclass's op (DTensor) is left
    to the ops it runs on its local tensors."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.bytes: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        name = str(func.overloadpacket)
        if name not in _NO_TRAFFIC and all(type(t) in (torch.Tensor, nn.Parameter) for t in inputs):
            seen = {t.data_ptr() for t in inputs}
            outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            total = sum(t.numel() * t.element_size() for t in inputs)
            total += sum(t.numel() * t.element_size() for t in outputs if t.data_ptr() not in seen)
            self.bytes[name] += total
        return out


def _traffic(fn: Callable[[], object]) -> collections.Counter[str]:
    fn()  # warm: lazy init and first-call allocations out of the count
    counter = _Traffic()
    with counter:
        fn()
    return counter.bytes


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
    ap.add_argument("--traffic", action="store_true", help="count each op's bytes instead of timing")
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

    if args.traffic:
        fsdp = _traffic(fsdp_step)
        for g in groups:
            g.set_reshard_after_forward(False, recurse=False)
        no_reshard = _traffic(fsdp_step)
        plain_bytes = _traffic(plain_step)
        print(f"params {numel}, {layers} layers, {tokens} tokens; bytes per parameter, per micro-batch")
        print(f"{'op':40s} {'fsdp':>8s} {'no reshard':>10s} {'plain':>8s}")
        ops = sorted(set(fsdp) | set(plain_bytes), key=lambda k: plain_bytes[k] - fsdp[k])
        for op in ops:
            if abs(fsdp[op] - plain_bytes[op]) > 0.05 * numel:
                print(
                    f"{op:40s} {fsdp[op] / numel:8.2f} {no_reshard[op] / numel:10.2f} {plain_bytes[op] / numel:8.2f}"
                )
        totals = [sum(c.values()) / numel for c in (fsdp, no_reshard, plain_bytes)]
        print(f"{'total':40s} {totals[0]:8.2f} {totals[1]:10.2f} {totals[2]:8.2f}")
        dist.destroy_process_group()
        return
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
