"""Session records -> training Samples, with loss masks over the generated tokens only.

A trajectory's turns share a token prefix by construction (:mod:`miles_sdk.agents.session`), so
they merge into one Sample: the first turn's prompt, then each turn's generated ids (loss mask 1,
the engine's log-probs) with the ids between turns (the template's end of the assistant turn, the
tool results, the next ``<|im_start|>assistant``) masked 0 with log-prob 0. ``per_turn`` gives one
Sample per turn instead (its own prompt, its generated ids), as Miles does without merging.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

from miles_sdk.agents.session import ChatRenderer, TurnRecord
from miles_sdk.types import Sample, SampleStatus

__all__ = ["records_to_samples"]

_STATUS = {"stop": Sample.Status.COMPLETED, "length": Sample.Status.TRUNCATED, "abort": Sample.Status.ABORTED}


def _status(record: TurnRecord) -> SampleStatus:
    return _STATUS.get(record.finish_reason, Sample.Status.COMPLETED)


def _merge(base: Sample, turns: Sequence[TurnRecord], renderer: ChatRenderer) -> Sample:
    sample = copy.deepcopy(base)
    first = turns[0]
    tokens = list(first.prompt_ids)
    mask: list[int] = []
    log_probs: list[float] = []
    for turn in turns:
        if turn.prompt_ids[: len(tokens)] != tokens:
            raise ValueError(
                f"session turn does not extend its trajectory {turn.trajectory}: the prompt differs from "
                f"the previous turn's tokens at or before index {len(tokens)} (a session bug: please report)"
            )
        between = turn.prompt_ids[len(tokens) :]
        tokens += between + turn.output_ids
        mask += [0] * len(between) + [1] * len(turn.output_ids)
        log_probs += [0.0] * len(between) + list(turn.log_probs)
    sample.tokens = tokens
    sample.response_length = len(tokens) - len(first.prompt_ids)
    sample.loss_mask = mask
    sample.rollout_log_probs = log_probs
    sample.weight_versions = [t.weight_version for t in turns]
    sample.response = renderer.decode(tokens[len(first.prompt_ids) :])
    sample.status = _status(turns[-1])
    sample.metadata = {**sample.metadata, "agent_turns": len(turns), "messages": turns[-1].messages}
    return sample


def _truncate(sample: Sample, max_seq_len: int, renderer: ChatRenderer) -> Sample:
    """Cut ``sample`` to ``max_seq_len`` tokens (TRUNCATED); a prompt that alone is too long FAILS."""
    over = len(sample.tokens) - max_seq_len
    if over <= 0:
        return sample
    if sample.prompt_length >= max_seq_len:
        sample.status = Sample.Status.FAILED
        sample.metadata["agent_error"] = (
            f"the prompt has {sample.prompt_length} tokens, max_seq_len is {max_seq_len}: nothing left to train on"
        )
        sample.tokens = sample.tokens[: sample.prompt_length]
        sample.response_length = 0
        sample.loss_mask, sample.rollout_log_probs, sample.response = [], [], ""
        return sample
    keep = sample.response_length - over
    sample.tokens = sample.tokens[:max_seq_len]
    sample.response_length = keep
    sample.loss_mask = (sample.loss_mask or [])[:keep]
    sample.rollout_log_probs = (sample.rollout_log_probs or [])[:keep]
    sample.response = renderer.decode(sample.response_tokens)
    sample.status = Sample.Status.TRUNCATED
    return sample


def records_to_samples(
    base: Sample,
    records: Sequence[TurnRecord],
    renderer: ChatRenderer,
    *,
    mode: Literal["trajectory", "turn"] = "trajectory",
    max_seq_len: int | None = None,
) -> list[Sample]:
    """One Sample per trajectory (or per turn), each a deep copy of ``base`` with the generation
    filled in, in the order the trajectories started. Empty when ``records`` is."""
    if mode == "turn":
        groups: list[list[TurnRecord]] = [[r] for r in records]
    else:
        by_trajectory: dict[int, list[TurnRecord]] = {}
        for record in records:
            by_trajectory.setdefault(record.trajectory, []).append(record)
        groups = [by_trajectory[k] for k in sorted(by_trajectory)]
    samples = [_merge(base, turns, renderer) for turns in groups]
    if max_seq_len is not None:
        samples = [_truncate(s, max_seq_len, renderer) for s in samples]
    return samples
