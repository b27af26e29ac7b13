"""Scale-out from a notebook: in a real Jupyter kernel, a Trainer with 2 FSDP ranks and 2 engine
replicas (Ray actors) steps and closes, then a second one does the same, and close() leaves nothing
behind: no child process, no listening port, no thread of ours, no Ray actor or reserved resource,
no replica weight directory. Both Trainers' steps match the one-process run (torch backend,
in-process engine) to 1e-4.

The first Trainer starts its own local Ray cluster (and shuts it down at close); the second runs
on a cluster the notebook started itself with ``ray.init``, which it must leave running and empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

SETUP = '''
import os, threading, time
import psutil
import ray
from miles_sdk import Trainer
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy

DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
CONFIG = small_config(
    rollout_batch_size=4, n_samples_per_prompt=2, rollout_max_response_len=8, lr=1e-3, rollout_seed=7,
    sglang_enable_deterministic_inference=True,
    train_backend="fsdp", actor_num_gpus_per_node=2, rollout_num_gpus=2, distributed_launcher="ray",
)

async def spread_reward(args, sample):
    return float(sum(sample.tokens[-8:]) % 3) / 2.0

kernel = psutil.Process()

def footprint():
    """What this kernel holds: child processes, listening ports, threads of ours."""
    children = sorted((p.pid, p.name()) for p in kernel.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE)
    ports = sorted(c.laddr.port for c in kernel.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN)
    threads = sorted(t.name for t in threading.enumerate() if t.name.startswith(("miles-sdk", "asyncio_")))
    return {"children": children, "ports": ports, "threads": threads}

def settled(expected, seconds=20.0):
    """The footprint once stopped processes have exited (a bounded wait, not a timing check)."""
    deadline = time.monotonic() + seconds
    while footprint() != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return footprint()

def one_step():
    model, tok = tiny_policy("unit", seed=0)
    trainer = Trainer(CONFIG, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET)
    assert len(set(trainer.engine.pids())) == 2 and len(set(trainer.backend.ranks.pids())) == 2
    running = footprint()
    weights_dir = trainer.engine._dir  # the replicas' weight files
    metrics = trainer.step()
    trainer.close()
    assert not os.path.exists(weights_dir), weights_dir
    return metrics, running

before = footprint()
'''

OWN_CLUSTER = """
first, running = one_step()
assert len(running["children"]) > len(before["children"]), running  # the ranks and replicas did run here
assert not ray.is_initialized(), "the Trainer started Ray, so close() shuts it down"
assert settled(before) == before, (before, footprint())
"""

USER_CLUSTER = """
ray.init(address="local", num_cpus=4, include_dashboard=False)
with_ray = footprint()
second, _ = one_step()
assert ray.is_initialized(), "a cluster the notebook started stays up"
deadline = time.monotonic() + 20
while ray.available_resources().get("CPU") != 4 and time.monotonic() < deadline:
    time.sleep(0.2)
assert ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU") == 4, ray.available_resources()
assert not [k for k in ray.available_resources() if k.startswith("bundle_group")], "placement group left"
# Ray's idle pre-started workers (ray::IDLE) became the actors and go with them: nothing new is left.
def no_new_children():
    return set(footprint()["children"]) <= set(with_ray["children"])

deadline = time.monotonic() + 20
while not no_new_children() and time.monotonic() < deadline:
    time.sleep(0.2)
after = footprint()
assert set(after["children"]) <= set(with_ray["children"]), (with_ray, after)
assert (after["ports"], after["threads"]) == (with_ray["ports"], with_ray["threads"]), (with_ray, after)
ray.shutdown()
assert settled(before) == before, (before, footprint())
# Both trained what one process trains (the torch backend, the in-process engine).
model, tok = tiny_policy("unit", seed=0)
one = CONFIG.replace(train_backend="torch", actor_num_gpus_per_node=1, rollout_num_gpus=None)
with Trainer(one, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as trainer:
    reference = trainer.step()
for key in ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "rollout/reward_mean"):
    for got in (first, second):
        assert abs(got[key] - reference[key]) <= 1e-4 * abs(reference[key]) + 1e-6, (key, got[key], reference[key])
print("scale-out closed cleanly", first["train/grad_norm"])
"""


def test_scale_out_trainers_close_without_leaks(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    v4: Any = nbformat.v4  # untyped
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell(src) for src in (SETUP, OWN_CLUSTER, USER_CLUSTER)]
    NotebookClient(
        nb, timeout=400, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "scale-out closed cleanly" in outputs
