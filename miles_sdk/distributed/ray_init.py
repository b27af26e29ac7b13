"""Joining or starting the Ray cluster that training ranks and engine replicas run on.

Every rank and every replica actor asks Ray for one CPU (and one GPU on a GPU run). A local cluster
started with Ray's defaults has as many CPUs as the machine has cores, so on a small machine the
replicas (started first) could take all of them and the ranks' placement group would wait forever.
A local cluster started here therefore counts at least one logical CPU per actor; a joined cluster
(``ray_address``, or RAY_ADDRESS; ``auto`` finds one started on this node with ``ray start``) is
what it is, and a placement that does not come in time is an error naming what was asked for.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from miles_sdk.config import Config

__all__ = ["PLACEMENT_TIMEOUT_S", "actors_needed", "init_ray", "ray_module"]

PLACEMENT_TIMEOUT_S = 600.0
"""How long the ranks' placement group may wait for free resources (nodes joining, other jobs)."""


def ray_module(what: str) -> Any:
    """``import ray`` (untyped), with the extra to install named in the error."""
    try:
        return importlib.import_module("ray")
    except ImportError as error:
        raise ImportError(f"{what} needs Ray: pip install 'miles-sdk[ray]'") from error


def actors_needed(args: Config) -> int:
    """Ray actors a run starts: FSDP training ranks (several) plus engine replicas (several)."""
    from miles_sdk.distributed.replicas import replica_count

    ranks = args.actor_num_nodes * args.actor_num_gpus_per_node if args.train_backend == "fsdp" else 1
    replicas = replica_count(args) if args.rollout_engine == "embedded" else 1
    return (ranks if ranks > 1 else 0) + (replicas if replicas > 1 else 0)


def init_ray(args: Config, what: str) -> bool:
    """``ray.init`` unless Ray is initialised already; True when this call started or joined the
    cluster (the caller then shuts Ray down when it closes)."""
    ray = ray_module(what)
    if ray.is_initialized():
        return False
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if address is None:
        # "local": a new cluster, as ray_address=None promises. Ray's own default would join what
        # /tmp/ray/ray_current_cluster names: a `ray start` cluster, or the stale entry of a dead one.
        # One logical CPU per actor at least (CPU actors share the cores).
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, actors_needed(args)),
            include_dashboard=False,
            log_to_driver=True,
        )
        return True
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    except ConnectionError as error:
        # Seen with Ray 2.60: a cluster from `ray start` checks a token that ray.init(address=...)
        # does not send unless RAY_AUTH_MODE=token is set.
        raise ConnectionError(
            f"{what}: could not join the Ray cluster at {address} ({error}). If the cluster was started "
            "with `ray start` (token authentication), set RAY_AUTH_MODE=token here, with the head's "
            "token in ~/.ray/auth_token or RAY_AUTH_TOKEN; see docs/scale-out.md"
        ) from error
    return True
