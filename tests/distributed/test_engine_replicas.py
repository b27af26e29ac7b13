"""rollout_num_gpus=2: two engine replica processes behind the router.

- Parity: with deterministic sampling (a seed per sample) the replicas draw the same samples, the same
  rewards and the same training metrics as the one in-process engine; every sync reaches both
  replicas (check_weight_sync is on under pytest: one fingerprint per replica).
- Faults: a replica killed mid-rollout (SIGKILL by pid) loses no sample and doubles none; it is
  replaced before the weight update, with the synced weights.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from miles_sdk import Config, Sample, Trainer
from miles_sdk.distributed.replicas import EngineReplicas
from miles_sdk.testing.run import (
    ARITHMETIC_ROWS,
    StepsResult,
    assert_same_steps,
    parity_config,
    spread_reward,
    step_trainer,
)
from miles_sdk.testing.tiny import tiny_policy

COMPARED = ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "rollout/reward_mean")
DATASET = ARITHMETIC_ROWS


def _config(**overrides: Any) -> Config:
    return parity_config(
        distributed_launcher="processes",
        **overrides,
    )


def _trainer(config: Config, reward: Any = spread_reward) -> Trainer:
    model, tok = tiny_policy("unit", seed=0)
    return Trainer(config, model=model, tokenizer=tok, reward_model=reward, dataset=DATASET)


@pytest.fixture(scope="module")
def one_engine() -> StepsResult:
    with _trainer(_config()) as trainer:
        assert not isinstance(trainer.engine, EngineReplicas)
        return step_trainer(trainer, 3)


def test_two_replicas_sample_and_train_like_one_engine(one_engine: StepsResult) -> None:
    with _trainer(_config(rollout_num_gpus=2, check_weight_sync=True)) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        assert len({pid for pid in replicas.pids()}) == 2 and os.getpid() not in replicas.pids()
        result = step_trainer(trainer, 3)
        served = [w.requests for w in replicas.workers]
        assert all(n > 0 for n in served), f"both replicas should serve requests: {served}"
        assert {r.weight_version for r in trainer._loop.run(replicas.report_weights(["model.embed_tokens.weight"], 1))} == {3}
    assert_same_steps(one_engine, result, COMPARED)
    assert min(m["train/grad_norm"] for m in one_engine.metrics) > 0.01, "the comparison needs a real gradient"


def test_a_replica_killed_mid_rollout_loses_no_sample_and_comes_back(one_engine: StepsResult) -> None:
    killed: list[int] = []
    in_flight_at_kill: list[int] = []
    trainer: Trainer | None = None

    async def kill_a_busy_replica(args: Config, sample: Sample) -> float:
        # The first finished sample: the other requests are still generating on the replicas.
        assert trainer is not None and isinstance(trainer.engine, EngineReplicas)
        if not killed:
            busy = max(range(2), key=lambda i: trainer.engine.workers[i].active)  # type: ignore[union-attr]
            pid = trainer.engine.pids()[busy]
            assert pid is not None
            in_flight_at_kill.append(trainer.engine.workers[busy].active)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return await spread_reward(args, sample)

    trainer = _trainer(_config(rollout_num_gpus=2, check_weight_sync=True), reward=kill_a_busy_replica)
    try:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        result = step_trainer(trainer, 2)
        assert killed and in_flight_at_kill[0] > 0, "the kill should land while requests are in flight"
        # Same samples as the run without a fault: none lost, none doubled, none re-drawn differently.
        assert_same_steps(StepsResult(one_engine.metrics[:2], one_engine.samples[:2]), result, COMPARED)
        first = result.samples[0]
        assert len(first) == 8 and len({s.index for s in first}) == 8
        # Replaced before the weight update of step 0, loaded with the synced weights (check_weight_sync
        # verified both replicas' fingerprints at steps 0 and 1).
        assert replicas.restarts == 1
        pids = replicas.pids()
        assert killed[0] not in pids and all(p is not None for p in pids)
        assert all(w.healthy for w in replicas.workers) and len(replicas.workers) == 2
    finally:
        trainer.close()


async def test_a_replica_that_stops_answering_health_checks_has_its_requests_resent() -> None:
    """A hung replica (alive, silent: a SIGSTOPped process) is taken out of rotation by the health
    check, and its in-flight request is answered once, by another replica."""
    import asyncio

    from aiohttp import web

    from miles_sdk.engines.http_server import serve_app
    from miles_sdk.router import ROUTE_TO, Router
    from miles_sdk.testing import ScriptedEngine

    hung_calls: list[str] = []
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        hung_calls.append(request.path)
        await release.wait()  # answers nothing until the test ends
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/generate", hang)
    app.router.add_get("/health", hang)
    server = await serve_app(app, "127.0.0.1", 0)
    live = ScriptedEngine([5, 6])
    router = Router([server.url, live], failure_threshold=1, health_check_interval=None, health_check_timeout=0.2)
    try:
        request = asyncio.create_task(router.route({"input_ids": [1, 2], "sampling_params": {}, ROUTE_TO: 0}))
        while router.workers[0].active == 0:
            await asyncio.sleep(0.01)
        assert (await router.check_health())[server.url] is False
        reply = await asyncio.wait_for(request, timeout=10)
        assert reply["output_ids"] == [5, 6]
        assert hung_calls.count("/generate") == 1 and len(live.requests) == 1  # sent once to each: no duplicate
        assert router.workers[0].active == 0 and not router.workers[0].healthy
    finally:
        release.set()
        await router.close()
        await server.close()


def test_resumed_replicas_sample_from_the_loaded_weights(one_engine: StepsResult, tmp_path: Any) -> None:
    """--load with replicas: they get the checkpoint's weights (not the ones they started from), so
    the step after the checkpoint draws what the uninterrupted run drew."""
    save = str(tmp_path / "ckpt")
    with _trainer(_config(rollout_num_gpus=2, save=save, save_interval=1)) as trainer:
        trainer.step()
    with _trainer(_config(rollout_num_gpus=2, load=save)) as trainer:
        assert trainer.rollout_id == 1
        resumed = step_trainer(trainer, 1)
    assert_same_steps(StepsResult(one_engine.metrics[1:2], one_engine.samples[1:2]), resumed, COMPARED)


def test_ray_replicas_are_replaced_after_a_kill() -> None:
    """The same replicas as Ray actors (a local Ray cluster, shut down at close)."""
    ray = pytest.importorskip("ray")
    config = _config(rollout_num_gpus=2, check_weight_sync=True).replace(distributed_launcher="ray")
    with _trainer(config) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas) and replicas.launcher.use_ray
        trainer.step()
        killed = replicas.pids()[0]
        assert killed is not None and killed != os.getpid()
        os.kill(killed, signal.SIGKILL)
        assert len(trainer.step()) > 0 and len(trainer.last_samples) == 8
        assert replicas.restarts == 1 and killed not in replicas.pids()
    assert not ray.is_initialized()
