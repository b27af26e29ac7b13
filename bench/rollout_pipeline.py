"""The rollout pipeline's own cost per sample: the demo's rollout against an engine that answers
at once, so what is timed is the per-sample Python (the engine requests, the reward call, the
dynamic filter, the group bookkeeping), the floor under the tiny step's rollout.

    python -m bench.rollout_pipeline [--rollouts 20] [--per-sample] [--engine embedded]

The instant engine takes a group in one ``generate_batch`` call, as the embedded engine does;
``--per-sample`` hides that method, so the rollout runs a task and an engine call per sample (the
path of engines without it, and of custom generate functions). Besides wall time it reports the
event loop's CPU time per sample (``time.thread_time``), which other processes on a shared machine
disturb less than wall time.

``--engine embedded`` runs the demo's own rollout instead (its settings, the tiny policy after
the format warm-up, the embedded engine on ``--device``, default the CPU with one torch thread;
on CUDA the fast path from a bf16 copy, as the Trainer builds it): 512 samples a rollout in two
waves. Its event-loop CPU is the rollout's and the engine scheduler's host work (request
admission, stop checks, hand-back), the part that stays on the host on a GPU; the model steps
run on the engine's worker thread and are reported apart.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from miles_sdk import Config
from miles_sdk.data import RolloutDataSource
from miles_sdk.demo.run import _INIT_STD, demo_config
from miles_sdk.demo.task import addition_reward, make_addition_dataset
from miles_sdk.demo.warmup import format_warmup
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.rollout import check_reward_nonzero_std
from miles_sdk.rollout.context import RolloutContext, use_rollout_context
from miles_sdk.rollout.default import train_rollout
from miles_sdk.testing import tiny_policy


class InstantEngine:
    """Answers every request at once with a 2-token response whose text cycles through the
    digits (so groups' rewards differ and the dynamic filter keeps them). Not
    miles_sdk.testing's ScriptedEngine: it decodes each prompt and records each request, per-sample
    work of its own that would be counted as the pipeline's."""

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        self.calls += 1
        return EngineOutput(
            token_ids=[5 + self.calls % 7, 2],
            log_probs=[-0.5, -0.1],
            finish_reason=FinishReason.STOP,
            weight_version=0,
            text=str(self.calls % 10),
        )

    async def abort_all(self) -> None:
        return None


class InstantBatchEngine(InstantEngine):
    """:class:`InstantEngine` that also answers a group in one call (``generate_batch``)."""

    async def generate_batch(
        self,
        input_ids: Sequence[Sequence[int]],
        sampling_params: Sequence[SamplingParams],
        *,
        on_done: Callable[[int, EngineOutput], None] | None = None,
    ) -> list[EngineOutput]:
        outputs = [
            await self.generate(ids, params) for ids, params in zip(input_ids, sampling_params, strict=True)
        ]
        if on_done is not None:
            for i, out in enumerate(outputs):
                on_done(i, out)
        return outputs


async def _rollouts(
    config: Config, ctx: RolloutContext, source: RolloutDataSource, n: int
) -> list[tuple[float, float, float]]:
    """(wall seconds, loop CPU seconds, samples generated) per rollout."""
    seconds = []
    with use_rollout_context(ctx):
        for rollout_id in range(n):
            start, cpu = time.perf_counter(), time.thread_time()
            out = await train_rollout(config, rollout_id, source)
            seconds.append(
                (time.perf_counter() - start, time.thread_time() - cpu, out.metrics["rollout/generate_calls"])
            )
    return seconds


class _PerSampleEngine:
    """An engine's ``generate`` and ``abort_all`` only: the rollout's per-sample path."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        out: EngineOutput = await self.engine.generate(input_ids, sampling_params)
        return out

    async def abort_all(self) -> None:
        await self.engine.abort_all()


def _embedded(ns: argparse.Namespace) -> dict[str, float]:
    import tempfile

    import torch

    from miles_sdk.engines.embedded import EmbeddedEngine

    torch.set_num_threads(1)
    rows = make_addition_dataset(0)
    model, tokenizer = tiny_policy("arithmetic", seed=0, initializer_range=_INIT_STD)
    format_warmup(model, tokenizer, [r["input"] for r in rows], seed=0)
    torch.nn.Module.to(model, ns.device)
    config = demo_config(tempfile.mkdtemp(), 10_000, 0, progress_bar=False)
    # As the Trainer builds it: on CUDA the fast path, decoding from a bf16 copy of fp32 weights.
    dtype = torch.bfloat16 if ns.device.startswith("cuda") else None
    engine = EmbeddedEngine(
        model, tokenizer, max_batch_size=config.max_engine_batch_size, seed=0, dtype=dtype
    )
    ctx = RolloutContext(
        engine=_PerSampleEngine(engine) if ns.per_sample else engine,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        reward_fn=addition_reward,
        dynamic_sampling_filter=check_reward_nonzero_std,
    )
    source = RolloutDataSource(config, dataset=rows)
    asyncio.run(_rollouts(config, ctx, source, 5))  # warm-up (caches, the engine's first steps)
    engine.reset_stats()
    timed = asyncio.run(_rollouts(config, ctx, source, ns.rollouts))
    steps = engine.stats["step_wall_s"] / ns.rollouts
    median = statistics.median(wall for wall, _, _ in timed)
    cpu = statistics.median(cpu / n for _, cpu, n in timed)
    samples = statistics.median(n for _, _, n in timed)
    path = "per-sample tasks" if ns.per_sample else "generate_batch"
    print(f"| rollout (embedded engine, {ns.device}, {path}), median | {median * 1e3:.1f} ms |")
    print(f"| engine model steps (worker thread), mean | {steps * 1e3:.1f} ms |")
    print(f"| samples per rollout | {samples:.0f} |")
    print(f"| event-loop CPU per sample | {cpu * 1e6:.1f} us |")
    return {"median_s": median, "cpu_per_sample_s": cpu, "samples": samples, "steps_s": steps}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=20)
    ap.add_argument("--per-sample", action="store_true", help="an engine without generate_batch")
    ap.add_argument("--engine", choices=["instant", "embedded"], default="instant")
    ap.add_argument("--device", default="cpu", help="with --engine embedded: where the policy and engine run")
    ns = ap.parse_args(argv)
    if ns.engine == "embedded":
        return _embedded(ns)
    _, tokenizer = tiny_policy("arithmetic", seed=0)
    config = Config(
        label_key="label", rollout_batch_size=16, n_samples_per_prompt=16, rollout_max_response_len=3, seed=0
    )
    engine = InstantEngine() if ns.per_sample else InstantBatchEngine()
    ctx = RolloutContext(
        engine=engine,  # type: ignore[arg-type]  # only generate and abort_all are called
        tokenizer=tokenizer,
        reward_fn=addition_reward,
        dynamic_sampling_filter=check_reward_nonzero_std,
    )
    source = RolloutDataSource(config, dataset=make_addition_dataset(0))
    timed = asyncio.run(_rollouts(config, ctx, source, ns.rollouts + 1))[1:]  # the first warms caches
    per_rollout = engine.calls / (ns.rollouts + 1)
    median = statistics.median(wall for wall, _, _ in timed)
    cpu = statistics.median(cpu for _, cpu, _ in timed)
    path = "per-sample tasks" if ns.per_sample else "generate_batch"
    print(f"| rollout (instant engine, {path}), median | {median * 1e3:.1f} ms |")
    print(f"| samples per rollout | {per_rollout:.0f} |")
    print(f"| pipeline cost per sample | {median / per_rollout * 1e6:.0f} us |")
    print(f"| event-loop CPU per sample | {cpu / per_rollout * 1e6:.0f} us |")
    return {"median_s": median, "cpu_s": cpu, "samples": per_rollout}


if __name__ == "__main__":
    main()
