"""weight_sync_method="distributed" with SGLang-API servers (an HttpEngine over URLs): the trainer
opens a weight update group with the servers (world size 1 + the sum of their tp_size, a
rank_offset per server) and broadcasts its weights in buckets, as with engine replicas.

- Two of our HTTP servers, each in its own process, synced through a gloo group sample and train
  exactly as one in-process engine; check_weight_sync finds the trainer's fingerprints on both
  after every sync, and nothing is written to disk.
- A server with tp_size 2 joins with two ranks (rank_offset, rank_offset + 1); both receive every
  tensor.
- A server that cannot join is named in a warning and the sync goes through the disk; a refused
  parameter is named with the server.
- The engine's client records each synced version (engine replicas too, through a group or
  tensor handles).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from miles_sdk import Config, Trainer
from miles_sdk._loop import LoopThread
from miles_sdk.distributed.engine_replica import ReplicaSpec, start_process_replica
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_client import HttpEngine
from miles_sdk.engines.http_server import EngineService, build_app, serve_app
from miles_sdk.engines.weight_group import ServerGroupTarget, WeightGroupReceiver, WeightGroupSender, buckets
from miles_sdk.engines.weight_sync import WeightSyncError, save_for_sync
from miles_sdk.testing.run import ARITHMETIC_ROWS, parity_config, spread_reward, step_trainer
from miles_sdk.testing.tiny import tiny_policy

DATASET = ARITHMETIC_ROWS
COMPARED = ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "rollout/reward_mean")
TOKEN = "test-group-sync-token"


def _config(**overrides: Any) -> Config:
    return parity_config(
        **overrides,
    )


def _server_spec(weights: Path, tok: Any, device: str, **extra: Any) -> ReplicaSpec:
    """One of our HTTP servers as a process, over the weights saved at ``weights``."""
    return ReplicaSpec(
        name="server",
        weights_path=str(weights),
        weight_version=0,
        tokenizer=tok,
        device=device,
        dtype=None,
        seed=7,
        max_batch_size=8,
        max_seq_len=2048 + 8,
        host="127.0.0.1",
        api_key=TOKEN,
        **extra,
    )


@pytest.fixture(scope="module")
def server_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two of our HTTP servers, each a process of its own over the tiny policy's initial weights
    (what two SGLang servers launched from the same checkpoint hold)."""
    model, tok = tiny_policy("unit", seed=0)
    spec = _server_spec(save_for_sync(model, tmp_path_factory.mktemp("servers") / "initial"), tok, "cpu", torch_threads=1)
    handles = [start_process_replica(attrs.evolve(spec, name=f"server-{i}", seed=7 + i)) for i in range(2)]
    try:
        yield [h.wait_ready() for h in handles]
    finally:
        for h in handles:
            h.stop()


def test_two_http_servers_synced_through_a_group_sample_like_one_engine(server_urls: list[str]) -> None:
    model, tok = tiny_policy("unit", seed=0)
    with Trainer(_config(), model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as trainer:
        one_engine = step_trainer(trainer, 2)

    model, tok = tiny_policy("unit", seed=0)
    client = HttpEngine(server_urls, api_key=TOKEN, max_retries=0)
    config = _config(weight_sync_method="distributed", update_weight_buffer_size=64 * 1024, check_weight_sync=True)
    with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET, engine=client) as trainer:
        try:
            sync = trainer._weight_sync
            result = step_trainer(trainer, 2)
            assert sync._sender is not None and sync._sender.members == tuple(server_urls)
            assert sync._sender.ranks == (1, 1), "our server joins with one rank (tp_size 1)"
            assert sync._tmp is None, "the group sync wrote the weights to disk"
            assert client.weight_version == 2, "the client records the version the servers took"
            assert len(buckets(trainer.policy.engine_model.named_parameters(), 64 * 1024)) > 1
        finally:
            trainer._loop.run(client.close())

    for step, (ma, mb, sa, sb) in enumerate(zip(one_engine.metrics, result.metrics, one_engine.samples, result.samples, strict=True)):
        assert [s.tokens for s in sa] == [s.tokens for s in sb], f"step {step}: different samples"
        assert [s.reward for s in sa] == [s.reward for s in sb], f"step {step}: different rewards"
        for key in COMPARED:
            assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), f"step {step}: {key}"


class _TensorParallelServers:
    """A ServerGroupTarget over in-process receivers: server "tp2" has two tensor-parallel ranks,
    server "tp1" one, each rank joining as rank_offset + its tp rank (as SGLang's do)."""

    def __init__(self) -> None:
        self.ranks = {"tp2": [WeightGroupReceiver(), WeightGroupReceiver()], "tp1": [WeightGroupReceiver()]}
        self.inits: dict[str, Mapping[str, Any]] = {}
        self.received: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    async def group_members(self) -> list[str]:
        return list(self.ranks)

    async def member_ranks(self, members: Sequence[str]) -> list[int]:
        return [len(self.ranks[m]) for m in members]

    def group_address(self) -> str:
        return "127.0.0.1"

    async def post_each(self, path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
        async def one(member: str, body: Mapping[str, Any]) -> None:
            receivers = self.ranks[member]
            if path == "/init_weights_update_group":
                self.inits[member] = body
                await asyncio.gather(*(asyncio.to_thread(r.init, body, None, k) for k, r in enumerate(receivers)))
            elif path == "/update_weights_from_distributed":
                outs = await asyncio.gather(*(asyncio.to_thread(r.receive, body) for r in receivers))
                for k, out in enumerate(outs):
                    self.received.setdefault((member, k), {}).update(dict(out))

        await asyncio.gather(*(one(m, b) for m, b in zip(self.ranks, bodies, strict=True)))


async def test_a_tensor_parallel_server_joins_with_one_rank_per_tp_rank() -> None:
    model, _ = tiny_policy("unit", seed=0)
    target = _TensorParallelServers()
    assert isinstance(target, ServerGroupTarget)
    sender = WeightGroupSender(backend="gloo", bucket_bytes=64 * 1024)
    await sender.send(target, model, version=3)
    assert sender.ranks == (2, 1)
    assert [(b["rank_offset"], b["world_size"]) for b in target.inits.values()] == [(1, 4), (3, 4)]
    expected = dict(model.named_parameters())
    assert sorted(target.received) == [("tp1", 0), ("tp2", 0), ("tp2", 1)]
    for got in target.received.values():
        assert got.keys() == expected.keys()
        for name, tensor in got.items():
            assert torch.equal(tensor, expected[name].detach()), name
    sender.close()


@attrs.define
class _NoTensorParallelSize(EngineService):
    """A server whose /get_server_info does not say how many ranks it would join with."""

    def server_info(self) -> dict[str, Any]:
        return {k: v for k, v in super().server_info().items() if k != "tp_size"}


def test_a_server_that_cannot_join_is_named_and_the_sync_goes_through_the_disk(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    model, tok = tiny_policy("unit", seed=0)
    loop = LoopThread()  # the "remote" server's own loop, as a separate process would have
    engine = EmbeddedEngine(copy.deepcopy(model), tok, max_batch_size=8)
    service = _NoTensorParallelSize(engine, tok)
    server = loop.run(serve_app(build_app(service, api_key=TOKEN), "127.0.0.1", 0, api_key=TOKEN))
    config = _config(
        rollout_engine="http",
        sglang_router_ip=server.host,
        sglang_router_port=server.port,
        sglang_api_key=TOKEN,
        weight_sync_method="distributed",
        check_weight_sync=True,
        weight_sync_dir=str(tmp_path),
    )
    try:
        with (
            caplog.at_level(logging.WARNING, logger="miles_sdk.trainer"),
            Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as trainer,
        ):
            trainer.step()
            trainer.step()  # still through the disk, and the warning is not repeated
            assert trainer._weight_sync._group_refused is not None
            assert engine.weight_version == 2
    finally:
        loop.run(server.close())
        loop.close()
        engine.close()
    warnings = [r.getMessage() for r in caplog.records if "syncing through the disk from now on" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{server.url}/get_server_info reports no tp_size" in warnings[0]
    assert (tmp_path / "weights").is_dir(), "the disk fallback wrote no weights"


async def test_a_failed_group_sync_names_the_server_and_the_parameter() -> None:
    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, max_batch_size=4, seed=0, max_seq_len=64)
    server = await serve_app(build_app(EngineService(engine, tok), api_key=TOKEN), "127.0.0.1", 0, api_key=TOKEN)
    client = HttpEngine(server.url, api_key=TOKEN, max_retries=0)
    try:
        other, _ = tiny_policy("unit", seed=1)
        other.register_parameter("extra_head", torch.nn.Parameter(torch.zeros(3)))
        sender = WeightGroupSender(backend="gloo", bucket_bytes=1 << 30)
        with pytest.raises(WeightSyncError) as info:
            await sender.send(client, other, version=1)
        message = str(info.value)
        assert f"{server.url}/update_weights_from_distributed" in message and "extra_head" in message
        assert engine.weight_version == 0, "a failed update must not publish a version"
        await sender.send(client, model, version=1)  # the same group then carries a good update
        assert engine.weight_version == 1
        sender.close()
    finally:
        await client.close()
        await server.close()
        engine.close()


@pytest.mark.parametrize("method", ["distributed", "tensor"])
def test_replicas_synced_through_a_group_or_handles_record_each_version(method: str) -> None:
    """The engine's client records the version each sync gave the replicas (before, it stayed 0
    and every sync published version 1 again)."""
    model, tok = tiny_policy("unit", seed=0)
    config = _config(rollout_num_gpus=2, distributed_launcher="processes", weight_sync_method=method)
    with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as trainer:
        result = step_trainer(trainer, 3)
        assert trainer.engine.weight_version == 3
    assert [{tuple(s.weight_versions) for s in step} for step in result.samples] == [{(0,)}, {(1,)}, {(2,)}]


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL needs a GPU per rank: the trainer on cuda:0, the server on cuda:1"
)
def test_a_gpu_server_is_synced_through_nccl(tmp_path: Path) -> None:
    model, tok = tiny_policy("unit", seed=0)
    handle = start_process_replica(_server_spec(save_for_sync(model, tmp_path / "initial"), tok, "cuda:1"))
    try:
        url = handle.wait_ready()
        client = HttpEngine([url], api_key=TOKEN, max_retries=0)
        config = _config(device="cuda", weight_sync_method="distributed", check_weight_sync=True)
        with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET, engine=client) as trainer:
            try:
                step_trainer(trainer, 2)  # check_weight_sync reads the server's weights after each sync
                sender = trainer._weight_sync._sender
                assert sender is not None and sender.backend == "nccl" and sender.members == (url,)
                assert trainer._weight_sync._tmp is None, "the group sync wrote the weights to disk"
                assert client.weight_version == 2
            finally:
                trainer._loop.run(client.close())
    finally:
        handle.stop()
