"""Releasing an engine's memory while the trainer works (Miles's ``--offload-rollout``), under
SGLang's API: ``/release_memory_occupation {"tags"}`` and ``/resume_memory_occupation {"tags"}``.

Tags are SGLang's memory kinds: ``"kv_cache"``, ``"cuda_graph"`` and ``"weights"`` (no tags: all
three). In our engine the CUDA graphs are captured on the KV cache and the fast path's fused weight
copies, so ``kv_cache`` and ``cuda_graph`` are released together, and releasing ``weights`` releases
them too. What each comes back as:

- ``kv_cache`` / ``cuda_graph``: rebuilt at the next request, from the weights of that moment
  (:meth:`~miles_sdk.engines.embedded.EmbeddedEngine.release_memory_occupation`);
- ``weights``: copied into a host buffer (pinned, kept for the next release) and the device copy
  freed, like SGLang's ``--enable-weights-cpu-backup``; they are copied back at the resume, at the
  next request, or before a weight update writes into them, so no order of calls samples from
  weights that are not there. Weights already in host memory (a CPU engine) stay where they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

__all__ = ["MEMORY_TAGS", "MemoryReleasingEngine", "WeightsBackup", "parse_tags"]

MEMORY_TAGS = ("kv_cache", "cuda_graph", "weights")
"""SGLang's GPU memory kinds (``GPU_MEMORY_TYPE_*``), in the order they are released."""


@runtime_checkable
class MemoryReleasingEngine(Protocol):
    """An engine whose replicas live elsewhere and release their memory on request (SGLang's
    endpoints): :class:`~miles_sdk.distributed.replicas.EngineReplicas`,
    :class:`~miles_sdk.engines.http_client.HttpEngine`."""

    async def release_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Every replica frees the memory of ``tags`` (None: the engine's default set)."""
        ...

    async def resume_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Every replica takes back what it released (None: all of it)."""
        ...


def parse_tags(tags: object, *, where: str) -> tuple[str, ...]:
    """A request's ``tags`` (None or a list of SGLang's names) -> the tags, in release order.
    Raises ValueError naming ``where`` and the unknown tag."""
    if tags is None:
        return MEMORY_TAGS
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{where}: 'tags' must be null or a list of {list(MEMORY_TAGS)}, got {tags!r}")
    unknown = [t for t in tags if t not in MEMORY_TAGS]
    if unknown:
        raise ValueError(f"{where}: unknown tag {unknown[0]!r}; SGLang's tags are {list(MEMORY_TAGS)}")
    return tuple(t for t in MEMORY_TAGS if t in tags)


class WeightsBackup:
    """Moves a module's parameters to a host buffer and back (the ``weights`` tag).

    Parameters keep their identity (``param.data`` is swapped), so every module and runner that
    holds them sees the move; tied parameters move once. Buffers (rotary tables) stay: they are
    small and some are not in the weights a sync sends.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self._host: dict[int, torch.Tensor] = {}
        self._device: torch.device | None = None
        self.released = False

    @property
    def device(self) -> torch.device:
        """Where the weights live when resumed."""
        if self._device is not None:
            return self._device
        return next(self.module.parameters()).device

    def releasable(self) -> bool:
        """False when the weights already live in host memory (nothing on a device to free)."""
        return self.device.type != "cpu"

    def device_bytes(self) -> int:
        """Bytes of the parameters now on a device (0 once released or on the CPU)."""
        return sum(p.numel() * p.element_size() for p in _unique(self.module) if p.device.type != "cpu")

    def release(self) -> None:
        """Copy every parameter into its host buffer and free the device copy."""
        if self.released or not self.releasable():
            return
        self._device = self.device
        pin = self._device.type == "cuda"
        with torch.no_grad():
            for p in _unique(self.module):
                host = self._host.get(id(p))
                if host is None or host.shape != p.shape or host.dtype != p.dtype:
                    host = torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin)
                    self._host[id(p)] = host
                host.copy_(p.data)
                p.data = host
        self.released = True
        if pin:
            torch.cuda.synchronize(self._device)
            torch.cuda.empty_cache()

    def resume(self) -> None:
        """Copy every parameter back to its device (the host buffers are kept for the next release)."""
        if not self.released:
            return
        device = self.device
        with torch.no_grad():
            for p in _unique(self.module):
                p.data = p.data.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.released = False


def _unique(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(module.parameters())  # parameters() yields a tied parameter once
