"""A few seconds of supervised format warm-up before RL.

A randomly initialised policy almost never emits a lone digit, so GRPO would see no reward signal.
The warm-up teaches the *format* only: after each prompt, one digit and then EOS. The digit's
target is the uniform distribution over the ten digits (a soft label), so the policy learns to
answer with a digit but knows nothing about addition: every prompt starts at P(correct) = 0.1.
RL then has to learn the sums.

Uniform soft targets rather than a random digit per example: sampled labels are noise that a
prompt-sensitive policy partly memorises, leaving some prompts with almost no mass on their
correct sum, and GRPO cannot learn a prompt whose 16 samples are all wrong.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

__all__ = ["format_warmup"]


def format_warmup(
    model: nn.Module, tokenizer: Any, prompts: list[str], *, steps: int = 60, lr: float = 3e-3, seed: int = 0
) -> float:
    """Train ``model`` on ``prompt -> (uniform digit) + EOS``; returns the final loss."""
    rng = random.Random(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    eos = int(tokenizer.eos_token_id)
    digits = torch.tensor([tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)])
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = [tokenizer.encode(p, add_special_tokens=False) for p in rng.sample(prompts, k=min(32, len(prompts)))]
        # Each row: prompt, a random digit (only as the input before EOS), EOS; left as is, padded with EOS.
        width = max(len(p) for p in batch) + 2
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        answer_pos = torch.empty(len(batch), dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, : len(p) + 1] = torch.tensor([*p, int(digits[rng.randrange(10)])])
            mask[i, : len(p) + 2] = 1
            answer_pos[i] = len(p) - 1  # the logits here predict the digit; one later, EOS
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        rows = torch.arange(len(batch), device=device)
        digit_logp = torch.log_softmax(logits[rows, answer_pos.to(device)], dim=-1)[:, digits.to(device)]
        eos_logp = torch.log_softmax(logits[rows, answer_pos.to(device) + 1], dim=-1)[:, eos]
        loss = -(digit_logp.mean(dim=-1) + eos_logp).mean()
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    return float(loss.detach())
