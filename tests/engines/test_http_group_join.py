"""A server that cannot join the weight update group fails the join at once, not after the
group's 300 s timeout (twice, with the retry):

- a server that refuses ``/init_weights_update_group`` is named, asked once, and the sync goes
  through the disk at once; the servers that had joined are let go at once (the trainer drops
  its store, so their rendezvous fails instead of blocking a thread for 300 s);
- a server that cannot reach the trainer's store gives up after its connect timeout and says
  so in its answer, which aborts the rendezvous for everyone;
- a server that never answers is given up after the sender's join timeout.

Miles's ``--rollout-external --rollout-external-engine-addrs h1:p1 h2:p2`` builds the Trainer's
engine over every server (requests spread, each one joins the group and is checked after every
sync); a malformed or repeated address is a ConfigError naming the flag and the address. An
address that is a router joins the group through the workers it lists (``/list_workers``, or
SGLang's gateway ``/workers``); a router whose workers have no address says what to pass instead.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
import torch
from aiohttp import web

from miles_sdk import Config, ConfigError, Sample, Trainer
from miles_sdk._loop import LoopThread
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_client import HttpEngine
from miles_sdk.engines.http_server import EngineService, ServerHandle, build_app, serve_app
from miles_sdk.engines.weight_group import GroupJoinError, WeightGroupReceiver, WeightGroupSender, free_port
from miles_sdk.engines.weight_sync import save_for_sync
from miles_sdk.router import Router
from miles_sdk.router.server import start_router_server
from miles_sdk.testing.run import small_config, step_trainer
from miles_sdk.testing.tiny import tiny_policy

TOKEN = "test-group-join-token"
DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
PROMPT = timedelta(seconds=5)
"""Far below the group's 300 s timeout: what "at once" is allowed to take on 2 shared cores."""


async def some_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.tokens[-4:]) % 2)


class _WatchedReceiver(WeightGroupReceiver):
    """Records when each join started and ended (joined or failed)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ended: list[str] = []
        self.started = threading.Event()
        self.done = threading.Event()

    def init(self, payload: Mapping[str, Any], device: torch.device | None = None, rank_in_engine: int = 0) -> None:
        self.started.set()
        try:
            super().init(payload, device, rank_in_engine)
        except Exception as e:
            self.ended.append(f"failed: {e}")
            raise
        else:
            self.ended.append("joined")
        finally:
            self.done.set()


@attrs.define
class _Refusing(EngineService):
    """A server that answers every /init_weights_update_group with an error (as an SGLang server
    does when its ranks cannot join), once ``after`` started joining (so that one is waiting in
    the rendezvous when the refusal comes)."""

    after: threading.Event | None = None
    joins: int = 0

    async def init_weights_update_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.joins += 1
        if self.after is not None and await asyncio.to_thread(self.after.wait, PROMPT.total_seconds()):
            await asyncio.sleep(0.2)  # it reaches the trainer's store meanwhile
        return {"success": False, "message": "init_weights_update_group failed: no route to the master"}


@attrs.define
class _Unreachable(EngineService):
    """A server for which the trainer's store is unreachable (its requests go to a closed port)."""

    async def init_weights_update_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await super().init_weights_update_group({**payload, "master_port": free_port("127.0.0.1")})


@attrs.define
class _Silent(EngineService):
    """A server whose /init_weights_update_group never answers (an SGLang server waiting out its
    own 30-minute rendezvous timeout for a master it cannot reach)."""

    # Set by the test when it is done: a handler still sleeping held the server's close for
    # aiohttp's 60 s shutdown timeout (the test's teardown took 61 s).
    released: ClassVar[threading.Event] = threading.Event()

    async def init_weights_update_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        while not self.released.is_set():
            await asyncio.sleep(0.05)
        return {"success": False, "message": "unreachable"}


@attrs.define
class _Counting(EngineService):
    """Counts the /generate requests it served."""

    generated: int = 0

    async def generate_one(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.generated += 1
        return await super().generate_one(payload)


@attrs.define
class _Server:
    service: EngineService
    handle: ServerHandle
    loop: LoopThread
    engine: EmbeddedEngine


@pytest.fixture
def start_server() -> Iterator[Any]:
    started: list[_Server] = []

    def start(
        kind: type[EngineService], model: torch.nn.Module, tok: Any, receiver: WeightGroupReceiver, **extra: Any
    ) -> _Server:
        loop = LoopThread()  # the server's own loop, as a process of its own would have
        engine = EmbeddedEngine(copy.deepcopy(model), tok, max_batch_size=8)
        service = kind(engine, tok, weight_groups=receiver, **extra)
        handle = loop.run(serve_app(build_app(service, api_key=TOKEN), "127.0.0.1", 0, api_key=TOKEN))
        started.append(_Server(service, handle, loop, engine))
        return started[-1]

    yield start
    for server in started:
        server.loop.run(server.handle.close())
        server.loop.close()
        server.engine.close()


def test_a_refused_join_goes_to_the_disk_at_once_and_lets_the_other_servers_go(
    start_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, tok = tiny_policy("unit", seed=0)
    watched = _WatchedReceiver()
    good = start_server(EngineService, model, tok, watched)
    refusing = start_server(_Refusing, model, tok, WeightGroupReceiver(), after=watched.started)
    client = HttpEngine([good.handle.url, refusing.handle.url], api_key=TOKEN, max_retries=0)
    config = small_config(
        rollout_batch_size=2,
        n_samples_per_prompt=2,
        rollout_max_response_len=4,
        weight_sync_method="distributed",
        weight_sync_dir=str(tmp_path),
        check_weight_sync=True,
    )
    with (
        caplog.at_level(logging.WARNING, logger="miles_sdk.trainer"),
        Trainer(config, model=model, tokenizer=tok, reward_model=some_reward, dataset=DATASET, engine=client) as trainer,
    ):
        try:
            start = time.monotonic()
            trainer._weight_sync.sync()  # what a step's sync does
            took = time.monotonic() - start
        finally:
            trainer._loop.run(client.close())
    assert took < PROMPT.total_seconds(), f"the sync took {took:.1f} s"
    assert isinstance(refusing.service, _Refusing) and refusing.service.joins == 1, "a refusal is not asked again"
    receiver = good.service.weight_groups
    assert isinstance(receiver, _WatchedReceiver)
    assert receiver.done.wait(PROMPT.total_seconds()), "the server that joined is still blocked in the rendezvous"
    assert receiver.ended and receiver.ended[0].startswith("failed"), receiver.ended
    warnings = [r.getMessage() for r in caplog.records if "syncing through the disk from now on" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{refusing.handle.url}/init_weights_update_group refused: " in warnings[0]
    assert "no route to the master" in warnings[0]
    assert (tmp_path / "weights").is_dir(), "the disk fallback wrote no weights"
    assert good.engine.weight_version == refusing.engine.weight_version == 1


async def test_a_server_that_cannot_reach_the_store_says_so_and_the_rendezvous_is_aborted(start_server: Any) -> None:
    model, tok = tiny_policy("unit", seed=0)
    good = start_server(EngineService, model, tok, _WatchedReceiver())
    unreachable = start_server(_Unreachable, model, tok, WeightGroupReceiver(connect_timeout=timedelta(seconds=1)))
    client = HttpEngine([good.handle.url, unreachable.handle.url], api_key=TOKEN, max_retries=0)
    sender = WeightGroupSender(backend="gloo", bucket_bytes=1 << 20)
    try:
        start = time.monotonic()
        with pytest.raises(GroupJoinError) as info:
            await sender.send(client, model, version=1)
        took = time.monotonic() - start
    finally:
        await client.close()
    message = str(info.value)
    assert f"{unreachable.handle.url}/init_weights_update_group refused: " in message, message
    assert "cannot reach the weight update group's store" in message and "within 1 s" in message, message
    assert took < PROMPT.total_seconds(), f"the join failed after {took:.1f} s"
    receiver = good.service.weight_groups
    assert isinstance(receiver, _WatchedReceiver)
    assert receiver.done.wait(PROMPT.total_seconds()), "the server that joined is still blocked in the rendezvous"
    assert receiver.ended[0].startswith("failed"), receiver.ended
    assert good.engine.weight_version == 0


async def test_a_member_that_never_answers_the_join_is_given_up_after_the_join_timeout(start_server: Any) -> None:
    model, tok = tiny_policy("unit", seed=0)
    watched = _WatchedReceiver()
    good = start_server(EngineService, model, tok, watched)
    _Silent.released.clear()
    silent = start_server(_Silent, model, tok, WeightGroupReceiver())
    client = HttpEngine([good.handle.url, silent.handle.url], api_key=TOKEN, max_retries=0)
    sender = WeightGroupSender(backend="gloo", bucket_bytes=1 << 20, join_timeout=timedelta(seconds=1))
    try:
        start = time.monotonic()
        with pytest.raises(GroupJoinError, match="not every member answered /init_weights_update_group within 1 s"):
            await sender.send(client, model, version=1)
        took = time.monotonic() - start
    finally:
        _Silent.released.set()
        await client.close()
    assert took < PROMPT.total_seconds(), f"the join was given up after {took:.1f} s"
    assert watched.done.wait(PROMPT.total_seconds()), "the server that joined is still blocked in the rendezvous"
    assert watched.ended[0].startswith("failed"), watched.ended


def _flags(*urls: str) -> list[str]:
    """A Miles launch script's flags for external engines at ``urls``, sized for the CPU."""
    return [
        "--rollout-external",
        "--rollout-external-engine-addrs",
        *(u.removeprefix("http://") for u in urls),
        "--sglang-api-key",
        TOKEN,
        "--weight-sync-method",
        "distributed",
        "--check-weight-sync",
        *["--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4"],
        *["--label-key", "label", "--lr", "1e-4", "--device", "cpu", "--no-progress-bar", "--micro-batch-size", "2"],
        *["--update-weight-buffer-size", "65536"],
    ]


def test_the_external_engine_flags_reach_every_server_and_sync_each_through_the_group(
    start_server: Any, tmp_path: Path
) -> None:
    model, tok = tiny_policy("unit", seed=0)
    servers = [start_server(_Counting, model, tok, WeightGroupReceiver()) for _ in range(2)]
    urls = [s.handle.url for s in servers]
    config = Config.from_args(_flags(*urls))
    assert config.rollout_engine == "http"
    with Trainer(config, model=model, tokenizer=tok, reward_model=some_reward, dataset=DATASET) as trainer:
        step_trainer(trainer, 2)  # check_weight_sync reads every server's weights after each sync
        engine = trainer.engine
        assert isinstance(engine, HttpEngine) and engine.urls == urls
        sender = trainer._weight_sync._sender
        assert sender is not None and sender.members == tuple(urls) and sender.ranks == (1, 1)
        assert trainer._weight_sync._tmp is None, "the group sync wrote the weights to disk"
        # No router address was given: generate functions reach the servers through ours.
        assert trainer.args.sglang_router_ip is not None and trainer.args.sglang_router_port is not None
        assert f"http://{trainer.args.sglang_router_ip}:{trainer.args.sglang_router_port}" not in urls
    assert [s.engine.weight_version for s in servers] == [2, 2]
    assert all(isinstance(s.service, _Counting) and s.service.generated > 0 for s in servers), "a server got no request"


@pytest.mark.parametrize(
    ("addrs", "wrong"),
    [
        (["10.0.0.2"], "'10.0.0.2' is not host:port"),
        (["10.0.0.2:30000", "10.0.0.3:http"], "'10.0.0.3:http' is not host:port"),
        (["10.0.0.2:30000", "http://10.0.0.2:30000/"], "names the server of '10.0.0.2:30000' again"),
        (["10.0.0.2:30000/generate"], "is not host:port"),
    ],
)
def test_a_bad_external_address_is_named_with_the_flag_before_anything_loads(addrs: list[str], wrong: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_args(["--rollout-external", "--rollout-external-engine-addrs", *addrs])
    assert "--rollout-external-engine-addrs" in str(info.value) and wrong in str(info.value), str(info.value)


def test_external_flags_without_addresses_or_with_another_engine_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"--rollout-external\) needs rollout_external_engine_addrs"):
        Config.from_args(["--rollout-external"])
    with pytest.raises(ConfigError, match="rollout_engine is 'sglang'"):
        Config.from_args(["--rollout-external", "--rollout-engine", "sglang", "--rollout-external-engine-addrs", "h:1"])
    with pytest.raises(ConfigError, match="pass --rollout-external"):
        Config.from_args(["--rollout-external-engine-addrs", "h:1"])


@pytest.fixture
def start_router() -> Iterator[Any]:
    started: list[tuple[Router, ServerHandle, LoopThread]] = []

    def start(workers: list[Any]) -> str:
        loop = LoopThread()
        router = Router(workers, api_key=TOKEN)
        handle = loop.run(start_router_server(router, "127.0.0.1", 0, api_key=TOKEN))
        started.append((router, handle, loop))
        return handle.url

    yield start
    for router, handle, loop in started:
        loop.run(handle.close())
        loop.run(router.close())
        loop.close()


def test_a_router_address_joins_the_group_through_its_workers(start_server: Any, start_router: Any) -> None:
    model, tok = tiny_policy("unit", seed=0)
    servers = [start_server(_Counting, model, tok, WeightGroupReceiver()) for _ in range(2)]
    workers = [s.handle.url for s in servers]
    router_url = start_router(workers)
    config = Config.from_args(_flags(router_url))
    with Trainer(config, model=model, tokenizer=tok, reward_model=some_reward, dataset=DATASET) as trainer:
        step_trainer(trainer, 2)  # check_weight_sync reads each worker's weights, not the router's pick
        sender = trainer._weight_sync._sender
        assert sender is not None and sender.members == tuple(workers) and sender.ranks == (1, 1)
        assert trainer._weight_sync._tmp is None, "the group sync wrote the weights to disk"
    assert [s.engine.weight_version for s in servers] == [2, 2]


async def test_a_router_over_engines_it_cannot_name_says_what_to_pass_instead(start_router: Any) -> None:
    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, max_batch_size=4)
    client = HttpEngine(start_router([engine]), api_key=TOKEN, max_retries=0)
    try:
        with pytest.raises(GroupJoinError) as info:
            await client.group_members()
    finally:
        await client.close()
        engine.close()
    message = str(info.value)
    assert "/list_workers lists worker 'engine-0:EmbeddedEngine'" in message, message
    assert "pass the servers' own addresses instead (--rollout-external-engine-addrs host:port" in message


async def test_the_sglang_gateway_worker_list_is_read_and_dp_ranks_are_one_server() -> None:
    async def workers(_: web.Request) -> web.Response:
        listed = ["http://10.0.0.2:30000@0", "http://10.0.0.2:30000@1", "http://10.0.0.3:30000"]
        return web.json_response({"workers": [{"id": str(i), "url": u} for i, u in enumerate(listed)], "total": 3})

    app = web.Application()
    app.router.add_get("/workers", workers)  # SGLang's model gateway; /list_workers is a 404 there
    gateway = await serve_app(app, "127.0.0.1", 0)
    client = HttpEngine(gateway.url, max_retries=0)
    try:
        assert await client.router_workers(gateway.url) == ["http://10.0.0.2:30000", "http://10.0.0.3:30000"]
    finally:
        await client.close()
        await gateway.close()


async def test_a_router_address_loads_and_releases_on_each_worker(
    start_server: Any, start_router: Any, tmp_path: Path
) -> None:
    """Through the disk too, each of a router's workers is asked itself (a router passes a
    release on to one worker only)."""
    model, tok = tiny_policy("unit", seed=0)
    servers = [start_server(EngineService, model, tok, WeightGroupReceiver()) for _ in range(2)]
    client = HttpEngine(start_router([s.handle.url for s in servers]), api_key=TOKEN, max_retries=0)
    trained, _ = tiny_policy("unit", seed=1)
    try:
        await client.load_weights_from_disk(str(save_for_sync(trained, tmp_path / "weights")), 3)
        await client.release_memory_occupation()
        await client.resume_memory_occupation()
    finally:
        await client.close()
    expected = dict(trained.named_parameters())
    for server in servers:
        assert server.engine.weight_version == 3
        assert (server.service.memory.releases, server.service.memory.resumes) == (1, 1), server.handle.url
        for name, param in server.engine._model.named_parameters():
            assert torch.equal(param.detach(), expected[name].detach()), name
