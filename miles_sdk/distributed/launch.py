"""Starting the training ranks and calling them together: in this process (one rank), as local
processes (one node, no Ray), or as Ray actors in a placement group (a node or a cluster)."""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import socket
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from miles_sdk.config import Config
from miles_sdk.distributed.rank import ModelSource, RankHooks, RankSpec, TrainRank
from miles_sdk.distributed.world import WorldPlan

__all__ = ["HookShippingError", "RankError", "RankGroup", "check_shippable", "start_ranks"]

logger = logging.getLogger(__name__)


class RankError(RuntimeError):
    """A training rank failed; the message names the rank and carries its traceback."""


class RankGroup(Protocol):
    """All ranks, called together: ``call("train", [args of rank 0, args of rank 1, ...])``."""

    world_size: int

    def call(self, method: str, per_rank: Sequence[tuple[Any, ...]], **kwargs: Any) -> list[Any]: ...

    def pids(self) -> list[int]: ...

    def close(self) -> None: ...


def start_ranks(plan: WorldPlan, args: Config, source: ModelSource, hooks: RankHooks) -> RankGroup:
    logger.info(
        "train_backend='fsdp': %d training rank(s) on %s (%s), launcher %s",
        plan.world_size,
        plan.device_type,
        plan.dist_backend,
        plan.launcher,
    )
    if plan.launcher == "in_process":
        return _InProcess(args, plan, source, hooks)  # the hooks stay in this process
    check_shippable(hooks)
    if plan.launcher == "processes":
        return _Processes(args, plan, source, hooks)
    return _RayActors(args, plan, source, hooks)


class HookShippingError(TypeError):
    """A hook that must run on the training ranks cannot travel there (neither importable nor
    picklable); the message names the hook, its Trainer keyword and its --*-path flag."""


# RankHooks field -> the Miles flag that sets it (the Trainer keyword is the field's name).
_HOOK_FLAGS = {
    "loss_fn": "--custom-loss-function-path",
    "tis_fn": "--custom-tis-function-path",
    "pg_loss_reducer": "--custom-pg-loss-reducer-function-path",
    "before_log_prob_hook": "--custom-megatron-before-log-prob-hook-path",
    "before_train_step_hook": "--custom-megatron-before-train-step-hook-path",
}


def check_shippable(hooks: RankHooks) -> None:
    """Hooks that run on the ranks travel by pickling: an importable function by reference, a
    closure or an object defined in a notebook by value (cloudpickle). Checked before any rank
    starts, so a hook that cannot travel fails the Trainer's construction, not a rank."""
    from miles_sdk.rollout.shapes import describe_hook

    cloudpickle = _cloudpickle()
    for name, flag in _HOOK_FLAGS.items():
        hook = getattr(hooks, name)
        if hook is None:
            continue
        try:
            cloudpickle.dumps(hook)
        except Exception as error:
            raise HookShippingError(
                f"train_backend='fsdp' runs the {name} hook {describe_hook(hook)} (Trainer({name}=...) "
                f"or {flag}) on every training rank, in other processes, but it cannot be sent there: "
                f"{type(error).__name__}: {error}. Define it at module level in an importable module and "
                "pass it or its path, or keep unpicklable state (locks, open files, clients) out of it, "
                "e.g. created lazily on first call"
            ) from error


def _cloudpickle() -> Any:
    """cloudpickle (untyped; a dependency of Ray, and ours): pickles hooks defined in a notebook."""
    return importlib.import_module("cloudpickle")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _InProcess:
    """One rank in the driver's process: a one-member process group, no extra process."""

    def __init__(self, args: Config, plan: WorldPlan, source: ModelSource, hooks: RankHooks) -> None:
        self.world_size = 1
        spec = RankSpec(0, 1, plan.device_type, "127.0.0.1", _free_port())
        self.rank = TrainRank(args, spec, source, hooks)

    def call(self, method: str, per_rank: Sequence[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        return [getattr(self.rank, method)(*per_rank[0], **kwargs)]

    def pids(self) -> list[int]:
        import os

        return [os.getpid()]

    def close(self) -> None:
        self.rank.close()


def _serve(conn: Connection, args: Config, spec: RankSpec, payload: bytes) -> None:
    """A local rank process: build the rank, then answer calls until told to stop."""
    try:
        source, hooks = _cloudpickle().loads(payload)
        rank = TrainRank(args, spec, source, hooks)
        conn.send(("ok", None))
    except BaseException:  # noqa: BLE001 - sent to the driver, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        message = conn.recv()
        if message is None:
            rank.close()
            return
        method, call_args, kwargs = message
        try:
            conn.send(("ok", getattr(rank, method)(*call_args, **kwargs)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class _Processes:
    """Ranks as spawned local processes (one node), driven over pipes."""

    def __init__(self, args: Config, plan: WorldPlan, source: ModelSource, hooks: RankHooks) -> None:
        self.world_size = plan.world_size
        ctx = mp.get_context("spawn")
        port = _free_port()
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for rank in range(plan.world_size):
            parent, child = ctx.Pipe()
            spec = RankSpec(rank, plan.world_size, plan.device_type, "127.0.0.1", port)
            # Only rank 0 is sent the weights; the others receive their shards from it.
            payload = _cloudpickle().dumps((source.for_rank(rank), hooks))
            proc = ctx.Process(target=_serve, args=(child, args, spec, payload), name=f"miles-sdk-rank{rank}")
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        self._gather("start")

    def _gather(self, what: str) -> list[Any]:
        results = []
        for rank, conn in enumerate(self._conns):
            try:
                status, value = conn.recv()
            except EOFError as error:
                code = self._procs[rank].exitcode
                raise RankError(f"training rank {rank} died during {what} (exit code {code})") from error
            if status == "error":
                dead = [r for r in self._exited(wait_s=1.0) if r != rank]
                if dead:
                    # A peer's collective fails the moment a rank is killed: name the cause.
                    codes = ", ".join(f"rank {r} exit code {self._procs[r].exitcode}" for r in dead)
                    raise RankError(
                        f"training rank {dead[0]} died during {what} ({codes}); rank {rank} then failed:\n{value}"
                    )
                raise RankError(f"training rank {rank} failed during {what}:\n{value}")
            results.append(value)
        return results

    def _exited(self, wait_s: float) -> list[int]:
        """The ranks whose process has ended, waiting up to ``wait_s`` for one to show."""
        deadline = time.monotonic() + wait_s
        while True:
            dead = [r for r, proc in enumerate(self._procs) if proc.exitcode is not None]
            if dead or time.monotonic() >= deadline:
                return dead
            time.sleep(0.05)

    def call(self, method: str, per_rank: Sequence[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        for rank, conn in enumerate(self._conns):
            try:
                conn.send((method, per_rank[rank], kwargs))
            except (BrokenPipeError, OSError) as error:
                raise RankError(
                    f"training rank {rank} is gone (exit code {self._procs[rank].exitcode})"
                ) from error
        return self._gather(method)

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()


class _RayActors:
    """Ranks as Ray actors in one placement group (``ray.init()`` is called here when needed:
    a local cluster, or ``ray_address`` / RAY_ADDRESS to join one)."""

    def __init__(self, args: Config, plan: WorldPlan, source: ModelSource, hooks: RankHooks) -> None:
        from miles_sdk.distributed.ray_init import PLACEMENT_TIMEOUT_S, init_ray, ray_module

        ray = ray_module("train_backend='fsdp' with distributed_launcher='ray'")
        placement_group = importlib.import_module("ray.util.placement_group").placement_group
        strategy = importlib.import_module("ray.util.scheduling_strategies").PlacementGroupSchedulingStrategy
        self._ray: Any = ray
        self._started_ray = init_ray(args, "train_backend='fsdp' with distributed_launcher='ray'")
        self.world_size = plan.world_size
        gpu = plan.device_type == "cuda"
        bundles = [{"GPU": 1, "CPU": 1} if gpu else {"CPU": 1} for _ in range(plan.world_size)]
        self._group = placement_group(bundles, strategy="PACK")
        try:
            ray.get(self._group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            message = (
                f"Ray could not place {plan.world_size} training ranks ({bundles[0]} each) within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; free now: {ray.available_resources()} of "
                f"{ray.cluster_resources()} (engine replicas and other jobs hold the rest)"
            )
            importlib.import_module("ray.util.placement_group").remove_placement_group(self._group)
            if self._started_ray:
                ray.shutdown()
            raise RankError(message) from None
        actor_cls: Any = ray.remote(_RankActor)
        self._actors: list[Any] = [
            actor_cls.options(
                num_cpus=1,
                num_gpus=1 if gpu else 0,
                scheduling_strategy=strategy(placement_group=self._group, placement_group_bundle_index=rank),
            ).remote()
            for rank in range(plan.world_size)
        ]
        address = ray.get(self._actors[0].address.remote())
        port = ray.get(self._actors[0].free_port.remote())
        self._call_all(
            "setup",
            [
                (
                    args,
                    RankSpec(r, plan.world_size, plan.device_type, address, port),
                    source.for_rank(r),
                    hooks,
                )
                for r in range(plan.world_size)
            ],
        )

    def _call_all(self, method: str, per_rank: Sequence[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        ray = self._ray
        refs = [a.call.remote(method, args, kwargs) for a, args in zip(self._actors, per_rank)]
        results = []
        for rank, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as error:
                raise RankError(f"training rank {rank} died during {method}: {error}") from error
            except ray.exceptions.RayTaskError as error:
                dead = self._dead_peers(refs, rank, wait_s=1.0)
                if dead:
                    # A peer's collective fails the moment a rank is killed: name the cause.
                    raise RankError(
                        f"training rank {dead[0]} died during {method} (ranks {dead} are gone); "
                        f"rank {rank} then failed:\n{error}"
                    ) from error
                raise RankError(f"training rank {rank} failed during {method}:\n{error}") from error
        return results

    def _dead_peers(self, refs: list[Any], failed: int, wait_s: float) -> list[int]:
        """The other ranks whose actor has died, among those that answer within ``wait_s``."""
        ray = self._ray
        others = {ref: r for r, ref in enumerate(refs) if r != failed}
        ready, _ = ray.wait(list(others), num_returns=len(others), timeout=wait_s)
        dead = []
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                dead.append(others[ref])
            except Exception:  # noqa: BLE001, S112 - a peer that failed itself is not the cause
                continue
        return sorted(dead)

    def call(self, method: str, per_rank: Sequence[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        return self._call_all(method, per_rank, **kwargs)

    def pids(self) -> list[int]:
        return [int(p) for p in self._ray.get([a.pid.remote() for a in self._actors])]

    def close(self) -> None:
        ray = self._ray
        try:
            ray.get([a.call.remote("close", (), {}) for a in self._actors], timeout=30)
        except Exception as error:  # noqa: BLE001 - a dead rank is still removed below
            logger.info("training ranks did not close cleanly (%s); killing their actors", error)
        for actor in self._actors:
            ray.kill(actor)
        importlib.import_module("ray.util.placement_group").remove_placement_group(self._group)
        if self._started_ray:
            ray.shutdown()


class _RankActor:
    """The Ray actor around a :class:`TrainRank` (built by ``setup`` once the address is known)."""

    def __init__(self) -> None:
        self.rank: TrainRank | None = None

    def address(self) -> str:
        return str(importlib.import_module("ray.util").get_node_ip_address())

    def free_port(self) -> int:
        return _free_port()

    def pid(self) -> int:
        import os

        return os.getpid()

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method == "setup":
            config, spec, source, hooks = args
            self.rank = TrainRank(config, spec, source, hooks)
            return None
        assert self.rank is not None, "setup first"
        return getattr(self.rank, method)(*args, **kwargs)
