"""One engine replica: an :class:`~miles_sdk.engines.embedded.EmbeddedEngine` serving SGLang's HTTP
API in a process of its own, started as a spawned local process or as a Ray actor.

The replica builds its model from a ``save_pretrained`` directory (the driver's current weights),
so a replica restarted mid-run starts from the weights the others hold, and a large model never
travels through a pipe. It answers on ``host:port`` until told to stop or until the driver is gone
(a local replica whose pipe to the driver closes exits: no orphan outlives a killed driver).
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing as mp
import os
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import attrs

__all__ = ["ReplicaError", "ReplicaHandle", "ReplicaSpec", "start_process_replica", "start_ray_replica"]

READY_TIMEOUT_S = 600.0
"""How long a replica may take to load its model and answer (a 70B model from a slow disk)."""


class ReplicaError(RuntimeError):
    """An engine replica failed to start; the message names it and carries its traceback."""


@attrs.frozen
class ReplicaSpec:
    """Everything a replica process needs (picklable)."""

    name: str
    """e.g. ``replica-1``: in logs and errors."""
    weights_path: str
    """A ``save_pretrained`` directory with the weights to serve."""
    weight_version: int
    tokenizer: Any
    device: str
    """"cpu", "cuda" or "cuda:k"."""
    dtype: str | None
    """torch dtype name for the engine's weights (None: as saved)."""
    seed: int
    """Seed of requests that carry no ``sampling_seed`` (distinct per replica: two replicas must
    not draw the same samples for the same prompt)."""
    max_batch_size: int
    max_seq_len: int
    host: str
    api_key: str
    max_context_len: int | None = None
    torch_threads: int | None = None
    """CPU replicas: intra-op threads (None: torch's default)."""


def build_replica_engine(spec: ReplicaSpec) -> tuple[Any, Any]:
    """The replica's EmbeddedEngine over the model in ``spec.weights_path``, and that model (the
    engine samples from it: no copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    from miles_sdk.engines.embedded import EmbeddedEngine

    if spec.torch_threads is not None:
        torch.set_num_threads(spec.torch_threads)
    dtype = getattr(torch, spec.dtype) if spec.dtype else None
    model: Any = AutoModelForCausalLM.from_pretrained(spec.weights_path, dtype=dtype)
    model = model.to(spec.device).eval()  # untyped: transformers' .to is a decorated wrapper
    engine = EmbeddedEngine(
        model, spec.tokenizer, max_batch_size=spec.max_batch_size, seed=spec.seed, max_seq_len=spec.max_seq_len
    )
    engine.update_weights(spec.weight_version)
    return engine, model


async def serve_replica(spec: ReplicaSpec, on_ready: Callable[[int], None], wait_stop: Callable[[], None]) -> None:
    """Build the engine, serve it on ``spec.host`` (a free port), report the port, and serve until
    ``wait_stop`` (run in a thread) returns."""
    from miles_sdk.engines.http_server import start_server

    engine, model = build_replica_engine(spec)
    server = await start_server(
        engine,
        spec.tokenizer,
        spec.host,
        0,
        api_key=spec.api_key,
        max_context_len=spec.max_context_len,
        weights_module=model,  # /release_memory_occupation may move it to host memory
    )
    try:
        on_ready(server.port)
        await asyncio.to_thread(wait_stop)
    finally:
        await server.close()
        engine.close()


class ReplicaHandle(Protocol):
    """A started replica, as the driver sees it."""

    name: str

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        """Block until the replica serves; its URL. Raises :class:`ReplicaError`."""
        ...

    @property
    def pid(self) -> int | None: ...

    @property
    def node_local(self) -> bool:
        """Whether the replica runs on the driver's node (it can map the driver's shared memory)."""
        ...

    def alive(self) -> bool:
        """False once the replica's process is known to be gone (health checks catch the rest)."""
        ...

    def exit_detail(self) -> str:
        """Why the replica is gone (exit code or signal), for logs."""
        ...

    def stop(self) -> None:
        """Stop it (kill when it does not stop by itself); idempotent."""
        ...


# -- spawned local processes ------------------------------------------------------------------------


def _process_main(conn: Connection, spec: ReplicaSpec) -> None:
    def ready(port: int) -> None:
        conn.send(("ok", port))

    def wait_stop() -> None:
        try:
            conn.recv()  # None: stop; EOFError: the driver is gone
        except (EOFError, OSError):
            pass

    try:
        asyncio.run(serve_replica(spec, ready, wait_stop))
    except BaseException:  # noqa: BLE001 - sent to the driver, which raises it with the name
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass


class _ProcessReplica:
    def __init__(self, spec: ReplicaSpec) -> None:
        self.name = spec.name
        self._host = spec.host
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_process_main, args=(child, spec), name=f"miles-sdk-{spec.name}", daemon=True)
        self._proc.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def node_local(self) -> bool:
        return True

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        if not self._conn.poll(timeout):
            self.stop()
            raise ReplicaError(f"engine {self.name} did not start within {timeout:.0f} s")
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise ReplicaError(f"engine {self.name} died while starting ({self.exit_detail()})") from None
        if status != "ok":
            self.stop()
            raise ReplicaError(f"engine {self.name} failed to start:\n{value}")
        return f"http://{self._host}:{int(value)}"

    def alive(self) -> bool:
        return self._proc.is_alive()

    def exit_detail(self) -> str:
        code = self._proc.exitcode
        if code is None:
            return "running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(timeout=10)
        self._conn.close()


def start_process_replica(spec: ReplicaSpec) -> ReplicaHandle:
    """Spawn a local process serving ``spec`` (returns at once; ``wait_ready`` waits)."""
    return _ProcessReplica(spec)


# -- Ray actors -------------------------------------------------------------------------------------


class _ReplicaActor:
    """The Ray actor: the replica's server runs on a thread of the actor's process."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _wait_stop(self) -> None:
        self._stop.wait()

    def node_ip(self) -> str:
        return str(importlib.import_module("ray.util").get_node_ip_address())

    def start(self, spec: ReplicaSpec) -> tuple[int, int]:
        """Serve ``spec``; (port, pid) once it answers."""
        ready: list[int] = []
        errors: list[str] = []
        started = threading.Event()

        def on_ready(port: int) -> None:
            ready.append(port)
            started.set()

        def run() -> None:
            try:
                asyncio.run(serve_replica(spec, on_ready, self._wait_stop))
            except BaseException:  # noqa: BLE001
                errors.append(traceback.format_exc())
                started.set()

        self._thread = threading.Thread(target=run, name=f"miles-sdk-{spec.name}", daemon=True)
        self._thread.start()
        started.wait()
        if errors:
            raise ReplicaError(f"engine {spec.name} failed to start:\n{errors[0]}")
        return ready[0], os.getpid()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


class _RayReplica:
    def __init__(self, spec: ReplicaSpec, gpu: bool) -> None:
        ray = importlib.import_module("ray")
        self._ray: Any = ray
        self.name = spec.name
        actor_cls: Any = ray.remote(_ReplicaActor)
        self._actor = actor_cls.options(num_cpus=1, num_gpus=1 if gpu else 0).remote()
        self._ip = str(ray.get(self._actor.node_ip.remote()))
        # A replica on another node binds its node's address (the control token guards it).
        host = spec.host if self._ip == _local_ip(ray) else self._ip
        self._host = host
        self._ref = self._actor.start.remote(attrs.evolve(spec, host=host))
        self._pid: int | None = None
        self._local = self._ip == _local_ip(ray)

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def node_local(self) -> bool:
        return self._local

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        ray = self._ray
        try:
            port, self._pid = ray.get(self._ref, timeout=timeout)
        except Exception as error:  # any Ray failure is this replica's
            self.stop()
            raise ReplicaError(f"engine {self.name} failed to start: {error}") from error
        return f"http://{self._host}:{int(port)}"

    def alive(self) -> bool:
        if self._pid is None or not self._local:
            return True  # on another node: the router's health checks tell
        return _pid_alive(self._pid)

    def exit_detail(self) -> str:
        return "running" if self.alive() else f"process {self._pid} is gone"

    def stop(self) -> None:
        try:
            self._ray.get(self._actor.stop.remote(), timeout=30)
        except Exception:  # noqa: BLE001, S110 - a dead actor is killed below all the same
            pass
        self._ray.kill(self._actor)


def _local_ip(ray: Any) -> str:
    return str(importlib.import_module("ray.util").get_node_ip_address())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_ray_replica(spec: ReplicaSpec, *, gpu: bool) -> ReplicaHandle:
    """Start ``spec`` as a Ray actor (``ray.init`` must have run)."""
    return _RayReplica(spec, gpu)
