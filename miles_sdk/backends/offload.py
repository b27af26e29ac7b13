"""``optimizer_cpu_offload``: fp32 master weights and AdamW state in host memory (Miles's
``--optimizer-cpu-offload``, Megatron's hybrid CPU optimizer with the whole step on the host).

Why: a 7B bf16 policy holds 15 GB of weights, but its fp32 masters (30 GB) and AdamW moments
(61 GB) do not fit beside them, the gradients and the engine on one 141 GB card. Offloaded, the
device keeps the bf16 weights and one fp32 gradient accumulator per parameter (Megatron's
``main_grad``, so micro-batch gradients still sum in fp32); the host keeps the masters and the
moments and runs AdamW.

The step goes in chunks of parameters, pipelined: the gradients of chunk i+1 copy to pinned host
memory (a side stream) while the host steps chunk i, and chunk i's new weights copy back to the
device (another side stream) while the host steps chunk i+1. The gradient accumulators are freed
after the step, so the device holds gradients only between the first backward and the step.

The result equals :class:`~miles_sdk.backends.optim.PolicyOptimizer`'s: the same fp32 AdamW
on the same fp32 masters with the same clipped gradients (tests/perf/test_offload.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from miles_sdk.backends.optim import PolicyOptimizer
from miles_sdk.config import Config

__all__ = ["OffloadedOptimizer"]

CHUNK_BYTES = 512 * 2**20
"""fp32 gradient bytes per pipelined chunk (a parameter larger than this is a chunk of its own)."""


class OffloadedOptimizer(PolicyOptimizer):
    """:class:`PolicyOptimizer`'s interface (the torch backend calls it the same way) with the
    masters and the AdamW state on the host. ``masters`` are host fp32 tensors; ``grad_buffers``
    the device's fp32 gradient accumulators (None outside a step)."""

    def __init__(
        self, args: Config, params: list[nn.Parameter], *, lr: float, chunk_bytes: int = CHUNK_BYTES
    ) -> None:
        # PolicyOptimizer.__init__ is not called: its masters would live on the device.
        self.params = params
        self.device = params[0].device if params else torch.device("cpu")
        self._cuda = self.device.type == "cuda"
        # Plain host memory: the copies go through the pinned staging buffers, so pinning 30 GB
        # of masters (7B) would only lock memory and slow the start.
        masters = [p.detach().to("cpu", torch.float32, copy=True).contiguous() for p in params]
        self.host_masters = masters
        self.masters = masters
        self.grad_buffers: list[torch.Tensor | None] = [None] * len(params)
        self._hooks: list[Any] = []
        for i, p in enumerate(params):
            register: Callable[[Callable[[torch.Tensor], None]], Any] = p.register_post_accumulate_grad_hook
            self._hooks.append(register(self._fold(i, p)))
        self.optimizer = torch.optim.AdamW(
            self.host_masters,
            lr=lr,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_eps,
            weight_decay=args.weight_decay,
            fused=True,  # one vectorised, multi-threaded kernel on the host
        )
        self._chunks = _chunks([p.numel() for p in params], chunk_bytes // 4)
        self._staging: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # ---- gradients -----------------------------------------------------------------------------

    def _fold(self, index: int, param: nn.Parameter) -> Callable[[torch.Tensor], None]:
        def fold(holder: torch.Tensor) -> None:
            if holder is param:  # a deep copy of the module may carry this hook to other tensors
                self._add_grad(index)

        return fold

    def _add_grad(self, index: int) -> None:
        """Move ``params[index].grad`` into its fp32 accumulator (adding to what is there)."""
        param = self.params[index]
        grad = param.grad
        if grad is None:
            return
        with torch.no_grad():
            buf = self.grad_buffers[index]
            if buf is None:
                self.grad_buffers[index] = grad.to(torch.float32, copy=True)
            else:
                buf.add_(grad)
        param.grad = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        self.grad_buffers = [None] * len(self.params)
        for m in self.host_masters:
            m.grad = None

    def clip(self, max_norm: float) -> torch.Tensor:
        """Clip the fp32 gradients on the device (as ``clip_grad_norm_`` does); returns the norm
        before clipping as a device tensor."""
        for i in range(len(self.params)):
            self._add_grad(i)  # a gradient set by hand rather than by a backward
        grads = [g for g in self.grad_buffers if g is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        norm = torch.nn.utils.get_total_norm(grads)
        if max_norm > 0:
            # torch.nn.utils.clip_grad_norm_'s arithmetic, on tensors that are not parameters.
            coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            torch._foreach_mul_(grads, coef)
        return norm

    # ---- the step ------------------------------------------------------------------------------

    def step(self, grad_norm: float) -> None:
        """Step on the host, unless ``grad_norm`` is not finite; then clear the gradients."""
        if math.isfinite(grad_norm):
            if self._cuda:
                self._step_pipelined()
            else:
                self._step_chunks_in_place()
        self.zero_grad()

    def _step_chunk(self, chunk: list[int], grads: list[torch.Tensor | None]) -> None:
        """AdamW over ``chunk``'s masters: torch's optimizers skip parameters without ``grad``,
        so one optimizer (one LR schedule, one state_dict) steps the chunks one by one."""
        for i, g in zip(chunk, grads, strict=True):
            self.host_masters[i].grad = g
        self.optimizer.step()
        for i in chunk:
            self.host_masters[i].grad = None

    def _step_chunks_in_place(self) -> None:
        """Device and host are one (CPU training): no copies to overlap."""
        for chunk in self._chunks:
            self._step_chunk(chunk, [self.grad_buffers[i] for i in chunk])
            with torch.no_grad():
                for i in chunk:
                    self.params[i].copy_(self.host_masters[i])

    def _staging_buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Two (fp32 gradient, parameter-dtype weight) pinned buffer pairs, each the largest chunk."""
        if self._staging is None:
            largest = max(sum(self.params[i].numel() for i in chunk) for chunk in self._chunks)
            # The weights go up in their own dtype; a model mixing dtypes gets fp32 (no rounding
            # of an fp32 parameter through a bf16 buffer).
            dtypes = {p.dtype for p in self.params}
            dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
            self._staging = [
                (
                    torch.empty(largest, dtype=torch.float32, pin_memory=True),
                    torch.empty(largest, dtype=dtype, pin_memory=True),
                )
                for _ in range(2)
            ]
        return self._staging

    def _step_pipelined(self) -> None:
        staging = self._staging_buffers()
        compute = torch.cuda.current_stream(self.device)
        d2h = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        h2d = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        d2h.wait_stream(compute)  # the clipped gradients are ready
        h2d.wait_stream(compute)  # and the weights are no longer read by the backward
        grads_done: list[torch.cuda.Event] = []
        weights_done: list[torch.cuda.Event | None] = [None, None]

        def download(k: int) -> None:
            flat = staging[k % 2][0]
            with torch.cuda.stream(d2h):
                offset = 0
                for i in self._chunks[k]:
                    n = self.params[i].numel()
                    buf = self.grad_buffers[i]
                    if buf is not None:
                        flat[offset : offset + n].view_as(buf).copy_(buf, non_blocking=True)
                    offset += n
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(d2h)
            grads_done.append(event)

        download(0)
        for k, chunk in enumerate(self._chunks):
            if k + 1 < len(self._chunks):
                download(k + 1)  # while the host steps this chunk
            grads_done[k].synchronize()
            flat_grad, flat_weight = staging[k % 2]
            grads: list[torch.Tensor | None] = []
            offset = 0
            for i in chunk:
                n = self.params[i].numel()
                has = self.grad_buffers[i] is not None
                grads.append(flat_grad[offset : offset + n].view_as(self.host_masters[i]) if has else None)
                offset += n
            self._step_chunk(chunk, grads)
            previous = weights_done[k % 2]
            if previous is not None:
                previous.synchronize()  # chunk k-2's upload has left this buffer
            offset = 0
            with torch.cuda.stream(h2d), torch.no_grad():
                for i in chunk:
                    n = self.params[i].numel()
                    staged = flat_weight[offset : offset + n].view_as(self.host_masters[i])
                    staged.copy_(self.host_masters[i])  # the rounding cast, on the host
                    self.params[i].copy_(staged, non_blocking=True)
                    offset += n
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(h2d)
            weights_done[k % 2] = event
        compute.wait_stream(h2d)  # the next forward reads the new weights

    # ---- state ---------------------------------------------------------------------------------

    def reset_masters(self) -> None:
        with torch.no_grad():
            for master, p in zip(self.host_masters, self.params, strict=True):
                master.copy_(p)

    def state_dict(self) -> dict[str, Any]:
        # PolicyOptimizer's layout, so a checkpoint loads with or without the offload. The masters
        # are already on the host: handed out without a copy (30 GB for 7B); checkpoints write them
        # out at once, as they do the optimizer state, which torch does not copy either.
        return {"optimizer": self.optimizer.state_dict(), "masters": [m.detach() for m in self.host_masters]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            # A PolicyOptimizer's checkpoint carries its unfused setting: the host step stays fused.
            group["fused"], group["foreach"] = True, None
        with torch.no_grad():
            if "masters" in state:
                for master, saved in zip(self.host_masters, state["masters"], strict=True):
                    master.copy_(saved)
            for master, p in zip(self.host_masters, self.params, strict=True):
                p.copy_(master)


def _chunks(sizes: list[int], budget: int) -> list[list[int]]:
    """Consecutive parameter indices grouped so each group's elements stay within ``budget``
    (a larger parameter is a group of its own)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if current and total + n > budget:
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        chunks.append(current)
    return chunks
