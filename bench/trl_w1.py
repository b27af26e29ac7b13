"""W1 on TRL's GRPOTrainer, for the same-run comparison with ``bench.w1_step``.

    python -m bench.trl_w1                 # on the GPU: W1 (16 prompts x 8, 128 + exactly 256 tokens)
    python -m bench.trl_w1 --smoke         # a few seconds on the CPU: checks the script itself

Same policy shape and workload as ``bench.w1`` (Qwen2.5-0.5B-shaped, random init), one AdamW step
per generation of 128 completions, no KL (beta 0), transformers ``generate`` (TRL's default, no
vLLM). Prints the wall time of each optimizer step (each includes its generation).

Status: smoke-tested on the CPU; not yet run on a GPU (the device time of the session that wrote it
was spent). On the device machine only trl, datasets, dill and multiprocess are missing (about
1.8 MB of wheels; pyarrow, pandas, xxhash and accelerate are in its image).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, TrainerCallback


def _tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Word-level over ``t<id>`` words, whitespace-split, so a prompt's text maps to exact ids."""
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token=f"t{vocab - 1}", pad_token=f"t{vocab - 2}"
    )


class _StepTimes(TrainerCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=16, help="completions per forward/backward")
    ap.add_argument("--json", default=None, help="write the step times to this file")
    ns = ap.parse_args()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if ns.smoke:
        vocab, layers, hidden, inter, heads, kv = 512, 1, 64, 128, 2, 1
        prompts_n, samples, prompt_len, response_len, micro = 2, 2, 8, 4, 2
    else:
        vocab, layers, hidden, inter, heads, kv = 151936, 24, 896, 4864, 14, 2
        prompts_n, samples, prompt_len, response_len, micro = 16, 8, 128, 256, ns.micro_batch
    cuda = torch.cuda.is_available() and not ns.smoke
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True,
        eos_token_id=vocab - 1, pad_token_id=vocab - 2,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    rng = random.Random(0)
    rows = [
        " ".join(f"t{rng.randrange(vocab - 2)}" for _ in range(prompt_len))
        for _ in range(prompts_n * ns.steps)
    ]

    def reward(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(c) % 2) for c in completions]

    completions = prompts_n * samples
    args = GRPOConfig(
        output_dir="/tmp/trl_w1",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // micro,
        num_generations=samples,
        max_completion_length=response_len,
        generation_kwargs={"min_new_tokens": response_len},  # W1: exactly 256 new tokens
        learning_rate=1e-6,
        beta=0.0,
        max_steps=ns.steps,
        logging_steps=1,
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        save_strategy="no",
        shuffle_dataset=False,
    )
    times = _StepTimes()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        processing_class=_tokenizer(vocab),
        train_dataset=Dataset.from_dict({"prompt": rows}),
        callbacks=[times],
    )
    start = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([start, *times.ends], times.ends, strict=False)]
    print("| TRL GRPOTrainer step | seconds |")
    print("|---|---|")
    for i, s in enumerate(steps):
        print(f"| step {i} (generation of {completions} x {response_len} tokens + 1 AdamW step) | {s:.2f} |")
    if len(steps) > 1:
        print(f"| steady (mean after the first) | {statistics.mean(steps[1:]):.2f} |")
    if ns.json:
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        with open(ns.json, "w") as f:
            json.dump({"steps_s": steps, "peak_mem_GiB": peak}, f, indent=1)


if __name__ == "__main__":
    main()
