"""A killed training rank is named as the cause even when a surviving peer reports first: the
peer's collective fails ("connection closed by peer") the moment the rank dies, and the driver
reads the ranks in order. Fakes stand in for the rank processes and for Ray."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace
from typing import Any

import pytest

from miles_sdk.distributed.launch import RankError, _Processes, _RayActors

GLOO_ERROR = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer"


def test_local_processes_name_the_dead_rank_not_the_peer_that_reported_first() -> None:
    group = _Processes.__new__(_Processes)
    survivor, survivor_end = multiprocessing.Pipe()
    killed, killed_end = multiprocessing.Pipe()
    survivor_end.send(("error", GLOO_ERROR))
    killed_end.close()  # the killed rank's end of its pipe
    group._conns = [survivor, killed]
    group._procs = [SimpleNamespace(exitcode=None), SimpleNamespace(exitcode=-9)]
    with pytest.raises(
        RankError, match=r"training rank 1 died during train \(rank 1 exit code -9\)"
    ) as caught:
        group._gather("train")
    assert "rank 0 then failed" in str(caught.value) and "Connection closed" in str(caught.value)


def test_local_processes_name_a_rank_that_fails_on_its_own() -> None:
    group = _Processes.__new__(_Processes)
    failing, failing_end = multiprocessing.Pipe()
    failing_end.send(("error", "ValueError: a hook raised"))
    group._conns = [failing]
    group._procs = [SimpleNamespace(exitcode=None)]
    with pytest.raises(RankError, match="training rank 0 failed during train:\nValueError"):
        group._gather("train")


class _ActorDied(Exception):
    pass


class _TaskFailed(Exception):
    pass


def _fake_ray(outcomes: dict[str, BaseException | None]) -> Any:
    def get(ref: str, timeout: float | None = None) -> Any:
        outcome = outcomes[ref]
        if outcome is not None:
            raise outcome
        return ref

    def wait(refs: list[str], num_returns: int, timeout: float) -> tuple[list[str], list[str]]:
        return refs, []

    return SimpleNamespace(
        exceptions=SimpleNamespace(RayActorError=_ActorDied, RayTaskError=_TaskFailed), get=get, wait=wait
    )


def test_ray_actors_name_the_dead_rank_not_the_peer_that_reported_first() -> None:
    group = _RayActors.__new__(_RayActors)
    group._ray = _fake_ray({"r0": _TaskFailed(GLOO_ERROR), "r1": _ActorDied("actor died")})
    group._actors = [
        SimpleNamespace(call=SimpleNamespace(remote=lambda *a, ref=f"r{i}": ref)) for i in range(2)
    ]
    with pytest.raises(RankError, match=r"training rank 1 died during train") as caught:
        group._call_all("train", [(), ()])
    assert "rank 0 then failed" in str(caught.value)


_BUILD_A_RANK = """
from miles_sdk import Trainer
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy

async def reward(args, sample):
    return 0.0

model, tok = tiny_policy("unit", seed=0)
Trainer(small_config(train_backend="fsdp"), model=model, tokenizer=tok, reward_model=reward,
        dataset=[{"input": "1+1=", "label": "2"}]).close()
"""


def test_a_cluster_jobs_master_addr_does_not_misdirect_the_ranks() -> None:
    """MASTER_ADDR / MASTER_PORT set by a cluster job (torchrun, SLURM) pointed the ranks' rendezvous
    at another host: building the Trainer hung."""
    import os
    import subprocess
    import sys

    env = os.environ | {"MASTER_ADDR": "10.255.255.1", "MASTER_PORT": "1"}
    command = [sys.executable, "-c", _BUILD_A_RANK]
    done = subprocess.run(command, check=False, env=env, timeout=90, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
