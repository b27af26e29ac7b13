"""Shim of ``miles.rollout.on_policy_distillation``: sampled-token OPD against a teacher server.

Miles's OPD launch scripts set ``--custom-rm-path miles.rollout.on_policy_distillation.reward_func``
and ``--custom-reward-post-process-path ...post_process_rewards`` with ``--use-opd --opd-type sglang``:
the "reward" is the teacher server's scoring reply for the sample's tokens, and the post-process
stores the teacher's per-token log-probs on the sample (a tensor in ``teacher_log_probs``) and
returns zero task rewards; training then adds the reverse KL to the advantages
(:mod:`miles_sdk.algo.opd`).

Only ``opd_log_prob_top_k = 0`` (sampled-token OPD) is provided: top-k OPD needs the student's
top-k log-probs recorded by the engine during generation, which the SDK's engines do not record.
"""

from __future__ import annotations

from typing import Any

import torch

from miles_sdk.compat.miles.utils.http_utils import post
from miles_sdk.types import Sample

__all__ = ["post_process_rewards", "reward_func", "teacher_log_probs_from_reply"]


def _top_k(args: Any) -> int:
    top_k = int(getattr(args, "opd_log_prob_top_k", 0) or 0)
    if top_k > 0:
        raise NotImplementedError(
            f"opd_log_prob_top_k={top_k}: top-k OPD needs the student's top-k log-probs recorded during "
            "generation, which miles_sdk's engines do not record; use opd_log_prob_top_k=0 (sampled-token OPD)"
        )
    return top_k


async def reward_func(args: Any, sample: Sample, **kwargs: Any) -> dict[str, Any]:
    """The teacher server's scoring of ``sample.tokens`` (``args.rm_url``, SGLang's /generate with
    ``return_logprob`` from position 0 and no new tokens)."""
    _top_k(args)
    if not getattr(args, "rm_url", None):
        raise ValueError("on-policy distillation: set rm_url (--rm-url) to the teacher server's /generate")
    payload = {
        "input_ids": list(sample.tokens),
        "sampling_params": {"temperature": 0, "max_new_tokens": 0, "skip_special_tokens": False},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    reply: dict[str, Any] = await post(args.rm_url, payload)
    return reply


def teacher_log_probs_from_reply(reply: Any, response_length: int) -> torch.Tensor:
    """The teacher's log-prob of each response token from its reply's ``input_token_logprobs``
    (the first entry is SGLang's placeholder for position 0)."""
    meta = reply.get("meta_info") if isinstance(reply, dict) else None
    values = meta.get("input_token_logprobs") if isinstance(meta, dict) else None
    if values is None:
        raise ValueError("teacher reply has no meta_info.input_token_logprobs (was return_logprob set?)")
    rows = values[1:][-response_length:] if response_length > 0 else []
    if len(rows) != response_length:
        raise ValueError(f"teacher reply scores {len(rows)} response tokens, the sample has {response_length}")
    return torch.tensor([float(row[0]) for row in rows], dtype=torch.float32)


def post_process_rewards(args: Any, samples: list[Sample], **kwargs: Any) -> tuple[list[float], list[float]]:
    """Store each sample's teacher log-probs; the task reward is 0 (the signal is the OPD term)."""
    _top_k(args)
    for sample in samples:
        reply = sample.get_reward_value(args)
        sample.teacher_log_probs = teacher_log_probs_from_reply(reply, sample.response_length)
    zeros = [0.0] * len(samples)
    return zeros, list(zeros)
