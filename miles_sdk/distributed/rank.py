"""One training rank of ``train_backend="fsdp"``: the torch backend's passes over an FSDP2-sharded
policy. The same class runs in the driver's process (one rank), in a local process, or in a Ray
actor; the driver sends each rank its share of every batch and gets back tensors and metrics."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import torch
from torch import nn

from miles_sdk.backends.base import LogProbModel
from miles_sdk.config import Config
from miles_sdk.distributed.sharding import full_state_dict, shard_causal_lm, shard_value_model
from miles_sdk.distributed.world import process_group_backend
from miles_sdk.stages import TrainBatch
from miles_sdk.types import Metrics, TrainData

__all__ = ["ModelSource", "RankHooks", "RankSpec", "TrainRank"]


@attrs.frozen
class ModelSource:
    """What a rank builds its policy from: a transformers config and the initial weights (so every
    rank, and a resumed run on another world size, starts from the driver's exact model)."""

    config: Any
    """The model's ``transformers.PretrainedConfig``."""
    state_dict: dict[str, torch.Tensor]
    """Initial parameters and buffers (CPU tensors)."""
    ref_state_dict: dict[str, torch.Tensor] | None = None
    """The reference model's, when one is needed."""

    @classmethod
    def of(cls, model: nn.Module, ref_model: nn.Module | None = None) -> ModelSource:
        def cpu(m: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}

        return cls(
            config=model.config,
            state_dict=cpu(model),
            ref_state_dict=cpu(ref_model) if ref_model is not None else None,
        )

    def build(self, state: dict[str, torch.Tensor]) -> nn.Module:
        from transformers import AutoModelForCausalLM

        model: nn.Module = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        model.load_state_dict(state)
        return model


@attrs.frozen
class RankHooks:
    """The hooks that run next to the model (shipped to every rank by pickling)."""

    loss_fn: Any = None
    tis_fn: Any = None
    pg_loss_reducer: Any = None
    before_log_prob_hook: Any = None
    before_train_step_hook: Any = None


@attrs.frozen
class RankSpec:
    rank: int
    world_size: int
    device_type: str
    master_addr: str
    master_port: int


class TrainRank:
    """Built in its process; every method is a collective (all ranks call it in the same order)."""

    def __init__(self, args: Config, spec: RankSpec, source: ModelSource, hooks: RankHooks) -> None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        from miles_sdk.backends.critic import Critic
        from miles_sdk.backends.torch_backend import TorchBackend

        self.spec = spec
        if spec.device_type == "cuda":
            local = spec.rank % max(torch.cuda.device_count(), 1)
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            # The address in the call, not MASTER_ADDR / MASTER_PORT: a cluster job's own values
            # (torchrun, SLURM) in the environment would point the ranks elsewhere and hang.
            host = f"[{spec.master_addr}]" if ":" in spec.master_addr else spec.master_addr
            dist.init_process_group(
                process_group_backend(spec.device_type),
                init_method=f"tcp://{host}:{spec.master_port}",
                rank=spec.rank,
                world_size=spec.world_size,
            )
        mesh = init_device_mesh(spec.device_type, (spec.world_size,))
        torch.manual_seed(args.seed)
        # Every rank trains an equal share of each global batch; FSDP averages the gradients.
        local_args = args.replace(global_batch_size=args.effective_global_batch_size // spec.world_size)
        param_dtype = torch.bfloat16 if spec.device_type == "cuda" and args.dtype != "float32" else None
        lm = source.build(source.state_dict).to(self.device)
        model = shard_causal_lm(lm, mesh, param_dtype=param_dtype, cpu_offload=args.fsdp_cpu_offload)
        ref = None
        if source.ref_state_dict is not None:
            ref_lm = source.build(source.ref_state_dict).to(self.device)
            ref_lm.requires_grad_(False)
            ref = shard_causal_lm(ref_lm, mesh, param_dtype=param_dtype, cpu_offload=args.fsdp_cpu_offload)
            ref.eval()
        self.model = model
        critic = None
        if args.advantage_estimator == "ppo":
            # Like the torch backend's, the critic starts from the policy's weights (a copy of its
            # body, never the policy's own parameters), sharded like the policy.
            critic = Critic(
                local_args,
                source.build(source.state_dict).to(self.device),
                shard=functools.partial(
                    shard_value_model, mesh=mesh, param_dtype=param_dtype, cpu_offload=args.fsdp_cpu_offload
                ),
            )
        self.backend = TorchBackend(
            local_args,
            model,
            ref_model=ref,
            loss_fn=hooks.loss_fn,
            tis_fn=hooks.tis_fn,
            pg_loss_reducer=hooks.pg_loss_reducer,
            before_log_prob_hook=hooks.before_log_prob_hook,
            before_train_step_hook=hooks.before_train_step_hook,
            critic=critic,
            device=self.device,
        )

    def compute_log_probs(self, data: TrainData, which: LogProbModel) -> list[torch.Tensor]:
        return self.backend.compute_log_probs(data, which=which)

    def compute_values(self, data: TrainData) -> list[torch.Tensor] | None:
        return self.backend.compute_values(data)

    def train(self, rollout_id: int, data: TrainBatch, step_tokens: list[float] | None = None) -> Metrics:
        """This rank's share of the optimizer steps, and the metrics reduced over ranks. A mean
        is weighted on each rank by its micro-batches' share of the global step divided by the
        ranks (samples: every rank holds as many; tokens: ``step_tokens``), so the mean over ranks
        is the global step's. ``*_max`` / ``*_min`` reduce by max / min; the grad norm is global
        already."""
        import torch.distributed as dist

        from miles_sdk.backends.torch_backend import _extreme

        local = self.backend.train(rollout_id, data, step_tokens=step_tokens)
        keys = sorted(local)
        everyone: list[list[str] | None] = [None] * self.spec.world_size
        dist.all_gather_object(everyone, keys)
        if any(other != keys for other in everyone):
            # Reducing lists of different lengths would hang or mix metrics up.
            raise RuntimeError(f"training ranks returned different metric keys: {everyone}")
        kinds = [_extreme(k) for k in keys]
        values = torch.tensor([local[k] for k in keys], dtype=torch.float64)
        signs = torch.tensor([-1.0 if kind == "min" else 1.0 for kind in kinds], dtype=torch.float64)
        extremes = values * signs  # max of -x is -min x
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        out: Metrics = {}
        for i, (key, kind) in enumerate(zip(keys, kinds, strict=True)):
            if kind is None:
                out[key] = float(values[i]) / self.spec.world_size
            else:
                out[key] = float(extremes[i] * signs[i])
        return out

    def full_weights(self, *, to_cpu: bool = True) -> dict[str, torch.Tensor] | None:
        """The policy's full weights (rank 0), for the engine: on the CPU to cross a process
        boundary, on the rank's device when the driver shares its process."""
        state = full_state_dict(self.model, to_cpu=to_cpu)
        return state if self.spec.rank == 0 else None

    def _parts(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        """What a checkpoint holds, by key prefix: the policy, and ppo's critic."""
        parts: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {"": (self.model, self.backend.optimizer)}
        critic = self.backend.critic
        if critic is not None:
            parts["critic_"] = (critic.model, critic.optim.optimizer)
        return parts

    def training_state(self) -> dict[str, Any] | None:
        """What is the same on every rank (step, scheduler), on rank 0, and which optimizer states
        go into the shards: an optimizer that has not stepped has none, and get_state_dict would
        make one with a zero-lr step (Adam's step count 1, which changes the next update), so it
        is left out."""
        save_optim = not self.backend.args.no_save_optim
        state = {
            "step_id": self.backend.step_id,
            "scheduler": self.backend.scheduler.state_dict(),
            "optimizers": {
                prefix: save_optim and bool(optim.state) for prefix, (_, optim) in self._parts().items()
            },
        }
        return state if self.spec.rank == 0 else None

    def save_shards(self, folder: str, optimizers: dict[str, bool]) -> None:
        """Write this rank's shard of the model, critic and optimizer states (those named in
        ``optimizers``) into ``folder`` with torch.distributed.checkpoint: one file per rank and
        ``.metadata``, which any world size can load (DCP reshards on load)."""
        from torch.distributed.checkpoint.state_dict_saver import save

        save(self._shard_state(optimizers), checkpoint_id=folder)

    def _shard_state(self, optimizers: dict[str, bool]) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        shards: dict[str, Any] = {}
        for prefix, (module, optim) in self._parts().items():
            if optimizers.get(prefix, False):
                shards[prefix + "model"], shards[prefix + "optimizer"] = get_state_dict(module, optim)
            else:
                shards[prefix + "model"] = get_model_state_dict(module)
        return shards

    def load_shards(self, folder: str, rest: dict[str, Any]) -> None:
        """Read the shards that :meth:`save_shards` wrote (on any world size), and ``rest``
        (:meth:`training_state`)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
        from torch.distributed.checkpoint.state_dict_loader import load

        optimizers: dict[str, bool] = rest["optimizers"]
        missing = set(self._parts()) - set(optimizers)
        if missing:
            raise ValueError(
                "the checkpoint holds no critic (saved without advantage_estimator='ppo'); "
                "a ppo run cannot resume from it"
            )
        shards = self._shard_state(optimizers)  # the layout to read into, resharded by DCP
        load(shards, checkpoint_id=folder)
        for prefix, (module, optim) in self._parts().items():
            if optimizers[prefix]:
                set_state_dict(
                    module,
                    optim,
                    model_state_dict=shards[prefix + "model"],
                    optim_state_dict=shards[prefix + "optimizer"],
                )
            else:
                set_model_state_dict(module, shards[prefix + "model"])
        self.backend.scheduler.load_state_dict(rest["scheduler"])
        self.backend.step_id = int(rest["step_id"])

    def state_dict(self) -> dict[str, Any] | None:
        """World-size-independent training state (full model and optimizer state), on rank 0:
        the format before sharded checkpoints, still loaded by :meth:`load_state_dict`."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        if self.backend.critic is not None:
            raise NotImplementedError("the full-state checkpoint format has no critic: use the sharded one")
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state: dict[str, Any] = {
            "model": full_state_dict(self.model),
            "step_id": self.backend.step_id,
            "scheduler": self.backend.scheduler.state_dict(),
        }
        if not self.backend.args.no_save_optim:
            state["optimizer"] = get_optimizer_state_dict(self.model, self.backend.optimizer, options=options)
        return state if self.spec.rank == 0 else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(self.model.lm, state["model"], options=options)
        if "optimizer" in state:
            set_optimizer_state_dict(self.model, self.backend.optimizer, state["optimizer"], options=options)
        self.backend.scheduler.load_state_dict(state["scheduler"])
        self.backend.step_id = int(state["step_id"])

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
