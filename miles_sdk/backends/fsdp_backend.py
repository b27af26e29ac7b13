"""``train_backend="fsdp"``: the torch backend's passes on FSDP2-sharded training ranks.

The driver keeps the policy module that the engine samples from; the ranks hold the sharded fp32
training copy. Each optimizer step's global batch is split into equal shares, one per rank (FSDP
averages the gradients, so the update is the global batch's mean, as with one process), and after
``train`` rank 0's full weights are copied into the driver's module: the engine's weight sync
(and what ``save_hf`` exports). ppo's critic is sharded on the ranks like the policy (its values
come back per sample like the log-probs). Checkpoints are sharded with torch.distributed.checkpoint,
each rank writing its own shard, and resume on any world size; full-state checkpoints of earlier
versions still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from miles_sdk.backends.base import LogProbModel
from miles_sdk.config import Config
from miles_sdk.distributed.launch import RankGroup, start_ranks
from miles_sdk.distributed.rank import ModelSource, RankHooks
from miles_sdk.distributed.world import WorldPlan
from miles_sdk.stages import TrainBatch
from miles_sdk.types import Metrics, TrainData

__all__ = ["FSDPBackend"]

_SHARDED = "fsdp-dcp/1"


class FSDPBackend:
    """A :class:`~miles_sdk.backends.base.TrainBackend` over ``plan.world_size`` FSDP2 ranks."""

    def __init__(
        self,
        args: Config,
        model: nn.Module,
        plan: WorldPlan,
        *,
        ref_model: nn.Module | None,
        hooks: RankHooks,
    ) -> None:
        self.args = args
        self.plan = plan
        self._model = model
        self.ranks: RankGroup = start_ranks(plan, args, ModelSource.of(model, ref_model), hooks)

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    def compute_log_probs(self, data: TrainData, *, which: LogProbModel) -> list[torch.Tensor]:
        return self._per_sample("compute_log_probs", data, which)

    def _per_sample(self, method: str, data: TrainData, *extra: Any) -> list[torch.Tensor]:
        """A forward pass split over the ranks (rank r takes every W-th sample from r), its
        per-sample results put back in order."""
        n = len(data["tokens"])
        shares = [list(range(n))[r :: self.world_size] for r in range(self.world_size)]
        results = self.ranks.call(method, [(_select(data, idx), *extra) for idx in shares])
        out: list[torch.Tensor | None] = [None] * n
        for idx, share in zip(shares, results, strict=True):
            for i, tensor in zip(idx, share, strict=True):
                out[i] = tensor
        return [t for t in out if t is not None]

    def compute_values(self, data: TrainData) -> list[torch.Tensor] | None:
        if self.args.advantage_estimator != "ppo":
            return None
        return self._per_sample("compute_values", data)

    def train(self, rollout_id: int, batch: TrainBatch) -> Metrics:
        steps = self._optimizer_steps(len(batch))
        shares = [[i for step in steps for i in step[r :: self.world_size]] for r in range(self.world_size)]
        step_tokens = self._step_tokens(batch, steps)
        per_rank = [(rollout_id, batch.select(idx), step_tokens) for idx in shares]
        metrics = self.ranks.call("train", per_rank)[0]
        self._pull_weights()
        return dict(metrics)

    def _optimizer_steps(self, n: int) -> list[list[int]]:
        """The samples of each optimizer step. Rank r trains the r-th of every W samples of each
        step, in step order, so each rank's own step boundaries fall where the global ones do."""
        args, world = self.args, self.world_size
        num_steps = args.num_steps_per_rollout
        global_batch = n // num_steps if num_steps else min(args.effective_global_batch_size, n)
        steps = [list(range(start, min(start + global_batch, n))) for start in range(0, n, global_batch)]
        for step in steps:
            if len(step) % world:
                raise ValueError(
                    f"an optimizer step of {len(step)} samples cannot be split over {world} training ranks; "
                    "keep rollout trimming on (the default) or choose batch sizes divisible by the ranks"
                )
        return steps

    def _step_tokens(self, batch: TrainBatch, steps: list[list[int]]) -> list[float] | None:
        """With calculate_per_token_loss: each step's loss tokens over all ranks, per rank. The
        ranks' shares hold different token counts and FSDP averages their gradients, so each rank
        divides its token sum by this mean instead of its own count: the update is every token's
        loss over the global token count, as in one process. (Sample means need nothing: every
        rank holds the same number of samples.)"""
        if not self.args.calculate_per_token_loss:
            return None
        tokens = [sum(int(torch.as_tensor(batch.loss_masks[i]).sum()) for i in step) for step in steps]
        return [max(t, 1) / self.world_size for t in tokens]

    def _pull_weights(self) -> None:
        """The engine's weight sync: rank 0's full weights into the driver's module."""
        in_process = self.plan.launcher == "in_process"
        full = self.ranks.call("full_weights", [()] * self.world_size, to_cpu=not in_process)[0]
        assert full is not None
        with torch.no_grad():
            own = self._model.state_dict()
            for name, value in full.items():
                own[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Sharded: every rank writes its shard of the model and optimizer state into the
        checkpoint's ``shards/`` folder (torch.distributed.checkpoint, loadable on any world
        size); ``state.pt`` keeps the step, the scheduler and the world size. The ranks write
        when :func:`miles_sdk.checkpoint.save_checkpoint` calls the writer, into its temporary
        folder, so the manifest covers the shards."""
        from miles_sdk.checkpoint import CheckpointFiles

        rest = self.ranks.call("training_state", [()] * self.world_size)[0]
        assert rest is not None

        def write(folder: Path) -> None:
            self.ranks.call("save_shards", [(str(folder), rest["optimizers"])] * self.world_size)

        return {
            "format": _SHARDED,
            "world_size": self.world_size,
            "training": rest,
            "shards": CheckpointFiles("shards", write=write),
        }

    def full_state_dict(self) -> dict[str, Any]:
        """The whole model and optimizer state gathered on rank 0 (the format before sharded
        checkpoints; :meth:`load_state_dict` still reads it)."""
        state = self.ranks.call("state_dict", [()] * self.world_size)[0]
        assert state is not None
        return dict(state) | {"world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") == _SHARDED:
            shards = state["shards"]
            if shards.path is None:
                raise ValueError(
                    "a sharded FSDP state must come from load_checkpoint (its shards folder is unknown)"
                )
            self.ranks.call("load_shards", [(str(shards.path), state["training"])] * self.world_size)
        else:
            _check_full_state(state)
            self.ranks.call("load_state_dict", [(state,)] * self.world_size)
        self._pull_weights()

    def close(self) -> None:
        self.ranks.close()


def _check_full_state(state: dict[str, Any]) -> None:
    """A full-state checkpoint must be this backend's earlier format: the torch backend's has the
    same ``model`` but its own optimizer layout (by parameter index, maybe with fp32 masters)."""
    optimizer = state.get("optimizer")
    torch_layout = isinstance(optimizer, dict) and "param_groups" not in optimizer
    if "model" not in state or torch_layout or "critic" in state:
        raise ValueError(
            "this checkpoint was not written by train_backend='fsdp' (it looks like the torch backend's: "
            f"keys {sorted(state)}); resume it with train_backend='torch', or start the fsdp run from its "
            "weights (save_hf, then hf_checkpoint)"
        )


def _select(data: Any, idx: list[int]) -> dict[str, Any]:
    """The per-sample entries (lists as long as the batch) at ``idx``; everything else as is."""
    n = len(data["tokens"])
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list | tuple) and len(value) == n:
            out[key] = [value[i] for i in idx]
        else:
            out[key] = value
    return out
