"""Weight sync to colocated engine replicas through tensor handles (SGLang's
``/update_weights_from_tensor``): the replica maps the trainer's memory instead of receiving the
bytes.

- Trainer side: :class:`TensorSender` copies each bucket of at most ``update_weight_buffer_size``
  bytes into one staging buffer on the weights' device and POSTs every replica a handle to it
  (``serialized_named_tensors``: a base64 pickle of ``[(name, tensor), ...]`` made with
  torch.multiprocessing's ForkingPickler reductions). A CUDA buffer travels as a CUDA IPC handle
  (torch's own reduction, as SGLang reads it); a CPU buffer is a file in ``/dev/shm`` that the
  trainer creates and names in the pickle, so any process of this user on the node can map it.
  Once every replica answered (or failed) the trainer frees the buffer: the CPU file is unlinked
  then, so a replica that died mid-sync leaves nothing in ``/dev/shm``.
- Server side: :func:`load_serialized_tensors` rebuilds the tensors from the handles with a
  restricted unpickler (torch's tensor rebuild functions and this module's, nothing else),
  copies them into the engine's weights by name, waits for the copy, and drops every handle
  before the server answers.

Why not torch's ``file_system`` sharing strategy for CPU buffers: its segments carry a reference
count that each pickle increments and each unpickle decrements, so a replica killed before it
unpickled leaves the count above zero and the segment in ``/dev/shm`` until the trainer process
exits, and unlinking such a segment by hand aborts the process that later drops the last reference
(``could not unlink the shared memory file``). Here the trainer owns the file: it alone unlinks it.

Only replicas on the trainer's own device can use this (the same GPU, or both on the CPU of one
node): :func:`colocated` says which replicas are not.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import pickle
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol, cast, runtime_checkable

import attrs
import torch
import torch.multiprocessing

from miles_sdk.engines.weight_group import buckets
from miles_sdk.engines.weight_sync import WeightSyncError

__all__ = [
    "SEGMENT_PREFIX",
    "TensorHandleError",
    "TensorSender",
    "TensorTarget",
    "colocated",
    "deserialize_named_tensors",
    "load_serialized_tensors",
    "open_segment",
    "segment_dir",
    "serialize_named_tensors",
]

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "miles_sdk_weights_"
"""Name prefix of the trainer's shared-memory files: ``{prefix}{pid}_{random}``."""

_ALIGN = 64
"""Byte alignment of each tensor in a staging buffer (any dtype's element size divides it)."""


class TensorHandleError(RuntimeError):
    """A tensor handle could not be made or opened (the message says which and why)."""


@runtime_checkable
class TensorTarget(Protocol):
    """Engine replicas that can take weights as tensor handles (:class:`EngineReplicas`)."""

    async def group_members(self) -> list[str]:
        """Replace lost replicas, then name every replica, in order."""
        ...

    async def post_each(self, path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
        """POST ``bodies[i]`` to ``path`` on member i, all at once; raise naming the members that
        failed."""
        ...

    def replica_devices(self) -> list[tuple[str, str | None]]:
        """Each replica's name and device (``"cpu"``, ``"cuda:k"``) when it runs on this node,
        None when unknown (on another node, or a GPU that Ray picked)."""
        ...


def segment_dir() -> str:
    """Where CPU staging buffers live: ``/dev/shm`` (memory), else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def colocated(target: TensorTarget, device: torch.device) -> list[str]:
    """The replicas of ``target`` that are not on ``device`` (the trainer's weights), each as
    ``"name (device)"``: empty when every replica can take tensor handles."""
    want = _normal(device)
    out: list[str] = []
    for name, where in target.replica_devices():
        if where is None or _normal(torch.device(where)) != want:
            out.append(f"{name} ({where or 'device unknown to the driver'})")
    return out


def _normal(device: torch.device) -> torch.device:
    index: int | None = device.index  # None for a bare "cuda" (torch's stubs say int)
    if device.type == "cuda" and index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


# -- the trainer's side ------------------------------------------------------------------------------


@attrs.define
class _Staged:
    """One bucket copied into a staging buffer; ``release`` frees it."""

    views: list[tuple[str, torch.Tensor]]
    buffer: torch.Tensor | None
    path: str | None
    """The CPU buffer's file (None on a GPU)."""

    def release(self) -> None:
        cuda = self.buffer is not None and self.buffer.is_cuda
        self.views, self.buffer = [], None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None
        if cuda:
            torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]  # free the blocks whose handles the replicas released


def _stage(bucket: Sequence[tuple[str, torch.Tensor]]) -> _Staged:
    device = bucket[0][1].device
    offsets: list[int] = []
    total = 0
    for _, tensor in bucket:
        offsets.append(total)
        total += -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN
    total = max(total, _ALIGN)
    path: str | None = None
    if device.type == "cpu":
        path = os.path.join(segment_dir(), f"{SEGMENT_PREFIX}{os.getpid()}_{uuid.uuid4().hex}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Reserve the pages now: a full /dev/shm fails here, not with SIGBUS at the first write.
            os.posix_fallocate(fd, 0, total)
        except OSError as e:
            os.unlink(path)
            raise TensorHandleError(
                f"cannot stage {total / 2**20:.0f} MiB of weights in {segment_dir()} ({e}); lower "
                "--update-weight-buffer-size or free shared memory"
            ) from e
        finally:
            os.close(fd)
        try:
            storage = cast(torch.UntypedStorage, torch.UntypedStorage.from_file(path, True, total))
            buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
        except BaseException:
            os.unlink(path)
            raise
    else:
        buffer = torch.empty(total, dtype=torch.uint8, device=device)
    views: list[tuple[str, torch.Tensor]] = []
    with torch.no_grad():
        for (name, tensor), offset in zip(bucket, offsets, strict=True):
            nbytes = tensor.numel() * tensor.element_size()
            view = buffer[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor)
            views.append((name, view))
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the copies are done before another process reads
    return _Staged(views, buffer, path)


class _HandlePickler(ForkingPickler):
    """torch's reductions, except that a CPU storage travels as the name of its staging file."""

    def __init__(self, file: io.BytesIO, segments: Mapping[int, tuple[str, int]]) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self._segments = segments
        self.dispatch_table[torch.UntypedStorage] = self._reduce_storage

    def _reduce_storage(self, storage: torch.UntypedStorage) -> tuple[Callable[..., Any], tuple[str, int]]:
        found = self._segments.get(storage.data_ptr()) if storage.device.type == "cpu" else None
        if found is None:
            raise TensorHandleError(
                f"a {storage.device.type} storage that is not a staging buffer cannot be sent as a handle"
            )
        return open_segment, found


def serialize_named_tensors(named: Sequence[tuple[str, torch.Tensor]], segments: Mapping[int, tuple[str, int]]) -> str:
    """``[(name, tensor), ...]`` as one entry of SGLang's ``serialized_named_tensors`` (base64 of a
    ForkingPickler pickle). CUDA tensors become CUDA IPC handles; CPU tensors must be views of a
    staging file listed in ``segments`` (storage data pointer -> (path, bytes))."""
    out = io.BytesIO()
    _HandlePickler(out, segments).dump([(name, tensor) for name, tensor in named])
    return base64.b64encode(out.getvalue()).decode("ascii")


class TensorSender:
    """Sends a model's weights to replicas on the same device as tensor handles, bucket by bucket."""

    def __init__(self, *, bucket_bytes: int) -> None:
        self.bucket_bytes = bucket_bytes
        self.members: tuple[str, ...] = ()
        _remove_stale_segments()

    async def send(self, target: TensorTarget, model: torch.nn.Module, version: int) -> None:
        """Every parameter of ``model`` to every replica of ``target`` as ``version`` (published by
        the last bucket). Raises :class:`WeightSyncError` naming the replica, bucket and endpoint."""
        self.members = members = tuple(await target.group_members())
        params = [(n, p.detach()) for n, p in model.named_parameters()]
        groups = buckets(params, self.bucket_bytes)
        for i, bucket in enumerate(groups):
            staged = await _stage_off_loop(bucket)
            try:
                segments = {}
                if staged.path is not None and staged.buffer is not None:
                    storage = staged.buffer.untyped_storage()
                    segments[storage.data_ptr()] = (staged.path, storage.nbytes())
                body: dict[str, Any] = {"load_format": None, "flush_cache": True}
                if i == len(groups) - 1:
                    body["weight_version"] = str(version)
                # One pickle per replica: a CUDA IPC handle carries a reference count for one reader.
                bodies = [
                    {**body, "serialized_named_tensors": [serialize_named_tensors(staged.views, segments)]}
                    for _ in members
                ]
                await target.post_each("/update_weights_from_tensor", bodies)
            except Exception as e:
                raise WeightSyncError(
                    f"weight sync through tensor handles failed on bucket {i} ({bucket[0][0]}..., "
                    f"{len(bucket)} tensors) with replicas {list(members)}: {e}"
                ) from e
            finally:
                staged.release()


async def _stage_off_loop(bucket: Sequence[tuple[str, torch.Tensor]]) -> _Staged:
    """:func:`_stage` in a thread (it copies up to a bucket); a caller cancelled meanwhile still
    gets the buffer released when the copy ends."""
    task = asyncio.ensure_future(asyncio.to_thread(_stage, bucket))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def release(done: asyncio.Future[_Staged]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().release()

        task.add_done_callback(release)
        raise


def _remove_stale_segments() -> None:
    """Remove staging files left by a trainer process that died mid-sync (its pid is gone)."""
    directory = segment_dir()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith(SEGMENT_PREFIX):
            continue
        pid = name.removeprefix(SEGMENT_PREFIX).split("_", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the server's side -------------------------------------------------------------------------------


def open_segment(path: str, nbytes: int) -> torch.UntypedStorage:
    """Map the trainer's staging file ``path`` (read, copy-on-write: the trainer's copy is never
    written). Only files of this module's naming in :func:`segment_dir` are opened."""
    if (
        os.path.dirname(path) != segment_dir()
        or not os.path.basename(path).startswith(SEGMENT_PREFIX)
        or os.path.islink(path)
    ):
        raise TensorHandleError(f"{path!r} is not a weight staging file ({segment_dir()}/{SEGMENT_PREFIX}*)")
    if not os.path.exists(path):
        raise TensorHandleError(
            f"{path}: the trainer's staging file is gone (it frees a bucket once every replica answered or failed)"
        )
    # torch refuses to map past the end of the file (no SIGBUS from a short file).
    return cast(torch.UntypedStorage, torch.UntypedStorage.from_file(path, False, int(nbytes)))


_REDUCTIONS = "torch.multiprocessing.reductions"
_ALLOWED_FUNCTIONS = {
    (_REDUCTIONS, "rebuild_tensor"),
    (_REDUCTIONS, "rebuild_typed_storage"),
    (_REDUCTIONS, "rebuild_typed_storage_child"),
    (_REDUCTIONS, "rebuild_cuda_tensor"),
    (_REDUCTIONS, "rebuild_storage_empty"),
}


class _HandleUnpickler(pickle.Unpickler):
    """Rebuilds tensors and nothing else: a request body never names an arbitrary callable."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self._opened: dict[str, torch.UntypedStorage] = {}

    def _open(self, path: str, nbytes: int) -> torch.UntypedStorage:
        # Every view of a bucket names the same file: map it once.
        if path not in self._opened:
            self._opened[path] = open_segment(path, nbytes)
        return self._opened[path]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == (__name__, "open_segment"):
            return self._open
        if (module, name) in _ALLOWED_FUNCTIONS:
            return super().find_class(module, name)
        if module in ("torch", "torch.storage", "torch.nn.parameter"):
            found = getattr(__import__(module, fromlist=[name]), name, None)
            if isinstance(found, torch.dtype) or found is torch.Size:
                return found
            if isinstance(found, type) and issubclass(
                found, torch.Tensor | torch.UntypedStorage | torch.storage.TypedStorage
            ):
                return found
        raise TensorHandleError(f"serialized_named_tensors names {module}.{name}, which is not a tensor rebuild function")


def deserialize_named_tensors(payload: str) -> list[tuple[str, torch.Tensor]]:
    """One entry of ``serialized_named_tensors`` back to ``[(name, tensor), ...]`` (views of the
    trainer's memory: copy them before the request is answered)."""
    try:
        raw = base64.b64decode(payload, validate=True)
    except (ValueError, TypeError) as e:
        raise TensorHandleError(f"serialized_named_tensors is not base64: {e}") from None
    try:
        named = _HandleUnpickler(io.BytesIO(raw)).load()
    except TensorHandleError:
        raise
    except Exception as e:
        raise TensorHandleError(f"serialized_named_tensors could not be opened: {type(e).__name__}: {e}") from e
    if not isinstance(named, list) or not all(
        isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], torch.Tensor) for x in named
    ):
        raise TensorHandleError("serialized_named_tensors must hold a list of (name, tensor) pairs")
    return named


def load_serialized_tensors(
    payload: str, load: Callable[[Sequence[tuple[str, torch.Tensor]]], None]
) -> int:
    """Open ``payload``'s tensors, ``load`` them (the engine copies them into its weights), wait
    for the copy on a GPU, and drop every handle; the number of tensors loaded. Run in a thread."""
    named = deserialize_named_tensors(payload)
    count = len(named)
    try:
        load(named)
        cuda = {t.device for _, t in named if t.is_cuda}
        for device in cuda:
            torch.cuda.synchronize(device)  # the trainer frees the buffer once we answer
    finally:
        named.clear()
    return count
