"""W1's full GRPO step through the Trainer on a GPU: generate, score, log-probs, train, sync.

    python -m bench.w1_step [--steps 3]

Same workload as ``bench.w1`` (Qwen2.5-0.5B-shaped, bf16, 16 prompts x 8 samples, prompt 128,
response exactly 256, one optimizer step per rollout, AdamW, no KL). Prints the step time split
by phase (steps after the first, which captures CUDA graphs), train tokens/s and MFU.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from bench.w1 import PROMPT_LEN, PROMPTS, RESPONSE_LEN, SAMPLES, VOCAB, ceilings, w1_model, w1_tokenizer
from miles_sdk import Config, Sample, SamplingParams, Trainer
from miles_sdk.rollout import generate_with_engine

PARAMS = 494e6


class RandomPromptSource:
    """Groups of ``n`` samples sharing a random prompt of ``length`` tokens (W1: 128)."""

    def __init__(self, n: int, length: int = PROMPT_LEN, vocab: int = VOCAB) -> None:
        self.n, self.length, self.vocab = n, length, vocab
        self.rng = random.Random(0)
        self.index = 0

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        groups = []
        for g in range(num_samples):
            prompt = [self.rng.randrange(self.vocab - 2) for _ in range(self.length)]
            group = []
            for _ in range(self.n):
                group.append(
                    Sample(group_index=g, index=self.index, prompt="", tokens=list(prompt), label="x")
                )
                self.index += 1
            groups.append(group)
        return groups

    def add_samples(self, samples: list[list[Sample]]) -> None: ...

    def save(self, rollout_id: int) -> None: ...

    def load(self, rollout_id: int | None = None) -> None: ...


async def exact_length(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    sampling_params["ignore_eos"] = True  # W1: every response is exactly RESPONSE_LEN tokens
    return await generate_with_engine(args, sample, sampling_params)


async def varied_length(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    # Response budgets from 32 to 256 tokens: micro-batches of changing padded shapes, as in real
    # RL, to see whether compiled layers recompile.
    rng = random.Random(sample.index)
    sampling_params["ignore_eos"] = True
    sampling_params["max_new_tokens"] = rng.randrange(32, RESPONSE_LEN + 1)
    return await generate_with_engine(args, sample, sampling_params)


async def random_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.response_tokens[:4]) % 2)


def _profile_step(trainer: Trainer) -> None:
    """Where one steady step's GPU time goes, by operator (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run of the script itself")
    ap.add_argument("--profile", action="store_true", help="profile one more step; print the top kernels")
    ap.add_argument(
        "--fp32-master",
        action="store_true",
        help="the Trainer's default on CUDA: fp32 parameters, bf16 autocast, bf16 engine copy",
    )
    ap.add_argument(
        "--torch-head", action="store_true", help="the torch LM-head path instead of the fused Triton kernels"
    )
    ap.add_argument("--compile-model", choices=["auto", "on", "off"], default="auto")
    ap.add_argument(
        "--pack-sequences",
        choices=["auto", "on", "off"],
        default="auto",
        help="packed (padding-free) trainer forwards; compare on and off with --varied",
    )
    ap.add_argument(
        "--train-backend",
        choices=["torch", "fsdp"],
        default="torch",
        help="fsdp: the FSDP2 backend with one rank in this process (its step beside the torch backend's)",
    )
    ap.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute the layers in backward (less memory)"
    )
    ap.add_argument(
        "--offload-rollout",
        action="store_true",
        help="the engine frees its KV cache, weight copies and graphs during training (memory vs time)",
    )
    ap.add_argument("--json", default=None, help="write the summary numbers to this file")
    ap.add_argument("--varied", action="store_true", help="response lengths 32..256 instead of exactly 256")
    ap.add_argument(
        "--compile-dynamic", action="store_true", help="torch.compile(dynamic=True) from the start"
    )
    ap.add_argument(
        "--recompute-old-log-probs",
        action="store_true",
        help="skip_on_policy_old_log_probs=False: the separate old-log-prob forward, as Miles runs it",
    )
    ns = ap.parse_args()
    if ns.torch_head:
        from miles_sdk.algo import entropy

        entropy._fused_kernels = lambda _hidden: None  # type: ignore[assignment]
    if ns.compile_dynamic:
        from miles_sdk.backends import _compile

        _compile.DYNAMIC = True
    device = torch.device(ns.device)
    matmul_peak = ceilings(device)[1] if device.type == "cuda" else float("nan")
    model = w1_model(device)
    if ns.fp32_master:
        torch.nn.Module.to(model, torch.float32)
    model.train(True)
    config = Config(
        device=ns.device,
        rollout_batch_size=PROMPTS,
        n_samples_per_prompt=SAMPLES,
        rollout_max_response_len=RESPONSE_LEN,
        rollout_max_context_len=PROMPT_LEN + RESPONSE_LEN,
        micro_batch_size=ns.micro_batch_size,
        num_steps_per_rollout=1,
        lr=1e-6,
        max_engine_batch_size=PROMPTS * SAMPLES,
        progress_bar=False,
        log_probs_chunk_size=4096,
        compile_model=ns.compile_model,
        pack_sequences=ns.pack_sequences,
        skip_on_policy_old_log_probs=not ns.recompute_old_log_probs,
        train_backend=ns.train_backend,
        gradient_checkpointing=ns.gradient_checkpointing,
        offload_rollout=ns.offload_rollout or None,
    )
    trainer = Trainer(
        config,
        model=model,
        tokenizer=w1_tokenizer(),
        data_source=RandomPromptSource(SAMPLES),
        generate_fn=varied_length if ns.varied else exact_length,
        reward_model=random_reward,
    )
    print(
        f"W1 step: micro-batch {ns.micro_batch_size}, torch head {ns.torch_head}, "
        f"compile_model {ns.compile_model}, pack_sequences {ns.pack_sequences}, "
        f"train_backend {ns.train_backend}, gradient_checkpointing {ns.gradient_checkpointing}"
    )
    rows = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(ns.steps):
        start = time.perf_counter()
        metrics = trainer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        metrics["perf/step_time"] = time.perf_counter() - start
        rows.append(metrics)
        compiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        print(
            f"step {step}: {metrics['perf/step_time']:.2f} s, compiled graphs so far {compiles}: "
            + " ".join(
                f"{k[5:-5]}={v:.3f}"
                for k, v in metrics.items()
                if k.startswith("perf/") and k.endswith("_time")
            )
            + f" logprob_gap={metrics.get('train/train_rollout_logprob_abs_diff', float('nan')):.4g}"
        )
    if ns.profile:
        _profile_step(trainer)
    trainer.close()
    steady = rows[1:] or rows
    tokens = PROMPTS * SAMPLES * (PROMPT_LEN + RESPONSE_LEN)
    new_tokens = PROMPTS * SAMPLES * RESPONSE_LEN
    step_s = statistics.mean(r["perf/step_time"] for r in steady)
    rollout_s = statistics.mean(r["perf/rollout_time"] for r in steady)
    train_s = statistics.mean(r["perf/train_time"] for r in steady)
    logprob_s = statistics.mean(r["perf/log_prob_time"] for r in steady)
    print()
    print("| phase | seconds | rate |")
    print("|---|---|---|")
    step_median = statistics.median(r["perf/step_time"] for r in steady)
    print(f"| full GRPO step (steady) | {step_s:.2f} | median {step_median:.3f} s |")
    print(
        f"| rollout (generate + reward) | {rollout_s:.2f} | {new_tokens / rollout_s / 1e3:.1f}k new tok/s |"
    )
    print(f"| old log-probs (forward) | {logprob_s:.2f} | {tokens / logprob_s / 1e3:.1f}k tok/s |")
    train_tps = tokens / train_s
    print(
        f"| train (forward+backward+AdamW) | {train_s:.2f} | {train_tps / 1e3:.1f}k tok/s, "
        f"MFU {6 * PARAMS * train_tps / matmul_peak:.1%} |"
    )
    print(f"| weight sync | {statistics.mean(r['perf/sync_time'] for r in steady) * 1e3:.1f} ms | |")
    print(f"| first step (includes CUDA-graph capture) | {rows[0]['perf/step_time']:.2f} | |")
    if device.type == "cuda":
        print(f"| peak GPU memory | {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB | |")
    if ns.json:
        summary = {
            "step_s": step_s,
            "step_median_s": step_median,
            "first_step_s": rows[0]["perf/step_time"],
            "rollout_s": rollout_s,
            "new_tok_s": new_tokens / rollout_s,
            "log_prob_s": logprob_s,
            "train_s": train_s,
            "train_tok_s": train_tps,
            "train_mfu": 6 * PARAMS * train_tps / matmul_peak,
            "sync_ms": statistics.mean(r["perf/sync_time"] for r in steady) * 1e3,
            # Engine vs trainer log-prob gap on these on-policy steps: sizes logprob_gap_warn_threshold.
            "logprob_gap": statistics.mean(
                r.get("train/train_rollout_logprob_abs_diff", float("nan")) for r in steady
            ),
            "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
        }
        with open(ns.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
