"""Train a tool-using agent on the tiny CPU policy: ``python -m examples.agent_calculator.run``.

The task is ``a+b`` with a calculator tool. A format warm-up (supervised) teaches the policy the
shape of the conversation: call ``add`` with the two numbers, then answer with one number, whose
target is uniform over the three numbers of the conversation (``a``, ``b`` and the tool's
result). So the policy starts by answering with the tool's result one time in three (and some calls
come out malformed at temperature 1); RL, on the tokens the agent's turns actually produced, has to
learn which number is the answer: the one the tool returned. Measured on 2 CPU cores (three seeds,
40 rollouts, about 3 minutes each): the reward over all episodes goes from ~0.3 to ~0.7
(docs/agents.md).

The printed reward is ``rollout/reward_mean_unfiltered``, over every episode of the rollout: the
groups that dynamic sampling keeps each hold a right answer, so their mean overstates it. The run
also prints the policy's probability of answering with the tool's result before and after RL
(:func:`answer_probability`), a measure with less noise.
"""

from __future__ import annotations

import dataclasses
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
from miles_sdk.testing.tiny import TINY_CHAT_TEMPLATE, TINY_PRESETS
from miles_sdk.trainer import Trainer
from miles_sdk.types import Metrics

__all__ = [
    "CHAT_TEMPLATE",
    "TrainResult",
    "answer_probability",
    "calculator_policy",
    "dataset",
    "format_warmup",
    "main",
    "train",
]


_MESSAGES = "{% for message in messages %}"
CHAT_TEMPLATE = (
    # The tiny tokenizer's ChatML template, with the tool list rendered as the tools' names
    # (``<tools>add</tools>``, ~15 tokens) instead of ~200 tokens of instructions and JSON schema:
    # a third of the tokens per episode, so the warm-up and the rollouts run ~2.5x faster on CPU.
    # Only the header differs; the messages are rendered by the tiny template's own loop.
    "{% if tools %}{{ '<|im_start|>system\n<tools>' }}"
    "{% for tool in tools %}{{ (tool.function.name if tool.function is defined else tool.name) }}"
    "{% if not loop.last %}{{ ',' }}{% endif %}{% endfor %}{{ '</tools><|im_end|>\n' }}"
    "{% elif messages[0].role == 'system' %}{{ '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{% endif %}" + TINY_CHAT_TEMPLATE[TINY_CHAT_TEMPLATE.index(_MESSAGES) :]
)
"""The example's chat template (set on the tiny tokenizer by :func:`calculator_policy`)."""


def calculator_policy(
    seed: int = 0, preset: str = "arithmetic"
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The tiny policy with the fan-in init (std ``hidden_size ** -0.5``; transformers' 0.02 leaves
    its output almost independent of its input, see miles_sdk.demo) and :data:`CHAT_TEMPLATE`."""
    model, tok = tiny_policy(preset, seed=seed, initializer_range=TINY_PRESETS[preset].hidden_size ** -0.5)
    tok.chat_template = CHAT_TEMPLATE
    return model, tok


def dataset(seed: int = 0) -> list[dict[str, Any]]:
    """Every ``a+b`` with ``1 <= a, b``, ``a != b`` and a single-digit sum (32 rows): the three
    numbers of a conversation (``a``, ``b`` and the tool's result ``a+b``) are always distinct."""
    rows = [
        {"input": f"{a}+{b}", "label": str(a + b)}
        for a in range(1, 10)
        for b in range(1, 10)
        if a != b and a + b < 10
    ]
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
    steps: int = 300,
    seed: int = 0,
) -> float:
    """Teach the conversation's shape, not the answer; returns the final loss.

    The tool call is trained on its exact tokens. The final answer's target is a soft label,
    uniform over the three numbers of the conversation (the user's ``a`` and ``b`` and the tool's
    result), so every prompt starts at P(correct) = 1/3 and RL has to learn which of them to answer
    with: the one the tool returned.

    A target uniform over all ten digits (chance 0.1) does not work here: it trains the answer to
    ignore every number in its context, the copy that RL then has to rebuild (measured: no rise in
    80 rollouts; docs/agents.md).
    """
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    digit_ids = [tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    model.train()
    loss = torch.tensor(0.0)
    episodes = []  # (token ids and labels, the answer's three choices), rendered once per row
    for row in rows:
        a, b = (int(x) for x in row["input"].split("+"))
        episodes.append((_conversation(tok, a, b, a + b), [digit_ids[n] for n in sorted({a, b, a + b})]))
    for _ in range(steps):
        picked = rng.sample(episodes, k=min(16, len(episodes)))
        batch = [conversation for conversation, _ in picked]
        choices = [three for _, three in picked]
        width = max(len(ids) for ids, _ in batch)
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        ids_t = torch.full((len(batch), width), pad)
        labels_t = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        answer_at = torch.tensor([len(ids) - 3 for ids, _ in batch])  # logits that predict the answer
        for i, (ids, labels) in enumerate(batch):
            ids_t[i, : len(ids)] = torch.tensor(ids)
            labels_t[i, : len(ids)] = torch.tensor(labels)
            labels_t[i, len(ids) - 2] = -100  # the answer digit: replaced by the soft target
            mask[i, : len(ids)] = 1
        logits = model(input_ids=ids_t, attention_mask=mask).logits
        targets = labels_t[:, 1:]
        token_nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        )
        answer_logp = torch.log_softmax(logits[torch.arange(len(batch)), answer_at], dim=-1)
        soft_nll = -sum(answer_logp[i, c].mean() for i, c in enumerate(choices))
        trained = int((targets != -100).sum()) + len(batch)
        loss = (token_nll + soft_nll) / trained
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    model.train(False)
    return float(loss.detach())


def answer_probability(model: PreTrainedModel, tok: PreTrainedTokenizerFast, rows: list[dict[str, Any]]) -> float:
    """The policy's mean probability of answering with the tool's result, over ``rows``, in the
    conversation where it called ``add`` correctly (a low-noise measure of what RL taught)."""
    right = [_conversation(tok, a, b, a + b) for a, b in (map(int, r["input"].split("+")) for r in rows)]
    width = max(len(ids) for ids, _ in right)
    ids_t = torch.zeros((len(right), width), dtype=torch.long)
    mask = torch.zeros((len(right), width), dtype=torch.long)
    for i, (ids, _) in enumerate(right):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    rows_at = torch.arange(len(right))
    answer_at = torch.tensor([len(ids) - 3 for ids, _ in right])
    answers = torch.tensor([ids[-2] for ids, _ in right])
    was_training = model.training
    model.train(False)
    with torch.no_grad():
        logits = model(input_ids=ids_t, attention_mask=mask).logits[rows_at, answer_at]
    model.train(was_training)
    return float(torch.softmax(logits.float(), dim=-1)[rows_at, answers].mean())


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` measured."""

    history: list[Metrics]
    """Every rollout's metrics."""
    answer_probability_before: float
    """:func:`answer_probability` after the warm-up, before RL (about 1/3)."""
    answer_probability_after: float
    """The same after RL."""


def train(
    num_rollout: int,
    output_dir: str,
    seed: int = 0,
    preset: str = "arithmetic",
    warmup_steps: int = 300,
    rollout_batch_size: int = 8,
    lr: float = 1e-3,
    eps_clip: float = 0.2,
    dynamic_sampling: bool = True,
    temperature: float = 1.0,
    steps_per_rollout: int = 1,
    n_samples_per_prompt: int = 8,
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast] | None = None,
) -> TrainResult:
    """Warm up (``warmup_steps``, 0 for none) and train ``policy`` (default: a fresh
    :func:`calculator_policy`; it is trained in place) for ``num_rollout`` rollouts."""
    from examples._common import RunOptions

    opts = RunOptions(num_rollout=num_rollout, output_dir=output_dir, seed=seed, preset=preset)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = dataset(seed)
    model, tok = policy or calculator_policy(seed, preset)
    if warmup_steps:
        loss = format_warmup(model, tok, rows, steps=warmup_steps, seed=seed)
        print(f"format warm-up loss: {loss:.3f}")
    before = answer_probability(model, tok, rows)
    print(f"P(answer = the tool's result) before RL: {before:.3f}")
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
        # first rollout with the earlier warm-up (uniform answer digits; reward 0.05 -> 0.002).
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
    after = answer_probability(model, tok, rows)
    print(f"P(answer = the tool's result): {before:.3f} before RL, {after:.3f} after")
    return TrainResult(history, before, after)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_run_args(argv, name="agent_calculator", description=__doc__, num_rollout=40)
    result = train(
        opts.num_rollout, opts.output_dir, opts.seed, opts.preset if opts.preset != "unit" else "arithmetic"
    )
    rewards = [m.get("rollout/reward_mean_unfiltered", m["rollout/reward_mean"]) for m in result.history]
    head, tail = rewards[:5], rewards[-10:]
    print(
        f"reward over all episodes: first {len(head)} rollouts {sum(head) / len(head):.3f}; "
        f"last {len(tail)} {sum(tail) / len(tail):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
