"""FSDP2 sharding of a transformers causal LM for the torch backend's passes.

The torch backend runs the decoder's ``forward`` and then reads the LM head's weight directly
(chunked log-probs never build the whole logits). FSDP2 gathers a group's parameters in its
module's forward, so the decoder body and the head must belong to a module whose forward runs:
:class:`ShardedCausalLM` is that module. Each decoder layer is its own FSDP group (gathered one at
a time); the root group holds the embeddings, the final norm and the head, which stay gathered
from the root's forward until the backward is done (FSDP2 does not reshard its root after forward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ShardedCausalLM", "full_state_dict", "shard_causal_lm", "shard_value_model"]


class ShardedCausalLM(nn.Module):
    """A causal LM seen by the torch backend as decoder (``get_decoder()`` is this module, whose
    forward runs the LM's decoder) plus LM head (``get_output_embeddings()``)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm: Any = lm
        self.config = getattr(lm, "config", None)

    def get_decoder(self) -> nn.Module:
        return self

    def get_output_embeddings(self) -> nn.Module:
        head = self.lm.get_output_embeddings()
        assert isinstance(head, nn.Module)
        return head

    @property
    def _supports_attention_backend(self) -> bool:
        """Sequence packing (backends/_varlen.py) asks the decoder whether its layers dispatch
        attention through transformers' AttentionInterface: this module answers for the LM's."""
        return bool(getattr(self.lm.get_decoder(), "_supports_attention_backend", False))

    @property
    def layers(self) -> nn.ModuleList:
        """The LM's decoder layers, each its own FSDP group: what ``compile_model`` compiles
        (backends/_compile.py). A property, not a registered submodule, so that parameter and
        state-dict names stay the LM's own."""
        layers = getattr(self.lm.get_decoder(), "layers", None)
        assert isinstance(layers, nn.ModuleList)  # shard_causal_lm checked it
        return layers

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.lm.gradient_checkpointing_enable(**kwargs)

    def forward(self, **kwargs: Any) -> Any:
        return self.lm.get_decoder()(**kwargs)


def _layers(lm: Any) -> list[nn.Module]:
    decoder = lm.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"train_backend='fsdp' shards a decoder's `layers` ModuleList; {type(decoder).__name__} has none"
        )
    return list(layers)


def shard_causal_lm(
    lm: Any,
    mesh: Any,
    *,
    param_dtype: torch.dtype | None,
    cpu_offload: bool,
) -> ShardedCausalLM:
    """Wrap ``lm`` and shard it in place over ``mesh``: one FSDP group per decoder layer, one root.
    Parameters stay fp32 (the masters); compute runs in ``param_dtype`` and gradients are reduced
    in fp32."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    model = ShardedCausalLM(lm)
    for layer in _layers(lm):
        fully_shard(layer, mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
    return model


def shard_value_model(
    model: nn.Module,
    mesh: Any,
    *,
    param_dtype: torch.dtype | None,
    cpu_offload: bool,
) -> None:
    """Shard ppo's value model (a decoder ``body`` and a ``value_head``) in place like the policy:
    one FSDP group per decoder layer, one for the head; the root (embeddings, final norm) is
    gathered by the value model's own forward."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    layers = getattr(model.body, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"train_backend='fsdp' shards the critic's decoder `layers` ModuleList; "
            f"{type(model.body).__name__} has none"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, offload_policy=offload)
    # The head reads fp32 hidden states (the critic's values are fp32, as in the torch backend):
    # its own group keeps its parameters fp32 in the forward instead of the body's param_dtype.
    fp32 = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    head = model.get_submodule("value_head")
    fully_shard(head, mesh=mesh, mp_policy=fp32, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)


def full_state_dict(model: nn.Module, *, to_cpu: bool = True) -> dict[str, torch.Tensor]:
    """The LM's full (unsharded) parameters and buffers on the CPU, under the LM's own names; every
    rank must call it (it all-gathers), rank 0's copy is the one to use."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = model.lm if isinstance(model, ShardedCausalLM) else model
    options = StateDictOptions(full_state_dict=True, cpu_offload=to_cpu)
    state: dict[str, torch.Tensor] = get_model_state_dict(inner, options=options)  # type: ignore[assignment]
    return state
