"""``torch.compile`` of a decoder's layers, switched on only for the trainer's own passes.

The embedded engine decodes from the same module (its fast path reads the weights directly, its
generic path calls the layers with a KV cache). Compiling the layers in place would hand the
engine's cache-carrying calls to the compiler too, so the compiled callables sit in
``nn.Module``'s own compiled-call slot only while :meth:`CompiledLayers.run` runs a pass, or
while the trainer holds :meth:`CompiledLayers.active` over a micro-batch's forward and backward
(gradient checkpointing recomputes the layers in backward, with the same compiled callables).

All layers share one code object, so they share compiled graphs (parameters are graph inputs).
Inductor fuses what eager runs as separate kernels: RMSNorm's fp32 casts, RoPE, SwiGLU, the
residual adds, in the forward and the backward. On W1 (H200) that took the train phase from
34.9% to 48.4% MFU; see docs/performance.md.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
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
    """The decoder's layers under ``torch.compile``, installed only for the trainer's passes.

    ``checkpoint``: gradient checkpointing of the compiled layers, done here rather than by the
    model's own ``gradient_checkpointing_enable``. The model's checkpoint sits inside the layer
    (transformers wraps ``forward``), so dynamo meets it as a higher-order op: where it cannot
    trace it, the forward ran compiled but the backward's recompute ran eagerly, which saves other
    tensors, and torch's checkpoint raised CheckpointError (recomputed values have different
    metadata) on the first step on CUDA. Here each layer call is ``checkpoint(compiled, ...)``, so
    the forward and the recompute call the same compiled callable. ``on_eager`` runs if the
    compiler fails and the layers fall back to eager (the caller then turns the model's own
    checkpointing on)."""

    def __init__(
        self,
        decoder: nn.Module,
        *,
        backend: str | Callable[..., Any] = "inductor",
        checkpoint: bool = False,
        on_eager: Callable[[], None] | None = None,
    ) -> None:
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
        if checkpoint:
            self._compiled = [
                _checkpointed(fn, layer._call_impl, lambda: self.enabled)
                for fn, layer in zip(self._compiled, self._layers, strict=True)
            ]
        self._on_eager = on_eager
        self.enabled = True
        self._depth = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The layers run compiled inside this scope (nested scopes are fine).

        The trainer holds it over a micro-batch's forward *and* backward: with gradient
        checkpointing, the backward recomputes each layer, and the recompute must call the same
        compiled callable as the forward did. An eager recompute saves other tensors than the
        compiled forward, and torch's checkpoint refuses it (CheckpointError: recomputed values
        have different metadata)."""
        if not self.enabled:
            yield
            return
        if self._depth == 0:
            self._install()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._uninstall()

    def run(self, forward: Callable[[], T]) -> T:
        """``forward()`` with the layers compiled; eager for good if the compiler rejects them."""
        if not self.enabled:
            return forward()
        try:
            with self.active():
                return forward()
        except torch._dynamo.exc.TorchDynamoException as exc:
            self.enabled = False
            self._uninstall()  # now, even inside an enclosing active(): eager from here on
            log.warning("compile_model: torch.compile failed (%s); training continues eagerly", exc)
            if self._on_eager is not None:
                self._on_eager()
        return forward()

    def _install(self) -> None:
        for layer, fn in zip(self._layers, self._compiled, strict=True):
            layer._compiled_call_impl = fn

    def _uninstall(self) -> None:
        for layer in self._layers:
            layer._compiled_call_impl = None


def _checkpointed(
    compiled: Callable[..., Any], eager: Callable[..., Any], enabled: Callable[[], bool]
) -> Callable[..., Any]:
    """``checkpoint`` around the compiled layer call. Which one runs is decided at each call, the
    recompute included: once the compiler failed (and the forward was re-run eagerly), a
    recompute must not try the compiler again (torch 2.11 did, inside the backward).

    A forward that raises (the compiler's failure above all) is not let through ``checkpoint``:
    it is held, ``checkpoint`` returns normally, and the error is raised from here. torch 2.11
    (and older) leaves a checkpoint's saved-tensor hooks pushed when its function raises, until the
    exception's traceback is freed (it holds checkpoint's suspended generator); a log handler
    that keeps the warning's record (pytest's does), a debugger or an error reporter keeps it
    alive, and the eager re-run of the forward then saved all its tensors into the failed
    layer's checkpoint: the backward's recompute raised CheckpointError (47 tensors saved vs 38
    recomputed on the unit model). torch 2.13 closes the checkpoint when its function raises."""

    def run(*args: Any, **kwargs: Any) -> Any:
        return (compiled if enabled() else eager)(*args, **kwargs)

    def call(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # no backward, nothing to recompute
            return run(*args, **kwargs)
        failed: list[BaseException] = []
        in_forward = True

        def forward_once(*args: Any, **kwargs: Any) -> Any:
            if not in_forward:  # the backward's recompute: errors go to the backward as they are
                return run(*args, **kwargs)
            try:
                return run(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - raised below, once checkpoint is closed
                failed.append(exc)
                return None

        out = torch.utils.checkpoint.checkpoint(forward_once, *args, use_reentrant=False, **kwargs)
        in_forward = False
        if failed:
            raise failed.pop()
        return out

    return call


def compiled_layers(
    mode: Literal["auto", "on", "off"],
    decoder: nn.Module,
    device: torch.device,
    *,
    checkpoint: bool = False,
    on_eager: Callable[[], None] | None = None,
) -> CompiledLayers | None:
    """The compiled layers that ``mode`` asks for (auto: CUDA only; a model without a layer list
    stays eager under auto and is an error under on); ``checkpoint`` and ``on_eager`` as in
    :class:`CompiledLayers`."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    try:
        return CompiledLayers(decoder, checkpoint=checkpoint, on_eager=on_eager)
    except ValueError:
        if mode == "on":
            raise
        log.info("compile_model auto: %s has no layer list; running eagerly", type(decoder).__name__)
        return None
