"""Train a tool-using agent on the tiny CPU policy: ``python -m examples.agent_calculator.run``.

The task is ``a+b`` with a calculator tool. A format warm-up (supervised, a few seconds) teaches the
policy the shape of the conversation: call ``add`` with the two numbers, then answer with one
digit. Its answers are random digits, so the reward starts near 0.1; RL has to learn to answer
with what the tool returned, from the tokens the agent's turns actually produced.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from examples._common import parse_run_args, tiny_config
from examples.agent_calculator.agent import ADD_TOOL, reward_fn
from miles_sdk.agents import generate_with_agent
from miles_sdk.testing import tiny_policy
from miles_sdk.trainer import Trainer
from miles_sdk.types import Metrics

__all__ = ["dataset", "format_warmup", "main", "train"]


def dataset(seed: int = 0) -> list[dict[str, Any]]:
    """Every ``a+b`` with a single-digit sum."""
    rows = [{"input": f"{a}+{b}", "label": str(a + b)} for a in range(10) for b in range(10) if a + b < 10]
    random.Random(seed).shuffle(rows)
    return rows


def _conversation(tok: PreTrainedTokenizerFast, a: int, b: int, answer: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 off the model's turns) of one episode, split the way the
    endpoint's sessions split it: prompt, tool call, tool result and next header, answer."""
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}],
    }
    user = {"role": "user", "content": f"{a}+{b}"}
    tool = {"role": "tool", "content": str(a + b)}

    def render(messages: list[dict[str, Any]], generation: bool) -> str:
        return str(
            tok.apply_chat_template(
                messages, tools=[dict(ADD_TOOL)], tokenize=False, add_generation_prompt=generation
            )
        )

    prompt = render([user], True)
    with_call = render([user, call], False)
    call_text = with_call[len(prompt) :].removesuffix("\n")  # the model's turn ends at <|im_end|>
    between = render([user, call, tool], True)[len(prompt) + len(call_text) :]
    pieces = [(prompt, False), (call_text, True), (between, False), (f"{answer}{tok.eos_token}", True)]
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        part = tok.encode(text, add_special_tokens=False)
        ids += part
        labels += part if trained else [-100] * len(part)
    return ids, labels


def format_warmup(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerFast,
    rows: list[dict[str, Any]],
    *,
    steps: int = 200,
    seed: int = 0,
) -> float:
    """Teach the conversation's shape with RANDOM answers; returns the final loss."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = []
        for row in rng.sample(rows, k=min(16, len(rows))):
            a, b = (int(x) for x in row["input"].split("+"))
            batch.append(_conversation(tok, a, b, rng.randrange(10)))
        width = max(len(ids) for ids, _ in batch)
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        ids_t = torch.full((len(batch), width), pad)
        labels_t = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, labels) in enumerate(batch):
            ids_t[i, : len(ids)] = torch.tensor(ids)
            labels_t[i, : len(ids)] = torch.tensor(labels)
            mask[i, : len(ids)] = 1
        loss = model(input_ids=ids_t, attention_mask=mask, labels=labels_t).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.train(False)
    return float(loss.detach())


def train(
    num_rollout: int,
    output_dir: str,
    seed: int = 0,
    preset: str = "arithmetic",
    warmup_steps: int = 200,
    rollout_batch_size: int = 4,
) -> list[Metrics]:
    from examples._common import RunOptions

    opts = RunOptions(num_rollout=num_rollout, output_dir=output_dir, seed=seed, preset=preset)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = dataset(seed)
    model, tok = tiny_policy(preset, seed=seed)
    loss = format_warmup(model, tok, rows, steps=warmup_steps, seed=seed)
    print(f"format warm-up loss: {loss:.3f}")
    config = tiny_config(
        opts,
        custom_agent_function_path="examples.agent_calculator.agent.calculator_agent",
        rollout_batch_size=rollout_batch_size,
        n_samples_per_prompt=8,
        rollout_max_response_len=60,
        rollout_temperature=1.0,
        rollout_shuffle=True,
        lr=1e-4,  # 1e-3 broke the tool-call format after one step (long responses, per-token loss)
        micro_batch_size=rollout_batch_size * 8,
        max_seq_len=400,
        agent_timeout=300.0,
    )
    trainer = Trainer(
        config,
        model=model,
        tokenizer=tok,
        dataset=rows,
        generate_fn=generate_with_agent,
        reward_model=reward_fn,
    )
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    for step, metrics in enumerate(history):
        print(
            json.dumps(
                {"rollout": step, "reward": round(metrics.get("rollout/reward_mean", float("nan")), 3)}
            )
        )
    return history


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_run_args(argv, name="agent_calculator", description=__doc__, num_rollout=40)
    history = train(
        opts.num_rollout, opts.output_dir, opts.seed, opts.preset if opts.preset != "unit" else "arithmetic"
    )
    rewards = [m["rollout/reward_mean"] for m in history]
    tail = rewards[-5:]
    print(
        f"first rollout reward: {rewards[0]:.3f}; mean of the last {len(tail)}: {sum(tail) / len(tail):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
