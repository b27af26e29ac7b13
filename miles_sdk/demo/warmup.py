"""A few seconds of supervised format warm-up before RL.

A randomly initialised policy almost never emits a lone digit, so GRPO would see no reward signal.
The warm-up teaches the *format* only: each prompt is paired with a RANDOM digit, so the policy
learns to answer with one digit and EOS but knows nothing about addition (reward ~ 0.1). RL then
has to learn the sums.
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
    """Train ``model`` on ``prompt -> random digit + EOS``; returns the final loss."""
    rng = random.Random(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    eos = int(tokenizer.eos_token_id)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = [
            (
                tokenizer.encode(p, add_special_tokens=False),
                tokenizer.encode(str(rng.randrange(10)), add_special_tokens=False) + [eos],
            )
            for p in rng.sample(prompts, k=min(32, len(prompts)))
        ]
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, r) in enumerate(batch):
            seq = p + r
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(r)
            mask[i, : len(seq)] = 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        loss = out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())
