"""weight_sync_method="tensor" (and colocate): the trainer hands engine replicas on its own device
handles to its memory (SGLang's /update_weights_from_tensor): shared-memory files on the CPU,
CUDA IPC handles on a GPU; nothing is written to disk.

- Two replicas synced this way sample and train exactly as one in-process engine, and
  check_weight_sync (on under pytest) finds the trainer's fingerprints on both at every step;
  ``colocate`` picks this path by itself when every replica is on the trainer's device.
- Every staging file is gone once the replicas answered, and none is left after close, also when a
  replica is killed mid-sync (that failure names the replica and the endpoint; the sync is sent
  again to its replacement).
- A failure names the replica and the parameter; a payload naming anything but a tensor rebuild
  function is refused.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pickle
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch

from miles_sdk import Config, Trainer
from miles_sdk.distributed.replicas import EngineReplicas
from miles_sdk.engines import weight_tensor
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_server import start_server
from miles_sdk.engines.weight_group import buckets
from miles_sdk.engines.weight_sync import WeightSyncError
from miles_sdk.engines.weight_tensor import (
    SEGMENT_PREFIX,
    TensorSender,
    colocated,
    segment_dir,
)
from miles_sdk.testing.run import (
    ARITHMETIC_ROWS,
    StepsResult,
    assert_same_steps,
    parity_config,
    spread_reward,
    step_trainer,
)
from miles_sdk.testing.tiny import tiny_policy

DATASET = ARITHMETIC_ROWS
COMPARED = ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "rollout/reward_mean")
BUCKET = 64 * 1024
"""Small buckets: the tiny model's weights travel in several staging files."""


def _config(**overrides: Any) -> Config:
    return parity_config(
        distributed_launcher="processes",
        update_weight_buffer_size=BUCKET,
        **overrides,
    )


def _trainer(config: Config) -> Trainer:
    model, tok = tiny_policy("unit", seed=0)
    return Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET)


def _our_segments() -> set[str]:
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}_"
    return {n for n in os.listdir(segment_dir()) if n.startswith(prefix)}


@pytest.fixture
def staged_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The staging files the trainer creates, in order."""
    paths: list[str] = []
    stage = weight_tensor._stage

    def recording(bucket: Sequence[tuple[str, torch.Tensor]]) -> Any:
        staged = stage(bucket)
        paths.append(str(staged.path))
        return staged

    monkeypatch.setattr(weight_tensor, "_stage", recording)
    yield paths


@pytest.fixture(scope="module")
def one_engine() -> StepsResult:
    with _trainer(_config()) as trainer:
        return step_trainer(trainer, 2)


def test_colocated_replicas_synced_through_tensor_handles_sample_like_one_engine(
    one_engine: StepsResult, staged_paths: list[str]
) -> None:
    # colocate with the default weight_sync_method ("disk"): every replica is on the trainer's
    # device (the CPU of this node), so the sync takes the tensor path by itself.
    with _trainer(_config(rollout_num_gpus=2, check_weight_sync=True, colocate=True)) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        sync = trainer._weight_sync
        result = step_trainer(trainer, 2)
        sender = sync._tensors
        assert sender is not None and sender.members == tuple(replicas.urls())
        assert sync._sender is None, "the tensor sync opened a weight update group"
        assert sync._tmp is None, "the tensor sync wrote the weights to disk"
        n_buckets = len(buckets(trainer.policy.engine_model.named_parameters(), BUCKET))
        assert n_buckets > 1
        assert len(staged_paths) == 2 * n_buckets  # one staging file per bucket and sync
        assert all(Path(p).parent == Path(segment_dir()) for p in staged_paths)
        assert not _our_segments(), "a staging file outlived its sync"
    assert_same_steps(one_engine, result, COMPARED)
    assert not _our_segments()


def test_a_replica_killed_mid_sync_is_named_and_leaves_no_shared_memory(
    caplog: pytest.LogCaptureFixture, staged_paths: list[str]
) -> None:
    with _trainer(_config(rollout_num_gpus=2, check_weight_sync=True, weight_sync_method="tensor")) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        trainer.step()
        post_each = replicas.post_each
        killed: list[tuple[int, str | None]] = []

        async def kill_then_post(path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
            if path == "/update_weights_from_tensor" and not killed:
                pid = replicas.pids()[1]
                assert pid is not None
                killed.append((pid, replicas.urls()[1]))
                os.kill(pid, signal.SIGKILL)
                while replicas._slots[1] is not None and replicas._slots[1].handle.alive():
                    await asyncio.sleep(0.01)
            await post_each(path, bodies)

        replicas.post_each = kill_then_post  # type: ignore[method-assign]
        trainer.step()  # its sync loses replica 1 on bucket 0, replaces it and sends again
        assert killed and replicas.restarts == 1 and killed[0][0] not in replicas.pids()
        retried = [r.getMessage() for r in caplog.records if "sending again" in r.getMessage()]
        assert len(retried) == 1
        assert f"replica-1 {killed[0][1]}" in retried[0] and "/update_weights_from_tensor failed on" in retried[0]
        assert "bucket 0" in retried[0]
        assert not _our_segments(), "the failed bucket's staging file was not removed"
        trainer.step()
    assert staged_paths and not _our_segments()


class _OneServer:
    """A TensorTarget over one HTTP server on this process's CPU."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {token}"}

    async def group_members(self) -> list[str]:
        return [self.url]

    def replica_devices(self) -> list[tuple[str, str | None]]:
        return [(self.url, "cpu")]

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.post(self.url + path, json=dict(body), headers=self.headers) as r:
            reply: dict[str, Any] = await r.json()
        return reply

    async def post_each(self, path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
        (body,) = bodies
        reply = await self.post(path, body)
        if not reply.get("success", True):
            raise RuntimeError(f"{self.url}{path}: {reply}")


async def test_a_failed_tensor_sync_names_the_replica_and_the_parameter() -> None:
    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, max_batch_size=4, seed=0, max_seq_len=64)
    server = await start_server(engine, tok)
    target = _OneServer(server.url, server.api_key or "")
    try:
        # A trainer model with a parameter the engine does not have: nothing is published.
        other, _ = tiny_policy("unit", seed=1)
        other.register_parameter("extra_head", torch.nn.Parameter(torch.zeros(3)))
        sender = TensorSender(bucket_bytes=1 << 30)
        with pytest.raises(WeightSyncError) as info:
            await sender.send(target, other, version=1)
        message = str(info.value)
        assert server.url in message and "extra_head" in message and "update_weights_from_tensor" in message
        assert engine.weight_version == 0, "a failed update must not publish a version"
        assert not _our_segments()

        # The same server then takes a good update: the exact trainer weights, in small buckets.
        trained, _ = tiny_policy("unit", seed=2)
        await TensorSender(bucket_bytes=BUCKET).send(target, trained, version=1)
        assert engine.weight_version == 1
        served = dict(model.named_parameters())
        for name, param in trained.named_parameters():
            assert torch.equal(served[name].detach(), param.detach()), name
        assert not _our_segments()
    finally:
        await server.close()
        engine.close()


async def test_a_payload_naming_anything_but_a_tensor_is_refused() -> None:
    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, max_batch_size=4, seed=0, max_seq_len=64)
    server = await start_server(engine, tok)
    target = _OneServer(server.url, server.api_key or "")
    try:
        hostile = base64.b64encode(pickle.dumps([("x", os.getcwd)])).decode()
        reply = await target.post("/update_weights_from_tensor", {"serialized_named_tensors": [hostile]})
        assert reply["success"] is False and "getcwd" in reply["message"]
        assert "not a tensor rebuild function" in reply["message"]
        # A file outside the staging directory is not mapped either.
        other = _payload_for(str(Path(__file__)))
        reply = await target.post("/update_weights_from_tensor", {"serialized_named_tensors": [other]})
        assert reply["success"] is False and "not a weight staging file" in reply["message"]
        async with aiohttp.ClientSession() as s, s.post(
            server.url + "/update_weights_from_tensor", json={"serialized_named_tensors": [hostile]}
        ) as r:
            assert r.status == 401, "a control endpoint answered without the token"
    finally:
        await server.close()
        engine.close()


class _PathPickle:
    def __init__(self, path: str, nbytes: int) -> None:
        self.path, self.nbytes = path, nbytes

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return weight_tensor.open_segment, (self.path, self.nbytes)


def _payload_for(path: str, nbytes: int = 8) -> str:
    return base64.b64encode(pickle.dumps([("x", _PathPickle(path, nbytes))])).decode()


def test_a_link_named_like_a_staging_file_is_not_followed() -> None:
    link = os.path.join(segment_dir(), f"{SEGMENT_PREFIX}{os.getpid()}_link")
    os.symlink(os.path.abspath(__file__), link)
    try:
        with pytest.raises(weight_tensor.TensorHandleError, match="not a weight staging file"):
            weight_tensor.deserialize_named_tensors(_payload_for(link))
    finally:
        os.unlink(link)


def test_replicas_off_the_trainers_device_are_named() -> None:
    class Target(_OneServer):
        def replica_devices(self) -> list[tuple[str, str | None]]:
            return [("replica-0", "cpu"), ("replica-1", "cuda:1"), ("replica-2", None)]

    off = colocated(Target("http://x", ""), torch.device("cpu"))
    assert off == ["replica-1 (cuda:1)", "replica-2 (device unknown to the driver)"]


def test_a_full_shared_memory_is_named_before_any_write(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(weight_tensor.TensorHandleError) as info:
        weight_tensor._stage([("w", torch.ones(4, 4))])
    assert segment_dir() in str(info.value) and "--update-weight-buffer-size" in str(info.value)
    assert not _our_segments()


async def test_a_sync_cancelled_while_a_bucket_is_staged_leaves_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = weight_tensor._stage
    staged: list[str] = []

    def slow(bucket: Sequence[tuple[str, torch.Tensor]]) -> Any:
        time.sleep(0.3)
        result = stage(bucket)
        staged.append(str(result.path))
        return result

    monkeypatch.setattr(weight_tensor, "_stage", slow)
    task = asyncio.ensure_future(weight_tensor._stage_off_loop([("w", torch.ones(4, 4))]))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the copy ends in its thread, then the buffer is released
        if staged and not _our_segments():
            break
        await asyncio.sleep(0.02)
    assert staged and not Path(staged[0]).exists()


def test_ray_replicas_on_this_node_map_the_trainers_memory() -> None:
    """Ray actors are not the driver's children: they open the staging files by name."""
    ray = pytest.importorskip("ray")
    config = _config(rollout_num_gpus=2, check_weight_sync=True, weight_sync_method="tensor")
    with _trainer(config.replace(distributed_launcher="ray")) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas) and replicas.launcher.use_ray
        trainer.step()  # check_weight_sync: both replicas report the trainer's weights
        assert trainer._weight_sync._tensors is not None and trainer._weight_sync._tmp is None
        assert [d for _, d in replicas.replica_devices()] == ["cpu", "cpu"]
    assert not ray.is_initialized() and not _our_segments()
