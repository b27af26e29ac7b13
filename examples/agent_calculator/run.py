"""Train a tool-using agent on the tiny CPU policy: ``python -m examples.agent_calculator.run``.

The task is ``a+b`` with a calculator tool. A format warm-up (supervised) teaches the policy the
shape of the conversation: call ``add`` with the two numbers, then answer with one digit, whose
target is uniform over the ten digits. So the reward starts near chance (0.085: one call in seven
comes out malformed at temperature 1); RL has to learn to answer with what the tool returned, from
the tokens the agent's turns actually produced. Measured so far, it does not: the reward rises from
~0.05 to ~0.13 in a few rollouts (fewer malformed calls) and stays there (docs/agents.md).

The printed reward is ``rollout/reward_mean_unfiltered``, over every episode of the rollout: the
groups that dynamic sampling keeps each hold a right answer, so their mean overstates it.
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
from miles_sdk.rollout import check_reward_nonzero_std
from miles_sdk.testing import tiny_policy
from miles_sdk.testing.tiny import TINY_PRESETS
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
    """Teach the conversation's shape, with a UNIFORM answer; returns the final loss.

    The tool call is trained on its exact tokens; the final answer's target is the uniform
    distribution over the ten digits (a soft label), so every prompt starts at P(correct) = 0.1
    and RL has to learn to answer with what the tool returned. (A random digit per example instead
    is noise the policy partly memorises, leaving some prompts with no mass on their answer.)
    """
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    digits = torch.tensor([tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)])
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
        answer_at = torch.tensor([len(ids) - 3 for ids, _ in batch])  # logits that predict the answer
        for i, (ids, labels) in enumerate(batch):
            ids_t[i, : len(ids)] = torch.tensor(ids)
            labels_t[i, : len(ids)] = torch.tensor(labels)
            labels_t[i, len(ids) - 2] = -100  # the sampled answer digit: replaced by the soft target
            mask[i, : len(ids)] = 1
        logits = model(input_ids=ids_t, attention_mask=mask).logits
        targets = labels_t[:, 1:]
        token_nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        )
        answer_logp = torch.log_softmax(logits[torch.arange(len(batch)), answer_at], dim=-1)[:, digits]
        trained = int((targets != -100).sum()) + len(batch)
        loss = (token_nll - answer_logp.mean(dim=-1).sum()) / trained
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    model.train(False)
    return float(loss.detach())


def train(
    num_rollout: int,
    output_dir: str,
    seed: int = 0,
    preset: str = "arithmetic",
    warmup_steps: int = 200,
    rollout_batch_size: int = 8,
    lr: float = 1e-3,
    eps_clip: float = 0.2,
    dynamic_sampling: bool = True,
    temperature: float = 1.0,
    steps_per_rollout: int = 1,
    n_samples_per_prompt: int = 8,
) -> list[Metrics]:
    from examples._common import RunOptions

    opts = RunOptions(num_rollout=num_rollout, output_dir=output_dir, seed=seed, preset=preset)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = dataset(seed)
    # Fan-in init (std hidden_size ** -0.5) rather than transformers' 0.02, which leaves the tiny
    # policy's output almost independent of its input (see miles_sdk.demo).
    model, tok = tiny_policy(preset, seed=seed, initializer_range=TINY_PRESETS[preset].hidden_size ** -0.5)
    loss = format_warmup(model, tok, rows, steps=warmup_steps, seed=seed)
    print(f"format warm-up loss: {loss:.3f}")
    config = tiny_config(
        opts,
        custom_agent_function_path="examples.agent_calculator.agent.calculator_agent",
        rollout_batch_size=rollout_batch_size,
        n_samples_per_prompt=n_samples_per_prompt,
        rollout_max_response_len=60,
        rollout_temperature=temperature,
        rollout_shuffle=True,
        lr=lr,
        eps_clip=eps_clip,
        weight_decay=0.0,  # a step whose groups all score alike must not move the weights
        # Groups whose 8 episodes all score alike teach nothing: drop them and draw more (Miles's
        # dynamic sampling), at most 4x the batch per rollout.
        over_sampling_max_groups=4 * rollout_batch_size,
        # One optimizer step per rollout: two (the demo's setting) broke the tool-call format on the
        # first rollout (measured: reward 0.05 -> 0.002).
        num_steps_per_rollout=steps_per_rollout,
        micro_batch_size=rollout_batch_size * n_samples_per_prompt // steps_per_rollout,
        max_seq_len=400,
        agent_timeout=300.0,
    )
    filters: dict[str, Any] = (
        {"dynamic_sampling_filter": check_reward_nonzero_std} if dynamic_sampling else {}
    )
    trainer = Trainer(
        config,
        model=model,
        tokenizer=tok,
        dataset=rows,
        generate_fn=generate_with_agent,
        reward_model=reward_fn,
        **filters,
    )
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    for step, metrics in enumerate(history):
        reward = metrics.get("rollout/reward_mean_unfiltered", metrics.get("rollout/reward_mean", float("nan")))
        print(json.dumps({"rollout": step, "reward": round(reward, 3)}))
    return history


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_run_args(argv, name="agent_calculator", description=__doc__, num_rollout=40)
    history = train(
        opts.num_rollout, opts.output_dir, opts.seed, opts.preset if opts.preset != "unit" else "arithmetic"
    )
    rewards = [m.get("rollout/reward_mean_unfiltered", m["rollout/reward_mean"]) for m in history]
    head, tail = rewards[:5], rewards[-10:]
    print(
        f"reward over all episodes: first {len(head)} rollouts {sum(head) / len(head):.3f}; "
        f"last {len(tail)} {sum(tail) / len(tail):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
