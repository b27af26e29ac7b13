"""``torch.compile`` of a decoder's layers, switched on only for the trainer's own passes.

The embedded engine decodes from the same module (its fast path reads the weights directly, its
generic path calls the layers with a KV cache). Compiling the layers in place would hand the
engine's cache-carrying calls to the compiler too, so the compiled callables sit in
``nn.Module``'s own compiled-call slot only while :meth:`CompiledLayers.run` runs a pass.

All layers share one code object, so they share compiled graphs (parameters are graph inputs).
Inductor fuses what eager runs as separate kernels: RMSNorm's fp32 casts, RoPE, SwiGLU, the
residual adds, in the forward and the backward. On W1 (H200) that took the train phase from
34.9% to 48.4% MFU; see docs/performance.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torch import nn

__all__ = ["CompiledLayers", "compiled_layers"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DYNAMIC: bool | None = None
"""torch.compile's ``dynamic``: None compiles the first shape statically and recompiles with
dynamic shapes once a shape changes (torch's default); True starts dynamic."""


class CompiledLayers:
    def __init__(self, decoder: nn.Module, *, backend: str | Callable[..., Any] = "inductor") -> None:
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise ValueError(
                f"compile_model: {type(decoder).__name__} has no `layers` ModuleList to compile; "
                "set compile_model='off' for this model"
            )
        self._layers: list[nn.Module] = list(layers)
        # One callable per layer (each binds its module); dynamo caches by code, so they reuse
        # the graphs compiled for the first layer.
        self._compiled: list[Any] = [
            torch.compile(layer._call_impl, backend=backend, dynamic=DYNAMIC) for layer in self._layers
        ]
        self.enabled = True

    def run(self, forward: Callable[[], T]) -> T:
        """``forward()`` with the layers compiled; eager for good if the compiler rejects them."""
        if not self.enabled:
            return forward()
        for layer, fn in zip(self._layers, self._compiled, strict=True):
            layer._compiled_call_impl = fn
        try:
            return forward()
        except torch._dynamo.exc.TorchDynamoException as exc:
            self.enabled = False
            log.warning("compile_model: torch.compile failed (%s); training continues eagerly", exc)
        finally:
            for layer in self._layers:
                layer._compiled_call_impl = None
        return forward()


def compiled_layers(
    mode: Literal["auto", "on", "off"], decoder: nn.Module, device: torch.device
) -> CompiledLayers | None:
    """The compiled layers that ``mode`` asks for (auto: CUDA only; a model without a layer list
    stays eager under auto and is an error under on)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    try:
        return CompiledLayers(decoder)
    except ValueError:
        if mode == "on":
            raise
        log.info("compile_model auto: %s has no layer list; running eagerly", type(decoder).__name__)
        return None
