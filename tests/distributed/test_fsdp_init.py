"""train_backend="fsdp" ranks build the model on the meta device, shard it, and materialise only
their shards; rank 0 alone is sent the weights and broadcasts them. So no rank holds the full
model, and the sharded model still equals the driver's (tied embeddings, rotary buffers)."""

from __future__ import annotations

from typing import Any

import torch

from miles_sdk.distributed.launch import _Processes
from miles_sdk.distributed.rank import ModelSource, RankHooks
from miles_sdk.distributed.world import WorldPlan
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy


def test_build_on_meta_allocates_no_parameter_and_keeps_real_buffers() -> None:
    model, _ = tiny_policy("unit")
    empty: Any = ModelSource.of(model).build_on_meta()
    assert all(p.is_meta for p in empty.parameters())
    buffers = dict(model.named_buffers())
    for name, buffer in empty.named_buffers():  # rotary inv_freq: in no state dict, so computed here
        assert not buffer.is_meta and torch.equal(buffer, buffers[name]), name
    assert empty.get_output_embeddings().weight is empty.get_input_embeddings().weight


def test_only_rank_0_is_sent_the_weights() -> None:
    model, _ = tiny_policy("unit")
    source = ModelSource.of(model, ref_model=model)
    assert source.for_rank(0) is source
    other = source.for_rank(1)
    assert other.state_dict == {} and other.ref_state_dict == {}
    assert ModelSource.of(model).for_rank(1).ref_state_dict is None  # still: no reference model


def test_two_ranks_hold_half_the_model_each_and_the_exact_weights() -> None:
    model, _ = tiny_policy("unit")
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    group = _Processes(small_config(), WorldPlan(2, "cpu", "processes"), ModelSource.of(model), RankHooks())
    try:
        reports = group.call("shard_report", [(), ()])
        weights = group.call("full_weights", [(), ()])[0]
    finally:
        group.close()
    for rank, report in enumerate(reports):
        assert report["meta"] == [], f"rank {rank} left tensors on meta: {report['meta']}"
        assert report["tied"], f"rank {rank} untied the LM head from the embeddings"
        share = report["param_bytes"] / full_bytes
        assert 0.45 <= share <= 0.55, f"rank {rank} holds {share:.2f} of the parameters"
        for name, buffer in model.named_buffers():
            assert torch.equal(report["buffers"][name], buffer), f"rank {rank}: buffer {name}"
    assert weights is not None
    for name, value in model.state_dict().items():
        assert torch.equal(weights[name], value), name
