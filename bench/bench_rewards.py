"""Throughput of the math reward: serial grading vs score_samples on threads / worker processes.

    python bench/bench_rewards.py [--n 10000] [--workers 2]

The responses mix what a policy produces: exact answers (settled by the string rules), equivalent
forms that need math-verify (sqrt, polynomial and pi forms) and wrong answers; every problem is
distinct, so nothing is served from the grader's cache. Every mode must give the same rewards;
the table reports samples/s and the speed-up over serial.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Callable

from miles_sdk.config import Config
from miles_sdk.rewards import score_samples, shutdown_reward_workers
from miles_sdk.rewards.registry import score_builtin_sync
from miles_sdk.types import Sample


def _problem(k: int) -> tuple[str, list[str], list[str]]:
    """(label, equivalent answer forms, wrong answers) of the k-th problem; every k differs, so
    the grader's cache of repeated answers does not flatter the numbers."""
    a, b = k + 2, 2 * k + 5  # coprime: the fraction a/b is reduced
    kinds = [
        (str(k), [str(k), f"{k}.0", f"{k} \\text{{ cm}}", f"{k:,}"], [str(k + 1), str(k + 2)]),
        (
            f"\\frac{{{a}}}{{{b}}}",
            [f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}"],
            [f"{b}/{a}", f"\\frac{{{2 * a}}}{{{2 * b}}}"],
        ),
        (
            f"\\frac{{\\sqrt{{{a}}}}}{{2}}",
            [f"\\sqrt{{{a}}}/2", f"\\frac{{1}}{{2}}\\sqrt{{{a}}}"],
            [f"\\sqrt{{{a}}}"],
        ),
        (f"x^2+{2 * a}x+{a * a}", [f"(x+{a})^2", f"{a * a}+{2 * a}x+x^2"], [f"(x-{a})^2"]),
        (f"({k},{a})", [f"({k}, {a})", f"( {k} , {a} )"], [f"({a},{k})", f"[{k},{a}]"]),
        (f"{a}\\pi", [f"\\pi \\cdot {a}", f"{a} \\pi"], [f"{a}.14"]),
    ]
    return kinds[k % len(kinds)]


def make_samples(n: int, offset: int = 0) -> list[Sample]:
    """``n`` samples; each response is reasoning text ending in a boxed (right or wrong) answer.

    The right/wrong pattern is the same for every ``offset`` (a multiple of 6), but the problems
    differ, so one mode cannot reuse another's cached grades and all modes must agree."""
    rng = random.Random(0)
    samples = []
    for i in range(n):
        label, good, bad = _problem(i + offset)
        answer = rng.choice(good) if rng.random() < 0.6 else rng.choice(bad)
        response = (
            f"Let me work through step {i}. " * rng.randint(1, 5) + f"So the answer is $\\boxed{{{answer}}}$."
        )
        samples.append(Sample(index=i, response=response, label=label))
    return samples


def run_serial(samples: list[Sample]) -> list[float]:
    """The baseline: grade one after another on the calling thread."""
    rewards = []
    for s in samples:
        value = score_builtin_sync("math", s.response, s.label, {}, s.tokens)
        assert isinstance(value, float)
        rewards.append(value)
    return rewards


def run_concurrent(samples: list[Sample], workers: int) -> list[float]:
    """score_samples as the rollout calls it (``workers`` processes; 0 = threads)."""
    args = Config(rm_type="math", reward_num_workers=workers, reward_concurrency=256)
    asyncio.run(score_samples(args, samples))
    return [s.get_reward_value() for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the pooled mode")
    opts = parser.parse_args()

    # Warm-up: import math-verify/sympy and start the pool outside the timed runs.
    run_serial(make_samples(24))
    t0 = time.perf_counter()
    run_concurrent(make_samples(opts.workers * 4, offset=24), opts.workers)
    pool_start = time.perf_counter() - t0

    rows: list[tuple[str, float, list[float]]] = []
    modes: list[tuple[str, Callable[[list[Sample]], list[float]]]] = [
        ("serial (main thread)", run_serial),
        ("score_samples, threads (workers=0)", lambda s: run_concurrent(s, 0)),
        (f"score_samples, {opts.workers} processes", lambda s: run_concurrent(s, opts.workers)),
    ]
    for m, (name, fn) in enumerate(modes):
        samples = make_samples(opts.n, offset=6 * opts.n * (m + 1))
        start = time.perf_counter()
        rewards = fn(samples)
        rows.append((name, time.perf_counter() - start, rewards))
    shutdown_reward_workers()

    baseline = rows[0][2]
    for name, _, rewards in rows[1:]:
        if rewards != baseline:
            raise SystemExit(f"{name} disagrees with serial grading")
    print(
        f"math reward, {opts.n} responses, {os.cpu_count()} CPUs, accuracy {sum(baseline) / len(baseline):.3f}"
    )
    print(f"(pool start-up + first {opts.workers * 4} samples, not timed below: {pool_start:.2f}s)")
    print(f"{'mode':<38}{'seconds':>10}{'samples/s':>12}{'speed-up':>10}")
    for name, seconds, _ in rows:
        print(f"{name:<38}{seconds:>10.2f}{opts.n / seconds:>12.0f}{rows[0][1] / seconds:>10.2f}x")


if __name__ == "__main__":
    main()
