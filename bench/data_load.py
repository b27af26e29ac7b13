"""Prompt data at scale (issue 16.12): a 1M-row JSONL to the first rollout batch.

Writes ``--rows`` addition prompts as JSONL (once, into --dir), then times, in a fresh process
each, building the default data source (``RolloutDataSourceWithBuffer``, as ``Trainer()`` does)
and drawing the first ``rollout_batch_size`` groups: wall and CPU seconds and the peak extra
resident memory over the interpreter with its imports loaded. Runs with and without
``rollout_max_prompt_len`` (the case that used to tokenise every prompt up front), and with
``rollout_shuffle``.

    .venv/bin/python bench/data_load.py [--rows 1000000] [--dir /tmp/miles_bench_data]

Targets (this machine): <= 3 s and <= 300 MB extra memory. On a CPU shared with other work,
wall time overstates the cost; CPU time is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "max_prompt_len": {"rollout_max_prompt_len": 16},
    "shuffle+max_prompt_len": {"rollout_max_prompt_len": 16, "rollout_shuffle": True},
}


def write_rows(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            a, b = rng.randrange(10**4), rng.randrange(10**4)
            f.write(json.dumps({"input": f"{a}+{b}=", "label": str(a + b)}) + "\n")


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_case(path: str, case: str) -> dict[str, float]:
    """In this process: build the data source and draw the first batch."""
    from miles_sdk import Config
    from miles_sdk.data import RolloutDataSourceWithBuffer
    from miles_sdk.testing import tiny_policy

    _, tokenizer = tiny_policy("unit", seed=0)
    cfg = Config(
        prompt_data=path, label_key="label", rollout_batch_size=32, n_samples_per_prompt=8, **CASES[case]
    )
    base_rss = _rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    source = RolloutDataSourceWithBuffer(cfg, tokenizer=tokenizer)
    groups = source.get_samples(cfg.rollout_batch_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(groups) == cfg.rollout_batch_size
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "extra_peak_mb": peak_mb - base_rss,
        "extra_now_mb": _rss_mb() - base_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/miles_bench_data")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    path = Path(args.dir) / f"prompts_{args.rows}.jsonl"
    if args.case:
        print(json.dumps(run_case(str(path), args.case)))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        write_rows(path, args.rows)
    print(f"{path}: {args.rows} rows, {os.path.getsize(path) / 2**20:.1f} MiB")
    for case in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--dir", args.dir, "--case", case],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{case:>24}: {result['wall_s']:6.2f} s wall, {result['cpu_s']:6.2f} s CPU, "
            f"+{result['extra_peak_mb']:6.1f} MB peak (+{result['extra_now_mb']:.1f} MB after)"
        )


if __name__ == "__main__":
    main()
