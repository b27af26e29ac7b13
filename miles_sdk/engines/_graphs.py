"""CUDA-graph helpers of the fast runner: capture, and the prefill forward replayed per shape.

A prefill runs ~450 kernels (24 layers of norms, GEMMs, RoPE, attention). Eagerly, launching them
costs ~3x their GPU time on W1 (22 ms of host work for 6.5 ms of kernels), and nothing else can
overlap a prefill. Replaying a graph captured for the padded shape launches them in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import torch

__all__ = ["PrefillGraphs", "capture"]

T = TypeVar("T")

PREFILL_GRAPH_TOKENS = 8192
"""Largest padded prefill (unique prompts x width) replayed from a graph; larger ones run eagerly
(their launch overhead is small next to their compute, and their activations would stay pooled)."""
_WIDTH_STEP = 64
_MAX_PREFILL_GRAPHS = 32
"""Shapes captured at most: prompt widths vary, and each graph keeps its activations pooled."""


def capture(fn: Callable[[], T], device: torch.device, pool: Any) -> tuple[torch.cuda.CUDAGraph, T]:
    """Warm ``fn`` up once on a side stream (Triton compiles, cuBLAS picks its kernels), then
    capture it; returns the graph and what the captured call returned (its static outputs)."""
    stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


@attrs.define
class _Prefill:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor
    leads: torch.Tensor
    last: torch.Tensor
    logits: torch.Tensor


PrefillBody = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor], torch.Tensor]
"""(token ids [n * width], width, lead slots [n], last-token rows [n]) -> logits [n, vocab]."""


class PrefillGraphs:
    """Prefill forwards replayed from graphs captured per padded (prompts, width) shape.

    Padding rows prefill into ``scratch_slot`` (a cache slot no request owns); padded columns
    write keys past a prompt's end, which decoding overwrites before it reads them.
    """

    def __init__(self, body: PrefillBody, device: torch.device, scratch_slot: int, max_width: int) -> None:
        self._body = body
        self._device = device
        self._scratch = scratch_slot
        self._max_width = max_width
        self._graphs: dict[tuple[int, int], _Prefill] = {}
        self._pool: Any = None
        self.captures = 0

    def clear(self) -> None:
        self._graphs.clear()

    def shape(self, prompts: Sequence[Sequence[int]]) -> tuple[int, int] | None:
        """The padded shape for ``prompts``, or None when they should run eagerly."""
        rows = 1 << (len(prompts) - 1).bit_length()
        width = max(len(p) for p in prompts)
        width = min(-(-width // _WIDTH_STEP) * _WIDTH_STEP, self._max_width)
        if rows * width > PREFILL_GRAPH_TOKENS:
            return None
        if (rows, width) not in self._graphs and len(self._graphs) >= _MAX_PREFILL_GRAPHS:
            return None
        return rows, width

    def run(self, prompts: Sequence[Sequence[int]], leads: list[int], shape: tuple[int, int]) -> torch.Tensor:
        """Logits [len(prompts), vocab] at each prompt's last token (KV written into ``leads``)."""
        g = self._graphs.get(shape) or self._capture(*shape)
        for buf, val in zip((g.ids, g.leads, g.last), self.padded_inputs(prompts, leads, shape), strict=True):
            buf.copy_(val)
        g.graph.replay()
        return g.logits[: len(prompts)]

    def padded_inputs(
        self, prompts: Sequence[Sequence[int]], leads: list[int], shape: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (host) inputs of the prefill body at the padded ``shape``."""
        rows, width = shape
        ids = torch.zeros(rows, width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(list(p))
        pad = rows - len(prompts)
        last = [i * width + len(p) - 1 for i, p in enumerate(prompts)] + [0] * pad
        return ids.view(-1), torch.tensor(leads + [self._scratch] * pad), torch.tensor(last)

    def _capture(self, rows: int, width: int) -> _Prefill:
        dev = self._device
        ids = torch.zeros(rows * width, dtype=torch.long, device=dev)
        leads = torch.full((rows,), self._scratch, dtype=torch.long, device=dev)
        last = torch.zeros(rows, dtype=torch.long, device=dev)
        graph, logits = capture(lambda: self._body(ids, width, leads, last), dev, self._pool)
        self._pool = graph.pool()
        self._graphs[(rows, width)] = entry = _Prefill(graph, ids, leads, last, logits)
        self.captures += 1
        return entry
