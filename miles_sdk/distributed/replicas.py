"""Data-parallel engine replicas behind the router, and what happens when one fails.

With ``rollout_num_gpus = M`` (``rollout_num_gpus_per_engine = 1``, M >= 2) and the embedded engine,
the Trainer's engine is an :class:`EngineReplicas`: M replica processes (spawned locally, or Ray
actors), each an EmbeddedEngine serving SGLang's HTTP API, behind a :class:`~miles_sdk.router.Router`
that spreads requests by load (and its middlewares' choices).

- Weights: the Trainer's sync writes a ``save_pretrained`` directory; :meth:`load_weights_from_disk`
  fans ``/update_weights_from_disk`` out to every replica, and :meth:`report_weights` returns one
  fingerprint per replica for ``check_weight_sync``. With ``weight_sync_method="distributed"``
  the replicas join a torch.distributed group with the trainer instead (:meth:`group_members`,
  :meth:`post_each`; miles_sdk.engines.weight_group) and the weights are broadcast; with
  ``weight_sync_method="tensor"`` (or ``colocate``) replicas on the trainer's device
  (:meth:`replica_devices`) map handles to its memory (miles_sdk.engines.weight_tensor).
- Sampling: a request's tokens depend only on its ``sampling_seed`` and the weights, so with
  ``sglang_enable_deterministic_inference`` (sample i of a group seeded ``rollout_seed + i``) the
  replica that serves a request does not change its sample. Requests without a seed get the
  serving replica's own seed sequence; each replica (and each restart) has a distinct one.
- Faults: a watcher polls each replica's process every ``poll_interval`` seconds and the router's
  ``/health`` every ``health_check_interval``. A dead process (or ``failure_threshold`` failed
  checks in a row) takes the replica out of rotation at once, and its in-flight requests are
  re-sent to live replicas (each request's reply is delivered once: no sample lost or doubled).
  Before the next weight update the replica is replaced by a new process that loads the weights
  being synced.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from miles_sdk.config import Config, ConfigError
from miles_sdk.distributed.engine_replica import (
    ReplicaHandle,
    ReplicaSpec,
    start_process_replica,
    start_ray_replica,
)
from miles_sdk.distributed.ray_init import init_ray
from miles_sdk.engines._serving_guard import new_token
from miles_sdk.engines.base import ReplicaWeights
from miles_sdk.engines.weight_sync import save_for_sync
from miles_sdk.rollout.context import TokenizerLike
from miles_sdk.router._workers import Worker, WorkerDown
from miles_sdk.router.router import Router, RouterError

__all__ = ["EngineReplicas", "ReplicaLauncher", "replica_count", "start_engine_replicas"]

logger = logging.getLogger(__name__)


def replica_count(args: Config) -> int:
    """How many engine replicas ``args`` asks for: ``rollout_num_gpus / rollout_num_gpus_per_engine``
    (1 when ``rollout_num_gpus`` is unset: the in-process engine)."""
    if args.rollout_num_gpus is None or args.rollout_num_gpus <= 1:
        return 1
    per_engine = args.rollout_num_gpus_per_engine
    if per_engine != 1:
        raise ConfigError(
            f"rollout_num_gpus_per_engine={per_engine}: the embedded engine runs one device per replica "
            f"(no tensor parallelism); set --rollout-num-gpus-per-engine 1 for {args.rollout_num_gpus} "
            "replicas, or serve a sharded model with SGLang (rollout_engine='http')"
        )
    return args.rollout_num_gpus


@attrs.frozen
class ReplicaLauncher:
    """How replicas start: a template spec (weights and name filled in per replica) and the launcher."""

    template: ReplicaSpec
    use_ray: bool
    gpu: bool
    devices: tuple[str, ...]
    """Replica i's device (local processes; a Ray actor gets its GPU from Ray)."""

    def device_of(self, slot: int) -> str | None:
        """Replica ``slot``'s device as the driver names it; None for a Ray GPU replica (Ray picks
        the GPU and sets its CUDA_VISIBLE_DEVICES)."""
        if self.use_ray:
            return None if self.gpu else "cpu"
        return self.devices[slot % len(self.devices)]

    def launch(self, slot: int, uid: int, weights_path: str, version: int) -> ReplicaHandle:
        spec = attrs.evolve(
            self.template,
            name=f"replica-{slot}",
            weights_path=weights_path,
            weight_version=version,
            # Distinct per replica and per restart: unseeded requests never repeat another's draws.
            seed=self.template.seed + (uid << 32),
            device=self.device_of(slot) or "cuda",
        )
        if self.use_ray:
            return start_ray_replica(spec, gpu=self.gpu)
        return start_process_replica(spec)


@attrs.define
class _Slot:
    handle: ReplicaHandle
    url: str
    restarts: int = 0


class EngineReplicas(Router):
    """A :class:`Router` that owns its replicas: starts them, watches them, restarts lost ones.

    Use :func:`start_engine_replicas` (it picks devices, the launcher and the initial weights).
    """

    def __init__(
        self,
        launcher: ReplicaLauncher,
        count: int,
        weights_dir: Path,
        *,
        tokenizer: TokenizerLike | None = None,
        poll_interval: float = 0.2,
        health_check_interval: float = 2.0,
        health_check_timeout: float = 10.0,
        failure_threshold: int = 3,
        owns_ray: bool = False,
    ) -> None:
        super().__init__(
            [],
            tokenizer=tokenizer,
            failure_threshold=failure_threshold,
            health_check_interval=health_check_interval,
            health_check_timeout=health_check_timeout,
            api_key=launcher.template.api_key,
        )
        self.launcher = launcher
        self.count = count
        self.poll_interval = poll_interval
        self._dir = weights_dir
        self._weights = (str(weights_dir / "initial"), 0)
        self._slots: list[_Slot | None] = [None] * count
        self._launched = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._owns_ray = owns_ray
        self.restarts = 0
        """Replicas replaced after a fault, over the run."""

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every replica that is not running, then the health loop and the process watcher."""
        await self._launch([i for i, s in enumerate(self._slots) if s is None], *self._weights)
        await super().start()
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        """Stop the watcher, the router, every replica, and remove the weight files."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except asyncio.CancelledError:
                pass
            self._watch_task = None
        await super().close()
        slots, self._slots = self._slots, [None] * self.count
        await asyncio.gather(*(asyncio.to_thread(s.handle.stop) for s in slots if s is not None))
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._owns_ray:
            import importlib

            importlib.import_module("ray").shutdown()
            self._owns_ray = False

    def pids(self) -> list[int | None]:
        """Each replica's process id, in slot order (None for a slot being restarted)."""
        return [s.handle.pid if s is not None else None for s in self._slots]

    def urls(self) -> list[str | None]:
        return [s.url if s is not None else None for s in self._slots]

    # -- weights -----------------------------------------------------------------------------------

    async def load_weights_from_disk(self, model_path: str, version: int) -> None:
        """Replace lost replicas (they start from ``model_path``), then load ``model_path`` on every
        replica as ``version``. A replica lost during the fan-out is replaced and loaded again."""
        for attempt in range(2):
            await self.restart_lost(model_path, version)
            try:
                await super().load_weights_from_disk(model_path, version)
            except RouterError:
                if attempt == 1 or not self._lost():
                    raise
                continue
            self._weights = (model_path, version)
            return

    async def group_members(self) -> list[str]:
        """For a weight sync through a torch.distributed group: replace lost replicas (they start
        from the last weights on disk and get the full broadcast), then every replica's URL in
        slot order (replica i is rank i + 1; the trainer is rank 0)."""
        await self.restart_lost()
        urls = [s.url for s in self._slots if s is not None]
        if len(urls) != self.count:
            raise RouterError(f"EngineReplicas: {len(urls)} of {self.count} replicas are running")
        return urls

    async def post_each(self, path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
        """POST ``bodies[i]`` to replica i, all at once (a collective: every replica must take
        part); raise naming the replica that failed, as soon as one does."""
        running = [(f"replica-{i} {s.url}", s.url) for i, s in enumerate(self._slots) if s is not None]
        if len(running) != len(bodies):
            raise RouterError(f"EngineReplicas: {len(bodies)} requests for {len(running)} running replicas")
        workers = {w.name: w for w in self._workers}

        async def one(label: str, url: str, body: Mapping[str, Any]) -> str | None:
            worker = workers.get(url)
            if worker is None:
                return f"{label}: not in rotation"
            try:
                status, reply = await worker.call("POST", path, body)
            except WorkerDown as e:
                return f"{label}: {e}"
            if status != 200 or not (isinstance(reply, Mapping) and reply.get("success", True)):
                return f"{label}: HTTP {status}: {str(reply)[:300]}"
            return None

        # The first failure ends the wait: the others may be blocked in a collective that can no
        # longer complete (a peer is gone), and their requests are cancelled.
        tasks = [asyncio.ensure_future(one(label, u, b)) for (label, u), b in zip(running, bodies, strict=True)]
        failed: list[str] = []
        pending: set[asyncio.Future[str | None]] = set(tasks)
        try:
            while pending and not failed:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed.extend(f for t in done if (f := t.result()) is not None)
        finally:
            for t in pending:
                t.cancel()
        if failed:
            raise RouterError(f"EngineReplicas: {path} failed on " + "; ".join(failed))

    # -- memory (offload_rollout) -------------------------------------------------------------------

    async def release_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Every running replica frees the memory of ``tags`` (SGLang's ``/release_memory_occupation``;
        default: all of it, the weights into a host copy) until :meth:`resume_memory_occupation`, its
        next request or its next weight update. A replica that answers with an error fails the call,
        named (as Miles's ``--offload-rollout`` does); one out of rotation (dead, or failing its
        health checks) is skipped: it is replaced before the next weight update."""
        await self._each_replica("/release_memory_occupation", {"tags": None if tags is None else list(tags)})

    async def resume_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Every running replica takes back what it released (``/resume_memory_occupation``)."""
        await self._each_replica("/resume_memory_occupation", {"tags": None if tags is None else list(tags)})

    async def _each_replica(self, path: str, body: Mapping[str, Any]) -> None:
        """POST ``body`` to every replica in rotation, together; raise naming each that failed."""
        workers = {w.name: w for w in self._workers}
        targets: list[tuple[str, Worker]] = []
        for i, s in enumerate(self._slots):
            worker = workers.get(s.url) if s is not None else None
            if s is None or worker is None or not worker.healthy or not s.handle.alive():
                # Gone or hung (out of rotation): asking could wait forever; it is replaced
                # before the next sync, and the new process starts with nothing to release.
                logger.info("EngineReplicas: %s skips replica-%d (out of rotation)", path, i)
                continue
            targets.append((f"replica-{i} {s.url}", worker))

        async def one(label: str, worker: Worker) -> str | None:
            try:
                status, reply = await worker.call("POST", path, body)
            except WorkerDown as e:
                return f"{label}: {e}"
            if status != 200 or not (isinstance(reply, Mapping) and reply.get("success", True)):
                return f"{label}: HTTP {status}: {str(reply)[:300]}"
            return None

        failed = [f for f in await asyncio.gather(*(one(label, w) for label, w in targets)) if f is not None]
        if failed:
            raise RouterError(f"EngineReplicas: {path} failed on " + "; ".join(failed))

    def replica_devices(self) -> list[tuple[str, str | None]]:
        """Each replica's name and device (``"cpu"``, ``"cuda:k"``) when it runs on this node (it
        can then map the driver's memory: ``weight_sync_method="tensor"``), None when the driver
        cannot tell (a replica on another node, or a GPU that Ray picked)."""
        out: list[tuple[str, str | None]] = []
        for i, s in enumerate(self._slots):
            local = s is None or s.handle.node_local  # a slot being restarted starts as it did
            out.append((f"replica-{i}", self.launcher.device_of(i) if local else None))
        return out

    async def report_weights(self, names: Sequence[str], truncate_size: int) -> list[ReplicaWeights]:
        reports = await super().report_weights(names, truncate_size)
        if len(reports) != self.count:
            raise RouterError(f"EngineReplicas: {len(reports)} of {self.count} replicas reported their weights")
        return reports

    async def restart_lost(self, weights_path: str | None = None, version: int | None = None) -> list[int]:
        """Replace every replica whose process is gone or that is out of rotation (failed health
        checks) with a new one serving ``weights_path`` (default: the weights last synced);
        returns the slots replaced."""
        lost = self._lost()
        if not lost:
            return []
        path, ver = (weights_path, version) if weights_path is not None and version is not None else self._weights
        for slot in lost:
            old = self._slots[slot]
            assert old is not None
            self.remove_worker(old.url)
            self._slots[slot] = None
            logger.warning("EngineReplicas: restarting replica-%d (%s)", slot, old.handle.exit_detail())
            await asyncio.to_thread(old.handle.stop)
        await self._launch(lost, path, ver)
        self.restarts += len(lost)
        return lost

    # -- internals ---------------------------------------------------------------------------------

    def _lost(self) -> list[int]:
        healthy = {w.name: w.healthy for w in self.workers}
        return [
            i
            for i, s in enumerate(self._slots)
            if s is not None and (not s.handle.alive() or not healthy.get(s.url, False))
        ]

    async def _launch(self, slots: Sequence[int], weights_path: str, version: int) -> None:
        handles: list[tuple[int, ReplicaHandle]] = []
        for slot in slots:
            handles.append((slot, self.launcher.launch(slot, self._launched, weights_path, version)))
            self._launched += 1
        try:
            # Started together, waited for together: the model loads overlap.
            urls = await asyncio.gather(*(asyncio.to_thread(h.wait_ready) for _, h in handles))
        except BaseException:
            await asyncio.gather(*(asyncio.to_thread(h.stop) for _, h in handles))
            raise
        for (slot, handle), url in zip(handles, urls, strict=True):
            self._slots[slot] = _Slot(handle, url)
            self.add_worker(url)

    async def _watch(self) -> None:
        """Take a replica whose process died out of rotation at once (its in-flight requests are
        re-sent); the router's health loop covers replicas that hang."""
        while True:
            await asyncio.sleep(self.poll_interval)
            for slot, s in enumerate(self._slots):
                if s is None or s.handle.alive():
                    continue
                try:
                    self.mark_down(s.url, f"replica-{slot} process {s.handle.pid}: {s.handle.exit_detail()}")
                except RouterError:
                    pass  # already removed (a restart in progress)


def start_engine_replicas(
    args: Config,
    model: torch.nn.Module,
    tokenizer: TokenizerLike,
    device: torch.device,
    *,
    count: int | None = None,
) -> EngineReplicas:
    """Write the policy's current weights, build the launcher for ``args`` and return an (unstarted)
    :class:`EngineReplicas`; ``await replicas.start()`` on the event loop that will use it."""
    count = replica_count(args) if count is None else count
    use_ray = args.distributed_launcher == "ray" or (
        args.distributed_launcher == "auto" and (args.ray_address is not None or _ray_installed())
    )
    # The replicas' first weights (and a restarted replica's) are read from here: under
    # weight_sync_dir when set, so replicas on other nodes read them from the shared file system.
    shared = args.weight_sync_dir
    if shared is not None:
        Path(shared).mkdir(parents=True, exist_ok=True)
    weights_dir = Path(tempfile.mkdtemp(prefix="miles_sdk_replicas_", dir=shared))
    save_for_sync(model, weights_dir / "initial")
    on_cuda = device.type == "cuda"
    fp32 = next(model.parameters()).dtype == torch.float32
    response = max(args.rollout_max_response_len, args.eval_max_response_len or 0)
    template = ReplicaSpec(
        name="replica",
        weights_path="",
        weight_version=0,
        tokenizer=tokenizer,
        device="cpu",
        dtype="bfloat16" if on_cuda and fp32 else None,  # as the in-process engine decodes
        seed=args.rollout_seed,
        max_batch_size=args.max_engine_batch_size,
        max_seq_len=args.rollout_max_context_len or (args.rollout_max_prompt_len or 2048) + response,
        host="127.0.0.1",
        api_key=args.sglang_api_key or new_token(),
        max_context_len=args.rollout_max_context_len,
        torch_threads=None if on_cuda else 1,  # CPU replicas share the cores with the trainer
    )
    launcher = ReplicaLauncher(template, use_ray, on_cuda, _replica_devices(args, device, count))
    owns_ray = use_ray and init_ray(args, "rollout_num_gpus replicas with distributed_launcher='ray'")
    if use_ray and on_cuda and args.colocate:
        logger.warning(
            "colocate (--colocate) is not honoured by Ray replicas: each asks Ray for a whole GPU, so "
            "the %d replicas need GPUs of their own beside the training ranks'; to share GPUs on one "
            "node use --distributed-launcher processes",
            count,
        )
    if use_ray and shared is None and _ray_nodes() > 1:
        logger.warning(
            "rollout_num_gpus=%d replicas on a %d-node Ray cluster read their weights from %s on this "
            "node: set --weight-sync-dir to a directory every node can read",
            count,
            _ray_nodes(),
            weights_dir,
        )
    logger.info(
        "rollout_num_gpus=%d: %d engine replicas as %s on %s",
        args.rollout_num_gpus,
        count,
        "Ray actors" if use_ray else "local processes",
        "one GPU each (Ray)" if use_ray and on_cuda else ", ".join(launcher.devices),
    )
    return EngineReplicas(launcher, count, weights_dir, tokenizer=tokenizer, owns_ray=owns_ray)


def _replica_devices(args: Config, device: torch.device, count: int) -> tuple[str, ...]:
    """Local replica processes: CPU replicas on a CPU run; else the GPUs after the training ones
    (split mode), or the training GPUs themselves with ``colocate``."""
    if device.type != "cuda":
        return ("cpu",)
    training = 0 if args.colocate else (
        args.actor_num_nodes * args.actor_num_gpus_per_node if args.train_backend == "fsdp" else 1
    )
    available = torch.cuda.device_count()
    first = training if training + count <= available else 0
    if not args.colocate and first == 0 and training:
        logger.warning(
            "rollout_num_gpus=%d replicas do not fit beside %d training GPUs on this node's %d: "
            "they share the training GPUs",
            count,
            training,
            available,
        )
    return tuple(f"cuda:{(first + i) % max(available, 1)}" for i in range(count))


def _ray_nodes() -> int:
    import importlib

    return sum(1 for node in importlib.import_module("ray").nodes() if node.get("Alive"))


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None
