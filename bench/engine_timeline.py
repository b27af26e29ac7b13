"""Where the wall time of one end-to-end W1 generation goes, without a profiler's overhead (GPU).

    python -m bench.engine_timeline [--runs 3]

Host timestamps around the engine's stages (the requests parsed, admitted, the prefill, every
decode chunk launched and collected, the results absorbed, the futures resolved): a chunk's
collect ends when the GPU has finished it, so the decode span is GPU time plus any launch gap.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.w1 import PROMPTS, RESPONSE_LEN, SAMPLES, prompts_and_params, w1_model, w1_tokenizer
from miles_sdk.engines import _fast, embedded
from miles_sdk.engines.embedded import EmbeddedEngine

Marks = list[tuple[str, float]]


def _wrap(obj: Any, name: str, marks: Marks) -> None:
    fn: Callable[..., Any] = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        marks.append((f"{name}>", time.perf_counter()))
        try:
            return fn(*args, **kwargs)
        finally:
            marks.append((f"{name}<", time.perf_counter()))

    setattr(obj, name, timed)


def one_run(engine: EmbeddedEngine, prompts: list[list[int]], params: list[Any], marks: Marks) -> float:
    async def go() -> int:
        outs = await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, params, strict=True)))
        marks.append(("gathered", time.perf_counter()))
        return sum(len(o.token_ids) for o in outs)

    torch.cuda.synchronize()
    marks.clear()
    t0 = time.perf_counter()
    marks.append(("start", t0))
    n = asyncio.run(go())
    marks.append(("asyncio.run returned", time.perf_counter()))
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    assert n == len(prompts) * RESPONSE_LEN
    return t1 - t0


def first(marks: Marks, name: str) -> float:
    return next((t for n, t in marks if n == name), float("nan"))


def last(marks: Marks, name: str) -> float:
    return next((t for n, t in reversed(marks) if n == name), float("nan"))


def report(marks: Marks, wall: float) -> dict[str, float]:
    t0 = marks[0][1]
    spans = {
        "start -> first admit": first(marks, "_admit<") - t0,
        "first admit -> prefill starts": first(marks, "_prefill>") - first(marks, "_admit<"),
        "prefill (host call, incl. sampling sync)": first(marks, "_prefill<") - first(marks, "_prefill>"),
        "prefill end -> first chunk launched": first(marks, "_launch<") - first(marks, "_prefill<"),
        "first launch -> last collect (decode)": last(marks, "_collect<") - first(marks, "_launch>"),
        "last collect -> last absorb end": last(marks, "_absorb<") - last(marks, "_collect<"),
        "last absorb -> gathered": first(marks, "gathered") - last(marks, "_absorb<"),
        "gathered -> asyncio.run returned": first(marks, "asyncio.run returned") - first(marks, "gathered"),
    }
    spans["total wall"] = wall
    # Inside the stages above.
    spans["  in the last absorb: detokenise"] = last(marks, "decode_texts<") - last(marks, "decode_texts>")
    spans["  in the prefill: graph replay call"] = first(marks, "run<") - first(marks, "run>")
    spans["  in the prefill: sampling (launch)"] = first(marks, "sample_plain<") - first(
        marks, "sample_plain>"
    )
    parse = [t for n, t in marks if n.startswith("parse_sampling_params")]
    spans["  parsing the requests (sum)"] = sum(b - a for a, b in zip(parse[::2], parse[1::2], strict=True))
    return spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--own-prompt-keys",
        action="store_true",
        help="every sample reads its own copy of the prompt's keys (not the group lead's)",
    )
    args = ap.parse_args()
    model = w1_model(torch.device("cuda"))
    engine = EmbeddedEngine(model, w1_tokenizer(), max_batch_size=PROMPTS * SAMPLES, max_seq_len=512)
    prompts, params = prompts_and_params(PROMPTS, SAMPLES)
    marks: Marks = []
    one_run(engine, prompts, params, marks)  # warm-up: kernels compiled, graphs captured
    runner = engine._runner
    assert isinstance(runner, _fast.FastRunner)
    runner._share_prompt_reads = not args.own_prompt_keys
    for name in ("_prefill", "_launch", "_collect"):
        _wrap(runner, name, marks)
    for name in ("_admit", "_absorb"):
        _wrap(engine, name, marks)
    _wrap(embedded, "decode_texts", marks)
    _wrap(embedded, "parse_sampling_params", marks)
    _wrap(_fast, "sample_plain", marks)
    if runner._prefill_graphs is not None:
        _wrap(runner._prefill_graphs, "run", marks)
    results = []
    for _ in range(args.runs):
        wall = one_run(engine, prompts, params, marks)
        results.append(report(marks, wall))
    best = min(results, key=lambda r: r["total wall"])
    tokens = PROMPTS * SAMPLES * RESPONSE_LEN
    keys = "own prompt keys" if args.own_prompt_keys else "prompt keys read from the group lead"
    print(
        f"\nW1 engine timeline, {keys} (best of {args.runs}; {tokens / best['total wall'] / 1e3:.1f}k tok/s)"
    )
    for key, val in best.items():
        print(f"  {key:<42} {1e3 * val:8.2f} ms")
    decode_chunks = sum(n == "_collect<" for n, _ in marks)
    print(f"  chunks collected: {decode_chunks}")


if __name__ == "__main__":
    main()
