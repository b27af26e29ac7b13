"""Gradient accumulation of bf16 parameters with fp32 masters: error and step time, old vs new.

    python -m bench.grad_accum [--micro-batches 8 32 128] [--device cuda]

The model is a stack of bf16 decoder-shaped MLP blocks (hidden 896, intermediate 4864, W1's
widths) trained on random inputs with a shared mean, so micro-batch gradients add up coherently
as real ones largely do. For each micro-batch count it prints:

- the relative error of the accumulated gradient against the fp64 sum of the very same
  per-micro-batch bf16 gradients (what accumulation alone adds), summed as the old code did
  (autograd's bf16 ``.grad``) and as the new one does (fp32 master ``.grad`` via a hook);
- the optimizer step time (forward + backward over the micro-batches, clip, AdamW, write-back)
  of the old method (bf16 ``.grad``, cast to fp32 at the step) and of ``PolicyOptimizer`` now.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from miles_sdk import Config
from miles_sdk.backends.optim import PolicyOptimizer


def _model(layers: int, hidden: int, inter: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(hidden, inter, bias=False), nn.SiLU(), nn.Linear(inter, hidden, bias=False)]
    return nn.Sequential(*blocks).to(device=device, dtype=torch.bfloat16)


def _batches(n: int, rows: int, hidden: int, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(1)
    return [(torch.randn(rows, hidden, generator=gen) + 0.5).to(device, torch.bfloat16) for _ in range(n)]


def _backward_all(model: nn.Module, batches: list[torch.Tensor]) -> None:
    for x in batches:
        (model(x).float().square().mean() / len(batches)).backward()


def errors(model: nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(old, new) relative errors of the accumulated gradient vs the fp64 sum of the same
    per-micro-batch bf16 gradients."""
    params = list(model.parameters())
    ref = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    old = [torch.zeros_like(p) for p in params]  # bf16, as AccumulateGrad sums into .grad
    new = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for x in batches:
        for p in params:
            p.grad = None
        (model(x).float().square().mean() / len(batches)).backward()
        for p, r, o, n in zip(params, ref, old, new, strict=True):
            assert p.grad is not None
            r.add_(p.grad)
            o.add_(p.grad)
            n.add_(p.grad)
    for p in params:
        p.grad = None

    def rel(got: list[torch.Tensor]) -> float:
        num = sum(float((g.double() - r).square().sum()) for g, r in zip(got, ref, strict=True))
        den = sum(float(r.square().sum()) for r in ref)
        return math.sqrt(num / den)

    return rel(old), rel(new)


def _old_step(
    model: nn.Module, masters: list[torch.Tensor], opt: torch.optim.Optimizer
) -> Callable[[list[torch.Tensor]], None]:
    params = list(model.parameters())

    def step(batches: list[torch.Tensor]) -> None:
        _backward_all(model, batches)
        for m, p in zip(masters, params, strict=True):
            m.grad = None if p.grad is None else p.grad.to(torch.float32)
        torch.nn.utils.clip_grad_norm_(masters, 1.0)
        opt.step()
        with torch.no_grad():
            for m, p in zip(masters, params, strict=True):
                p.copy_(m)
                p.grad = None
                m.grad = None

    return step


def step_ms(
    step: Callable[[list[torch.Tensor]], None],
    batches: list[torch.Tensor],
    device: torch.device,
    repeats: int,
) -> float:
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first one warms up
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=256, help="tokens per micro-batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    hidden, inter = (896, 4864) if device.type == "cuda" else (128, 512)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; {args.layers} blocks, hidden {hidden}, intermediate {inter}, {args.rows} tokens / micro-batch"
    )
    print(
        "| micro-batches | rel. error, bf16 .grad (old) | rel. error, fp32 main grad (new) | step ms old | step ms new |"
    )
    print("|---|---|---|---|---|")
    for n in args.micro_batches:
        batches = _batches(n, args.rows, hidden, device)
        model = _model(args.layers, hidden, inter, device)
        old_err, new_err = errors(model, batches)
        masters = [p.detach().float().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(masters, lr=1e-6)
        old_ms = step_ms(_old_step(model, masters, opt), batches, device, args.repeats)
        model = _model(args.layers, hidden, inter, device)
        optim = PolicyOptimizer(Config(), list(model.parameters()), lr=1e-6, master_weights=True)

        def new_step(b: list[torch.Tensor], model: nn.Module = model, optim: PolicyOptimizer = optim) -> None:
            optim.zero_grad()
            _backward_all(model, b)
            optim.step(float(optim.clip(1.0)))

        new_ms = step_ms(new_step, batches, device, args.repeats)
        print(f"| {n} | {old_err:.3e} | {new_err:.3e} | {old_ms:.1f} | {new_ms:.1f} |")


if __name__ == "__main__":
    main()
