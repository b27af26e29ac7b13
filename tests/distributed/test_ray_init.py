"""init_ray: the Ray cluster that ranks and replicas run on (a stub ``ray`` module: no cluster starts)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from miles_sdk.distributed.ray_init import actors_needed, init_ray
from miles_sdk.testing.run import small_config

SCALE_OUT = {"train_backend": "fsdp", "actor_num_gpus_per_node": 2, "rollout_num_gpus": 2}


class _StubRay(types.ModuleType):
    def __init__(self, error: Exception | None = None) -> None:
        super().__init__("ray")
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error


def test_a_local_cluster_has_a_cpu_for_every_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ranks + 2 replicas on a 2-core machine: Ray must count 4 CPUs, or the ranks' placement
    group waits forever behind the replicas (it did before init_ray)."""
    ray = _StubRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = small_config(**SCALE_OUT)
    assert actors_needed(args) == 4
    assert init_ray(args, "test") is True
    # "local": Ray's default (None) joins whatever /tmp/ray/ray_current_cluster names, even a dead
    # cluster's stale entry, and refuses num_cpus when it joins.
    assert ray.calls[0]["num_cpus"] == 4 and ray.calls[0]["address"] == "local"


def test_a_joined_cluster_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = _StubRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    assert init_ray(small_config(ray_address="10.0.0.1:6379", **SCALE_OUT), "test") is True
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert init_ray(small_config(**SCALE_OUT), "test") is True
    assert [c["address"] for c in ray.calls] == ["10.0.0.1:6379", "auto"]
    assert not any("num_cpus" in c for c in ray.calls)


def test_a_cluster_that_refuses_the_driver_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", _StubRay(ConnectionError("Failed to connect to Ray cluster")))
    with pytest.raises(ConnectionError, match=r"10\.0\.0\.1:6379.*RAY_AUTH_MODE=token"):
        init_ray(small_config(ray_address="10.0.0.1:6379", **SCALE_OUT), "train_backend='fsdp'")


def test_one_rank_and_one_engine_need_no_actor() -> None:
    assert actors_needed(small_config()) == 0
    assert actors_needed(small_config(rollout_num_gpus=3)) == 3
    assert actors_needed(small_config(train_backend="fsdp", actor_num_gpus_per_node=4)) == 4


def test_replica_weights_live_under_weight_sync_dir(tmp_path: Path) -> None:
    """Replicas on other nodes load their first weights from the shared --weight-sync-dir (they were
    written to a temporary directory on the driver's node, which no other node can read)."""
    import asyncio

    import torch

    from miles_sdk.distributed.replicas import start_engine_replicas
    from miles_sdk.testing.tiny import tiny_policy

    model, tok = tiny_policy("unit", seed=0)
    shared = tmp_path / "shared"
    args = small_config(rollout_num_gpus=2, distributed_launcher="processes", weight_sync_dir=str(shared))
    replicas = start_engine_replicas(args, model, tok, torch.device("cpu"))  # not started: no process
    weights = replicas._weights[0]
    assert Path(weights).parent.parent == shared and (Path(weights) / "config.json").is_file()
    asyncio.run(replicas.close())
    assert shared.is_dir() and not Path(weights).exists()


def test_offload_train_under_fsdp_is_said_to_do_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """--offload-train was silently ignored with train_backend='fsdp' (the in-process warning about
    placement flags is skipped for fsdp)."""
    from miles_sdk.distributed.world import plan_world

    plan_world(small_config(train_backend="fsdp", offload_train=True), "cpu")
    assert "offload_train (--offload-train) has no effect with train_backend='fsdp'" in caplog.text


def test_colocate_with_ray_replicas_on_gpus_is_said_not_to_share(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ray replicas ask for whole GPUs whatever --colocate says; the run says so at start (before,
    the ranks' placement waited for GPUs the replicas held, with no word about colocate)."""
    import asyncio

    import torch

    from miles_sdk.distributed.replicas import start_engine_replicas
    from miles_sdk.testing.tiny import tiny_policy

    ray = _StubRay()
    ray.nodes = lambda: [{"Alive": True}]  # type: ignore[attr-defined]
    ray.shutdown = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", ray)
    model, tok = tiny_policy("unit", seed=0)
    args = small_config(rollout_num_gpus=2, distributed_launcher="ray", colocate=True)
    replicas = start_engine_replicas(args, model, tok, torch.device("cuda"))  # nothing starts: stub Ray
    asyncio.run(replicas.close())
    assert "colocate (--colocate) is not honoured by Ray replicas" in caplog.text
