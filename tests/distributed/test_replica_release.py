"""--offload-rollout with engine replicas (issue 18, colocated mode): after each rollout every
replica frees its memory (SGLang's /release_memory_occupation), takes it back after the weight
sync (/resume_memory_occupation), and the run samples and trains as with one in-process engine.
A replica that cannot release fails the step, named (Miles's --offload-rollout raises too)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
from typing import Any

import pytest
import torch

from miles_sdk import Config, Trainer
from miles_sdk.distributed.replicas import EngineReplicas
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_server import start_server
from miles_sdk.router.router import RouterError
from miles_sdk.testing.run import ARITHMETIC_ROWS, parity_config, spread_reward
from miles_sdk.testing.tiny import tiny_policy

DATASET = ARITHMETIC_ROWS
COMPARED = ("train/grad_norm", "train/pg_loss", "rollout/reward_mean")


def _config(**overrides: Any) -> Config:
    return parity_config(
        distributed_launcher="processes",
        **overrides,
    )


def _server_info(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/get_server_info", timeout=30) as resp:
        info: dict[str, Any] = json.load(resp)
    return info


def _run(config: Config, steps: int, during_train: list[list[dict[str, Any]]] | None = None) -> tuple[
    list[dict[str, float]], list[list[list[int]]], list[list[dict[str, Any]]]
]:
    """Metrics and sample tokens per step, and each replica's memory report after each step."""
    model, tok = tiny_policy("unit", seed=0)
    trainer: Trainer | None = None

    def look_at_replicas(args: Config, rollout_id: int, step_id: int, *_: object) -> None:
        assert trainer is not None and isinstance(trainer.engine, EngineReplicas) and during_train is not None
        during_train.append([_server_info(u)["memory_occupation"] for u in trainer.engine.urls() if u])

    hook = {"before_train_step_hook": look_at_replicas} if during_train is not None else {}
    trainer = Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET, **hook)
    metrics, samples, after = [], [], []
    with trainer:
        for _ in range(steps):
            metrics.append(trainer.step())
            samples.append([list(s.tokens) for s in trainer.last_samples])
            if isinstance(trainer.engine, EngineReplicas):
                after.append([_server_info(u)["memory_occupation"] for u in trainer.engine.urls() if u])
    return metrics, samples, after


def test_replicas_release_after_each_rollout_and_sample_like_one_engine() -> None:
    """With --colocate, offload_rollout defaults to on for replicas (Miles's default)."""
    assert Config.from_args(["--colocate"]).offload_rollout is None
    assert Config.from_args(["--colocate", "--no-offload-rollout"]).offload_rollout is False
    one_metrics, one_samples, _ = _run(_config(), steps=2)
    during: list[list[dict[str, Any]]] = []
    metrics, samples, after = _run(_config(rollout_num_gpus=2, colocate=True), steps=2, during_train=during)
    # While the trainer trains, both replicas have released their KV cache and graphs (their
    # weights are in host memory already: CPU replicas keep them).
    assert during and all(
        [r["released"] for r in step] == [["kv_cache", "cuda_graph"]] * 2 for step in during
    ), during
    # After each step: released once and resumed once per rollout, nothing left released.
    for step, reports in enumerate(after, start=1):
        assert [(r["release_count"], r["resume_count"], r["released"]) for r in reports] == [(step, step, [])] * 2
    assert samples == one_samples
    assert all(m["perf/offload_rollout_time"] > 0 and m["perf/onload_rollout_time"] > 0 for m in metrics)
    assert not any("perf/offload_rollout_time" in m for m in one_metrics)
    for a, b in zip(one_metrics, metrics, strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert min(m["train/grad_norm"] for m in one_metrics) > 0.01, "the comparison needs a real gradient"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_colocated_gpu_replicas_free_their_weights_while_the_trainer_trains() -> None:
    """Two replicas on cuda:0 with the trainer (--colocate): during training each holds no weight
    on the device, and the run samples and trains as with --no-offload-rollout."""
    gpu = {"device": "cuda", "rollout_num_gpus": 2, "colocate": True}
    kept_metrics, kept_samples, _ = _run(_config(**gpu, offload_rollout=False), steps=2)
    during: list[list[dict[str, Any]]] = []
    metrics, samples, after = _run(_config(**gpu), steps=2, during_train=during)
    assert during and all(
        [(r["released"], r["weights_device_bytes"]) for r in step] == [(["kv_cache", "cuda_graph", "weights"], 0)] * 2
        for step in during
    ), during
    assert all(r["weights_device"].startswith("cuda") and r["weights_device_bytes"] > 0 for r in after[-1])
    assert samples == kept_samples
    for a, b in zip(kept_metrics, metrics, strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_a_replica_that_cannot_release_is_named_and_a_hung_one_is_skipped() -> None:
    model, tok = tiny_policy("unit", seed=0)
    config = _config(rollout_num_gpus=2, colocate=True, offload_rollout=False)  # releases by hand here
    with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as trainer:
        replicas = trainer.engine
        assert isinstance(replicas, EngineReplicas)
        busy = replicas.urls()[1]
        assert busy is not None
        # A long request on replica-1 only: it must refuse to free the memory that request uses.
        body = json.dumps(
            {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
        ).encode()
        request = urllib.request.Request(busy + "/generate", body, {"Content-Type": "application/json"})
        reply: list[object] = []
        thread = threading.Thread(target=lambda: reply.append(urllib.request.urlopen(request, timeout=120).read()))
        thread.start()
        deadline = time.monotonic() + 30
        while _server_info(busy)["running_requests"] == 0:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
        with pytest.raises(RouterError, match="/release_memory_occupation failed on replica-1 ") as failure:
            trainer._loop.run(replicas.release_memory_occupation())
        assert "still running" in str(failure.value) and "replica-0" not in str(failure.value)
        trainer._loop.run(replicas.abort_all())
        thread.join(timeout=120)
        assert reply, "the long request should be answered (aborted)"
        # replica-0 released; a step resumes it and runs as usual.
        assert _server_info(replicas.urls()[0] or "")["memory_occupation"]["released"] == ["kv_cache", "cuda_graph"]
        trainer._loop.run(replicas.resume_memory_occupation())
        assert len(trainer.step()) > 0
        # --no-offload-rollout with --colocate: the step released nothing (replica-1 refused the one above).
        assert [_server_info(u or "")["memory_occupation"]["release_count"] for u in replicas.urls()] == [1, 0]
        # A hung replica (out of rotation) is not waited for: it is replaced before the next sync.
        pid = replicas.pids()[1]
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            replicas.mark_down(busy, "stopped by the test")
            trainer._loop.run(asyncio.wait_for(replicas.release_memory_occupation(), timeout=30))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert _server_info(replicas.urls()[0] or "")["memory_occupation"]["release_count"] == 2


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_served_engine_releases_its_cache_and_weights_and_samples_the_same(device: str) -> None:
    """The server's endpoints over one fast-path engine: what is released (weights only off the
    CPU: they go to a host copy), the memory it frees on a GPU, and the same samples after."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, tok = tiny_policy("unit", seed=0)
    model = model.to(device)
    engine = EmbeddedEngine(model, tok, fast_path=True, max_batch_size=4, max_seq_len=64)
    kept = EmbeddedEngine(model, tok, fast_path=True, own_weights=True, max_batch_size=4, max_seq_len=64)
    params = {"max_new_tokens": 8, "temperature": 1.0, "ignore_eos": True, "sampling_seed": 3}

    async def run() -> None:
        import aiohttp

        server = await start_server(engine, tok, weights_module=model)
        try:
            async with aiohttp.ClientSession(headers=server.auth_headers) as http:

                async def post(path: str, body: dict[str, Any]) -> Any:
                    async with http.post(server.url + path, json=body) as resp:
                        assert resp.status == 200, await resp.text()
                        return await resp.json()

                first = await post("/generate", {"input_ids": [5, 6, 7], "sampling_params": params})
                weights = sum(p.numel() * p.element_size() for p in model.parameters())
                used = torch.cuda.memory_allocated() if device == "cuda" else 0
                reply = await post("/release_memory_occupation", {"tags": None})
                info = (await (await http.get(server.url + "/get_server_info")).json())["memory_occupation"]
                if device == "cuda":
                    assert reply["released"] == ["kv_cache", "cuda_graph", "weights"]
                    assert info["weights_device_bytes"] == 0
                    assert used - torch.cuda.memory_allocated() >= weights
                else:
                    assert reply["released"] == ["kv_cache", "cuda_graph"]
                    assert reply["kept"] == {"weights": "already in host memory"}
                assert info["released"] == reply["released"] and info["release_count"] == 1
                bad = await http.post(server.url + "/release_memory_occupation", json={"tags": ["kv"]})
                assert bad.status == 400 and "unknown tag 'kv'" in (await bad.json())["error"]["message"]
                # A request with nothing resumed takes everything back by itself.
                again = await post("/generate", {"input_ids": [5, 6, 7], "sampling_params": params})
                assert again["output_ids"] == first["output_ids"]
                assert next(model.parameters()).device.type == device
                await post("/release_memory_occupation", {"tags": None})
                assert (await post("/resume_memory_occupation", {}))["resumed"] == reply["released"]
                expected = await kept.generate([8, 9], {**params, "sampling_seed": 4})
                third = await post("/generate", {"input_ids": [8, 9], "sampling_params": {**params, "sampling_seed": 4}})
                assert third["output_ids"] == list(expected.token_ids)
        finally:
            await server.close()

    asyncio.run(run())
    engine.close()
    kept.close()


async def test_the_http_engine_releases_and_resumes_every_server_and_names_one_that_fails() -> None:
    """rollout_engine='http': HttpEngine posts SGLang's endpoints to each server (the KV cache and
    graphs by default); a server that refuses is named, and the others are still resumed."""
    import aiohttp

    from miles_sdk.engines.http_client import HttpEngine, HttpEngineError
    from miles_sdk.testing import ScriptedEngine

    class BusyEngine(ScriptedEngine):
        def release_memory_occupation(self) -> None:
            raise RuntimeError("EmbeddedEngine.release_memory_occupation: 1 requests are still running")

    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, fast_path=True, max_batch_size=2, max_seq_len=32)
    good = await start_server(engine, tok, weights_module=model)
    busy = await start_server(BusyEngine([5, 6]), tok)
    client = HttpEngine([good.url, busy.url], max_retries=0)

    async def info_of(url: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(url + "/get_server_info") as resp:
            info: dict[str, Any] = await resp.json()
        return info

    try:
        with pytest.raises(HttpEngineError, match="still running") as failure:
            await client.release_memory_occupation()
        assert busy.url in str(failure.value) and good.url not in str(failure.value)
        info = (await info_of(good.url))["memory_occupation"]
        assert info["released"] == ["kv_cache", "cuda_graph"] and info["release_count"] == 1
        await client.resume_memory_occupation()
        info = (await info_of(good.url))["memory_occupation"]
        assert info["released"] == [] and info["resume_count"] == 1
        await client.resume_memory_occupation()  # nothing released: nothing sent
        assert (await info_of(good.url))["memory_occupation"]["resume_count"] == 1
        # Our server in front of the client (the Trainer's served API with rollout_engine='http')
        # passes both calls on; the client's default set applies when no tags are named.
        inner = HttpEngine([good.url], max_retries=0)
        front = await start_server(inner, tok)
        try:
            async with aiohttp.ClientSession(headers=front.auth_headers) as http:
                for path in ("/release_memory_occupation", "/resume_memory_occupation"):
                    async with http.post(front.url + path, json={}) as resp:
                        assert resp.status == 200 and (await resp.json())["success"], await resp.text()
                    state = (await info_of(good.url))["memory_occupation"]
                    assert state["released"] == (["kv_cache", "cuda_graph"] if "release" in path else [])
            assert (state["release_count"], state["resume_count"]) == (2, 2)
        finally:
            await front.close()
            await inner.close()
    finally:
        await client.close()
        await good.close()
        await busy.close()
        engine.close()
