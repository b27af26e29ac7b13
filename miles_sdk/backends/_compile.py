"""``torch.compile`` of a decoder's layers, switched on only for the trainer's own passes.

The embedded engine decodes from the same module (its fast path reads the weights directly, its
generic path calls the layers with a KV cache). Compiling the layers in place would hand the
engine's cache-carrying calls to the compiler too, so the compiled callables sit in
``nn.Module``'s own compiled-call slot only inside :meth:`CompiledLayers.active`.

All layers share one code object, so they share compiled graphs (parameters are graph inputs).
Inductor fuses what eager runs as separate kernels: RMSNorm's fp32 casts, RoPE, SwiGLU, the
residual adds, in the forward and the backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledLayers"]


class CompiledLayers:
    def __init__(self, decoder: nn.Module, *, backend: str | Callable[..., Any] = "inductor") -> None:
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise ValueError(
                f"compile_model: {type(decoder).__name__} has no `layers` ModuleList to compile; "
                "turn compile_model off for this model"
            )
        self._layers: list[nn.Module] = list(layers)
        # One callable per layer (each binds its module); dynamo caches by code, so they reuse
        # the graphs compiled for the first layer.
        self._compiled: list[Any] = [torch.compile(layer._call_impl, backend=backend) for layer in self._layers]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        for layer, fn in zip(self._layers, self._compiled, strict=True):
            layer._compiled_call_impl = fn
        try:
            yield
        finally:
            for layer in self._layers:
                layer._compiled_call_impl = None
