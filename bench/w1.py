"""Workload W1: rollout generation and a train step on a Qwen2.5-0.5B-shaped policy (GPU).

    python -m bench.w1 [--skip-hf] [--large] [--json out.json]

Random init, bf16: hidden 896, intermediate 4864, 24 layers, 14 heads, 2 KV heads, vocab 151936,
tied embeddings. 16 prompts x 8 samples, prompt 128 tokens, response exactly 256 (EOS ignored),
temperature 1. Prints one table: generation tokens/s and share of the decode roofline (copy
bandwidth and bf16 matmul peak measured in the same run), weight-sync time, peak memory, the
train-phase forward+backward tokens/s and MFU, and transformers ``generate`` as a baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, models
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from miles_sdk.engines.base import SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine

VOCAB = 151936
PROMPTS, SAMPLES, PROMPT_LEN, RESPONSE_LEN = 16, 8, 128, 256


def w1_config(layers: int = 24) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
        eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 2,
    )  # fmt: skip


def w1_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the full vocabulary (ids only matter; text is ``t<id>``)."""
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token=f"t{VOCAB - 1}", pad_token=f"t{VOCAB - 2}"
    )


def w1_model(device: torch.device, layers: int = 24) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(w1_config(layers))
    nn.Module.to(model, torch.bfloat16)
    model.train(False)
    return model


def cuda_time(fn: Callable[[], object], repeat: int = 1) -> float:
    """Seconds per call, synchronised around the region."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def ceilings(device: torch.device) -> tuple[float, float]:
    """(device copy bandwidth in bytes/s counting read + write, bf16 matmul FLOP/s)."""
    src = torch.randn(1 << 29, device=device, dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    bw = 2 * src.numel() * 2 / cuda_time(lambda: dst.copy_(src), 20)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    a @ b
    flops = 2 * 8192**3 / cuda_time(lambda: a @ b, 20)
    return bw, flops


def prompts_and_params(n_prompts: int, n_samples: int) -> tuple[list[list[int]], list[SamplingParams]]:
    gen = torch.Generator().manual_seed(1)
    base = [torch.randint(0, VOCAB - 2, (PROMPT_LEN,), generator=gen).tolist() for _ in range(n_prompts)]
    prompts, params = [], []
    for i, p in enumerate(base):
        for j in range(n_samples):
            prompts.append(p)
            params.append(
                SamplingParams(
                    temperature=1.0, max_new_tokens=RESPONSE_LEN, ignore_eos=True, sampling_seed=1000 * i + j
                )
            )
    return prompts, params


def run_engine(engine: EmbeddedEngine, prompts: list[list[int]], params: list[SamplingParams]) -> float:
    async def go() -> int:
        outs = await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, params, strict=True)))
        assert all(len(o.token_ids) == RESPONSE_LEN for o in outs)
        return sum(len(o.token_ids) for o in outs)

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = asyncio.run(go())
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def train_phase(model: Qwen2ForCausalLM, device: torch.device, micro: int = 8, seqs: int = 32) -> float:
    """Forward + backward tokens/s over ``seqs`` sequences of 384 tokens, ``micro`` at a time."""
    from miles_sdk.algo import log_probs_and_entropy

    model.train(True)
    seq_len = PROMPT_LEN + RESPONSE_LEN
    ids = torch.randint(0, VOCAB - 2, (seqs, seq_len), device=device)

    def one_pass() -> None:
        for start in range(0, seqs, micro):
            x = ids[start : start + micro]
            hidden = model.model(input_ids=x).last_hidden_state[:, :-1].reshape(-1, 896)
            targets = x[:, 1:].reshape(-1)
            lp, _ = log_probs_and_entropy(hidden, model.lm_head.weight, targets, with_entropy=False)
            (-lp.mean()).backward()  # type: ignore[no-untyped-call]
        model.zero_grad(set_to_none=True)

    one_pass()
    dt = cuda_time(one_pass, 2)
    model.train(False)
    return seqs * seq_len / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-hf", action="store_true", help="skip the transformers generate baseline")
    ap.add_argument("--large", action="store_true", help="also run 64 prompts x 16 samples (1024 sequences)")
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    args = ap.parse_args()
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    bw, peak = ceilings(device)
    model = w1_model(device)
    n_params = sum(p.numel() for p in model.parameters())
    tok = w1_tokenizer()
    rows: dict[str, float | str] = {"gpu": name, "copy_TBps": bw / 1e12, "matmul_TFLOPs": peak / 1e12}
    batch = PROMPTS * SAMPLES
    # Decode roofline: every step reads all weights once plus the KV cache at the mean context.
    kv_per_tok = 2 * 24 * 2 * 64 * 2
    mean_ctx = PROMPT_LEN + RESPONSE_LEN / 2
    step_bytes = n_params * 2 + batch * mean_ctx * kv_per_tok
    roof = batch / (step_bytes / bw)  # bw is bytes moved per second (the copy counts both ways)
    rows["roofline_tok_s"] = roof

    engine = EmbeddedEngine(model, tok, max_batch_size=batch, max_seq_len=512)
    prompts, params = prompts_and_params(PROMPTS, SAMPLES)
    run_engine(engine, prompts, params)  # warm-up: compiles kernels, captures graphs
    torch.cuda.reset_peak_memory_stats(device)
    engine.reset_stats()
    tps = max(run_engine(engine, prompts, params) for _ in range(2))
    rows["engine_tok_s"] = tps
    stats = {**engine.stats, **engine.runner_stats()}
    for key, val in stats.items():
        rows[f"  {key} (2 runs)"] = float(val)
    if stats.get("decode_s"):
        # Time blocked in decode steps (graph replays + host syncs), without prefill or scheduling;
        # pipelined, GPU work that overlaps the scheduler is not in it, so this reads high.
        decode_tps = batch * stats["decode_steps"] / stats["decode_s"]
        rows["decode_only_tok_s"] = decode_tps
        rows["decode_only_pct_roofline"] = 100 * decode_tps / roof
    rows["engine_pct_roofline"] = 100 * tps / roof
    rows["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    rows["weight_sync_ms"] = 1e3 * cuda_time(engine.update_weights, 5)
    del engine
    # Same run, one chunk at a time: what the decode pipelining buys.
    serial = EmbeddedEngine(model, tok, max_batch_size=batch, max_seq_len=512, pipeline=False)
    run_engine(serial, prompts, params)
    rows["engine_no_pipeline_tok_s"] = max(run_engine(serial, prompts, params) for _ in range(2))
    del serial
    if args.large:
        big = EmbeddedEngine(model, tok, max_batch_size=1024, max_seq_len=512)
        bp, bparams = prompts_and_params(64, 16)
        run_engine(big, bp, bparams)
        rows["engine_1024seq_tok_s"] = run_engine(big, bp, bparams)
        del big
    slow = EmbeddedEngine(model, tok, max_batch_size=batch, fast_path=False)
    sub = 16  # the generic path is slow: time a slice of the workload
    rows["generic_engine_tok_s"] = run_engine(slow, prompts[:sub], params[:sub])
    del slow
    train_tps = train_phase(model, device)
    rows["train_tok_s"] = train_tps
    rows["train_MFU_pct"] = 100 * 6 * n_params * train_tps / peak
    if not args.skip_hf:
        ids = torch.tensor(prompts, device=device)

        def hf() -> None:
            model.generate(
                ids, do_sample=True, temperature=1.0, max_new_tokens=RESPONSE_LEN, min_new_tokens=RESPONSE_LEN,
                attention_mask=torch.ones_like(ids), pad_token_id=VOCAB - 2,
            )  # fmt: skip

        rows["hf_generate_tok_s"] = batch * RESPONSE_LEN / cuda_time(hf)
    width = max(len(k) for k in rows)
    print("\nW1 results")
    for k, v in rows.items():
        print(f"  {k:<{width}}  {v:,.3f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
