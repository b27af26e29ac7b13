"""One training rank of ``train_backend="fsdp"``: the torch backend's passes over an FSDP2-sharded
policy. The same class runs in the driver's process (one rank), in a local process, or in a Ray
actor; the driver sends each rank its share of every batch and gets back tensors and metrics."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
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
        """The full model with ``state`` loaded (fp32, on the CPU)."""
        from transformers import AutoModelForCausalLM

        model: nn.Module = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        model.load_state_dict(state)
        return model

    def build_on_meta(self) -> nn.Module:
        """The model with its parameters on the meta device (no storage) and its buffers computed
        on the CPU: a rank shards this and then materialises only its shards."""
        from transformers import AutoModelForCausalLM

        with _parameters_on_meta():
            model: nn.Module = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        return model

    def for_rank(self, rank: int) -> ModelSource:
        """What rank ``rank`` is sent: rank 0 the weights, the others none (they receive their
        shards from rank 0 by broadcast), so no process but rank 0's gets a copy of the model."""
        if rank == 0:
            return self
        return attrs.evolve(self, state_dict={}, ref_state_dict=None if self.ref_state_dict is None else {})


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters registered inside are moved to the meta device as they are registered (before a
    layer's own init runs, so nothing is initialised on the host). Buffers stay real: the
    non-persistent ones (rotary ``inv_freq``) are computed in ``__init__`` and are in no state dict,
    so meta buffers could not be filled in later."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    setattr(nn.Module, "register_parameter", register)  # noqa: B010 - a class attribute, restored below
    try:
        yield
    finally:
        setattr(nn.Module, "register_parameter", original)  # noqa: B010


def _decoder_state(lm: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's entries of the LM's ``state``, named as in ppo's value model (``body.*``)."""
    decoder = lm.get_decoder()  # type: ignore[operator]
    prefix = next(name for name, module in lm.named_modules() if module is decoder) + "."
    return {"body." + k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (a plain tensor is its own)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def real_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a partly meta module that have storage, by name."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return {name: t.detach().clone() for name, t in tensors if not t.is_meta}


def materialise(
    module: nn.Module,
    local: dict[str, torch.Tensor],
    full: dict[str, torch.Tensor],
    *,
    rank: int,
    device: torch.device,
    cpu_offload: bool,
) -> None:
    """Give a module sharded on the meta device storage for its shards on ``device`` (the CPU for
    parameters under FSDP CPU offload) and fill it: ``local`` holds what each rank built for itself
    before sharding (its real buffers and parameters, the same on every rank), ``full`` the weights,
    read on rank 0 only and broadcast shard by shard to the others. A rank's peak is its shards plus
    the one tensor being broadcast, never the whole model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    module.to_empty(device=torch.device("cpu") if cpu_offload else device)
    buffers = {name for name, _ in module.named_buffers()}
    for name, value in local.items():
        if name in buffers:
            # Buffers are not sharded: every rank restores its own, on the compute device
            # (setattr keeps the buffer's persistence).
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner), leaf, value.to(device))
    params = {k: v for k, v in local.items() if k not in buffers}
    state: dict[str, Any] = {**params, **full} if rank == 0 else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(module, state, options=options)


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
        # Each rank builds the model on the meta device, shards it, and then gets storage for its
        # shards only; rank 0 alone holds the weights and broadcasts them (one tensor at a time).
        fill = functools.partial(
            materialise, rank=spec.rank, device=self.device, cpu_offload=args.fsdp_cpu_offload
        )
        lm = source.build_on_meta()
        real = real_tensors(lm)
        model = shard_causal_lm(lm, mesh, param_dtype=param_dtype, cpu_offload=args.fsdp_cpu_offload)
        fill(lm, real, source.state_dict)
        ref = None
        if source.ref_state_dict is not None:
            ref_lm = source.build_on_meta()
            ref_lm.requires_grad_(False)
            ref = shard_causal_lm(ref_lm, mesh, param_dtype=param_dtype, cpu_offload=args.fsdp_cpu_offload)
            fill(ref_lm, real_tensors(ref_lm), source.ref_state_dict)
            ref.eval()
        self.model = model
        critic = None
        if args.advantage_estimator == "ppo":
            # Like the torch backend's, the critic starts from the policy's weights (a copy of its
            # body, never the policy's own parameters), sharded like the policy.
            # Built empty too: its body's weights are the policy's decoder's, renamed, from rank 0.
            critic_lm = source.build_on_meta()
            body_state = _decoder_state(critic_lm, source.state_dict)

            def shard_critic(value_model: nn.Module) -> None:
                real = real_tensors(value_model)  # the body's buffers, the value head's zero init
                shard_value_model(
                    value_model, mesh, param_dtype=param_dtype, cpu_offload=args.fsdp_cpu_offload
                )
                fill(value_model, real, body_state)

            critic = Critic(local_args, critic_lm, shard=shard_critic, device=self.device)
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

    def shard_report(self) -> dict[str, Any]:
        """What this rank holds of the policy: its parameters' bytes (its shards), the tensors
        still on the meta device (none once started), and whether the LM head is still tied to
        the input embeddings when the model ties them."""
        lm = self.model.lm
        params = list(lm.parameters())
        return {
            "param_bytes": sum(_local(p).numel() * p.element_size() for p in params),
            "meta": [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta],
            "tied": lm.get_output_embeddings().weight is lm.get_input_embeddings().weight,
            "buffers": {n: b.detach().cpu() for n, b in lm.named_buffers()},
        }

    def compile_report(self) -> dict[str, Any]:
        """Whether this rank's decoder layers run compiled (compile_model; False once the
        compiler failed and they fell back to eager), the graphs dynamo compiled in this process,
        and whether a compiled layer call is still installed (it must be only during a pass)."""
        compiled = self.backend._compiled
        return {
            "compiled": compiled is not None and compiled.enabled,
            "graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
            "installed": any(layer._compiled_call_impl is not None for layer in self.model.layers),
        }

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
