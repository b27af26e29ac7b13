"""W1 in one command (GPU): the engine table, the full GRPO step through the Trainer, and TRL 1.16's
GRPOTrainer on the same workload, one process each on the same card, then one table with the
ratios to TRL and to the hardware limits measured in the same run.

    python -m bench.w1_vs_trl [--out DIR] [--skip-trl]

TRL needs ``trl``, ``datasets``, ``dill`` and ``multiprocess`` (docs/performance.md says how to
carry them to a machine without internet).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def _run(module: str, out: Path, *args: str) -> dict[str, Any] | None:
    cmd = [sys.executable, "-m", module, "--json", str(out), *args]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not out.exists():
        print(f"{module} failed (exit {done.returncode}); its row is left out", flush=True)
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x faster" if a and b else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="w1_results", help="directory for the per-bench JSON files")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--micro-batch-size", default="64")
    ns = ap.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = _run("bench.w1", out / "engine.json")
    step = _run("bench.w1_step", out / "step.json", "--micro-batch-size", ns.micro_batch_size)
    trl = None if ns.skip_trl else _run("bench.trl_w1", out / "trl.json")
    print_table(engine, step, trl)


def print_table(
    engine: dict[str, Any] | None, step: dict[str, Any] | None, trl: dict[str, Any] | None
) -> None:
    trl_steps: list[float] = trl["steps_s"] if trl else []
    trl_steady = statistics.mean(trl_steps[1:]) if len(trl_steps) > 1 else None
    trl_first = trl_steps[0] if trl_steps else None

    print(f"\nW1 on {engine['gpu'] if engine else 'the GPU'} (each figure from this run)\n")
    print(
        "| figure | miles_sdk | TRL 1.16 / transformers | ratio | hardware limit (this run) | share of limit |"
    )
    print("|---|---|---|---|---|---|")
    if engine:
        roof = engine["roofline_tok_s"]
        gen, hf = engine["engine_tok_s"], engine.get("hf_generate_tok_s")
        print(
            f"| generation, new tok/s (engine e2e vs transformers generate) | {gen / 1e3:.1f}k | "
            f"{hf / 1e3:.2f}k | {_ratio(gen, hf)} | {roof / 1e3:.0f}k (decode roofline at "
            f"{engine['copy_TBps']:.2f} TB/s) | {gen / roof:.1%} |"
        )
        decode = engine.get("decode_only_tok_s")
        if decode:
            print(
                f"| decode phase, new tok/s | {decode / 1e3:.1f}k | | | {roof / 1e3:.0f}k | {decode / roof:.1%} |"
            )
    if step:
        peak = f"bf16 matmul {engine['matmul_TFLOPs']:.0f} TFLOP/s" if engine else "bf16 matmul peak"
        print(
            f"| train phase (fwd + bwd + AdamW), tok/s | {step['train_tok_s'] / 1e3:.1f}k | | | {peak} | "
            f"MFU {step['train_mfu']:.1%} |"
        )
        print(
            f"| rollout inside the step (generate + reward), new tok/s | {step['new_tok_s'] / 1e3:.1f}k | | | | |"
        )
        old = f"{step['log_prob_s']:.2f} s" if step["log_prob_s"] > 1e-3 else "skipped (on-policy)"
        print(f"| old log-probs | {old} | | | | |")
        print(f"| weight sync | {step['sync_ms']:.1f} ms | | | | |")
        print(f"| full GRPO step, steady | {step['step_s']:.2f} s | {_fmt(trl_steady)} | "
              f"{_ratio(trl_steady, step['step_s'])} | | |")  # fmt: skip
        print(f"| first step (compile, graph capture) | {step['first_step_s']:.2f} s | {_fmt(trl_first)} | "
              f"{_ratio(trl_first, step['first_step_s'])} | | |")  # fmt: skip
        trl_mem = f"{trl['peak_mem_GiB']:.1f} GiB" if trl else "n/a"
        print(f"| peak GPU memory | {step['peak_mem_GiB']:.1f} GiB | {trl_mem} | | | |")


def _fmt(seconds: float | None) -> str:
    return f"{seconds:.2f} s" if seconds else "n/a"


if __name__ == "__main__":
    main()
