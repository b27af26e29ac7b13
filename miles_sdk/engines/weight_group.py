"""Weight sync through a torch.distributed group (SGLang's ``/init_weights_update_group`` and
``/update_weights_from_distributed``): the trainer is rank 0 and broadcasts every parameter to the
engine replicas, bucket by bucket, instead of writing them to disk for each replica to read.

- Trainer side: :class:`WeightGroupSender` opens the group (a TCPStore on the trainer, one rank per
  replica), then per bucket of at most ``update_weight_buffer_size`` bytes POSTs the bucket's
  names, dtypes and shapes to every replica while it broadcasts the tensors in that order.
- Server side: :class:`WeightGroupReceiver` joins the group on ``/init_weights_update_group`` and,
  on ``/update_weights_from_distributed``, receives the listed tensors and hands them to the engine.

The group is a standalone process group (its own TCPStore), not the default one: a trainer that
already runs FSDP ranks, or a replica process, keeps its own default group untouched. Backend: NCCL
between GPUs, gloo on the CPU (the tests use gloo).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

import attrs
import torch
import torch.distributed as dist
from torch._C._distributed_c10d import TCPStore

from miles_sdk.engines._serving_guard import is_loopback
from miles_sdk.engines.weight_sync import WeightSyncError

__all__ = [
    "DEFAULT_GROUP",
    "GroupJoinError",
    "ServerGroupTarget",
    "WeightGroupReceiver",
    "WeightGroupSender",
    "WeightGroupTarget",
    "buckets",
    "check_master_address",
    "open_group",
]

DEFAULT_GROUP = "weight_update_group"
"""SGLang's default ``group_name``."""

GROUP_TIMEOUT = timedelta(seconds=300)
"""How long a rendezvous or one broadcast may wait for the other ranks. A replica that was receiving
when a peer died keeps that thread blocked until then (its server still answers; stopping it
takes the replica's 10 s stop timeout, then a kill)."""

CONNECT_TIMEOUT = timedelta(seconds=30)
"""How long a member tries to reach the trainer's store (``master_address:master_port``) before
it gives up and answers ``/init_weights_update_group`` with the error: the store listens before
the request is sent, so a member that cannot connect in this time cannot reach that address."""


@runtime_checkable
class WeightGroupTarget(Protocol):
    """Engine replicas that can join a weight-update group (:class:`EngineReplicas`)."""

    async def group_members(self) -> list[str]:
        """Replace lost replicas, then name every replica, in rank order (rank = index + 1)."""
        ...

    async def post_each(self, path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
        """POST ``bodies[i]`` to ``path`` on member i, all at once; raise naming the members that
        failed (an HTTP error or ``success: false``)."""
        ...


@runtime_checkable
class ServerGroupTarget(WeightGroupTarget, Protocol):
    """Members that join with several ranks each and choose the address they reach the trainer at
    (:class:`~miles_sdk.engines.http_client.HttpEngine`: SGLang servers, where a server with
    ``tp_size`` N joins as ranks ``rank_offset .. rank_offset + N - 1``)."""

    async def member_ranks(self, members: Sequence[str]) -> list[int]:
        """How many ranks each of ``members`` (as :meth:`group_members` named them) joins with."""
        ...

    def group_address(self) -> str:
        """The trainer's address as the members reach it (the group's TCPStore listens there)."""
        ...


class GroupJoinError(WeightSyncError):
    """A member could not join the weight update group (it refused, cannot say how many ranks it
    joins with, or the rendezvous failed)."""


class GroupBackend(Protocol):
    """What this module uses of a c10d backend (ProcessGroupGloo, ProcessGroupNCCL)."""

    def broadcast(self, tensors: list[torch.Tensor], opts: dist.BroadcastOptions) -> dist.Work: ...


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_master_address(address: str, *, named_by: str, servers: Sequence[str] = ()) -> None:
    """Raise :class:`GroupJoinError` (naming ``named_by``, the setting that gave ``address``)
    unless ``address`` can be the group's master address: it resolves, it is an address of this
    machine (the group's store listens there), and it is not loopback while one of ``servers``
    (URLs) is on another host."""
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except OSError as e:
        raise GroupJoinError(f"{named_by}: {address!r} does not resolve ({e})") from None
    family, _, _, _, sockaddr = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((sockaddr[0], 0))
    except OSError as e:
        raise GroupJoinError(
            f"{named_by}: {address!r} ({sockaddr[0]}) is not an address of this machine ({e.strerror or e}); "
            "the weight update group's store listens at it, so name this machine's address as the servers "
            "reach it"
        ) from None
    if not is_loopback(str(sockaddr[0])):
        return
    remote = [u for u in servers if not is_loopback(urlsplit(u if "://" in u else f"http://{u}").hostname or "")]
    if remote:
        raise GroupJoinError(
            f"{named_by}: {address!r} is a loopback address, which the servers on other hosts "
            f"({', '.join(remote)}) cannot reach; name this machine's address on their network"
        )


def open_group(
    backend: str,
    address: str,
    port: int,
    rank: int,
    world_size: int,
    *,
    connect_timeout: timedelta = CONNECT_TIMEOUT,
) -> GroupBackend:
    """Join a standalone process group whose store listens at ``address:port`` (blocks until all
    ``world_size`` ranks joined). Reaching the store may take ``connect_timeout``; the rendezvous
    after it, GROUP_TIMEOUT. When the store goes away (its owner aborted the rendezvous) this
    raises at once."""
    try:
        store = TCPStore(address, port, world_size, is_master=False, timeout=connect_timeout)
    except (RuntimeError, OSError) as e:  # torch's DistNetworkError is a RuntimeError
        raise ConnectionError(
            f"cannot reach the weight update group's store at {address}:{port} within "
            f"{connect_timeout.total_seconds():g} s (rank {rank} of {world_size}): {_first_line(e)}"
        ) from e
    store.set_timeout(GROUP_TIMEOUT)
    # torch's stubs give c10d backends no broadcast (they have one at runtime): hence the casts.
    if backend == "gloo":
        return cast(GroupBackend, dist.ProcessGroupGloo(store, rank, world_size, GROUP_TIMEOUT))
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = GROUP_TIMEOUT
        return cast(GroupBackend, dist.ProcessGroupNCCL(store, rank, world_size, options))
    raise ValueError(f"weight update group: backend {backend!r} is not 'nccl' or 'gloo'")


def _first_line(error: BaseException) -> str:
    """torch's c10d errors carry a C++ backtrace after the first line."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _broadcast(group: GroupBackend, tensor: torch.Tensor) -> None:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor], options).wait()


def buckets(params: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive parameters grouped so that a bucket holds at most ``max_bytes`` (a larger tensor
    travels alone)."""
    out: list[list[tuple[str, torch.Tensor]]] = []
    size = 0
    for name, tensor in params:
        nbytes = tensor.numel() * tensor.element_size()
        if not out or size + nbytes > max_bytes:
            out.append([])
            size = 0
        out[-1].append((name, tensor))
        size += nbytes
    return out


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: object) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")  # noqa: TRY004 - a bad value in a request body
    return dtype


class WeightGroupSender:
    """Rank 0 of a weight-update group: opens it with the replicas and broadcasts weights."""

    def __init__(
        self,
        *,
        backend: str,
        bucket_bytes: int,
        address: str = "127.0.0.1",
        server_address: str | None = None,
        group_name: str = DEFAULT_GROUP,
        join_timeout: timedelta = GROUP_TIMEOUT,
    ):
        self.backend = backend
        self.bucket_bytes = bucket_bytes
        self.address = address
        """The group's master address for engine replicas (local processes)."""
        self.server_address = server_address
        """The master address servers (a :class:`ServerGroupTarget`) are told to reach this
        process at; None: the target's ``group_address()``."""
        self.group_name = group_name
        self.join_timeout = join_timeout
        """How long opening a group waits for every member's answer (NCCL's rendezvous is lazy,
        so with NCCL only the members' answers tell that they joined)."""
        self.members: tuple[str, ...] = ()
        self.ranks: tuple[int, ...] = ()
        """Ranks per member (1 each for engine replicas; a server's tp_size for SGLang servers)."""
        self._group: GroupBackend | None = None
        self._store: TCPStore | None = None

    async def send(self, target: WeightGroupTarget, model: torch.nn.Module, version: int) -> None:
        """Broadcast ``model``'s parameters to every replica of ``target`` as ``version``; the group
        is (re)opened first when the replicas changed (one was replaced after a fault)."""
        members = tuple(await target.group_members())
        if isinstance(target, ServerGroupTarget):
            ranks = tuple(await target.member_ranks(members))
        else:
            ranks = (1,) * len(members)
        if self._group is None or members != self.members or ranks != self.ranks:
            await self._open(target, members, ranks)
        params = [(n, p.detach()) for n, p in model.named_parameters()]
        device = "cuda" if self.backend == "nccl" else "cpu"  # the driver's current GPU under NCCL
        for i, bucket in enumerate(buckets(params, self.bucket_bytes)):
            body = {
                "names": [n for n, _ in bucket],
                "dtypes": [dtype_name(t.dtype) for _, t in bucket],
                "shapes": [list(t.shape) for _, t in bucket],
                "group_name": self.group_name,
                "flush_cache": True,
                "weight_version": str(version),
            }
            tensors = [t.to(device).contiguous() for _, t in bucket]
            group = self._group
            assert group is not None
            posted = asyncio.ensure_future(target.post_each("/update_weights_from_distributed", [body] * len(members)))
            sent = asyncio.ensure_future(asyncio.to_thread(_broadcast_all, group, tensors))
            try:
                await asyncio.gather(posted, sent)
            except Exception as e:
                detail = await _replicas_side(posted, e)
                sent.cancel()
                self.close()  # a failed collective leaves the group unusable: reopen next time
                raise WeightSyncError(
                    f"weight sync through the group {self.group_name!r} ({self.backend}) failed on bucket {i} "
                    f"({bucket[0][0]}..., {len(bucket)} tensors) with replicas {list(members)}: {detail}"
                ) from e
            except BaseException:
                posted.cancel()
                sent.cancel()
                self.close()
                raise

    async def _open(self, target: WeightGroupTarget, members: tuple[str, ...], ranks: tuple[int, ...]) -> None:
        if self._group is not None:
            try:
                await target.post_each("/destroy_weights_update_group", [{"group_name": self.group_name}] * len(members))
            except Exception:  # noqa: BLE001, S110 - a replica that lost its group needs none destroyed
                pass
            self.close()
        if isinstance(target, ServerGroupTarget):
            address = self.server_address or target.group_address()
        else:
            address = self.address
        port = free_port(address)
        world = 1 + sum(ranks)
        # The store is held here alone: rank 0 below joins through a client of it like every
        # member, so dropping it aborts the whole rendezvous at once (every rank waiting on it
        # fails with a closed connection) instead of leaving them blocked for GROUP_TIMEOUT.
        store: TCPStore | None = TCPStore(
            address, port, world, is_master=True, timeout=GROUP_TIMEOUT, wait_for_workers=False
        )
        # The trainer is rank 0; member i takes the next ranks[i] ranks (one per replica; an
        # SGLang server joins as rank_offset + tp_rank for each of its tp_size ranks).
        offsets = [1 + sum(ranks[:i]) for i in range(len(members))]
        bodies = [
            {
                "master_address": address,
                "master_port": port,
                "rank_offset": offset,
                "world_size": world,
                "group_name": self.group_name,
                "backend": self.backend,
            }
            for offset in offsets
        ]
        joined = _in_daemon_thread(open_group, self.backend, address, port, 0, world)
        answered = asyncio.ensure_future(target.post_each("/init_weights_update_group", bodies))
        try:
            # A member that refuses, or cannot reach the store, says so in its answer, and the
            # rendezvous is aborted then; one that never answers, after join_timeout.
            await asyncio.wait_for(asyncio.gather(answered, joined), self.join_timeout.total_seconds())
        except BaseException as e:
            if isinstance(e, TimeoutError):
                e = TimeoutError(
                    f"not every member answered /init_weights_update_group within "
                    f"{self.join_timeout.total_seconds():g} s (a member that cannot reach {address}:{port}, the "
                    "trainer's address as the members see it, keeps the others waiting)"
                )
            members_said = answered.done() and not answered.cancelled() and answered.exception() is e
            answered.cancel()
            joined.cancel()
            store = None  # aborts the rendezvous: every rank still waiting on the store fails now
            if not isinstance(e, Exception):
                raise
            if members_said or isinstance(e, TimeoutError):
                detail = str(e)
            else:
                detail = f"the trainer's rank 0: {_first_line(e)}"
            raise GroupJoinError(
                f"weight sync: opening the weight update group {self.group_name!r} ({self.backend}, "
                f"{address}:{port}, world size {world}) with members {list(members)} failed: {detail}"
            ) from e
        self._store, self._group, self.members, self.ranks = store, joined.result(), members, ranks

    def close(self) -> None:
        self._group, self._store, self.members, self.ranks = None, None, (), ()


def _in_daemon_thread(fn: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
    """``fn(*args, **kwargs)`` in a daemon thread: a rendezvous that a member never joins blocks
    it until GROUP_TIMEOUT, and must not hold up the event loop's executor (or its shutdown)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            ok, value = False, e
        else:
            ok, value = True, result
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop closed meanwhile: nobody waits
            pass

    threading.Thread(target=run, name="miles-sdk-weight-group-join", daemon=True).start()
    return future


async def _replicas_side(posted: asyncio.Future[None], error: Exception) -> str:
    """What failed, replicas' answers first: they name the replica (a broken collective only says
    that some peer went away). Waits a few seconds for them when the collective failed first."""
    if not posted.done():
        try:
            await asyncio.wait_for(asyncio.shield(posted), timeout=10)
        except Exception:  # noqa: BLE001, S110 - read below
            pass
    if posted.done() and not posted.cancelled() and posted.exception() is not None:
        replicas = posted.exception()
        return str(error) if replicas is error else f"{replicas} (the broadcast: {error})"
    posted.cancel()
    return str(error)


def _broadcast_all(group: GroupBackend, tensors: Sequence[torch.Tensor]) -> None:
    for tensor in tensors:
        _broadcast(group, tensor)


@attrs.define
class _Joined:
    group: GroupBackend
    backend: str
    rank: int
    device: torch.device


class WeightGroupReceiver:
    """A server's side of weight-update groups: join one, receive broadcast weights from it."""

    def __init__(self, *, connect_timeout: timedelta = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        """How long joining tries to reach the trainer's store before it fails (and the server
        answers ``/init_weights_update_group`` with the error)."""
        self._groups: dict[str, _Joined] = {}
        self._lock = threading.Lock()

    def init(self, payload: Mapping[str, Any], device: torch.device | None = None, rank_in_engine: int = 0) -> None:
        """``/init_weights_update_group``: join as rank ``rank_offset + rank_in_engine`` (blocks
        until every rank joined; run it in a thread). ``device``: where the engine's weights are
        (NCCL binds the group to that GPU; received tensors land there)."""
        try:
            address = str(payload["master_address"])
            port = int(payload["master_port"])
            rank = int(payload["rank_offset"]) + rank_in_engine
            world = int(payload["world_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"init_weights_update_group needs master_address, master_port, rank_offset, world_size: {e!r}"
            ) from None
        name = str(payload.get("group_name", DEFAULT_GROUP))
        backend = str(payload.get("backend", "nccl"))
        if backend == "nccl":
            device = device if device is not None and device.type == "cuda" else torch.device("cuda")
            torch.cuda.set_device(device)  # NCCL's communicator binds the current GPU
        else:
            device = torch.device("cpu")  # gloo broadcasts CPU tensors
        group = open_group(backend, address, port, rank, world, connect_timeout=self.connect_timeout)
        with self._lock:
            self._groups[name] = _Joined(group, backend, rank, device)

    def destroy(self, payload: Mapping[str, Any]) -> bool:
        """``/destroy_weights_update_group``: leave the group; False when not in it."""
        with self._lock:
            return self._groups.pop(str(payload.get("group_name", DEFAULT_GROUP)), None) is not None

    def receive(self, payload: Mapping[str, Any]) -> list[tuple[str, torch.Tensor]]:
        """``/update_weights_from_distributed``: the tensors named in ``payload``, received in order
        from rank 0 (blocks; run it in a thread)."""
        name = str(payload.get("group_name", DEFAULT_GROUP))
        with self._lock:
            joined = self._groups.get(name)
        if joined is None:
            raise LookupError(
                f"update_weights_from_distributed: this server is in no weight update group {name!r}; "
                "call /init_weights_update_group first"
            )
        names, dtypes, shapes = payload.get("names"), payload.get("dtypes"), payload.get("shapes")
        if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)) or not (
            len(names) == len(dtypes) == len(shapes)
        ):
            raise ValueError("update_weights_from_distributed needs 'names', 'dtypes', 'shapes': lists of one length")
        device = joined.device
        out: list[tuple[str, torch.Tensor]] = []
        for n, d, s in zip(names, dtypes, shapes, strict=True):
            tensor = torch.empty([int(x) for x in s], dtype=parse_dtype(d), device=device)
            _broadcast(joined.group, tensor)
            out.append((str(n), tensor))
        return out
