"""How many training ranks, on which devices, started how: read from Miles's placement flags."""

from __future__ import annotations

import logging
from typing import Literal

import attrs

from miles_sdk.config import Config, ConfigError

__all__ = ["Launcher", "WorldPlan", "plan_world", "process_group_backend"]

Launcher = Literal["in_process", "processes", "ray"]

logger = logging.getLogger(__name__)


@attrs.frozen
class WorldPlan:
    """The training world of ``train_backend="fsdp"``."""

    world_size: int
    """Training ranks: ``actor_num_nodes * actor_num_gpus_per_node`` (CPU ranks without GPUs)."""
    device_type: str
    """"cuda" (one GPU per rank, NCCL) or "cpu" (gloo)."""
    launcher: Launcher
    """in_process for one rank (no Ray import, no extra process); else ray when installed or asked
    for with ``ray_address``; else local processes (one node only)."""

    @property
    def dist_backend(self) -> str:
        return process_group_backend(self.device_type)


def process_group_backend(device_type: str) -> str:
    """NCCL for GPU tensors, and gloo beside it on GPU ranks for collectives over host tensors:
    the metrics reduced after a step, and the gradient norm of CPU-offloaded shards
    (fsdp_cpu_offload), which NCCL refuses ("No backend type associated with device type cpu")."""
    return "cuda:nccl,cpu:gloo" if device_type == "cuda" else "gloo"


def plan_world(args: Config, device_type: str) -> WorldPlan:
    world_size = args.actor_num_nodes * args.actor_num_gpus_per_node
    if world_size < 1:
        raise ConfigError("actor_num_nodes * actor_num_gpus_per_node must be >= 1")
    gbs = args.effective_global_batch_size
    if gbs % world_size:
        raise ConfigError(
            f"global_batch_size ({gbs}) is not divisible by the {world_size} training ranks "
            "(actor_num_nodes * actor_num_gpus_per_node): each rank trains an equal share of every step"
        )
    if args.fsdp_cpu_offload and device_type != "cuda":
        # FSDP2 pins the offloaded shards in page-locked memory, which needs an accelerator; CPU
        # ranks hold everything in host memory already.
        raise ConfigError(
            f"fsdp_cpu_offload (--fsdp-cpu-offload) moves GPU ranks' shards to host memory; these "
            f"ranks run on {device_type!r}, whose state is in host memory already: unset it"
        )
    if args.offload_train:
        logger.warning(
            "offload_train (--offload-train) has no effect with train_backend='fsdp': the ranks keep "
            "their state on their devices for the whole run (--fsdp-cpu-offload keeps the sharded "
            "state in host memory instead)"
        )
    launcher: Launcher
    if world_size == 1:
        launcher = "in_process"
    elif args.distributed_launcher == "ray" or (
        args.distributed_launcher == "auto" and (args.ray_address is not None or _ray_installed())
    ):
        launcher = "ray"
    elif args.actor_num_nodes > 1:
        raise ConfigError(
            f"actor_num_nodes={args.actor_num_nodes} needs Ray: pip install 'miles-sdk[ray]' "
            "(and --ray-address to join a cluster)"
        )
    else:
        launcher = "processes"
    return WorldPlan(world_size=world_size, device_type=device_type, launcher=launcher)


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None
