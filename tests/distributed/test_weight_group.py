"""weight_sync_method="distributed": the trainer broadcasts its weights to engine replicas through a
torch.distributed group (gloo on the CPU), SGLang's /init_weights_update_group and
/update_weights_from_distributed, instead of writing them to disk.

- Two replicas synced through the group sample and train exactly as one in-process engine, and
  check_weight_sync (on under pytest) finds the trainer's fingerprints on both at every step.
- A replica killed between steps is replaced and rejoins a new group; one killed during the
  broadcast too (the sync fails naming it, and is sent again once through a new group).
- A failure names the replica, the endpoint and the parameter.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import pytest
import torch

from miles_sdk import Config, Trainer
from miles_sdk.distributed.replicas import EngineReplicas
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_server import start_server
from miles_sdk.engines.weight_group import WeightGroupSender, buckets
from miles_sdk.engines.weight_sync import WeightSyncError
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


def _config(**overrides: Any) -> Config:
    return parity_config(
        distributed_launcher="processes",
        **overrides,
    )


def _trainer(config: Config) -> Trainer:
    model, tok = tiny_policy("unit", seed=0)
    return Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET)


GROUP = {"weight_sync_method": "distributed", "update_weight_buffer_size": 64 * 1024}
"""Small buckets: the tiny model's weights travel in several."""


@pytest.fixture(scope="module")
def one_engine() -> StepsResult:
    with _trainer(_config()) as trainer:
        return step_trainer(trainer, 2)


def test_two_replicas_synced_through_a_group_sample_like_one_engine(one_engine: StepsResult) -> None:
    with _trainer(_config(rollout_num_gpus=2, check_weight_sync=True, **GROUP)) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        sync = trainer._weight_sync
        result = step_trainer(trainer, 2)
        assert sync._sender is not None and sync._sender.members == tuple(replicas.urls())
        assert sync._tmp is None, "the group sync wrote the weights to disk"
        assert len(buckets(trainer.policy.engine_model.named_parameters(), 64 * 1024)) > 1
    assert_same_steps(one_engine, result, COMPARED)


def test_a_replica_replaced_after_a_fault_rejoins_the_group() -> None:
    with _trainer(_config(rollout_num_gpus=2, check_weight_sync=True, **GROUP)) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        trainer.step()
        sender = trainer._weight_sync._sender
        assert sender is not None
        before = sender.members
        killed = replicas.pids()[1]
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while replicas.workers[1].healthy and time.monotonic() < deadline:  # the watcher polls every 0.2 s
            time.sleep(0.05)
        # The kill lands between syncs: step 1 generates on the live replica; its sync replaces the
        # dead one, opens a new group with it, and check_weight_sync reads both replicas' weights.
        trainer.step()
        assert replicas.restarts == 1 and killed not in replicas.pids()
        assert sender.members != before and sender.members == tuple(replicas.urls())
        trainer.step()  # and the new group keeps working


class _OneServer:
    """A WeightGroupTarget over one HTTP server."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {token}"}

    async def group_members(self) -> list[str]:
        return [self.url]

    async def post_each(self, path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
        (body,) = bodies
        async with aiohttp.ClientSession() as s, s.post(self.url + path, json=dict(body), headers=self.headers) as r:
            reply = await r.json()
        if r.status != 200 or not reply.get("success", True):
            raise RuntimeError(f"{self.url}{path}: HTTP {r.status}: {reply}")


async def test_a_failed_group_sync_names_the_replica_and_the_parameter() -> None:
    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, max_batch_size=4, seed=0, max_seq_len=64)
    server = await start_server(engine, tok)
    target = _OneServer(server.url, server.api_key or "")
    try:
        # Before any group: a clear refusal, not a hang.
        async with aiohttp.ClientSession() as s, s.post(
            server.url + "/update_weights_from_distributed",
            json={"names": ["x"], "dtypes": ["float32"], "shapes": [[1]]},
            headers=target.headers,
        ) as r:
            reply = await r.json()
        assert reply["success"] is False and "/init_weights_update_group first" in reply["message"]

        # A trainer model with a parameter the engine does not have.
        other, _ = tiny_policy("unit", seed=1)
        other.register_parameter("extra_head", torch.nn.Parameter(torch.zeros(3)))
        sender = WeightGroupSender(backend="gloo", bucket_bytes=1 << 30)
        with pytest.raises(WeightSyncError) as info:
            await sender.send(target, other, version=1)
        message = str(info.value)
        assert server.url in message and "extra_head" in message and "update_weights_from_distributed" in message
        assert engine.weight_version == 0, "a failed update must not publish a version"

        # The same group then carries a good update.
        await sender.send(target, model, version=1)
        assert engine.weight_version == 1
        sender.close()
    finally:
        await server.close()
        engine.close()


def test_a_replica_lost_during_the_broadcast_is_replaced_and_the_sync_retried(caplog: pytest.LogCaptureFixture) -> None:
    with _trainer(_config(rollout_num_gpus=2, check_weight_sync=True, **GROUP)) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        trainer.step()
        post_each = replicas.post_each
        killed: list[int] = []

        async def kill_then_post(path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
            if path == "/update_weights_from_distributed" and not killed:
                pid = replicas.pids()[1]
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                while replicas._slots[1] is not None and replicas._slots[1].handle.alive():
                    time.sleep(0.01)
            await post_each(path, bodies)

        replicas.post_each = kill_then_post  # type: ignore[method-assign]
        trainer.step()  # its sync loses replica 1 mid-broadcast, replaces it and sends again
        assert killed and replicas.restarts == 1 and killed[0] not in replicas.pids()
        retried = [r.getMessage() for r in caplog.records if "reopening the group" in r.getMessage()]
        assert len(retried) == 1 and "/update_weights_from_distributed failed on" in retried[0]
        trainer.step()
