"""The fixed cost of a small step: the demo's tiny policy through the Trainer, split by phase.

    python -m bench.tiny_step --device cuda            # the issue's target: < 50 ms steady on an H200
    python -m bench.tiny_step --device cpu --profile   # plus cProfile's top functions over the steady steps

The demo's settings (16 prompts x 16 samples, 3-token answers, two optimizer steps per rollout,
dynamic sampling with over-sampling) on the demo's tiny policy after its format warm-up. Each
steady step is split into the Trainer's phases (perf/*_time: rollout, train data, log-probs,
advantages, train, sync), the reward calls inside the rollout, the logging (rollout log, metrics
file) and the rest (host overhead: metrics, health checks, the Trainer's own Python). Prints a
table of means and medians over the steady steps; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from bench._host_sites import HostSites
from miles_sdk import Config, Sample, Trainer
from miles_sdk.demo.run import _INIT_STD, demo_config
from miles_sdk.demo.task import addition_reward, make_addition_dataset
from miles_sdk.demo.warmup import format_warmup
from miles_sdk.rollout import check_reward_nonzero_std
from miles_sdk.testing import tiny_policy

PHASES = ("rollout", "train_data", "log_prob", "advantages", "train", "sync")


def build(
    device: str, seed: int, output_dir: str, *, warm_format: bool = True, **overrides: Any
) -> tuple[Trainer, dict[str, float]]:
    """The demo's Trainer on ``device``; the dict collects reward and logging seconds per step."""
    torch.manual_seed(seed)
    rows = make_addition_dataset(seed)
    model, tokenizer = tiny_policy("arithmetic", seed=seed, initializer_range=_INIT_STD)
    if warm_format:
        format_warmup(model, tokenizer, [r["input"] for r in rows], seed=seed)
    torch.nn.Module.to(model, device)
    extra: dict[str, float] = defaultdict(float)

    async def timed_reward(args: Config, sample: Sample) -> float:
        t0 = time.perf_counter()
        try:
            return await addition_reward(args, sample)
        finally:
            extra["reward"] += time.perf_counter() - t0

    config = demo_config(output_dir, 10_000, seed, progress_bar=False).replace(device=device, **overrides)
    trainer = Trainer(
        config,
        model=model,
        tokenizer=tokenizer,
        dataset=rows,
        reward_model=timed_reward,
        dynamic_sampling_filter=check_reward_nonzero_std,
    )
    _time_method(trainer, "_log_rollout", "log", extra)
    _time_method(trainer.writer, "write", "log", extra)
    return trainer, extra


def _time_method(obj: Any, name: str, key: str, into: dict[str, float]) -> None:
    fn: Callable[..., Any] | None = getattr(obj, name, None)
    if fn is None:
        return
    inner = fn

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            into[key] += time.perf_counter() - t0

    setattr(obj, name, timed)


def _start_profiles(trainer: Trainer) -> dict[str, cProfile.Profile]:
    """cProfile on the three threads a step runs on: the caller's (the Trainer's phases), the
    loop thread (rollout, rewards) and the engine's worker (model steps). A profiler only sees
    the thread that enabled it, so each is enabled on its own thread. From Python 3.12 cProfile
    runs on sys.monitoring, which is process-wide: one profiler sees every thread, and a second
    one cannot start."""
    if sys.version_info >= (3, 12):
        profiles = {"all threads": cProfile.Profile()}
        profiles["all threads"].enable()
        return profiles
    profiles = {"main": cProfile.Profile(), "loop": cProfile.Profile(), "engine": cProfile.Profile()}
    _switch(trainer, profiles, on=True)
    return profiles


def _stop_profiles(trainer: Trainer, profiles: dict[str, cProfile.Profile]) -> None:
    if "all threads" in profiles:
        profiles["all threads"].disable()
    elif profiles:
        _switch(trainer, profiles, on=False)


def _switch(trainer: Trainer, profiles: dict[str, cProfile.Profile], *, on: bool) -> None:
    def flip(name: str) -> Callable[[], None]:
        return profiles[name].enable if on else profiles[name].disable

    flip("main")()
    loop = getattr(trainer, "_loop", None)
    if loop is not None:
        asyncio.run_coroutine_threadsafe(_call(flip("loop")), loop.loop).result()
    worker = getattr(trainer.engine, "_worker", None)
    if worker is not None:
        worker.submit(flip("engine")).result()


async def _call(fn: Callable[[], None]) -> None:
    fn()


def run(
    trainer: Trainer, extra: dict[str, float], steps: int, sync: Callable[[], None]
) -> list[dict[str, float]]:
    rows = []
    for _ in range(steps):
        extra.clear()
        sync()
        t0 = time.perf_counter()
        metrics = trainer.step()
        sync()
        wall = time.perf_counter() - t0
        row = {p: metrics.get(f"perf/{p}_time", 0.0) for p in PHASES}
        row["reward (inside rollout)"] = extra.get("reward", 0.0)
        row["logging"] = extra.get("log", 0.0)
        row["host overhead (rest)"] = wall - sum(row[p] for p in PHASES) - row["logging"]
        row["step"] = wall
        row["groups drawn (count)"] = metrics.get("rollout/groups_drawn", float("nan"))
        rows.append(row)
    return rows


def _torch_profile(
    trainer: Trainer, extra: dict[str, float], steps: int, sync: Callable[[], None], device: str
) -> None:
    """torch.profiler over ``steps`` steps (all threads): kernel launches per step and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        run(trainer, extra, steps, sync)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch"))
    syncs = sum(e.count for e in events if "Synchronize" in e.key or e.key == "cudaMemcpyAsync")
    print(f"\n==== torch.profiler, {steps} steps: {launches / steps:.0f} kernel launches and "
          f"{syncs / steps:.0f} memcpy/synchronize calls per step ====")
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=30, max_name_column_width=60))
    print(events.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=10, help="steps before measuring (graph captures, caches)")
    ap.add_argument("--steps", type=int, default=30, help="steady steps measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--profile", action="store_true", help="cProfile the steady steps; print the top 30")
    ap.add_argument("--no-format-warmup", action="store_true", help="skip the demo's warm-up (smoke runs)")
    ap.add_argument(
        "--compile-model", choices=["auto", "on", "off"], default=None, help="default: the Config's"
    )
    ap.add_argument(
        "--pack-sequences", choices=["auto", "on", "off"], default=None, help="default: the Config's"
    )
    ap.add_argument("--profile-out", default=None, help="with --profile: dump pstats to PATH.<thread>")
    ap.add_argument(
        "--torch-profile",
        type=int,
        default=0,
        metavar="N",
        help="after the steady steps, torch.profiler over N more steps: the top ops by device and host time",
    )
    ap.add_argument(
        "--host-sites",
        type=int,
        default=0,
        metavar="N",
        help="after the steady steps, N more steps timing torch calls by call site (syncs, per-sample work)",
    )
    ap.add_argument("--json", default=None)
    ns = ap.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)

    def sync() -> None:
        if ns.device.startswith("cuda"):
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as out:
        overrides = {
            k: v for k, v in (("compile_model", ns.compile_model), ("pack_sequences", ns.pack_sequences)) if v
        }
        trainer, extra = build(ns.device, ns.seed, out, warm_format=not ns.no_format_warmup, **overrides)
        try:
            run(trainer, extra, ns.warmup, sync)
            profiles = _start_profiles(trainer) if ns.profile else {}
            rows = run(trainer, extra, ns.steps, sync)
            _stop_profiles(trainer, profiles)
            if ns.torch_profile:
                _torch_profile(trainer, extra, ns.torch_profile, sync, ns.device)
            if ns.host_sites:
                with HostSites() as sites:
                    run(trainer, extra, ns.host_sites, sync)
                print(f"\n==== host time of torch calls by call site, {ns.host_sites} steps ====")
                print(sites.table(ns.host_sites))
        finally:
            trainer.close()
    name = torch.cuda.get_device_name(ns.device) if ns.device.startswith("cuda") else "cpu"
    keys = list(rows[0])
    summary = {
        k: {"mean": statistics.mean(r[k] for r in rows), "median": statistics.median(r[k] for r in rows)}
        for k in keys
    }
    print(
        f"tiny-policy step (the demo's settings) on {name}: {ns.steps} steady steps after {ns.warmup}; "
        f"compile_model {ns.compile_model or 'default'}, pack_sequences {ns.pack_sequences or 'default'}"
    )
    print("| part | mean ms | median ms |\n|---|---|---|")
    for k in keys:
        scale = 1.0 if k.endswith("(count)") else 1e3
        print(f"| {k} | {summary[k]['mean'] * scale:.1f} | {summary[k]['median'] * scale:.1f} |")
    for thread, prof in profiles.items():
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).sort_stats("tottime")
        stats.print_stats(25)
        print(f"\n==== cProfile, {thread} thread, {ns.steps} steps ====\n{text.getvalue()}")
        if ns.profile_out:
            stats.dump_stats(f"{ns.profile_out}.{thread}")
    result = {"device": name, "summary": summary, "steps": rows}
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
